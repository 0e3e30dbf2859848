#!/usr/bin/env bash
# Build the Dockerfile's two images, operator and runner, on a machine with no image registry and no
# Docker engine; scripts/import-images.sh then puts them into a node's containerd.
#
#   scripts/build-images.sh [operator|runner ...]      (default: both)
#
#   1. a Debian bookworm base from Debian's repositories (debootstrap --variant=minbase), with
#      Debian's python3, venv and pip standing in for python:3.11.11-slim-bookworm: the Dockerfile
#      builds unchanged on it through its PYTHON_IMAGE argument;
#   2. `podman build --target operator|runner`, tagged with the chart's appVersion
#      (ghcr.io/assay-dev/assay-operator:<appVersion>, ghcr.io/assay-dev/assay-runner:<appVersion>).
#
# Everything lives in one folder, $ASSAY_IMAGES_DIR (default ${XDG_CACHE_HOME:-~/.cache}/assay/images):
#   base/     the debootstrap tarball, keyed by the suite's point release and the package list
#   storage/  podman's image store, the one copy of the images; its layers are the build cache, so a
#             rebuild after a change to assay's code costs seconds
#   tmp/      podman's temporary files and the Dockerfile's pip cache mount (empty behind a proxy that strips
#             PyPI's caching headers, as pip then caches nothing)
#   build.log the last run: every step with its time, and podman's output
# Idempotent: a stamp names a hash of the inputs (the Dockerfile, the files it copies, the base); with it
# and the images present this does nothing. Needs root, apt-get and a path to Debian's mirror and PyPI.
# The runner image is about 6 GB; a cold build needs about 20 GB of free disk on the way.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

DIR="${ASSAY_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assay/images}"
SUITE="${ASSAY_BASE_SUITE:-bookworm}"
MIRROR="${ASSAY_BASE_MIRROR:-http://deb.debian.org/debian}"
# What the stand-in needs: the Dockerfile runs python, pip, `python -m venv`, groupadd and useradd.
BASE_PACKAGES=(python3 python3-venv python3-pip ca-certificates)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator runner)
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/assay/Chart.yaml)"
[[ -n "$APP_VERSION" ]] || { echo "build-images: no appVersion in charts/assay/Chart.yaml" >&2; exit 1; }
NICE=(nice -n "${ASSAY_BUILD_NICE:-10}")

mkdir -p "$DIR"/{base,storage,tmp}
LOG="$DIR/build.log"
log() { echo "build-images: $*" | tee -a "$LOG" >&2; }
trap 'echo "build-images: failed; the end of $LOG:" >&2; tail -n 40 "$LOG" >&2' ERR
# step NAME CMD...: run CMD, log its wall time and the disk left.
step() {
  local name="$1" t0=$SECONDS
  shift
  log "$name ..."
  "$@"
  log "$name: $((SECONDS - t0)) s (free disk: $(df -h --output=avail "$DIR" | tail -n1 | tr -d ' '))"
}

image_ref() { echo "ghcr.io/assay-dev/assay-$1:$APP_VERSION"; }

# --- tools ----------------------------------------------------------------------------------------
install_tools() {
  local missing=()
  for pkg in podman skopeo runc debootstrap; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
    "${missing[@]}" >>"$LOG"
}

# podman's configuration, written each run (cheap) so that a changed script takes effect:
# - runc, not crun: crun 1.8 refuses this kernel's cgroup v1 hybrid layout;
# - ulimits below the current hard limits: podman's defaults raise them, which needs CAP_SYS_RESOURCE;
# - cgroupfs and file events: no systemd here;
# - a store of its own under $DIR with the kernel's overlayfs (vfs would copy the rootfs per layer).
write_podman_config() {
  local nofile nproc
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  [[ "$nofile" == unlimited || "$nofile" -gt 16384 ]] && nofile=16384
  [[ "$nproc" == unlimited || "$nproc" -gt 16384 ]] && nproc=16384
  cat >"$DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat >"$DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "/run/assay-images"
EOF
  export CONTAINERS_CONF="$DIR/containers.conf" CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
  # podman's temporary files (layer diffs on commit, the pip cache mount) on the same disk as the store
  export TMPDIR="$DIR/tmp"
}

