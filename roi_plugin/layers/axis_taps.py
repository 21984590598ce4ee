# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Geometry as flat lists: the bilinear taps of every upright ROI along one axis.

The samples are those of :func:`.geometry.axis_samples` (see :mod:`.geometry` for the
coordinates, the clamp, the last-pixel rule and validity): along one axis, sample ``i`` of
bin ``p`` of an ROI with ``g`` samples per bin sits at

    c = start + p * bin + (i + 0.5) * bin / g,        bin = extent / P,

and reads pixels ``low`` and ``high`` with weights ``(1 - frac) / g`` and ``frac / g``.
``axis_samples`` lays them out on a padded (n, P, G) grid, one call per group of ROIs with
similar ``g``; here the taps of *all* ROIs of a pooler call come out in one flat list with
a fixed number of tensor ops, whatever the ROIs' sizes and levels:

* only samples some pixel reads are listed (``-1 <= c <= size``). They are consecutive in
  ``i``, so each bin's first and last are found from the formula (in float64, one sample
  of margin either side for rounding) and then checked exactly as ``axis_samples`` checks
  them; a huge ROI costs the samples on the map, not its ``g``;
* of a sample's two taps, those of weight 0 (``frac = 0``, the last pixel) are dropped.

Taps stay in ``(i, low/high)`` order within a bin, the order in which the padded layout
lists them. The rules (coordinates, validity, taps, the float64 rule) are :mod:`.geometry`'s
functions.

