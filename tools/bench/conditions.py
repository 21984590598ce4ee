# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The machine conditions the benchmark measures in, and the process that makes a core busy.

* ``1thread``: ``torch.set_num_threads(1)``;
* ``idle``: ``torch.set_num_threads(2)``, nothing else running;
* ``busy``: ``torch.set_num_threads(2)`` while a process started here spins on one core (what a
  data-loader worker, an evaluator or another job does to a training process), stopped at the
  end of the condition.

A PyTorch op large enough to go parallel runs as an OpenMP region that waits for every thread,
so with a core taken each region waits for the thread sharing it: the third condition shows it.
"""
import contextlib
import subprocess
import sys
import time
from typing import NamedTuple

import torch


class Condition(NamedTuple):
    name: str
    title: str
    threads: int
    busy: bool  # a spinning process holds one core meanwhile


CONDITIONS = {
    "1thread": Condition("1thread", "1 thread", 1, False),
    "idle": Condition("idle", "2 threads, idle machine", 2, False),
    "busy": Condition("busy", "2 threads, one core busy with another process", 2, True),
}


class busy_core:
    """Context manager: a process spinning on one core while the block runs."""

    def __init__(self, busy: bool):
        self.busy, self.proc = busy, None

    def __enter__(self):
        if self.busy:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)  # let it take its core
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def in_condition(cond: Condition):
    """Sets the intra-op thread count of ``cond`` and, for ``busy``, runs the spinning process
    for the duration of the block (the thread count is left as set, as each condition sets its own)."""
    torch.set_num_threads(cond.threads)
    with busy_core(cond.busy):
        yield cond
