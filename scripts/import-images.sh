#!/usr/bin/env bash
# Import the images of scripts/build-images.sh into a containerd, for its kubelet:
#
#   scripts/import-images.sh ADDRESS [operator|runner ...]      (default: both)
#
# ADDRESS is containerd's socket (e.g. /run/assay-containerd/containerd.sock); the images go to the
# namespace CRI reads, k8s.io (ASSAY_CONTAINERD_NAMESPACE overrides it).
# Idempotent, and cheap when little changed:
# - an image whose name already points at the manifest digest podman built is left alone;
# - otherwise skopeo exports the image from podman's store into a temporary OCI layout, layers
#   uncompressed (containerd unpacks them anyway; a gzip of torch's 6 GB would cost minutes), and the
#   layout is streamed into `ctr images import` without an archive on disk;
# - a layer this containerd already holds (torch's 6 GB of CUDA wheels, after a change to assay's code)
#   is neither exported nor sent: containerd's importer stores the blobs of the stream, then walks the
#   image from its content store, and reuses the layer's snapshot when it unpacks.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -ge 1 ]] || { echo "usage: scripts/import-images.sh CONTAINERD_ADDRESS [operator|runner ...]" >&2; exit 2; }
ADDRESS="$1"
shift
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(operator runner)
NAMESPACE="${ASSAY_CONTAINERD_NAMESPACE:-k8s.io}"
DIR="${ASSAY_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/assay/images}"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/assay/Chart.yaml)"
CTR=(ctr --address "$ADDRESS" --namespace "$NAMESPACE")

# podman's store and settings, as scripts/build-images.sh wrote them
[[ -f "$DIR/storage.conf" ]] || { echo "import-images: no image store in $DIR; run scripts/build-images.sh" >&2; exit 1; }
export CONTAINERS_CONF="$DIR/containers.conf" CONTAINERS_STORAGE_CONF="$DIR/storage.conf" TMPDIR="$DIR/tmp"
command -v ctr >/dev/null || { echo "import-images: needs ctr (Debian's containerd package)" >&2; exit 1; }
"${CTR[@]}" version >/dev/null || { echo "import-images: no containerd answers at $ADDRESS" >&2; exit 1; }

# The temporary layout of the import under way, removed on any exit (a global: a trap runs after the
# function that made it has returned).
WORK=""
trap '[[ -z "$WORK" ]] || rm -rf "$WORK"' EXIT

# The digest containerd's image REF points at (empty when it has no such image).
containerd_digest() {
  "${CTR[@]}" images ls "name==$1" | awk -v ref="$1" '$1 == ref { print $3 }'
}

# Placeholders for the layers containerd holds: a sparse file of the layer's size under the layer's
# digest, which skopeo takes for a blob already written (it checks that the file exists and reads its
# size, which lands in the manifest unchanged). The placeholders are left out of the stream.
placeholders() {
  local layout="$1" ref="$2" known="$3"
  mkdir -p "$layout/blobs/sha256"
  skopeo inspect --raw "containers-storage:$ref" | python3 -c '
import json, sys
for layer in json.load(sys.stdin)["layers"]:
    print(layer["digest"], layer["size"])
' | while read -r digest size; do
    if grep -qxF "$digest" "$known"; then
      truncate -s "$size" "$layout/blobs/sha256/${digest#sha256:}"
      echo "$digest"
    fi
  done
}

# A tar stream of the OCI layout, without the placeholders named in the file $2. Each blob is deleted
# once sent: containerd holds its copy by then, and torch's layer would otherwise be on disk three times
# at the peak (the layout, containerd's content store, the unpacked snapshot).
stream_layout() {
  python3 - "$1" "$2" <<'PY'
import sys, tarfile
from pathlib import Path
layout, skip = Path(sys.argv[1]), set(Path(sys.argv[2]).read_text().split())
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
    tar.add(layout / "oci-layout", arcname="oci-layout")
    tar.add(layout / "index.json", arcname="index.json")
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        if "sha256:" + blob.name not in skip:
            tar.add(blob, arcname="blobs/sha256/" + blob.name)
            if blob.stat().st_size > 1 << 20:  # small ones (manifests, configs) may be sent again
                blob.unlink()
PY
}

