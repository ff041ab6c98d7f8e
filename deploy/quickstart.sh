#!/usr/bin/env bash
# The main job in one command: install, train the default tokenizer on The Complete Journey if none is
# built yet (20.7 min measured on 2 cores, see docs/training.md), export it, and serve it on http://127.0.0.1:8000 with an
# embedded Redis. Extra arguments go to `u2qt up` (e.g. --max-users 300 for a smaller first model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
export HF_HUB_OFFLINE=1
exec u2qt up --out artifacts/cj "$@"
