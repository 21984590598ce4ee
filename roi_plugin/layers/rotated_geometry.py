# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Rotated geometry: the sample points of Detectron2's ``ROIAlignRotated`` and the pixels each reads.

Boxes are ``(x_ctr, y_ctr, w, h, angle)`` in input-image pixels, angle in degrees,
counter-clockwise (Detectron2's ``RotatedBoxes``). At a level of scale ``s`` the box is

    cx = x_ctr * s - 0.5,   cy = y_ctr * s - 0.5,   W = w * s,   H = h * s,   theta = angle * pi / 180

(always half-pixel aligned: the kernel has no legacy offset). In the box's own frame, bin
``(py, px)`` of ``Ph x Pw`` has ``gh x gw`` samples (``sampling_ratio``, or ``ceil(H / Ph)`` and
``ceil(W / Pw)`` when it is 0) at the centres of equal sub-bins,

    yy = -H/2 + py * H/Ph + (i + 0.5) * (H/Ph) / gh,     xx = -W/2 + px * W/Pw + (j + 0.5) * (W/Pw) / gw,

rotated counter-clockwise about the centre:

    y = yy * cos(theta) - xx * sin(theta) + cy,          x = yy * sin(theta) + xx * cos(theta) + cx.

A sample with ``y < -1 or y > H_map or x < -1 or x > W_map`` adds 0; otherwise it reads the
bilinear taps of :func:`.geometry.bilinear_taps` (clamp to >= 0, last row/column rule), and the
bin is the sum over ``max(gh * gw, 1)``. This is ``ROIAlignRotatedForward`` of Detectron2's
CPU/CUDA kernel (detectron2/layers/csrc/ROIAlignRotated), formula for formula.

Unlike upright boxes the samples are not separable, so each group carries *dense* samples,
(n, Ph, Pw, gh, gw) per axis (see :class:`.geometry.SampleGroup`); the validity of a sample
(both coordinates inside) is in the weights of both axes. The rules (samples per bin, sample
coordinates, validity, taps) are :mod:`.geometry`'s functions. Coordinates are computed in
float64 whatever the features' dtype (only the weights are cast), rather than by
:func:`.geometry.needs_float64`: the rotation mixes both axes' extents into each coordinate,
so float32 features are pooled at float32 precision of the features, not of the geometry.
The window. Under adaptive sampling a huge box has ``ceil(extent / P)`` samples per bin and
axis (447 x 447 for a 1e5 px box at stride 32), nearly all of them off the map. The samples a
map can hold are those of the map's rectangle, grown by the one-pixel reach of the bilinear
footprint, which in the box's frame (rotated by ``-theta``) spans
``(H_map + 1)|cos| + (W_map + 1)|sin|`` along the box's y-axis (and the same with sine and
cosine swapped along its x-axis), so at most ``floor(span / spacing) + 1`` consecutive samples
per bin and axis. Where that is fewer than the grid, each bin lays out only a window starting at
its first such sample (from the rectangle's corners, one sample of margin either side; validity
is still checked exactly), as :func:`.geometry.axis_samples` does for upright boxes: the same
samples on the map, in the same order, and memory bounded by the map, not the box.
"""
import math
from typing import List, Optional, Tuple

import torch

from .geometry import (
    AxisSamples, LevelSamples, SampleGroup, _bucket, bilinear_taps, grid_groups, on_map, sample_coordinates,
    samples_per_bin,
)

__all__ = ["rotated_level_boxes", "rotated_samples", "rotated_sample_groups", "rotated_samples_per_roi"]

# Adaptive grid sizes up to this are grouped exactly (dense layouts padded to a power of two
# would sample up to (2g-1)^2 / g^2 times the points); larger ones share power-of-two layouts.
_EXACT_GRID = 4
_MARGIN = 1  # samples of margin either side of a window (rounding of its first sample)


def rotated_level_boxes(boxes: torch.Tensor, scale: float) -> Tuple[torch.Tensor, ...]:
    """(N, 5) input-pixel rotated boxes -> ``cx, cy, width, height, theta`` (N,) in level
    pixel-centre coordinates, theta in radians."""
    cx = boxes[:, 0] * scale - 0.5
    cy = boxes[:, 1] * scale - 0.5
    return cx, cy, boxes[:, 2] * scale, boxes[:, 3] * scale, boxes[:, 4] * (math.pi / 180.0)


def _spans(cx, cy, theta, size: Tuple[int, int], output_size: Tuple[int, int]):
    """The map's rectangle ``[-1, H] x [-1, W]`` in the frame of each box (n,): the ranges of its
    corners' box-frame coordinates ``(yy_min, yy_max, xx_min, xx_max)``, each (n,) float64."""
    h, w = size
    cos, sin = torch.cos(theta), torch.sin(theta)
    dy = torch.tensor([-1.0, -1.0, float(h), float(h)], dtype=torch.float64, device=cx.device)[None] - cy[:, None]
    dx = torch.tensor([-1.0, float(w), -1.0, float(w)], dtype=torch.float64, device=cx.device)[None] - cx[:, None]
    yy = dy * cos[:, None] + dx * sin[:, None]  # the inverse rotation of the module docstring
    xx = dx * cos[:, None] - dy * sin[:, None]
    return yy.amin(1), yy.amax(1), xx.amin(1), xx.amax(1)