# Refuse before writing anything when the file system of the folder $1 has less than $2 bytes free.
need_space() {
  local avail
  avail="$(df --output=avail -B1 "$1" | tail -n 1)"
  if ((avail < $2)); then
    echo "import-images: $3 needs about $(($2 >> 30)) GiB free in $1, which has $((avail >> 30)) GiB" >&2
    echo "hint: free some space there (old clones, pytest's temp folders, \`podman image prune\`) and rerun" >&2
    exit 1
  fi
}

# Bytes of the layers of REF that containerd lacks (the digests it holds are in the file $2).
missing_bytes() {
  skopeo inspect --raw "containers-storage:$1" | python3 -c '
import json, sys
known = set(open(sys.argv[1]).read().split())
print(sum(layer["size"] for layer in json.load(sys.stdin)["layers"] if layer["digest"] not in known))
' "$2"
}

# The config digest (the image id) of the manifest with digest $1 in containerd's content store.
config_digest() {
  "${CTR[@]}" content get "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])'
}

send() {
  stream_layout "$1/oci" "$2" | "${CTR[@]}" images import --digests --skip-digest-for-named - >/dev/null
}

import_ref() {
  local ref="$1" want have t0=$SECONDS
  want="$(podman image inspect --format '{{.Digest}}' "$ref" 2>/dev/null)" \
    || { echo "import-images: $ref is not in $DIR/storage; run scripts/build-images.sh" >&2; exit 1; }
  have="$(containerd_digest "$ref")"
  if [[ "$have" == "$want" ]]; then
    echo "import-images: $ref already in containerd ($want)"
    return
  fi
  local old_id="" work reused missing
  [[ -z "$have" ]] || old_id="$(config_digest "$have")"
  work="$(mktemp -d "$DIR/tmp/import.XXXXXX")"
  WORK="$work"
  "${CTR[@]}" content ls -q >"$work/known"
  # The exported layout and containerd's copy of each blob (one at a time, as the stream deletes what it
  # sent), then the unpacked snapshot: twice the layers' size at the peak, plus a margin.
  missing="$(missing_bytes "$ref" "$work/known")"
  need_space "$DIR/tmp" $((2 * missing + (1 << 30))) "$ref"
  placeholders "$work/oci" "$ref" "$work/known" >"$work/reused"
  reused="$(wc -l <"$work/reused")"
  nice -n "${ASSAY_BUILD_NICE:-10}" skopeo copy --quiet --dest-oci-accept-uncompressed-layers \
    "containers-storage:$ref" "oci:$work/oci:$ref"
  local exported=$((SECONDS - t0))
  if ! send "$work" "$work/reused"; then
    # A layer listed a moment ago may have been garbage-collected since (an image removed meanwhile):
    # send everything.
    echo "import-images: $ref: import without the $reused layers containerd had failed; sending them too" >&2
    rm -rf "$work/oci"
    nice -n "${ASSAY_BUILD_NICE:-10}" skopeo copy --quiet --dest-oci-accept-uncompressed-layers \
      "containers-storage:$ref" "oci:$work/oci:$ref"
    : >"$work/reused"
    send "$work" "$work/reused"
  fi
  rm -rf "$work"
  WORK=""
  have="$(containerd_digest "$ref")"
  [[ "$have" == "$want" ]] || { echo "import-images: $ref imported as '$have', expected $want" >&2; exit 1; }
  # CRI names each image it first sees by its id too (sha256:<config digest>); the old image's id name
  # would keep its layers (6 GB when the runner's pins change) for ever.
  if [[ -n "$old_id" && "$old_id" != "$(config_digest "$want")" && -n "$(containerd_digest "$old_id")" ]]; then
    "${CTR[@]}" images rm "$old_id" >/dev/null
  fi
  echo "import-images: $ref imported ($want; $reused layers already there) in $((SECONDS - t0)) s" \
    "(export $exported s, containerd $((SECONDS - t0 - exported)) s)"
}

for target in "${TARGETS[@]}"; do
  import_ref "ghcr.io/assay-dev/assay-$target:$APP_VERSION"
done
