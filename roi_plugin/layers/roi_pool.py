# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROIPool (Fast R-CNN; torchvision's ``roi_pool``, Detectron2's ``POOLER_TYPE: "ROIPool"``):
the maximum over the pixels of a quantised bin.

Geometry, as torchvision's CPU kernel computes it in the maps' float type ``T`` (float32, or
float64 for float64 maps). A box edge at input pixel ``x`` lands on level pixel
``round(x * scale)`` (C's ``round``: halves away from zero); the ROI spans

    w = max(round(x2 * scale) - round(x1 * scale) + 1, 1)      (malformed ROIs: 1 pixel)

pixels from ``x0 = round(x1 * scale)``, and bin ``p`` of ``P`` covers the pixels

    [x0 + floor(p * bin), x0 + ceil((p + 1) * bin)),        bin = T(w) / T(P),

clipped to ``[0, size)``; the same along y. The bin's value is

    out = max over the bin's pixels (y, x), row-major,         0 for an empty bin,

the first pixel in row-major order winning a tie (the kernel's strict ``>``). A NaN is never
the maximum, and values at or below ``-FLT_MAX`` are not taken either: a bin holding only
those gives ``-FLT_MAX`` and no gradient, as in the kernel (which starts from ``-FLT_MAX``).
The gradient goes to the winning pixel of each bin and channel, summed over bins in the
kernel's order (ROI, then bin row-major), so it equals torchvision's bit for bit.

How. The windows are separable: a bin's pixels are its y-window times its x-window, so they
are the bags of :func:`.gather_plan.upright_gather_plan` with the ROIPool rule
(:func:`roi_pool_axis_rule`) instead of ROIAlign's samples, y-major as the kernel scans them.
``torch.embedding_bag(mode="max")`` reduces each bag over a channels-last table of the levels
(one chunk of channels at a time) and returns the row of each maximum; the first row wins a
tie, as in the kernel. The forward also returns the winners as flat indices into the
concatenated NCHW gradients of all levels (one past the end for "no gradient"), so the
backward is a single ``index_add_`` in the kernel's order. The operators
``roi_plugin::roi_pool[_backward]`` (:mod:`.roi_align_ops`) call these functions.
"""
from typing import List, Sequence, Tuple

import torch

from .axis_taps import AxisTaps
from .gather_plan import GatherPlan, upright_gather_plan

__all__ = ["roi_pool_axis_rule", "roi_pool_forward", "roi_pool_backward", "FLT_MAX"]

FLT_MAX = 3.4028234663852886e38  # the kernel's initial maximum, -FLT_MAX, whatever T is
_CHUNK = 64  # channels reduced per embedding_bag call


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``round``: nearest integer, halves away from zero; exact in any float dtype."""
    f = torch.floor(v)
    d = v - f  # exact
    return torch.where((d > 0.5) | ((d == 0.5) & (v > 0)), f + 1, f)


def _axis_windows(lo: torch.Tensor, hi: torch.Tensor, pooled: int, size: torch.Tensor) -> AxisTaps:
    """The pixels of every bin along one axis: ``lo``/``hi`` (n,) the ROI's box edges times the
    level scale (in ``T``), ``size`` (n,) int64 the map's size. Weight 1 per pixel."""
    n, device, dtype = lo.numel(), lo.device, lo.dtype
    start = _round_half_away(lo).to(torch.int64)
    extent = (_round_half_away(hi).to(torch.int64) - start + 1).clamp(min=1)
    bin_size = extent.to(dtype) / pooled  # T(w) / T(P)
    p = torch.arange(pooled, device=device, dtype=dtype)
    first = torch.floor(p[None, :] * bin_size[:, None]).to(torch.int64) + start[:, None]
    last = torch.ceil((p[None, :] + 1) * bin_size[:, None]).to(torch.int64) + start[:, None]
    lim = size[:, None]
    first = torch.minimum(first.clamp(min=0), lim)
    last = torch.minimum(last.clamp(min=0), lim)
    count = (last - first).clamp(min=0).flatten()  # (n*P,)
    offsets = torch.cumsum(count, 0) - count
    total = int(count.sum())
    bin_of = torch.repeat_interleave(torch.arange(n * pooled, device=device), count)
    pixel = first.flatten()[bin_of] + torch.arange(total, device=device) - offsets[bin_of]
    return AxisTaps(pixel, torch.ones(total, dtype=dtype, device=device), offsets, count)


def roi_pool_axis_rule(output_size: Tuple[int, int]):
    """The ROIPool windows as :func:`.gather_plan.upright_gather_plan`'s ``axis_rule``."""
    ph, pw = output_size

    def rule(boxes: torch.Tensor, scale: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor):
        b = boxes * scale[:, None]  # x * spatial_scale in T, as the kernel
        return _axis_windows(b[:, 1], b[:, 3], ph, heights), _axis_windows(b[:, 0], b[:, 2], pw, widths)

    return rule


def _table_rows(plan: GatherPlan, features: List[torch.Tensor], c0: int, c1: int, dtype) -> torch.Tensor:
    """The plan's table (rows, c1 - c0): the pixels its bags read, channels-last."""
    table = torch.empty((plan.num_rows, c1 - c0), dtype=dtype, device=features[0].device)
    for level, i, r, n, local in plan.blocks:
        chw = features[level][i, c0:c1]
        flat = chw.reshape(c1 - c0, -1)
        table[r:r + n] = (flat if local is None else flat.index_select(1, local)).t()
    return table


def _flat_base(plan: GatherPlan, sizes: Sequence[Sequence[int]], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each table row: its pixel's flat index in the concatenated NCHW maps at channel 0,
    and the level's ``H*W`` (the stride of a channel), both (rows,) int64."""
    offsets, acc = [], 0
    for b, c, h, w in sizes:
        offsets.append(acc)
        acc += b * c * h * w
    base = torch.empty(plan.num_rows, dtype=torch.int64, device=device)
    stride = torch.empty(plan.num_rows, dtype=torch.int64, device=device)
    for level, i, r, n, local in plan.blocks:
        _, c, h, w = sizes[level]
        pos = torch.arange(n, device=device) if local is None else local
        base[r:r + n] = offsets[level] + i * c * h * w + pos
        stride[r:r + n] = h * w
    return base, stride


def total_elements(sizes: Sequence[Sequence[int]]) -> int:
    """Elements of all maps together: the "no gradient" index of the argmax."""
    return sum(b * c * h * w for b, c, h, w in sizes)


def roi_pool_forward(features: List[torch.Tensor], boxes: torch.Tensor, batch: torch.Tensor,
                     level_of: torch.Tensor, scales: Sequence[float], output_size: Tuple[int, int],
                     compute_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """ROIPool of ``boxes`` (N, 4) in input pixels (``batch``, ``level_of`` (N,)) from the maps
    -> (out (N, C, Ph, Pw) in the maps' dtype, argmax (N, C, Ph, Pw) int32: flat index of the
    winner in the concatenated NCHW maps, or their total size for none)."""
    ph, pw = output_size
    sizes = [tuple(f.shape) for f in features]
    channels, device = sizes[0][1], features[0].device
    num = boxes.shape[0]
    total = total_elements(sizes)
    if total >= 2**31 - 1:
        raise ValueError(f"ROIPool keeps int32 indices; these maps hold {total} elements (at most 2**31 - 2)")
    out = features[0].new_empty((num, channels, ph, pw))
    argmax = torch.empty((num, channels, ph, pw), dtype=torch.int32, device=device)
    if num == 0:
        return out, argmax
    bhw = [(s[0], s[2], s[3]) for s in sizes]
    plan = upright_gather_plan(bhw, boxes, batch, level_of, scales, output_size, 0, False,
                               axis_rule=roi_pool_axis_rule(output_size))
    empty = (plan.bag_sizes == 0)[:, None]
    base, stride = _flat_base(plan, sizes, device)
    floor = -FLT_MAX
    for c0 in range(0, channels, _CHUNK):
        c1 = min(c0 + _CHUNK, channels)
        table = _table_rows(plan, features, c0, c1, compute_dtype)
        bins, _, _, rows = torch.embedding_bag(table, plan.index, plan.offsets, False, 2, False, None, False)
        if bool(torch.isnan(bins).any()):  # a bag led by NaN: the kernel never takes a NaN
            table = torch.where(torch.isnan(table), torch.full_like(table, -float("inf")), table)
            bins, _, _, rows = torch.embedding_bag(table, plan.index, plan.offsets, False, 2, False, None, False)
        del table
        rows = rows.long()
        taken = (bins > floor) & ~empty
        flat = base[rows] + stride[rows] * torch.arange(c0, c1, device=device)
        flat = torch.where(taken, flat, torch.full_like(flat, total))
        bins = torch.where(taken | empty, bins, torch.full_like(bins, floor))
        out[:, c0:c1] = bins.view(num, ph, pw, c1 - c0).permute(0, 3, 1, 2)
        argmax[:, c0:c1] = flat.view(num, ph, pw, c1 - c0).permute(0, 3, 1, 2)
    return out, argmax


def roi_pool_backward(grad: torch.Tensor, argmax: torch.Tensor, sizes: Sequence[Sequence[int]],
                      dtype: torch.dtype) -> List[torch.Tensor]:
    """The gradient of each map (B, C, H, W) of ``sizes``, in ``dtype``: ``grad`` (N, C, Ph, Pw)
    added at the forward's winners in the kernel's order (ROI, then bin; one sequential
    ``index_add_`` per level). An ROI's winners all lie in the level it was pooled from."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    starts, acc = [], 0
    for b, c, h, w in sizes:
        starts.append(acc)
        acc += b * c * h * w
    num = argmax.shape[0]
    flat_arg = argmax.reshape(num, -1)
    # each ROI's level, from its smallest winner (all of them in one level, or none: "total")
    first = flat_arg.amin(1) if num and flat_arg.shape[1] else argmax.new_full((num,), acc)
    roi_level = torch.bucketize(first.long(), torch.tensor(starts[1:] + [acc], device=grad.device), right=True)
    out = []
    for level, size in enumerate(sizes):
        n = size[0] * size[1] * size[2] * size[3]
        buf = torch.zeros(n + 1, dtype=work, device=grad.device)  # the last slot takes "no winner"
        sel = (roi_level == level).nonzero().flatten()
        if sel.numel():
            index = (flat_arg.index_select(0, sel).long() - starts[level]).clamp(max=n)
            buf.index_add_(0, index.reshape(-1), grad.index_select(0, sel).to(work).reshape(-1))
        out.append(buf[:n].view(tuple(size)).to(dtype))
    return out
