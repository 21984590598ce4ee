# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Timing helpers shared by the tools (and their tests): a median wall time, and what
``torch.compile`` did to a module (frames, recompiles, graph breaks)."""
from typing import Dict, Sequence

import time

import numpy as np
import torch
from torch import nn

__all__ = ["time_call", "compile_counts"]


def time_call(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compile_counts(module: nn.Module, calls: Sequence[tuple], **compile_kwargs) -> Dict[str, object]:
    """Run ``torch.compile(module)`` on each argument tuple of ``calls``; count what Dynamo did.

    Returns ``frames`` (frames compiled: 1 per graph region, plus 1 per recompile),
    ``recompiles`` (frames compiled again after the first call), ``graph_breaks`` (total, with
    reasons) from ``torch._dynamo.utils.counters``, and ``max_diff`` against the eager module.
    """
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, **compile_kwargs)
    frames_per_call, max_diff = [], 0.0
    with torch.no_grad():
        for args in calls:
            before = counters["stats"]["unique_graphs"]
            got = compiled(*args)
            frames_per_call.append(counters["stats"]["unique_graphs"] - before)
            ref = module(*args)
            flat_got = got if isinstance(got, (tuple, list)) else (got,)
            flat_ref = ref if isinstance(ref, (tuple, list)) else (ref,)
            for a, b in zip(flat_got, flat_ref):
                if isinstance(a, torch.Tensor) and a.numel():
                    max_diff = max(max_diff, float((a.float() - b.float()).abs().max()))
    return {
        "frames": sum(frames_per_call),
        "frames_per_call": frames_per_call,
        "recompiles": sum(frames_per_call[1:]),
        "graph_breaks": sum(counters["graph_break"].values()),
        "break_reasons": dict(counters["graph_break"]),
        "max_diff": max_diff,
    }
