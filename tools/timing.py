# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Timing helpers shared by the tools (and their tests): a median wall time; implementations
timed side by side with their repetitions interleaved, their times and ratios as the tables
print them; and what ``torch.compile`` did to a module (frames, recompiles, graph breaks)."""
import gc
import statistics
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["time_call", "interleaved", "fmt_t", "ratio", "sync", "compile_counts"]


def time_call(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sync(device: str):
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(steps: Dict[str, Callable[[], None]], reps: int, warmup: int, device: str) -> Dict[str, List[float]]:
    """Wall time (s) of each step, ``reps`` times, after ``warmup`` calls of each.

    The order rotates every repetition (A B C, B C A, C A B, ...), so that load from other
    processes hits all steps alike and repetition ``r`` of one step can be compared with
    repetition ``r`` of another (:func:`ratio`). A garbage collection and a device sync precede
    each timed call, outside the timed region.
    """
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def fmt_t(ts: List[float]) -> str:
    """Times in seconds as the tables print them: median (min-max) in ms."""
    return f"{statistics.median(ts) * 1e3:.0f} ({min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f})"


def ratio(ts: List[float], ref: List[float]) -> float:
    """Median over repetitions of ``ts[r] / ref[r]``, both from one :func:`interleaved` run."""
    return statistics.median([a / b for a, b in zip(ts, ref)])


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
