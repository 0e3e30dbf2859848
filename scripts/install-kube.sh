#!/usr/bin/env bash
# Build a Kubernetes control plane for tests/cluster/ into .tools/bin/: kube-apiserver,
# kube-controller-manager and kube-scheduler from the k8s.io/kubernetes Go module, and etcd from
# go.etcd.io/etcd/server/v3, each at a pinned release fetched through the Go module proxy.
#
# The Kubernetes commands are built by scripts/lib/kube-module.sh (a wrapper module, shared with
# install-node.sh).
#
# Idempotent: a stamp file names the versions built; with it and the binaries present this does
# nothing. The first build takes 20-40 minutes on 2 cores; it runs under `nice`.
# Needs Go (the version the release's go.mod asks for, or a newer one) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${ASSAY_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ASSAY_ETCD_VERSION:-v3.7.3}"
BIN="$PWD/.tools/bin"
STAMP="$BIN/.kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)
WORK="${ASSAY_KUBE_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assay/kube-build}"

have_all() {
  [[ -f "$STAMP" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
if have_all; then
  echo "control plane already built: kubernetes $KUBE_VERSION, etcd $ETCD_VERSION in $BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install-kube: needs Go (https://go.dev/dl/)" >&2; exit 1; }

mkdir -p "$BIN" "$WORK"
build() { nice -n "${ASSAY_BUILD_NICE:-10}" go build -trimpath "$@"; }

# --- Kubernetes -------------------------------------------------------------------------------
source scripts/lib/kube-module.sh
kube_build "$BIN" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler

# --- etcd -------------------------------------------------------------------------------------
# server/v3's own go.mod replaces its sibling modules with local paths too, but replaces in a
# dependency are ignored, so a wrapper that requires it builds against the published siblings.
etcd_dir="$WORK/etcd-$ETCD_VERSION"
mkdir -p "$etcd_dir"
printf 'module assay.dev/etcd-build\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
  "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" "$ETCD_VERSION" >"$etcd_dir/go.mod"
echo "install-kube: building etcd $ETCD_VERSION in $etcd_dir"
(
  cd "$etcd_dir"
  build -mod=mod -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
)

for b in "${BINARIES[@]}"; do "$BIN/$b" --version >/dev/null; done
rm -f "$BIN"/.kube-*
touch "$STAMP"
echo "installed $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | head -n1) into $BIN"
