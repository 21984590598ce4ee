# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROIAlign's max mode (mmcv's ``RoIAlign(pool_mode="max")``): the largest bilinear sample of a bin.

The samples are ROIAlign's (:mod:`.geometry`: the same coordinates, ``sampling_ratio`` or
adaptive ``ceil(extent / P)`` per axis, the same bilinear taps, ``ROIAlign`` or ``ROIAlignV2``
alignment), and a bin's value is their maximum instead of their mean:

    out = max_{i < gh, j < gw} bilinear(f, y_i, x_j),

a sample more than one pixel off the map reading 0 (it is still a candidate, as in mmcv's
kernel). The gradient goes to the four taps of the winning sample, weighted by their bilinear
weights (nothing when the winner is off the map); among equal samples the first in row-major
order ``(i, j)`` wins, as in the kernel's strict ``>``. Two deliberate differences from mmcv's
CUDA kernel: a bin without samples (an empty ``ROIAlignV2`` box under adaptive sampling) is 0,
as in mean mode, where mmcv writes ``-FLT_MAX``; and when an off-map sample (0) ties with an
on-map sample of value 0, the on-map one wins whatever their order.

How. :func:`.geometry.sample_groups` gives the samples of each level in groups of equal
layout (its huge-box window lays out only the samples on the map; whether some in-grid
sample lies off the map, a 0 candidate, is counted per bin). For a block of ROIs and a chunk
of channels the four taps of every sample are read from a channels-last copy of the level and
weighted, the invalid samples set to ``-inf``, and ``max`` over the bin's samples gives the
value and the first winner. The backward rebuilds the same groups and adds each bin's gradient
to its winner's taps with one sequential ``index_add_`` per level and chunk. Operators:
``roi_plugin::roi_align_max[_backward]`` (:mod:`.roi_align_ops`).
"""
from typing import Iterator, List, Sequence, Tuple

import torch

from .geometry import LevelSamples, SampleGroup, bilinear_taps

__all__ = ["roi_align_max_forward", "roi_align_max_backward"]

_BLOCK_BYTES = 32 * 2**20  # the taps read at once: (ROIs x bins x samples x 4 taps x channels)
_CHUNK = 64  # channels at once


def _raw_taps(axis, size: int, dtype):
    """(rows (n, P, G, 2) int64, weights (n, P, G, 2), valid (n, P, G) bool) of an axis: the
    sample's two pixels and their bilinear weights (without the mean's 1/g)."""
    valid = (axis.w_low + axis.w_high) != 0  # on the map and within the ROI's own grid
    taps = bilinear_taps(axis.coord, valid, torch.ones((), dtype=dtype, device=valid.device), size, dtype)
    return torch.stack([taps.low, taps.high], -1), torch.stack([taps.w_low, taps.w_high], -1), valid


def _blocks(group: SampleGroup, channels: int, itemsize: int) -> Iterator[Tuple[int, int]]:
    n, ph, gy = group.ys.coord.shape
    _, pw, gx = group.xs.coord.shape
    per_roi = ph * gy * pw * gx * 4 * min(channels, _CHUNK) * itemsize
    step = max(1, _BLOCK_BYTES // max(per_roi, 1))
    for r0 in range(0, n, step):
        yield r0, min(r0 + step, n)


def _samples(group: SampleGroup, h: int, w: int, r0: int, r1: int, dtype):
    """Per block of ROIs: (table rows (n, Ph, Gy, 2, Pw, Gx, 2), weights (same), valid
    (n, Ph, Gy, Pw, Gx), zero candidate (n, Ph, Pw): some in-grid sample is off the map)."""
    ys = type(group.ys)(*(t[r0:r1] for t in group.ys))
    xs = type(group.xs)(*(t[r0:r1] for t in group.xs))
    yr, yw, yv = _raw_taps(ys, h, dtype)
    xr, xw, xv = _raw_taps(xs, w, dtype)
    b = group.batch[r0:r1]
    rows = (b * (h * w))[:, None, None, None, None, None, None] + (yr * w)[:, :, :, :, None, None, None] \
        + xr[:, None, None, None, :, :, :]
    weights = yw[:, :, :, :, None, None, None] * xw[:, None, None, None, :, :, :]
    valid = yv[:, :, :, None, None] & xv[:, None, None, :, :]
    # in-grid samples per bin and axis: the mean's weights sum to valid/g, so g = count / sum
    gy = torch.round(1.0 / (ys.w_low + ys.w_high).sum(2).clamp(min=1e-30) * yv.sum(2))
    gx = torch.round(1.0 / (xs.w_low + xs.w_high).sum(2).clamp(min=1e-30) * xv.sum(2))
    zero = (yv.sum(2)[:, :, None] * xv.sum(2)[:, None, :]) < (gy[:, :, None] * gx[:, None, :])
    return rows, weights, valid, zero


def _level_table(feature: torch.Tensor, c0: int, c1: int, dtype) -> torch.Tensor:
    """(B*H*W, c1 - c0) channels-last rows of one level."""
    return feature[:, c0:c1].permute(0, 2, 3, 1).reshape(-1, c1 - c0).to(dtype)


def roi_align_max_forward(features: List[torch.Tensor], levels: List[LevelSamples], num_rois: int,
                          out_hw: Sequence[int], compute_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max-mode pooling of the sample groups ``levels`` -> (out (N, C, Ph, Pw) in the maps'
    dtype, argmax (N, C, Ph, Pw) int32: the winner's index ``i * Gx + j`` in its group's
    layout, -1 for none: no valid sample, or the 0 of an off-map sample)."""
    ph, pw = out_hw
    channels = features[0].shape[1]
    out = features[0].new_zeros((num_rois, channels, ph, pw))
    argmax = torch.full((num_rois, channels, ph, pw), -1, dtype=torch.int32, device=features[0].device)
    for plan in levels:
        _, _, h, w = features[plan.level].shape
        for c0 in range(0, channels, _CHUNK):
            c1 = min(c0 + _CHUNK, channels)
            table = _level_table(features[plan.level], c0, c1, compute_dtype)
            for group in plan.groups:
                if group.ys is None:  # no samples: 0, as in mean mode
                    continue
                gy, gx = group.ys.coord.shape[2], group.xs.coord.shape[2]
                for r0, r1 in _blocks(group, channels, compute_dtype.itemsize):
                    rows, weights, valid, zero = _samples(group, h, w, r0, r1, compute_dtype)
                    n = r1 - r0
                    vals = (table[rows] * weights[..., None]).sum((3, 6))  # (n, Ph, Gy, Pw, Gx, c)
                    vals = torch.where(valid[..., None], vals, torch.full_like(vals, -float("inf")))
                    vals = vals.permute(0, 5, 1, 3, 2, 4).reshape(n, c1 - c0, ph, pw, gy * gx)
                    best, idx = vals.max(-1)  # the first maximum wins
                    lose = zero[:, None] & ~(best >= 0)  # the 0 of an off-map sample is larger
                    none = torch.isneginf(best)
                    best = torch.where(lose | none, torch.zeros_like(best), best)
                    idx = torch.where(lose | none, torch.full_like(idx, -1), idx)
                    sel = group.rois[r0:r1]
                    out[sel, c0:c1] = best.to(out.dtype)
                    argmax[sel, c0:c1] = idx.to(torch.int32)
            del table
    return out, argmax


