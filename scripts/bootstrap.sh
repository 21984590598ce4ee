#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv at .venv and installs everything into it:
# torch 2.14.1 + torchvision 0.29.1, detectron2 when none is importable, and roi_plugin in
# editable mode with its test extras. Idempotent: a second run checks a stamp and returns.
#
# TORCH=X.Y.Z (as `TORCH=2.4.1 ./run.sh test`): the same set-up into .venv-torchX.Y.Z instead,
# with that torch and its torchvision from the table below, the sal-detectron2 wheel and an
# environment of its own (no system site), so the suite runs against another torch. .venv is
# left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The torch / torchvision pairs the suite has been run against (docs/testing.md says with what
# result). 2.14.1 is the default; a version not listed stops with one line.
declare -A TORCHVISION_FOR=([2.14.1]=0.29.1 [2.4.1]=0.19.1)
TORCH=${TORCH:-}
if [[ -n "$TORCH" && -z "${TORCHVISION_FOR[$TORCH]:-}" ]]; then
  echo "[bootstrap] TORCH=$TORCH is not a tested pair; tested: $(for t in "${!TORCHVISION_FOR[@]}"; do printf 'torch %s + torchvision %s, ' "$t" "${TORCHVISION_FOR[$t]}"; done | sed 's/, $//') (add a pair to TORCHVISION_FOR in scripts/bootstrap.sh)" >&2
  exit 2
fi
TORCH_VERSION=${TORCH:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_FOR[$TORCH_VERSION]}
VENV=.venv${TORCH:+-torch$TORCH}   # run.sh names the same folder
STAMP="$VENV/.roi_plugin-bootstrap"
want=$( (cat setup.cfg scripts/bootstrap.sh; echo "$TORCH") | sha256sum | cut -d' ' -f1)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
    && "$VENV/bin/python" -c "import detectron2, roi_plugin" 2>/dev/null; then
  exit 0
fi

log() { echo "[bootstrap] $*" >&2; }
if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ -z "$TORCH" ]] && "$PY" -c "import detectron2" 2>/dev/null; then
    # The user already has detectron2: use theirs (and their torch) through the system site.
    log "detectron2 found in $("$PY" -c 'import detectron2,os;print(os.path.dirname(detectron2.__file__))'); reusing it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# detectron2 (its model_zoo among others) imports pkg_resources, which setuptools 81 removed, and
# torch 2.14.1 requires setuptools>=77.0.3. Every pip call below names this range, so that no
# resolver run can upgrade setuptools past it (pip takes the newest one a requirement allows).
SETUPTOOLS="setuptools>=77.0.3,<81"
"${PIP[@]}" install -q "$SETUPTOOLS" wheel
if [[ -n "$TORCH" ]]; then
  # the venv's torch must be the one asked for (a CUDA build on Linux: several GB)
  have=$("$VENV/bin/python" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
  [[ "$have" == "$TORCH_VERSION $TORCHVISION_VERSION" ]] || need_torch=1
elif ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  need_torch=1
fi
if [[ -n "${need_torch:-}" ]]; then
  log "installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION${TORCH:+ into $VENV}"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "numpy<2" "$SETUPTOOLS"
fi
if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  # detectron2 is not on the package index under its own name. Its pure-Python code is, as
  # the wheel sal-detectron2 0.7.2 (tagged cp310; its compiled _C is optional and is
  # replaced by torchvision ops). Fetch it for 3.10 and install it as a py3 wheel.
  log "installing detectron2 0.7.2 (sal-detectron2 wheel)"
  wheels="$VENV/wheels"
  mkdir -p "$wheels"
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$wheels" sal-detectron2==0.7.2
  cp -f "$wheels"/sal_detectron2-0.7.2-cp310-none-any.whl "$wheels"/sal_detectron2-0.7.2-py3-none-any.whl
  # The wheel pins numpy<2 and does not declare fvcore/iopath, which `import detectron2` needs.
  "${PIP[@]}" install -q "$wheels"/sal_detectron2-0.7.2-py3-none-any.whl fvcore iopath "numpy<2" "$SETUPTOOLS"
fi
log "installing roi_plugin (editable) with test extras"
"${PIP[@]}" install -q --no-build-isolation -e ".[test]" "$SETUPTOOLS"
"$VENV/bin/python" -c "import detectron2.model_zoo, roi_plugin, torch; print('[bootstrap] ready: torch', torch.__version__, '| detectron2', detectron2.__version__, '| roi_plugin', roi_plugin.__version__)" >&2
echo "$want" > "$STAMP"
