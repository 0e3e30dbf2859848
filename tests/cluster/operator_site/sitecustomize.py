"""Loaded into the operator's process in the test cluster (its image's PYTHONPATH): a witness that the
operator stays out of the data plane. Importing an S3 client, or connecting to the store's port, is
written to the container log (stderr) and refused; tests/cluster/test_operator.py reads the log."""

import os
import sys

_PORTS = {int(p) for p in os.environ.get("ASSAY_TEST_STORE_PORTS", "").split(",") if p}


def _record(what: str) -> None:
    print(f"assay-store-guard: {what}", file=sys.stderr, flush=True)


def _hook(event: str, args: tuple) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in _PORTS:
            _record(f"refused connect {address}")
            raise ConnectionRefusedError("the operator must not reach the object store")
    elif event == "import" and str(args[0]).split(".")[0] in ("boto3", "botocore", "s3transfer"):
        _record(f"refused import {args[0]}")
        raise ImportError(f"the operator must not load an S3 client ({args[0]})")


if _PORTS:
    sys.addaudithook(_hook)
    _record(f"installed in pid {os.getpid()}, store ports {sorted(_PORTS)}")