def _window(lo: torch.Tensor, hi: torch.Tensor, extent: torch.Tensor, pooled: int, g: torch.Tensor):
    """Along one box axis of ``extent`` (n,) in ``pooled`` bins of ``g`` (n,) samples, with the
    map spanning ``[lo, hi]`` (n,) of the box frame (origin at the box centre): the samples of
    each ROI that can lie on the map, at most (n,) int64 (``g`` where not fewer), and the index of
    each bin's first one less the margin, (n, pooled) int64 (>= 0)."""
    spacing = extent / pooled / g.to(torch.float64)
    moving = spacing > 0
    safe = torch.where(moving, spacing, torch.ones_like(spacing))
    bound = torch.floor((hi - lo) / safe) + 1 + 2 * _MARGIN
    bound = torch.where(moving, torch.minimum(bound, g.to(torch.float64)), g.to(torch.float64)).to(torch.int64)
    p = torch.arange(pooled, dtype=torch.float64, device=lo.device)
    base = -extent[:, None] / 2.0 + p * (extent / pooled)[:, None]  # start of each bin
    first = torch.floor((lo[:, None] - base) / safe[:, None] - 0.5) - _MARGIN
    first = torch.where(moving[:, None], first.clamp(min=0, max=2.0**62), torch.zeros_like(first))
    return bound, first.to(torch.int64)


def rotated_samples(
    cx: torch.Tensor, cy: torch.Tensor, width: torch.Tensor, height: torch.Tensor, theta: torch.Tensor,
    output_size: Tuple[int, int], gh: torch.Tensor, gw: torch.Tensor, g_h: int, g_w: int,
    size: Tuple[int, int], dtype: torch.dtype, rows: Optional[Tuple[int, int]] = None, window: bool = True,
) -> Tuple[AxisSamples, AxisSamples]:
    """Dense samples of a group of rotated ROIs (of their bin rows ``rows = (py0, py1)`` only if
    given: the samples of those rows, as the whole ROI has them).

    Args:
        cx, cy, width, height, theta: (n,) float64, from :func:`rotated_level_boxes`.
        gh, gw: (n,) samples per bin of each ROI (>= 1); ``g_h >= gh.max()``, ``g_w >= gw.max()``
            are laid out (a window of fewer where the map holds fewer, see the module
            docstring), those past an ROI's own grid get weight 0.
        size: (H, W) of the level. dtype: of the returned coordinates and weights.
        window: lay out only the window of samples the map can hold; False lays out all
            ``g_h x g_w`` (the ONNX path, :func:`.static.rotated_grid_sample_static`, whose
            ``g_h``, ``g_w`` may be traced values: the window's size is read on the host).
    Returns:
        (ys, xs): :class:`.geometry.AxisSamples`, each (n, Ph, Pw, G_h, G_w), ``G <= g``
        (``py1 - py0`` rows instead of Ph with ``rows``).
    """
    ph, pw = output_size
    py0, py1 = rows if rows is not None else (0, ph)
    h, w = size
    f64 = dict(dtype=torch.float64, device=cx.device)
    i = torch.arange(g_h, **f64)[None, None, None, :, None]
    j = torch.arange(g_w, **f64)[None, None, None, None, :]
    if window and cx.numel():
        yy_lo, yy_hi, xx_lo, xx_hi = _spans(cx, cy, theta, size, output_size)
        bound_h, first_i = _window(yy_lo, yy_hi, height, ph, gh)
        bound_w, first_j = _window(xx_lo, xx_hi, width, pw, gw)
        win_h, win_w = min(g_h, int(bound_h.max())), min(g_w, int(bound_w.max()))
        if win_h < g_h:  # each bin's window starts at its first sample that can be on the map
            i = torch.arange(win_h, **f64)[None, None, None, :, None]
            i = i + first_i[:, py0:py1].to(torch.float64)[:, :, None, None, None]
        if win_w < g_w:
            j = torch.arange(win_w, **f64)[None, None, None, None, :]
            j = j + first_j.to(torch.float64)[:, None, :, None, None]
    i, j = i + 0.5, j + 0.5
    gy, gx = gh.to(torch.float64)[:, None, None, None, None], gw.to(torch.float64)[:, None, None, None, None]
    bin_h = (height / ph)[:, None, None, None, None]
    bin_w = (width / pw)[:, None, None, None, None]
    p_y = torch.arange(py0, py1, **f64)[None, :, None, None, None]
    p_x = torch.arange(pw, **f64)[None, None, :, None, None]
    # The kernel's association: start + p*bin + (i+0.5)*bin/grid, then the rotation.
    yy = sample_coordinates(-(height / 2.0)[:, None, None, None, None], bin_h, p_y, i, gy)  # (n, ph, 1, Gh, 1)
    xx = sample_coordinates(-(width / 2.0)[:, None, None, None, None], bin_w, p_x, j, gx)  # (n, 1, pw, 1, Gw)
    cos, sin = (t[:, None, None, None, None] for t in (torch.cos(theta), torch.sin(theta)))
    y = yy * cos - xx * sin + cy[:, None, None, None, None]  # (n, ph, pw, Gh, Gw)
    x = yy * sin + xx * cos + cx[:, None, None, None, None]
    valid = on_map(y, h) & on_map(x, w) & (i < gy) & (j < gx)
    # Validity in both axes' weights: their product is valid / (gh * gw), the kernel's mean.
    return bilinear_taps(y, valid, gy.to(dtype), h, dtype), bilinear_taps(x, valid, gx.to(dtype), w, dtype)