# --- base: Debian + Python ------------------------------------------------------------------------
# The key is the suite's point release (the Version in its InRelease file): the tarball is rebuilt
# when Debian publishes one, or when the package list changes. Offline, the newest tarball serves.
base_key() {
  local version
  version="$(curl -fsS -m 30 "$MIRROR/dists/$SUITE/InRelease" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)" || true
  if [[ -z "$version" ]]; then
    local newest
    newest="$(ls -t "$DIR"/base/*.tar 2>/dev/null | head -n1)"
    [[ -n "$newest" ]] || { echo "build-images: cannot reach $MIRROR and no base is cached" >&2; exit 1; }
    basename "$newest" .tar
    return
  fi
  echo "$SUITE-$version-$(printf '%s\n' minbase "${BASE_PACKAGES[@]}" | sha256sum | cut -c1-12)"
}

build_base_tarball() {
  local key="$1" root="$DIR/tmp/rootfs"
  rm -rf "$root"
  "${NICE[@]}" debootstrap --variant=minbase --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    "$SUITE" "$root" "$MIRROR" >>"$LOG"
  # The official image's names: python and pip on PATH; pip may install outside a venv (PEP 668's
  # marker removed), as in python:*-slim, where the Dockerfile's wheel stage installs hatchling.
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*
  tar -C "$root" --numeric-owner -cf "$DIR/base/$key.tar.part" .
  mv "$DIR/base/$key.tar.part" "$DIR/base/$key.tar"
  rm -rf "$root"
  find "$DIR/base" -name '*.tar' ! -name "$key.tar" -delete
}

BASE_IMAGE=""
ensure_base_image() {
  local key
  key="$(base_key)"
  BASE_IMAGE="localhost/assay-python-base:$key"
  if podman image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE present"
    return
  fi
  [[ -f "$DIR/base/$key.tar" ]] || step "debootstrap $key" build_base_tarball "$key"
  step "import base" podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$DIR/base/$key.tar" "$BASE_IMAGE" >>"$LOG"
  # An older base is untagged, and goes with the images built on it at the next prune.
  local old
  for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/assay-python-base); do
    [[ "$old" == "$BASE_IMAGE" ]] || podman untag "$old" "$old"
  done
}

# --- the Dockerfile's targets ---------------------------------------------------------------------
# The host's CA bundle is mounted for the RUN steps only (PyPI may sit behind an intercepting proxy
# whose CA the host trusts); a volume of `podman build` is never committed into a layer.
build_target() {
  local target="$1" tag="$2"
  "${NICE[@]}" podman build --pull=never --network=host --layers \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    -v /etc/ssl/certs:/etc/ssl/certs:ro \
    --target "$target" -t "$tag" -f Dockerfile . >>"$LOG" 2>&1
}

# podman's build cache is its images: the intermediate stages are tagged too (localhost/assay-build:*),
# so that `podman image prune` drops exactly the layers no current image needs (an old assay layer,
# or an old dependency layer after a pin changed) and keeps the cache of every stage.
build_all() {
  build_target wheel localhost/assay-build:wheel
  if [[ " ${TARGETS[*]} " == *" operator "* ]]; then
    build_target operator-venv localhost/assay-build:operator-venv
  fi
  for target in "${TARGETS[@]}"; do
    step "build $target" build_target "$target" "$(image_ref "$target")"
  done
  podman image prune -f >>"$LOG"
}

# The inputs of a build: the Dockerfile, what its COPY lines read, the base image, the targets and
# this script (its podman flags).
inputs_key() {
  {
    echo "$BASE_IMAGE ${TARGETS[*]} $APP_VERSION"
    find scripts/build-images.sh Dockerfile .dockerignore pyproject.toml README.md crds runner operator -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

all_built() {
  for target in "${TARGETS[@]}"; do podman image exists "$(image_ref "$target")" || return 1; done
}

main() {
  [[ "$(id -u)" == 0 ]] || { echo "build-images: run as root (podman's rootful store, debootstrap)" >&2; exit 1; }
  : >"$LOG"  # the last run's log only
  log "start $(date -u +%FT%TZ): targets ${TARGETS[*]}, appVersion $APP_VERSION, in $DIR"
  step "apt-get install" install_tools
  write_podman_config
  ensure_base_image
  local key stamp
  key="$(inputs_key)"
  stamp="$DIR/storage/.built-$key"
  if [[ -f "$stamp" ]] && all_built; then
    log "images up to date (inputs $key)"
    return
  fi
  step "build" build_all
  rm -f "$DIR"/storage/.built-*
  touch "$stamp"
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep assay-dev | sed 's/^/build-images: /' | tee -a "$LOG" >&2
  log "done: $DIR/storage ($(du -sh "$DIR/storage" | cut -f1)); import with scripts/import-images.sh"
}

main