:func:`distinct_pixels` then merges the taps of a bin that read the same pixel (consecutive
samples share one, ``high`` of one being ``low`` of the next; with many samples per pixel,
``sampling_ratio`` 32 on a small box, most of them do): one tap per distinct pixel, weight the
sum of its taps' weights in sample order. A bin's 2-D bag (:mod:`.gather_plan`) is the product
of its row's and its column's lists, so this halves the bags at ``sampling_ratio`` 0 and bounds
them by the pixels a bin covers, not by its samples. (The sum is the same; its rounding is not
bit for bit that of the sample-by-sample sum.)
"""
from typing import NamedTuple

import torch

from .geometry import bilinear_taps, first_sample_on_map, needs_float64, on_map, sample_coordinates

__all__ = ["AxisTaps", "axis_taps", "distinct_pixels", "distinct_axis_taps"]


class AxisTaps(NamedTuple):
    """Taps of ``n`` ROIs along one axis, bin ``(r, p)`` owning ``[first[r*P+p], first + count)``."""

    pixel: torch.Tensor  # (S,) int64 pixel index along the axis
    weight: torch.Tensor  # (S,) bilinear weight x 1/g, in the compute dtype, non-zero
    first: torch.Tensor  # (n*P,) int64 position of each bin's first tap
    count: torch.Tensor  # (n*P,) int64 taps of each bin


def axis_taps(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, size: torch.Tensor
) -> AxisTaps:
    """The non-zero taps of every bin of ``n`` ROIs along one axis.

    Args:
        start, length: (n,) ROI start and extent in level pixels (compute dtype).
        pooled: bins along the axis (P). grid: (n,) int64 samples per bin (``g``, 0 = none).
        size: (n,) int64 size of each ROI's map along the axis.
    """
    dtype, device = start.dtype, start.device
    n = start.numel()
    bin_size = length / pooled  # (n,), as axis_samples computes it
    g = grid.to(dtype)
    spacing = bin_size / g
    far = needs_float64(start, length, spacing)
    # Samples on the map: first/last i with -1 <= c <= size, one sample of margin each side.
    p = torch.arange(pooled, device=device, dtype=torch.float64)
    base = start.double()[:, None] + p * bin_size.double()[:, None]  # (n, P)
    sp = spacing.double()[:, None]
    gmax = g.double()[:, None]
    moving = sp > 0
    lo = torch.where(moving, first_sample_on_map(base, sp), torch.zeros_like(base))
    hi = torch.where(moving, torch.floor((size.double()[:, None] - base) / sp - 0.5) + 1, gmax - 1)
    lo = torch.minimum(lo.clamp(min=0), gmax).to(torch.int64)  # within [0, g)
    hi = torch.minimum(hi, gmax - 1).clamp(min=-1).to(torch.int64)
    count = (hi - lo + 1).clamp(min=0).flatten()  # candidate samples of each bin
    total = int(count.sum())
    bin_of = torch.repeat_interleave(torch.arange(n * pooled, device=device), count)
    k = lo.flatten()[bin_of] + torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[bin_of]
    roi = torch.div(bin_of, pooled, rounding_mode="floor")
    pos = (bin_of - roi * pooled).to(dtype)
    i = k.to(dtype) + 0.5
    coord = sample_coordinates(start[roi], bin_size[roi], pos, i, g[roi])
    if bool(far.any()):  # needs_float64's ROIs in float64
        coord64 = sample_coordinates(start.double()[roi], bin_size.double()[roi], pos.double(), k.double() + 0.5,
                                     g.double()[roi])
        coord = torch.where(far[roi], coord64, coord.double())
    lim = size[roi]
    valid = on_map(coord, lim) & (k < grid[roi])
    coord, lim, roi, bin_of = coord[valid], lim[valid], roi[valid], bin_of[valid]
    taps = bilinear_taps(coord, torch.ones_like(coord, dtype=torch.bool), g[roi], lim, dtype)
    pixel = torch.stack([taps.low, taps.high], 1).flatten()
    weight = torch.stack([taps.w_low, taps.w_high], 1).flatten()
    keep = weight != 0
    tap_bin = bin_of.repeat_interleave(2)[keep]
    count = torch.bincount(tap_bin, minlength=n * pooled)
    return AxisTaps(pixel[keep], weight[keep], torch.cumsum(count, 0) - count, count)


def distinct_pixels(taps: AxisTaps) -> AxisTaps:
    """``taps`` with the taps of each bin that read the same pixel merged into one, in increasing
    pixel order within the bin; the merged weight is the sum of theirs in tap order (``index_add_``
    over taps sorted stably by (bin, pixel): deterministic). A bin whose taps all cancel keeps its
    pixels (weights are non-zero and of one sign, so they cannot)."""
    n = taps.count.numel()
    if taps.pixel.numel() == 0:
        return taps
    bin_of = torch.repeat_interleave(torch.arange(n, device=taps.pixel.device), taps.count)
    span = int(taps.pixel.max()) + 1
    key, order = torch.sort(bin_of * span + taps.pixel, stable=True)
    new = torch.ones_like(key, dtype=torch.bool)
    new[1:] = key[1:] != key[:-1]
    group = torch.cumsum(new, 0) - 1
    weight = torch.zeros(int(group[-1]) + 1, dtype=taps.weight.dtype, device=taps.weight.device)
    weight.index_add_(0, group, taps.weight.index_select(0, order))
    key = key[new]
    bins = torch.div(key, span, rounding_mode="floor")
    count = torch.bincount(bins, minlength=n)
    return AxisTaps(key - bins * span, weight, torch.cumsum(count, 0) - count, count)


def distinct_axis_taps(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, size: torch.Tensor, max_samples: int
) -> AxisTaps:
    """:func:`distinct_pixels` of :func:`axis_taps`, computed for a run of ROIs at a time so that
    the samples listed at once (``pooled * grid`` per ROI, ``sampling_ratio`` 32 gives 32 per
    bin) stay near ``max_samples``; only the merged taps, bounded by the pixels the bins
    cover, are kept for all ROIs. Each ROI's taps are computed alone, so the runs change nothing."""
    per_roi = (grid.clamp(min=0, max=max_samples) * pooled).cumsum(0)
    total = int(per_roi[-1]) if per_roi.numel() else 0
    if total <= max_samples:
        return distinct_pixels(axis_taps(start, length, pooled, grid, size))
    marks = torch.arange(max_samples, total, max_samples, device=per_roi.device, dtype=per_roi.dtype)
    inner = torch.unique(torch.searchsorted(per_roi, marks, right=True)).tolist()
    cuts = [0] + [k for k in inner if 0 < k < start.numel()] + [start.numel()]
    runs = [distinct_pixels(axis_taps(start[a:b], length[a:b], pooled, grid[a:b], size[a:b]))
            for a, b in zip(cuts[:-1], cuts[1:])]
    count = torch.cat([t.count for t in runs])
    return AxisTaps(torch.cat([t.pixel for t in runs]), torch.cat([t.weight for t in runs]),
                    torch.cumsum(count, 0) - count, count)