def rotated_samples_per_roi(
    boxes: torch.Tensor, level_of: torch.Tensor, sizes: List[Tuple[int, int]], scales: Tuple[float, ...],
    output_size: Tuple[int, int], sampling_ratio: int,
) -> torch.Tensor:
    """(N,) int64: the samples :func:`rotated_sample_groups` lays out for each ROI at most (its
    grid size rounded as the groups round it, within its window)."""
    ph, pw = output_size
    boxes = boxes.to(torch.float64)
    out = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    for level, ((h, w), scale) in enumerate(zip(sizes, scales)):
        rois = (level_of == level).nonzero().flatten()
        if rois.numel() == 0:
            continue
        cx, cy, width, height, theta = rotated_level_boxes(boxes[rois], scale)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        yy_lo, yy_hi, xx_lo, xx_hi = _spans(cx, cy, theta, (h, w), output_size)
        bh = torch.minimum(_window(yy_lo, yy_hi, height, ph, gh)[0], _bucket(gh, _EXACT_GRID))
        bw = torch.minimum(_window(xx_lo, xx_hi, width, pw, gw)[0], _bucket(gw, _EXACT_GRID))
        out[rois] = ph * pw * bh * bw
    return out


def rotated_sample_groups(
    boxes: torch.Tensor,
    batch: torch.Tensor,
    level_of: torch.Tensor,
    sizes: List[Tuple[int, int]],
    scales: Tuple[float, ...],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    dtype: torch.dtype,
    rows: Optional[Tuple[int, int]] = None,
) -> List[LevelSamples]:
    """:func:`.geometry.sample_groups` for rotated boxes: dense samples, level by level.

    Args:
        boxes: (N, 5) ``x_ctr, y_ctr, w, h, angle_degrees`` in input-image pixels (any float dtype;
            the geometry runs in float64). dtype: the compute dtype of the samplers.
        batch, level_of, sizes, scales, output_size, sampling_ratio: as in
            :func:`.geometry.sample_groups`.
        rows: ``(py0, py1)``: the samples of these bin rows only (groups of ``py1 - py0`` rows).
    """
    ph, pw = output_size
    boxes = boxes.to(torch.float64)
    plans = []
    for level, ((h, w), scale) in enumerate(zip(sizes, scales)):
        rois = (level_of == level).nonzero().flatten()
        if rois.numel() == 0:
            continue
        cx, cy, width, height, theta = rotated_level_boxes(boxes[rois], scale)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        groups = []
        for sel, g_h, g_w in grid_groups(gh, gw, exact_up_to=_EXACT_GRID):
            if g_h == 0 or g_w == 0:  # zero-size ROIs under adaptive sampling: no samples, output 0
                groups.append(SampleGroup(rois[sel], batch[rois[sel]], None, None))
                continue
            ys, xs = rotated_samples(cx[sel], cy[sel], width[sel], height[sel], theta[sel], output_size,
                                     gh[sel], gw[sel], g_h, g_w, (h, w), dtype, rows)
            groups.append(SampleGroup(rois[sel], batch[rois[sel]], ys, xs))
        plans.append(LevelSamples(level, groups))
    return plans
