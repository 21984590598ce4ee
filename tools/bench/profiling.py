# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""``torch.profiler`` of one pooler step (``IMPL:CASE:MODE``) in each condition, after two
warm-up steps: a markdown summary per condition with the wall time of the profiled step (the
profiler adds a little), the number of ``aten::``/``torchvision::`` op calls, and the ops with
the most self CPU time."""
import sys
import time
from typing import Sequence

import torch

from .cases import find_case, make_step
from .conditions import Condition, busy_core


def profile_summary(spec: str, conditions: Sequence[Condition], *, quick: bool, device: str, label: str = "",
                    verbose: bool = False) -> str:
    impl, case_name, mode = spec.split(":")
    case = find_case(case_name, quick)
    md = [f"### {label or impl}: `{spec}`", ""]
    for cond in conditions:
        torch.set_num_threads(cond.threads)
        step = make_step(impl, case, mode, quick, device)
        with busy_core(cond.busy):
            step()
            step()  # warm-up
            t0 = time.perf_counter()
            with torch.profiler.profile() as prof:
                step()
            wall = time.perf_counter() - t0
        events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "torchvision::"))]
        calls = sum(e.count for e in events)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        md.append(
            f"- **{cond.title}**: {wall * 1e3:.0f} ms, {calls} op calls; "
            + ", ".join(f"`{e.key.split('::')[-1]}` {e.self_cpu_time_total / 1e3:.0f} ms ({e.count}x, "
                        f"{100 * e.self_cpu_time_total / total:.0f} %)" for e in top)
        )
        if verbose:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
    return "\n".join(md + [""])
