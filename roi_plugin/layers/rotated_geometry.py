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
The upright geometry's huge-box window is not applied: an ROI lays out all ``Ph * Pw * gh * gw`` samples, fine for boxes of the
image's size (a box of 10^4 px at stride 32 has 45 x 45 samples per bin) but growing with the
square of the box side under adaptive sampling.
"""
import math
from typing import List, Tuple

import torch

from .geometry import (
    AxisSamples, LevelSamples, SampleGroup, bilinear_taps, grid_groups, on_map, sample_coordinates, samples_per_bin,
)

__all__ = ["rotated_level_boxes", "rotated_samples", "rotated_sample_groups"]

# Adaptive grid sizes up to this are grouped exactly (dense layouts padded to a power of two
# would sample up to (2g-1)^2 / g^2 times the points); larger ones share power-of-two layouts.
_EXACT_GRID = 4


def rotated_level_boxes(boxes: torch.Tensor, scale: float) -> Tuple[torch.Tensor, ...]:
    """(N, 5) input-pixel rotated boxes -> ``cx, cy, width, height, theta`` (N,) in level
    pixel-centre coordinates, theta in radians."""
    cx = boxes[:, 0] * scale - 0.5
    cy = boxes[:, 1] * scale - 0.5
    return cx, cy, boxes[:, 2] * scale, boxes[:, 3] * scale, boxes[:, 4] * (math.pi / 180.0)


def rotated_samples(
    cx: torch.Tensor, cy: torch.Tensor, width: torch.Tensor, height: torch.Tensor, theta: torch.Tensor,
    output_size: Tuple[int, int], gh: torch.Tensor, gw: torch.Tensor, g_h: int, g_w: int,
    size: Tuple[int, int], dtype: torch.dtype,
) -> Tuple[AxisSamples, AxisSamples]:
    """Dense samples of a group of rotated ROIs.

    Args:
        cx, cy, width, height, theta: (n,) float64, from :func:`rotated_level_boxes`.
        gh, gw: (n,) samples per bin of each ROI (>= 1); ``g_h >= gh.max()``, ``g_w >= gw.max()``
            are laid out, those past an ROI's own grid get weight 0.
        size: (H, W) of the level. dtype: of the returned coordinates and weights.
    Returns:
        (ys, xs): :class:`.geometry.AxisSamples`, each (n, Ph, Pw, g_h, g_w).
    """
    ph, pw = output_size
    h, w = size
    f64 = dict(dtype=torch.float64, device=cx.device)
    gy, gx = gh.to(torch.float64)[:, None, None, None, None], gw.to(torch.float64)[:, None, None, None, None]
    bin_h = (height / ph)[:, None, None, None, None]
    bin_w = (width / pw)[:, None, None, None, None]
    p_y = torch.arange(ph, **f64)[None, :, None, None, None]
    p_x = torch.arange(pw, **f64)[None, None, :, None, None]
    i = torch.arange(g_h, **f64)[None, None, None, :, None] + 0.5
    j = torch.arange(g_w, **f64)[None, None, None, None, :] + 0.5
    # The kernel's association: start + p*bin + (i+0.5)*bin/grid, then the rotation.
    yy = sample_coordinates(-(height / 2.0)[:, None, None, None, None], bin_h, p_y, i, gy)  # (n, ph, 1, Gh, 1)
    xx = sample_coordinates(-(width / 2.0)[:, None, None, None, None], bin_w, p_x, j, gx)  # (n, 1, pw, 1, Gw)
    cos, sin = (t[:, None, None, None, None] for t in (torch.cos(theta), torch.sin(theta)))
    y = yy * cos - xx * sin + cy[:, None, None, None, None]  # (n, ph, pw, Gh, Gw)
    x = yy * sin + xx * cos + cx[:, None, None, None, None]
    valid = on_map(y, h) & on_map(x, w) & (i < gy) & (j < gx)
    # Validity in both axes' weights: their product is valid / (gh * gw), the kernel's mean.
    return bilinear_taps(y, valid, gy.to(dtype), h, dtype), bilinear_taps(x, valid, gx.to(dtype), w, dtype)


def rotated_sample_groups(
    boxes: torch.Tensor,
    batch: torch.Tensor,
    level_of: torch.Tensor,
    sizes: List[Tuple[int, int]],
    scales: Tuple[float, ...],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    dtype: torch.dtype,
) -> List[LevelSamples]:
    """:func:`.geometry.sample_groups` for rotated boxes: dense samples, level by level.

    Args:
        boxes: (N, 5) ``x_ctr, y_ctr, w, h, angle_degrees`` in input-image pixels (any float dtype;
            the geometry runs in float64). dtype: the compute dtype of the samplers.
        batch, level_of, sizes, scales, output_size, sampling_ratio: as in
            :func:`.geometry.sample_groups`.
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
                                     gh[sel], gw[sel], g_h, g_w, (h, w), dtype)
            groups.append(SampleGroup(rois[sel], batch[rois[sel]], ys, xs))
        plans.append(LevelSamples(level, groups))
    return plans
