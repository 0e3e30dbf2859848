#!/usr/bin/env bash
# Install what a real node of the test cluster (tests/cluster/node.py) runs:
#  - containerd, runc, the CNI plugins, iptables and conntrack from the distribution (apt);
#  - kubelet and kube-proxy, built from the same k8s.io/kubernetes release as install-kube.sh
#    (scripts/lib/kube-module.sh), and crictl (cri-tools, to clear the node's pods), into .tools/bin/;
#  - the pause image, compiled statically from that release's build/pause/linux/pause.c and packed
#    as an OCI archive (.tools/images/pause-<tag>.tar) for `ctr images import`: no registry needed.
#
# Idempotent: a stamp file names the versions built; with it, the binaries and the packages present
# this does nothing. Each step prints how long it took. Needs root (apt, and the node runs as root),
# Go, gcc with the static libc (libc6-dev) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${ASSAY_KUBE_VERSION:-v1.37.2}"
PAUSE_TAG="3.10.2"  # build/pause/Makefile's TAG in that release
CRICTL_VERSION="${ASSAY_CRICTL_VERSION:-v1.37.0}"
BIN="$PWD/.tools/bin"
IMAGES="$PWD/.tools/images"
STAMP="$BIN/.node-${KUBE_VERSION}-pause-${PAUSE_TAG}-crictl-${CRICTL_VERSION}"
WORK="${ASSAY_KUBE_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assay/kube-build}"
# ethtool and socat: the kubelet looks for them (port-forward needs socat); iptables for kube-proxy
# and the CNI portmap plugin; conntrack so kube-proxy can flush stale UDP entries.
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack ethtool socat)

step_start=0
step() { step_start=$SECONDS; echo "install-node: $*"; }
done_step() { echo "install-node:   ... $((SECONDS - step_start))s"; }

missing_packages() {
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
have_all() {
  [[ -f "$STAMP" && -x "$BIN/kubelet" && -x "$BIN/kube-proxy" && -x "$BIN/crictl" && -f "$IMAGES/pause-$PAUSE_TAG.tar" ]] \
    && [[ -z "$(missing_packages)" ]]
}
if have_all; then
  echo "node already installed: kubelet and kube-proxy $KUBE_VERSION, crictl $CRICTL_VERSION, pause $PAUSE_TAG, ${PACKAGES[*]}"
  exit 0
fi

# --- packages ---------------------------------------------------------------------------------
mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  [[ $EUID -eq 0 ]] || { echo "install-node: run as root to install ${missing[*]}" >&2; exit 1; }
  # .ci/run builds the images (scripts/build-images.sh, apt too) at the same time: wait for dpkg's lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  # No init system runs here; the packages' services are never started (node.py starts its own).
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  done_step
fi

# --- kubelet and kube-proxy -------------------------------------------------------------------
command -v go >/dev/null || { echo "install-node: needs Go (https://go.dev/dl/)" >&2; exit 1; }
mkdir -p "$BIN" "$IMAGES" "$WORK"
source scripts/lib/kube-module.sh
step "go build kubelet kube-proxy $KUBE_VERSION"
kube_build "$BIN" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
done_step

# Not packaged by Debian 12; its go.mod has no local replaces, so `go install` builds it as released.
step "go install crictl $CRICTL_VERSION"
GOBIN="$BIN" nice -n "${ASSAY_BUILD_NICE:-10}" go install -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
  "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
done_step

# --- the pause image --------------------------------------------------------------------------
step "pause $PAUSE_TAG image"
pause_src="$(kube_module_dir)/build/pause/linux/pause.c"
pause_bin="$WORK/pause-$PAUSE_TAG"
# Static: the image holds this one file and no libc.
gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-assay" -o "$pause_bin" "$pause_src"
strip "$pause_bin"
# 65535: the user the upstream image runs as (its Dockerfile's USER).
python3 tests/cluster/ociimage.py --user 65535:65535 "$IMAGES/pause-$PAUSE_TAG.tar" \
  "registry.k8s.io/pause:$PAUSE_TAG" /pause "$pause_bin:/pause:0755" >/dev/null
done_step

"$BIN/kubelet" --version >/dev/null
"$BIN/kube-proxy" --version >/dev/null
"$BIN/crictl" --version >/dev/null
rm -f "$BIN"/.node-*
touch "$STAMP"
echo "installed $("$BIN/kubelet" --version), kube-proxy, crictl $CRICTL_VERSION, pause $PAUSE_TAG ($IMAGES), $(containerd --version | cut -d' ' -f1-3), $(runc --version | head -n1)"