def roi_align_max_backward(grad: torch.Tensor, argmax: torch.Tensor, levels: List[LevelSamples],
                           sizes: Sequence[Sequence[int]], dtype: torch.dtype,
                           compute_dtype: torch.dtype) -> List[torch.Tensor]:
    """The gradient of each level (B, C, H, W) of ``sizes`` in ``dtype``: each bin's ``grad``
    to the four taps of its winner (``argmax`` of the forward, same groups)."""
    channels = grad.shape[1]
    grads = [torch.zeros(tuple(s), dtype=dtype, device=grad.device) for s in sizes]
    for plan in levels:
        b_, _, h, w = sizes[plan.level]
        acc = torch.zeros((b_ * h * w, channels), dtype=compute_dtype, device=grad.device)
        for group in plan.groups:
            if group.ys is None:
                continue
            gy, gx = group.ys.coord.shape[2], group.xs.coord.shape[2]
            for r0, r1 in _blocks(group, channels, compute_dtype.itemsize):
                rows, weights, _, _ = _samples(group, h, w, r0, r1, compute_dtype)
                n, ph, _, _, pw, _, _ = rows.shape
                # taps of every sample, (n, Ph, Pw, Gy*Gx, 4), the sample axis last but one
                rows = rows.permute(0, 1, 4, 2, 5, 3, 6).reshape(n, ph, pw, gy * gx, 4)
                weights = weights.permute(0, 1, 4, 2, 5, 3, 6).reshape(n, ph, pw, gy * gx, 4)
                sel = group.rois[r0:r1]
                win = argmax[sel].long().permute(0, 2, 3, 1)  # (n, Ph, Pw, C)
                g = grad[sel].to(compute_dtype).permute(0, 2, 3, 1)  # (n, Ph, Pw, C)
                taken = win >= 0
                pick = win.clamp(min=0)[..., None].expand(-1, -1, -1, -1, 4)  # (n, Ph, Pw, C, 4)
                tap_rows = torch.gather(rows[:, :, :, None].expand(-1, -1, -1, channels, -1, -1), 4,
                                        pick[..., None, :]).squeeze(4)  # (n, Ph, Pw, C, 4)
                tap_w = torch.gather(weights[:, :, :, None].expand(-1, -1, -1, channels, -1, -1), 4,
                                     pick[..., None, :]).squeeze(4)
                contrib = (g * taken)[..., None] * tap_w  # (n, Ph, Pw, C, 4)
                # rows x channels of the level's gradient, flat: row * C + c
                flat = tap_rows * channels + torch.arange(channels, device=grad.device)[:, None]
                acc.view(-1).index_add_(0, flat.reshape(-1), contrib.reshape(-1))
        grads[plan.level] = acc.view(b_, h, w, channels).permute(0, 3, 1, 2).to(dtype).contiguous()
    return grads
