"""Write a one-layer OCI image archive from a few local files, for ``ctr images import``: no registry, no builder.

The archive is an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/``) whose
index names the image both ways containerd reads a name (``io.containerd.image.name`` and
``org.opencontainers.image.ref.name``). The layer is an uncompressed tar with fixed owners and times,
so the same files give the same image id. Used by scripts/install-node.sh (the pause image) and by
tests/cluster/node.py (the probe image)::

    python3 tests/cluster/ociimage.py OUT.tar NAME ENTRYPOINT SRC:DEST[:MODE]... [--user UID:GID]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

MEDIA = "application/vnd.oci.image"


def _tar(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dest, data, mode in members:
            info = tarfile.TarInfo(dest.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}


def write(out: Path, name: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str],
          user: str = "", env: tuple[str, ...] = ("PATH=/",)) -> str:
    """Write the archive; ``files`` maps a path in the image to (content, mode). Returns the manifest digest."""
    layer = _tar([(dest, data, mode) for dest, (data, mode) in sorted(files.items())])
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": list(env), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": f"{MEDIA}.manifest.v1+json",
        "config": _descriptor(f"{MEDIA}.config.v1+json", config),
        "layers": [_descriptor(f"{MEDIA}.layer.v1.tar", layer)],
    }, sort_keys=True).encode()
    top = _descriptor(f"{MEDIA}.manifest.v1+json", manifest) | {
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}
    index = json.dumps({"schemaVersion": 2, "mediaType": f"{MEDIA}.index.v1+json", "manifests": [top]}).encode()
    blobs = [(f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b, 0o644) for b in (layer, config, manifest)]
    out.write_bytes(_tar([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
                          ("index.json", index, 0o644), *blobs]))
    return top["digest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("name", help="the full reference, e.g. registry.k8s.io/pause:3.10.2")
    parser.add_argument("entrypoint")
    parser.add_argument("files", nargs="+", metavar="SRC:DEST[:MODE]")
    parser.add_argument("--user", default="")
    args = parser.parse_args()
    files = {}
    for spec in args.files:
        src, dest, *mode = spec.split(":")
        files[dest] = (Path(src).read_bytes(), int(mode[0], 8) if mode else 0o755)
    print(write(args.out, args.name, files, [args.entrypoint], args.user))


if __name__ == "__main__":
    main()
