#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Host reads and operator calls of one pooler call, counted on the CPU (issue 27, item 1).

On a GPU every operator call is (at least) a kernel launch and every host read of a device
value a synchronisation. Both can be counted on the CPU with the profiler, which sees the
aten calls inside the plugin's custom operators:

* **operator calls**: aten calls other than views (their nested calls included), plus one
  per Triton kernel launch of the device path (:mod:`roi_plugin.layers.device_path` wraps each
  in a ``triton::`` profiler range; what Triton's interpreter does inside it is not counted);
* **host reads**: ``aten::_local_scalar_dense`` (``.item()``, ``int()`` / ``bool()`` of a
  tensor, ``repeat_interleave`` without ``output_size``), ``nonzero`` (boolean-mask indexing),
  the ``unique`` family, ``bincount``, and ``Tensor.tolist()``, which the profiler does not see
  on the CPU (it is counted by wrapping it for the duration); a read nested in another is one.

    python tools/op_counts.py                 # the default case, both samplers, both paths
    python tools/op_counts.py --rois 512 --ratio 2

Used by tests/test_device_path.py (the limits of issue 27) and ``tools/gpu_check.py``'s dry run.
On the CPU the device path's kernels are not run for counting (:func:`launches_only`): the host
side of a call is what is counted, and Triton's interpreter would take minutes.
"""
import argparse
import contextlib
import os
import sys
from typing import Callable, Dict, NamedTuple

import torch

VIEWS = {
    "view", "_unsafe_view", "as_strided", "select", "slice", "reshape", "_reshape_alias", "flatten", "unflatten",
    "squeeze", "unsqueeze", "expand", "expand_as", "permute", "transpose", "t", "narrow", "detach", "alias",
    "view_as", "unbind", "split", "split_with_sizes", "chunk", "movedim", "diagonal", "numpy_T", "lift_fresh",
    "resolve_conj", "resolve_neg", "_nested_tensor_from_mask_left_aligned",
}
HOST_READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
              "bincount"}


class Counts(NamedTuple):
    calls: int  # operator calls other than views, nested included, a Triton launch one
    host_reads: int
    launches: int  # Triton kernel launches
    by_name: Dict[str, int]  # calls per operator (launches as triton::<kernel>)
    reads_by_name: Dict[str, int]


@contextlib.contextmanager
def _counting_tolist(counter):
    original = torch.Tensor.tolist

    def tolist(self, *args, **kwargs):
        counter.append(1)
        return original(self, *args, **kwargs)

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = original


def count(fn: Callable[[], object]) -> Counts:
    """The counts of one call of ``fn`` (run it once before, so that lazy set-up is not counted)."""
    tolists = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, _counting_tolist(tolists):
        fn()
    calls, reads, launches = 0, len(tolists), 0
    by_name: Dict[str, int] = {}
    reads_by_name: Dict[str, int] = {"tolist": len(tolists)} if tolists else {}
    for ev in prof.events():
        parents, p = [], ev.cpu_parent
        while p is not None:
            parents.append(p.name)
            p = p.cpu_parent
        if any(n.startswith("triton::") for n in parents):
            continue  # inside a launch (the interpreter's own work)
        if ev.name.startswith("triton::"):
            launches += 1
            calls += 1
            by_name[ev.name] = by_name.get(ev.name, 0) + 1
            continue
        if not ev.name.startswith("aten::"):
            continue
        op = ev.name[len("aten::"):]
        if op in VIEWS:
            continue
        calls += 1
        by_name[ev.name] = by_name.get(ev.name, 0) + 1
        if op in HOST_READS and not any(n[len("aten::"):] in HOST_READS for n in parents if n.startswith("aten::")):
            reads += 1
            reads_by_name[op] = reads_by_name.get(op, 0) + 1
    return Counts(calls, reads, launches, by_name, reads_by_name)


@contextlib.contextmanager
def launches_only():
    """Device-path launches record their profiler range but do not run: the host side of a call
    (what is counted) is the same, and the CPU interpreter's minutes are saved. Results are
    garbage inside the block."""
    from roi_plugin.layers import device_path

    original = device_path._launch

    def record(name, device, grid, *args, **meta):
        with torch.profiler.record_function(f"triton::{name}"):
            pass

    device_path._launch = record
    try:
        yield
    finally:
        device_path._launch = original


@contextlib.contextmanager
def device_path_mode(value: str):
    """``ROI_PLUGIN_DEVICE_PATH`` set to ``value`` for the block."""
    before = os.environ.get("ROI_PLUGIN_DEVICE_PATH")
    os.environ["ROI_PLUGIN_DEVICE_PATH"] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ["ROI_PLUGIN_DEVICE_PATH"]
        else:
            os.environ["ROI_PLUGIN_DEVICE_PATH"] = before


def pooler_counts(sampler: str, path: str, rois: int = 512, ratio: int = 0, pooler_type: str = "ROIAlignV2",
                  hw=(400, 608), channels: int = 64, output: int = 7, device: str = "cpu") -> Dict[str, Counts]:
    """Forward and backward counts of one operator call of an ``ROIAlignPooler`` at Detectron2's FPN defaults
    (P2..P5, 2 images of ``hw``, ``rois`` per image): ``path`` is "device" or "plan". On the CPU
    the device path's kernels are not run (:func:`launches_only`)."""
    from roi_plugin import ROIAlignPooler

    g = torch.Generator().manual_seed(0)
    h, w = hw
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    feats = [torch.randn(2, channels, -(-h // 2**k), -(-w // 2**k), generator=g).to(device).requires_grad_()
             for k in range(2, 6)]
    rotated = pooler_type == "ROIAlignRotated"
    boxes = []
    for _ in range(2):
        ctr = torch.rand(rois, 2, generator=g) * torch.tensor([w, h])
        size = torch.exp(torch.rand(rois, 2, generator=g) * 4.0) * 8.0  # 8 .. 437 px
        if rotated:
            angle = torch.rand(rois, 1, generator=g) * 360 - 180
            boxes.append(torch.cat([ctr, size, angle], 1).to(device))
        else:
            boxes.append(torch.cat([ctr - size / 2, ctr + size / 2], 1).to(device))
    pooler = ROIAlignPooler(output, scales, ratio, pooler_type, sampler=sampler)
    mode = "off" if path == "plan" else ("interpret" if device == "cpu" else "auto")
    skip = launches_only() if path == "device" and device == "cpu" else contextlib.nullcontext()
    rois = pooler._rois(boxes, feats[0])  # the module's (K, 5) or (K, 6) rows: what the operator takes
    with device_path_mode(mode), skip:
        out = pooler._pool(feats, rois)  # warm-up: lazy imports, kernel compilation
        grad = torch.randn_like(out)
        torch.autograd.grad(out, feats, grad)
        state = {}

        def forward():
            state["out"] = pooler._pool(feats, rois)

        fwd = count(forward)
        bwd = count(lambda: torch.autograd.grad(state["out"], feats, grad))
    return {"forward": fwd, "backward": bwd}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=512, help="ROIs per image (default 512)")
    parser.add_argument("--ratio", type=int, default=0, help="sampling ratio (default 0, adaptive)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"2 images 400x608, P2..P5, {args.channels} channels, {args.rois} ROIs per image, ratio {args.ratio}, "
          f"{args.device}; calls = aten calls other than views (nested included) + Triton launches")
    print("| pooler | path | direction | operator calls | host reads | launches |")
    print("|---|---|---|---:|---:|---:|")
    rows = [("gather", "ROIAlignV2", "device"), ("gather", "ROIAlignV2", "plan"), ("gather", "ROIAlignRotated", "device"),
            ("gather", "ROIAlignRotated", "plan"), ("grid_sample", "ROIAlignV2", "plan")]
    for sampler, pooler_type, path in rows:
        counts = pooler_counts(sampler, path, args.rois, args.ratio, pooler_type, channels=args.channels,
                               device=args.device)
        for direction, c in counts.items():
            print(f"| {sampler} {pooler_type} | {path} | {direction} | {c.calls} | {c.host_reads} | {c.launches} |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
