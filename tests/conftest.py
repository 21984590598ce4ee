# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The tools' shared helper modules (``tools/checking.py``, ``tools/timing.py``) are importable
from the tests, as the tools import them when run as scripts.

Without a CUDA device, Triton's interpreter is switched on (before anything imports triton),
so that the device path's kernels (roi_plugin/layers/roi_align_kernels.py) run on CPU tensors
in tests/test_device_path.py. It changes nothing else: on the CPU, Triton is used only there.

Each test starts with IEEE subnormals (see ``_ieee_subnormals``).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _ieee_subnormals():
    """Undo a flush-to-zero mode that an earlier test left in the process. torch 2.4's inductor
    builds its CPU kernels with ``-ffast-math``, and GCC then links ``crtfastmath.o`` into them,
    which sets flush-to-zero / denormals-are-zero for the whole process when the kernel is
    loaded: after any ``torch.compile`` test, hypothesis refuses to draw floats ("we can't
    represent subnormal floats right now") and subnormal values read as 0. Later torch
    releases do not link it. A test then does not depend on which compile ran before it."""
    if sys.float_info.min / 2 == 0.0:
        torch.set_flush_denormal(False)
    yield
