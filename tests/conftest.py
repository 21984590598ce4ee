# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The tools' shared helper modules (``tools/checking.py``, ``tools/timing.py``) are importable
from the tests, as the tools import them when run as scripts.

Without a CUDA device, Triton's interpreter is switched on (before anything imports triton),
so that the device path's kernels (roi_plugin/layers/roi_align_kernels.py) run on CPU tensors
in tests/test_device_path.py. It changes nothing else: on the CPU, Triton is used only there.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
