# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Threads: the samplers run their CPU ops on one intra-op thread (by default).

Why. A pooler call is a few hundred tensor ops (the plan: index arithmetic over taps;
then per channel chunk a table copy, an ``embedding_bag`` and a copy into the output).
With 2 or more intra-op threads each op large enough is one OpenMP parallel region, whose
end waits for every thread of the team. On an idle machine that costs little; when another
process holds a core (data-loader workers, an evaluator, another job), the thread that
shares its core is descheduled for a scheduler time slice at a time, and every region
waits for it: on this project's 2-core machines the grouped sampler before this scope
took 1.2-1.7x its 1-thread time (``results/profile_gather.md``), and an inference call
was measured at 2.9x ``ROIPooler``'s (issue 13).
torchvision's CPU ``roi_align`` kernel, behind ``ROIPooler``, is single-threaded and
does not care. On one thread no op waits for another thread, and the sampler's time is
the same whether the other cores are idle or busy (see BENCHMARKS.md, one table per
condition).

The scope sets ``torch.set_num_threads(1)`` around the sampler's ops on the calling
thread and restores the caller's count on exit (also on error); CUDA tensors are left
alone. It is process-wide state while it runs (``set_num_threads`` also sets MKL's count),
so it is a visible choice: ``ROIAlignPooler(single_thread=True)`` (the default) and
``MODEL.ROI_PLUGIN.SINGLE_THREAD``. The operators of :mod:`.roi_align_ops` apply it around
each forward and backward call, eager, compiled or scripted alike; ``single_thread=False``
leaves the caller's count (an idle machine with many cores may gain from it).
"""
import contextlib

import torch

__all__ = ["single_threaded"]


@contextlib.contextmanager
def single_threaded(device: torch.device):
    """Run the block on one intra-op thread when ``device`` is a CPU and more are set."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
