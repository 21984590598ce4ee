# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The tools' shared helper modules (``tools/checking.py``, ``tools/timing.py``) are importable
from the tests, as the tools import them when run as scripts."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
