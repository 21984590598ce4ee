#!/usr/bin/env bash
# Entry point. Every command sets up .venv first (idempotent, quick once done).
#   ./run.sh train [overrides...]   train + evaluate the plugin Mask R-CNN on the built-in shapes dataset
#   ./run.sh train-rotated [...]    train + evaluate the rotated detector on shapes_rotated (docs/rotated.md)
#   ./run.sh test [pytest args...]  the test suite
#   TORCH=2.4.1 ./run.sh test ...   the same against another torch, in .venv-torch2.4.1
#                                   (tested pairs: scripts/bootstrap.sh, docs/testing.md)
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
PY=.venv${TORCH:+-torch$TORCH}/bin/python   # the folder bootstrap.sh set up
cmd=${1:-}
shift || true
case "$cmd" in
  train)
    exec "$PY" tools/train_net.py --config-file configs/shapes/mask_rcnn_plugin.yaml "$@" ;;
  train-rotated)
    exec "$PY" tools/train_net.py --config-file configs/rotated/rrcnn_R_18_FPN_plugin.yaml "$@" ;;
  test)
    exec "$PY" -m pytest "$@" ;;
  *)
    echo "usage: ./run.sh {train|train-rotated|test} [args...]" >&2; exit 2 ;;
esac
