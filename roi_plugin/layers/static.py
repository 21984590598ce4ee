# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The ONNX paths: ROIAlign with fixed shapes and no Python control flow on data, in operators
ONNX has. ``torch.onnx.export`` cannot express the pooler's own operators
(:mod:`.roi_align_ops`), so while it traces, the pooler runs one of these instead; every
other way of running the pooler (eager, ``torch.compile``, TorchScript, ``torch.jit.trace``,
``torch.export``) runs the operators.

:func:`roi_align_levels` (the default ONNX path, exact at every sampling ratio) runs
``torchvision.ops.roi_align`` (ONNX ``RoiAlign`` from opset 16, whose onnxruntime kernel equals
torchvision's, see ``tests/test_export.py``; the kernel the eager samplers reproduce sample for
sample) once per level on *all* K ROIs, the boxes of ROIs routed to other levels replaced by an
empty box at the origin, and keeps each ROI's own level with ``where``:

    pooled[k] = sum_level [level_of[k] = level] * roi_align(level, box_k if on level else 0)

An empty box costs one sample per bin at any sampling ratio (adaptive: ``ceil(0 / h) = 0``
samples, counted as one; legacy mode clamps it to 1 px), so the extra work is
``(L - 1) * K * h * w`` samples. No ``nonzero``, no data-dependent shape: the numbers of ROIs
and images are dynamic, and adaptive sampling stays adaptive inside ``RoiAlign`` (no cap).

:func:`grid_sample_static` (``GridSample`` only, for runtimes without ``RoiAlign``): the
operators group ROIs by level and grid size with ``nonzero``/``unique`` and Python loops over
the result, which an ONNX trace would freeze. Here every ROI is sampled on
every level and every image with one ``F.grid_sample`` per level on a fixed ``(G, G)``
layout, and the samples are weighted by a mask:

    pooled[k] = sum_{level, image} [level_of[k] = level] [image_of[k] = image]
                * sum_{samples s of each bin} w_s * grid_sample(level[image], point_s)

The number of ROIs and of images stay dynamic; the cost is ``levels x images`` times the
eager work, irrelevant for export. Sample coordinates and weights are those of
:mod:`.geometry` (same expressions), so values match the eager samplers'.

:func:`rotated_grid_sample_static` (rotated boxes, ``ROIAlignRotated``; ONNX ``RoiAlign`` has
no rotation): the samples of :func:`.rotated_geometry.rotated_samples`, the operators' own
rule, read by ``GridSample`` as the grid_sample sampler reads them
(:func:`.grid_sample.sample_points`) and summed per bin. Per level it takes the ROIs routed there
(``NonZero``: a data-dependent count, which ONNX allows) and lays them out on the largest
adaptive grid among them, each ROI's samples past its own grid weighted 0: exact under adaptive
sampling, with no cap, at ``B x C x n_level x Ph x Pw x Gh x Gw`` samples per level.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision

from .geometry import compute_dtype, level_boxes, on_map, sample_coordinates, samples_per_bin
from .grid_sample import sample_points
from .rotated_geometry import rotated_level_boxes, rotated_samples

__all__ = ["EXPORT_MAX_GRID", "grid_sample_static", "roi_align_levels", "rotated_grid_sample_static"]

# Samples per bin and axis that the static (export) path lays out under adaptive sampling
# (``sampling_ratio=0``); see :func:`grid_sample_static`.
EXPORT_MAX_GRID = 4


