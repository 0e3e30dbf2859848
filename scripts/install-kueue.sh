#!/usr/bin/env bash
# Build Kueue's controller manager for tests/cluster/ into .tools/bin/kueue, and copy its CRDs into
# .tools/kueue-<version>/crds/, from the sigs.k8s.io/kueue Go module at a pinned release (fetched
# through the Go module proxy; unlike k8s.io/kubernetes it can be `go install`ed directly).
#
# Idempotent: a stamp file names the version built; with it, the binary and the CRDs present this
# does nothing. The first build compiles for about 3 minutes on 2 cores (about 5 with the module
# downloads and install-kube.sh's build beside it), under `nice`, and adds about 2 GB to the Go build cache.
# Needs Go (the version Kueue's go.mod asks for, or a newer one).
set -euo pipefail
cd "$(dirname "$0")/.."

KUEUE_VERSION="${ASSAY_KUEUE_VERSION:-v0.17.0}"
BIN="$PWD/.tools/bin"
STAMP="$BIN/.kueue-${KUEUE_VERSION}"
CRDS="$PWD/.tools/kueue-${KUEUE_VERSION}/crds"

if [[ -f "$STAMP" && -x "$BIN/kueue" ]] && compgen -G "$CRDS/*.yaml" >/dev/null; then
  echo "kueue already built: $KUEUE_VERSION in $BIN, CRDs in $CRDS"
  exit 0
fi
command -v go >/dev/null || { echo "install-kueue: needs Go (https://go.dev/dl/)" >&2; exit 1; }

start=$(date +%s)
mkdir -p "$BIN"
echo "install-kueue: building sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
# No -trimpath: the ldflags only change the link step, so a plain `go install` of the same release
# (as a developer might run by hand) leaves its compiled packages in the build cache for this one.
GOBIN="$BIN" nice -n "${ASSAY_BUILD_NICE:-10}" go install \
  -ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
  "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"

# The CRDs as released (config/components/crd/bases); the test fixture adds the conversion webhook.
module_dir="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$module_dir/config/components/crd/bases" ]] \
  || { echo "install-kueue: no CRDs in $module_dir/config/components/crd/bases" >&2; exit 1; }
rm -rf "$CRDS"
mkdir -p "$CRDS"
cp "$module_dir"/config/components/crd/bases/*.yaml "$CRDS/"
# The webhook manifests too: the fixture registers the ones for its enabled integrations.
cp "$module_dir/config/components/webhook/manifests.yaml" "$CRDS/../webhooks.yaml"
chmod -R u+w "$CRDS/.." # the module cache is read-only; so would the copies be

rm -f "$BIN"/.kueue-*
touch "$STAMP"
echo "installed kueue $KUEUE_VERSION into $BIN ($(ls "$CRDS" | wc -l) CRDs) in $(( $(date +%s) - start ))s"
