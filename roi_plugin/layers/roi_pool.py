# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROIPool (Fast R-CNN; torchvision's ``roi_pool``, Detectron2's ``POOLER_TYPE: "ROIPool"``):
the maximum over the pixels of a quantised bin.

Geometry, as torchvision's kernel computes it in the maps' float type ``T`` (float32, or
float64 for float64 maps). A box edge at input pixel ``x`` lands on level pixel
``round(x * scale)`` (C's ``round``: halves away from zero); the ROI spans

    w = max(round(x2 * scale) - round(x1 * scale) + 1, 1)      (malformed ROIs: 1 pixel)

pixels from ``x0 = round(x1 * scale)``, and bin ``p`` of ``P`` covers the pixels

    [x0 + floor(p * bin), x0 + ceil((p + 1) * bin)),        bin = T(w) / T(P),

clipped to ``[0, size)``; the same along y. The bin's value is

    out = max over the bin's pixels (y, x), row-major,         0 for an empty bin,

the first pixel in row-major order winning a tie (the kernel's strict ``>``). A NaN is never
the maximum, and values at or below ``-FLT_MAX`` are not taken either: a bin holding only
those gives ``-FLT_MAX`` and no gradient (the kernel starts from ``-FLT_MAX``). The gradient
goes to the winning pixel of each bin and channel, summed over bins in the kernel's order (ROI,
then bin row-major), so it equals torchvision's bit for bit.

How. The maxima are torchvision's CPU/CUDA kernel (``torch.ops.torchvision.roi_pool``), run
per level on the ROIs the level rule routes there, exactly as Detectron2's ``ROIPooler`` runs
it: a max over irregular windows is a branchy scan that PyTorch's tensor operations cannot do
faster (an ``embedding_bag(mode="max")`` formulation over the same windows was exact and
2.3-2.8x slower), and the issue's bar is "no slower than ``ROIPooler``". What is the plugin's:
one operator for all levels (routing, the box checks, fake tensors, autograd, compile and
export alike), with the kernel's winners as its second output, and the backward operator, which
runs the kernel's backward level by level on them (no copy of a level's ROIs when they are all
on one level). The operators ``roi_plugin::roi_pool[_backward]``
(:mod:`.roi_align_ops`) call these functions.
"""
from typing import List, Sequence, Tuple

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.roi_pool)

__all__ = ["roi_pool_forward", "roi_pool_backward"]


def roi_pool_forward(features: List[torch.Tensor], rois: torch.Tensor, level_of: torch.Tensor,
                     scales: Sequence[float], output_size: Tuple[int, int],
                     compute_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """ROIPool of ``rois`` (N, 5) ``batch_index, x1, y1, x2, y2`` in input pixels (``level_of``
    (N,) each one's level) -> (out (N, C, Ph, Pw) in the maps' dtype, argmax (N, C, Ph, Pw)
    int32: the kernel's winner ``y * W + x`` in its image's and channel's plane of the ROI's
    level, -1 for none)."""
    ph, pw = output_size
    channels, device = features[0].shape[1], features[0].device
    num = rois.shape[0]
    if num == 0:
        return (features[0].new_zeros((0, channels, ph, pw)),
                torch.zeros((0, channels, ph, pw), dtype=torch.int32, device=device))
    rois = rois.to(compute_dtype)
    out = argmax = None
    present = torch.bincount(level_of, minlength=len(features)).tolist()
    for level, feature in enumerate(features):
        if not present[level]:
            continue
        whole = present[level] == num  # every ROI on this level: no index copies
        sel = None if whole else (level_of == level).nonzero().flatten()
        values, winner = torch.ops.torchvision.roi_pool(feature.to(compute_dtype), rois if whole else
                                                        rois.index_select(0, sel), scales[level], ph, pw)
        values = values.to(features[0].dtype)
        if whole:
            return values, winner
        if out is None:  # every row gets written: each ROI has one level
            out = features[0].new_empty((num, channels, ph, pw))
            argmax = torch.empty((num, channels, ph, pw), dtype=torch.int32, device=device)
        out.index_copy_(0, sel, values)
        argmax.index_copy_(0, sel, winner)
    return out, argmax


def roi_pool_backward(grad: torch.Tensor, argmax: torch.Tensor, rois: torch.Tensor, level_of: torch.Tensor,
                      sizes: Sequence[Sequence[int]], scales: Sequence[float], dtype: torch.dtype) -> List[torch.Tensor]:
    """The gradient of each map (B, C, H, W) of ``sizes``, in ``dtype``: ``grad`` (N, C, Ph, Pw)
    added at the forward's winners (``argmax``) by the kernel's backward, level by level, on the
    ROIs (``rois`` (N, 5), ``level_of`` (N,)) the forward pooled there."""
    num = argmax.shape[0]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    present = torch.bincount(level_of, minlength=len(sizes)).tolist() if num else [0] * len(sizes)
    out = []
    for level, (b_, c_, h, w) in enumerate(sizes):
        if not present[level]:
            out.append(torch.zeros((b_, c_, h, w), dtype=dtype, device=grad.device))
            continue
        whole = present[level] == num
        sel = None if whole else (level_of == level).nonzero().flatten()
        pick = (lambda t: t) if whole else (lambda t: t.index_select(0, sel))
        g = torch.ops.torchvision._roi_pool_backward(pick(grad).to(work), pick(rois).to(work), pick(argmax),
                                                     scales[level], grad.shape[2], grad.shape[3], b_, c_, h, w)
        out.append(g.to(dtype))
    return out
