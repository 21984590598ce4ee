# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Peak extra memory (MB) of one pooler step, each measured in a process of its own.

``measure_memory`` starts ``python -m bench.memory IMPL:CASE:MODE`` (this module, with
``tools/`` and the parent's ``roi_plugin`` on its path) and reads the figure it prints. CASE is
a pooler case (``cases.py``) or a memory-bound case (``bounded.py``). Two ways to measure:

* warm (default): the child builds the case's step, runs it twice, drops the gradients (the
  state a training step starts from), then measures one more step. The parent sets a fixed
  glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so every large block is mmap'ed and
  unmapped on free and the resident set follows live memory: the figure is the step's own.
* cold (``--cold``): what a new user sees. The child builds the inputs and the pooler and
  measures its *first* call, with the default allocator (no fixed threshold): the first call's
  code pages, lazily made state and what the allocator keeps are all in the figure.

On the CPU the figure is the growth of the resident-set high-water mark over the resident set
before the step (writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current resident
set); on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
A process per measurement keeps each figure free of what earlier cases left in the allocator.
"""
import argparse
import gc
import os
import subprocess
import sys
from typing import Optional

import torch

from .bounded import BOUNDED_NAMES, find_bounded, make_bounded_step
from .cases import find_case, make_step

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TOOLS)
ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _rss_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_step(impl: str, case_name: str, mode: str, quick: bool, device: str):
    if case_name in BOUNDED_NAMES:
        return make_bounded_step(impl, find_bounded(case_name), mode, device)
    return make_step(impl, find_case(case_name, quick), mode, quick, device)


def measure_memory_here(impl: str, case_name: str, mode: str, quick: bool, device: str, cold: bool = False) -> float:
    """Peak extra memory (MB) of one step (the first one if ``cold``, else one after warm-up),
    measured in this process."""
    step = _make_step(impl, case_name, mode, quick, device)
    if not cold:
        step()
        step()
    for f in step.feats:  # the state a training step starts from: no gradients held
        f.grad = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _rss_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return (_rss_status("VmHWM") - base) / 2**20


def measure_memory(impl: str, case, mode: str, quick: bool, device: str, threads: int,
                   cold: bool = False) -> Optional[float]:
    """``measure_memory_here`` in a child process with ``threads`` intra-op threads (``case`` a
    pooler or memory-bound case, or its name); None (and the child's error on stderr) where it
    fails. Warm steps run with the fixed mmap threshold, cold ones with the default allocator."""
    import roi_plugin

    path = [TOOLS, os.path.dirname(os.path.dirname(os.path.abspath(roi_plugin.__file__)))]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env.update(PYTHONPATH=os.pathsep.join(path), **({} if cold else ENV))
    name = case if isinstance(case, str) else case.name
    cmd = [
        sys.executable, "-m", "bench.memory", f"{impl}:{name}:{mode}",
        "--threads", str(threads), "--device", device,
    ] + (["--quick"] if quick else []) + (["--cold"] if cold else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", metavar="IMPL:CASE:MODE", help="e.g. gather:train_r0:fwd+bwd, gather:big20:fwd+bwd")
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads for the step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="the --quick sizes of the case")
    parser.add_argument("--cold", action="store_true", help="measure the first call (no warm-up)")
    args = parser.parse_args()
    impl, case_name, mode = args.step.split(":")
    torch.set_num_threads(args.threads)
    print(measure_memory_here(impl, case_name, mode, args.quick, args.device, cold=args.cold))


if __name__ == "__main__":
    main()
