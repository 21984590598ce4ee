# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""tools/benchmark.py's parts, one concern per module (the command line is tools/benchmark.py):

* ``cases``: the pooler cases, their inputs and the implementations compared (``notebook``:
  the notebook's per-ROI design, timed for comparison);
* ``conditions``: the three machine conditions (threads, a busy core);
* ``memory``: peak extra memory of one pooler step, each in a process of its own;
* ``models``: the whole-model cases (plugin heads against the built-in heads);
* ``measure``: runs the cases in each condition, returns measurement records;
* ``report``: the markdown (header, tables, targets) from those records;
* ``profiling``: a ``torch.profiler`` summary of one pooler step per condition.

Timing itself (interleaved repetitions, medians, ratios) is ``tools/timing.py``'s, shared with
the other tools.
"""
