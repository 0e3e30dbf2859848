"""Target 5: dataset build throughput vs a plain copy of the same bytes into the same store.

Build is ``assay.datasets.build`` over all of PennFudanPed (read images and masks, derive COCO labels
from the masks, write tar shards and label files, hash them, upload, write the manifest). The plain copy
uploads the same source files (PNGImages/ and PedMasks/), one object per file, through the same
``assay.storage`` calls. Stores: a local folder, and S3 served by moto's ThreadedMotoServer on 127.0.0.1.
Throughput is source bytes per second on both sides.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Row, Timer, dataset, require_data


def _copy(files: list[Path], store: str) -> None:
    from assay import storage

    root = require_data()
    for f in files:
        storage.upload(f, storage.join(store, "copy", str(f.relative_to(root))))


def _measure(store: str, label: str) -> Row:
    root = require_data()
    files = sorted((root / "PNGImages").glob("*.png")) + sorted((root / "PedMasks").glob("*.png"))
    total = sum(f.stat().st_size for f in files)
    for f in files:  # both sides read from the page cache
        f.read_bytes()
    with Timer() as copy:
        _copy(files, store)
    with Timer() as build:
        dataset(store, "PNGImages/*.png", 8 << 20)
    ratio = copy.seconds / build.seconds
    return Row(f"5 dataset build ({label})", "build / plain-copy bytes/s", ratio, ">= 0.50", ratio >= 0.5,
               f"{total / 1e6:.0f} MB, {len(files)} files: build {build.seconds:.2f}s "
               f"({total / 1e6 / build.seconds:.0f} MB/s), copy {copy.seconds:.2f}s")


def run(work: Path) -> list[Row]:
    rows = [_measure(str(work / "local-store"), "local folder")]
    rows.append(_s3(work))
    return rows


def _s3(work: Path) -> Row:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from assay import storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        moto = storage.S3Access(endpoint_url=f"http://{host}:{port}", region="us-east-1",
                                access_key_id="bench", secret_access_key="bench")
        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=moto.region, aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="bench")
        with storage.using(moto):
            return _measure("s3://bench/store", "S3 via moto")
    finally:
        server.stop()
