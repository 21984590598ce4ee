#!/usr/bin/env bash
# Entry point. Every command sets up .venv first (idempotent, quick once done).
#   ./run.sh train [overrides...]   train + evaluate the plugin Mask R-CNN on the built-in shapes dataset
#   ./run.sh test [pytest args...]  the test suite
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
PY=.venv/bin/python
cmd=${1:-}
shift || true
case "$cmd" in
  train)
    exec "$PY" tools/train_net.py --config-file configs/shapes/mask_rcnn_plugin.yaml "$@" ;;
  test)
    exec "$PY" -m pytest "$@" ;;
  *)
    echo "usage: ./run.sh {train|test} [args...]" >&2; exit 2 ;;
esac
