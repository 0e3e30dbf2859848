#!/usr/bin/env bash
# Build gofakes3 (an S3 server in Go, MIT) into .tools/bin/gofakes3 from the
# github.com/johannesboyne/gofakes3 Go module at a pinned release, fetched through the Go module proxy.
# tests/e2e/test_lease.py runs the S3 lease tests against it as well as moto: its conditional writes
# (If-None-Match / If-Match on PUT) are atomic, moto's are not, so only it can referee racing writers.
#
# Idempotent: a stamp file names the version built; with it and the binary present this does nothing.
# The first build takes about 3 minutes on 2 cores, under `nice`. Needs Go.
set -euo pipefail
cd "$(dirname "$0")/.."

GOFAKES3_VERSION="${ASSAY_GOFAKES3_VERSION:-v1.2.0}"
BIN="$PWD/.tools/bin"
STAMP="$BIN/.gofakes3-${GOFAKES3_VERSION}"

if [[ -f "$STAMP" && -x "$BIN/gofakes3" ]]; then
  echo "gofakes3 already built: $GOFAKES3_VERSION in $BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install-gofakes3: needs Go (https://go.dev/dl/)" >&2; exit 1; }

start=$(date +%s)
mkdir -p "$BIN"
GOBIN="$BIN" nice -n "${ASSAY_BUILD_NICE:-10}" go install -ldflags="-s -w" \
  "github.com/johannesboyne/gofakes3/cmd/gofakes3@$GOFAKES3_VERSION"
rm -f "$BIN"/.gofakes3-*
touch "$STAMP"
echo "installed gofakes3 $GOFAKES3_VERSION into $BIN in $(( $(date +%s) - start ))s"
