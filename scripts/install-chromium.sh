#!/usr/bin/env bash
# Put headless Chromium on the machine for the report tests (tests/e2e/test_report.py renders
# `assay report` pages in it): Debian's chromium package, installed with apt-get as root or through sudo.
# Idempotent: does nothing when chromium (or chromium-browser) already runs.
set -euo pipefail

for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version >/dev/null 2>&1; then
    echo "chromium already installed: $("$bin" --version)"
    exit 0
  fi
done

if [[ "$(id -u)" -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "install-chromium: chromium is missing and installing it needs root (or passwordless sudo):" >&2
  echo "  apt-get install -y chromium" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "install-chromium: no apt-get; install Chromium by hand" >&2; exit 1; }

"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "installed $(chromium --version)"