def roi_align_levels(
    x: List[torch.Tensor],
    rois: torch.Tensor,
    level_of: torch.Tensor,
    output_size: List[int],
    scales: List[float],
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """Multi-level ROIAlign, exact at every sampling ratio, static shapes (ONNX ``RoiAlign``).

    Args:
        x: L maps (B, C, H_l, W_l), finest first, matching ``scales``.
        rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
        level_of: (K,) int64 level of each ROI (0 for ``x[0]``).
        output_size: (h, w). scales: 1/stride of each level.
        sampling_ratio: samples per bin and axis, 0 = adaptive.
        aligned: ``ROIAlignV2`` (half-pixel shift) if True, legacy ``ROIAlign`` otherwise.
    Returns:
        (K, C, h, w) in the maps' dtype (sampled in float32, float64 for float64 maps).
    """
    dtype = x[0].dtype
    compute = compute_dtype(dtype)
    rois = rois.to(compute)
    out = torch.zeros(0)
    for level in range(len(x)):
        here = (level_of == level)[:, None]
        level_rois = torch.cat([rois[:, :1], torch.where(here, rois[:, 1:], torch.zeros_like(rois[:, 1:]))], 1)
        pooled = torchvision.ops.roi_align(
            x[level].to(compute), level_rois, output_size, scales[level], sampling_ratio, aligned
        )
        out = pooled if level == 0 else torch.where(here[:, :, None, None], pooled, out)
    return out.to(dtype)


def _static_axis_samples(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, gmax: int, size
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`.geometry.axis_samples` on a fixed ``gmax`` layout, in ``grid_sample``'s coordinates.

    No data-dependent shapes or Python branches; ``size`` may be a traced size.

    Args:
        start, length: (K,) ROI start and extent along this axis, in level pixels.
        grid: (K,) samples per bin of each ROI (0..gmax); samples past it get weight 0.
    Returns:
        norm (K, pooled*gmax) normalised coordinates for ``align_corners=False`` (clamped to
        the map, so ``padding_mode="border"`` reproduces the kernel's clamp), and
        weight (K, pooled*gmax): validity times ``1/grid``.
    """
    bin_size = (length / pooled)[:, None, None]
    g = grid.to(start.dtype)[:, None, None]
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(gmax, device=start.device, dtype=start.dtype)[None, None, :] + 0.5
    # g == 0 (empty aligned ROI) has no valid sample; clamp only to keep the division finite.
    coord = sample_coordinates(start[:, None, None], bin_size, p, i, g.clamp(min=1))
    valid = on_map(coord, size) & (i < g)
    norm = (2 * torch.minimum(coord.clamp(min=0), (size - 1) + torch.zeros_like(coord)) + 1) / size - 1
    weight = valid.to(coord.dtype) / g.clamp(min=1)
    return norm.flatten(1), weight.flatten(1)


def grid_sample_static(
    x: List[torch.Tensor], rois: torch.Tensor, level_of: torch.Tensor, scales: Sequence[float],
    output_size: Tuple[int, int], sampling_ratio: int, aligned: bool, max_grid: int,
) -> torch.Tensor:
    """Pool ``rois`` (K, 5) ``batch_index, x1, y1, x2, y2`` from the maps ``x`` (B, C, H_l, W_l).

    Exact (same values as the eager samplers) for ``sampling_ratio > 0``. With adaptive
    sampling each ROI uses ``min(ceil(extent / output), max_grid)`` samples per bin: exact
    for every ROI whose adaptive grid is at most ``max_grid``, sub-sampled beyond.

    Args:
        level_of: (K,) level of each ROI (index into ``x``).
    Returns:
        (K, C, Ph, Pw) pooled features in the features' dtype.
    """
    ph, pw = output_size
    dtype = x[0].dtype
    work = compute_dtype(dtype)
    boxes = rois[:, 1:].to(work)
    image = rois[:, 0].to(torch.int64)
    gmax = sampling_ratio if sampling_ratio > 0 else int(max_grid)
    if gmax < 1:
        raise ValueError(f"max_grid must be >= 1 for adaptive sampling, got {max_grid}")
    out = None
    for level, (feat, scale) in enumerate(zip(x, scales)):
        bsz, channels, h, w = feat.shape
        start_x, start_y, width, height = level_boxes(boxes, scale, aligned)
        gh = samples_per_bin(height, ph, sampling_ratio, max_grid=gmax)
        gw = samples_per_bin(width, pw, sampling_ratio, max_grid=gmax)
        gy, wy = _static_axis_samples(start_y, height, ph, gh, gmax, h)  # (K, ph*G)
        gx, wx = _static_axis_samples(start_x, width, pw, gw, gmax, w)  # (K, pw*G)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
        grid = grid.reshape(1, -1, pw * gmax, 2).expand(bsz, -1, -1, -1)  # (B, K*ph*G, pw*G, 2)
        samples = F.grid_sample(
            feat.to(work), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).reshape(bsz, channels, -1, ph * gmax, pw * gmax)
        # weight (B, K, ph*G, pw*G): validity x 1/(gh*gw) x "on this level" x "of this image"
        on_level = (level_of == level).to(work)
        of_image = (image[None, :] == torch.arange(bsz, device=image.device)[:, None]).to(work)
        weight = wy[:, :, None] * wx[:, None, :] * on_level[:, None, None]
        weight = weight[None] * of_image[:, :, None, None]
        pooled = (samples * weight[:, None]).sum(0)  # (C, K, ph*G, pw*G)
        pooled = pooled.reshape(channels, -1, ph, gmax, pw, gmax).sum((3, 5)).permute(1, 0, 2, 3)
        out = pooled if out is None else out + pooled
    return out.to(dtype)


def rotated_grid_sample_static(
    x: List[torch.Tensor], rois: torch.Tensor, level_of: torch.Tensor, scales: Sequence[float],
    output_size: Tuple[int, int], sampling_ratio: int,
) -> torch.Tensor:
    """Pool rotated ``rois`` (K, 6) ``batch_index, x_ctr, y_ctr, w, h, angle`` from the maps ``x``
    (B, C, H_l, W_l) with ``F.grid_sample`` only: the operators' values (up to ``grid_sample``'s
    float32 coordinates, as the grid_sample sampler), at every sampling ratio, adaptive included.

    Args:
        level_of: (K,) level of each ROI (index into ``x``).
    Returns:
        (K, C, Ph, Pw) pooled features in the features' dtype.
    """
    ph, pw = output_size
    dtype = x[0].dtype
    work = compute_dtype(dtype)
    boxes = rois[:, 1:].to(torch.float64)  # the rotated geometry runs in float64
    image = rois[:, 0].to(torch.int64)
    out = x[0].new_zeros((rois.shape[0], x[0].shape[1], ph, pw), dtype=work)
    one = torch.ones(1, dtype=torch.int64, device=rois.device)
    for level, (feat, scale) in enumerate(zip(x, scales)):
        bsz, channels, h, w = feat.shape
        idx = (level_of == level).nonzero()[:, 0]  # the ROIs of this level, n of them
        n = idx.shape[0]
        cx, cy, width, height, theta = rotated_level_boxes(boxes[idx], scale)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        # the layout: the largest grid of the level (at least 1, also for a level without ROIs)
        g_h = sampling_ratio if sampling_ratio > 0 else torch.cat([gh, one]).max()
        g_w = sampling_ratio if sampling_ratio > 0 else torch.cat([gw, one]).max()
        ys, xs = rotated_samples(cx, cy, width, height, theta, output_size, gh.clamp(min=1), gw.clamp(min=1),
                                 g_h, g_w, (h, w), work, window=False)
        gy, gx, vy, vx = sample_points(ys, xs, h, w)  # each (n, ph, pw, Gh, Gw)
        # an empty ROI (no samples under adaptive sampling) pools 0, as in the operators
        weight = vy * vx * ((gh > 0) & (gw > 0)).to(work)[:, None, None, None, None]
        # Shapes are given in full, n first: ONNX Reshape reads a 0 as "copy this axis", and a
        # level without ROIs has n = 0 (its axis 0 is 0 too, so the copy is right).
        per_bin = g_h * g_w
        grid = torch.stack([gx, gy], -1).reshape(n, ph * pw * per_bin, 2)
        samples = F.grid_sample(
            feat.to(work), grid[None].expand(bsz, n, ph * pw * per_bin, 2), mode="bilinear",
            padding_mode="border", align_corners=False,
        ).reshape(bsz, channels, n, ph * pw, per_bin)
        of_image = (image[idx][None, :] == torch.arange(bsz, device=image.device)[:, None]).to(work)  # (B, n)
        weight = weight.reshape(n, ph * pw, per_bin)[None] * of_image[:, :, None, None]  # (B, n, ph*pw, G)
        pooled = (samples * weight[:, None]).sum((0, 4))  # (C, n, ph*pw)
        out = out.index_put((idx,), pooled.permute(1, 0, 2).reshape(n, channels, ph, pw))
    return out.to(dtype)
