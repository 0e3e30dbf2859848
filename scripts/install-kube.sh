#!/usr/bin/env bash
# Build a Kubernetes control plane for tests/cluster/ into .tools/bin/: kube-apiserver,
# kube-controller-manager and kube-scheduler from the k8s.io/kubernetes Go module, and etcd from
# go.etcd.io/etcd/server/v3, each at a pinned release fetched through the Go module proxy.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules
# with local paths. So this script writes a small wrapper module in a cache folder whose go.mod
# requires k8s.io/kubernetes and replaces each staging module with its published version
# (v0.X.Y for Kubernetes v1.X.Y); the replace list is generated from the release's own go.mod.
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
kube_dir="$WORK/kubernetes-$KUBE_VERSION"
mkdir -p "$kube_dir"
upstream_gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"

# The wrapper's go.mod: the release's go and godebug lines, k8s.io/kubernetes required, and every
# `k8s.io/x => ./staging/src/k8s.io/x` replace turned into `k8s.io/x => k8s.io/x v0.X.Y`.
python3 - "$upstream_gomod" "$KUBE_VERSION" >"$kube_dir/go.mod" <<'PY'
import re, sys
text, version = open(sys.argv[1]).read(), sys.argv[2]
staging = "v0." + version.split(".", 1)[1]
out = ["module assay.dev/kube-build", ""]
out += [l for l in text.splitlines() if re.match(r"(go|godebug) ", l)]
out += ["", f"require k8s.io/kubernetes {version}", "", "replace ("]
mods = re.findall(r"^\s*(?:replace\s+)?(k8s\.io/\S+)\s*=>\s*\./staging/\S+", text, re.M)
if not mods:
    sys.exit("install-kube: no staging replaces found in k8s.io/kubernetes's go.mod")
out += [f"\t{m} => {m} {staging}" for m in sorted(set(mods))] + [")"]
print("\n".join(out))
PY
echo "install-kube: building kubernetes $KUBE_VERSION in $kube_dir ($(grep -c ' => ' "$kube_dir/go.mod") staging modules)"

minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
ver="k8s.io/component-base/version"
kube_ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
kube_ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
(
  cd "$kube_dir"
  # -mod=mod lets go build complete go.mod and go.sum from the proxy (checked against sum.golang.org).
  build -mod=mod -ldflags="$kube_ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
)

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
