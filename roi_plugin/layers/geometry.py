# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Geometry: where the sample points of an ROI lie and which pixels each one reads.

Coordinates. A level of stride ``s`` (scale ``1/s``) has its pixel *centres* at integer
coordinates 0..size-1. A box edge at input pixel ``x`` lies at ``x / s - 0.5`` with
ROIAlignV2 (``aligned``: input pixel centres map onto level pixel centres) and at ``x / s``
with the legacy ROIAlign, which also clamps the ROI's extent to at least 1 level pixel.

Samples. The ROI is cut into ``Ph x Pw`` bins and each bin into ``gh x gw`` equal
sub-bins (``sampling_ratio``, or ``ceil(extent / P)`` per ROI and axis when it is 0); one
sample sits at the centre of each sub-bin. Along one axis, sample ``i`` of bin ``p`` is

    c = start + p * bin + (i + 0.5) * bin / g,        bin = extent / P,

and the bin's value is the mean of its ``gh * gw`` bilinear samples.

Bilinear taps. With ``c`` clamped to >= 0, ``low = floor(c)``, ``high = low + 1`` and
``frac = c - low``, the sample reads ``(1 - frac) * f[low] + frac * f[high]``; on the last
pixel (``low >= size - 1``) both taps are that pixel and ``frac = 0``. In 2-D the four taps
are the products of the two axes' taps, so the sample grid is separable: each group below
carries y-samples and x-samples, not ``gh * gw`` points per bin.

Validity. A pixel's bilinear footprint reaches one pixel either side of its centre, so a
sample with ``c < -1`` or ``c > size`` is read by no pixel: it contributes 0, but still
counts in the mean's ``1 / (gh * gw)``. One within a pixel of the border reads the border
pixel (the clamp above). This is the convention of torchvision's ``roi_align`` kernel, the
one behind Detectron2's ``ROIPooler``, which both samplers reproduce sample for sample.

Precision. Coordinates are computed in the compute dtype (:func:`compute_dtype`: float64 for
float64 maps, float32 otherwise), except for ROIs far from the origin (:func:`needs_float64`).

Each rule above is one function of this file (:func:`compute_dtype`, :func:`samples_per_bin`,
:func:`sample_coordinates`, :func:`on_map`, :func:`needs_float64`, :func:`bilinear_taps`),
used by every path: the upright groups here, the flat tap lists (:mod:`.axis_taps`), the
rotated geometry (:mod:`.rotated_geometry`) and the static export path (:mod:`.static`).
"""
import math
from typing import List, NamedTuple, Optional, Tuple

import torch

__all__ = [
    "compute_dtype", "samples_per_bin", "sample_coordinates", "on_map", "needs_float64", "first_sample_on_map",
    "AxisSamples", "SampleGroup", "LevelSamples", "level_boxes", "axis_samples", "bilinear_taps", "grid_groups",
    "sample_groups",
]


# ---------------------------------------------------------------------------- the rules
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype coordinates, weights and sums are computed in for maps of ``dtype``: float64
    for float64 maps (gradcheck), float32 otherwise (half and bfloat16 maps are sampled in
    float32 and the result cast back, as torchvision's kernel accumulates in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def samples_per_bin(extent: torch.Tensor, pooled: int, sampling_ratio: int, max_grid: Optional[int] = None) -> torch.Tensor:
    """(n,) int64 samples per bin along one axis: ``sampling_ratio``, or when it is 0
    (adaptive) ``ceil(extent / pooled)`` per ROI (0 for an empty aligned ROI), at most
    ``max_grid`` when given (the capped static export path)."""
    if sampling_ratio > 0:
        return torch.full_like(extent, sampling_ratio, dtype=torch.int64)
    g = torch.ceil(extent / pooled)
    if max_grid is not None:
        g = g.clamp(max=max_grid)
    return g.to(torch.int64).clamp(min=0)


def sample_coordinates(start, bin_size, p, i, g):
    """``start + p * bin + i * bin / g``: sample ``i - 0.5`` (``i`` carries the half) of bin
    ``p``, in the association of the kernels (torchvision's ``roi_align``, Detectron2's
    ``ROIAlignRotated``), so that float32 coordinates round as theirs do. Broadcasts."""
    return start + p * bin_size + i * bin_size / g


def on_map(coord: torch.Tensor, size) -> torch.Tensor:
    """Samples some pixel reads: ``-1 <= coord <= size`` (a pixel's bilinear footprint reaches
    one pixel either side of its centre)."""
    return (coord >= -1.0) & (coord <= size)


def needs_float64(start: torch.Tensor, length: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """(n,) ROIs whose samples are computed in float64 whatever the compute dtype: far from the
    origin (boxes of ~1e6 px and more) float32 rounds a coordinate by more than a quarter of the
    sample ``spacing`` (torchvision's float32 kernel is noise there), and the on-map window of
    a huge ROI (:func:`axis_samples`, :mod:`.axis_taps`) needs exact coordinates."""
    far = (start.abs() + length.abs()).double() * 2.0**-23 / spacing.double() > 0.25
    return far & (spacing > 0)


def first_sample_on_map(base: torch.Tensor, spacing: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """Index ``k`` (float64, may be negative) of the first sample ``base + (k + 0.5) * spacing``
    at or past ``-1``, less ``margin`` samples for rounding; ``base`` and ``spacing`` float64
    (``base = start + p * bin``, ``spacing = bin / g``). Callers check validity exactly."""
    return torch.floor((-1.0 - base) / spacing - 0.5) - margin


class AxisSamples(NamedTuple):
    """The samples of a group of ROIs along one axis, each (n, P, G): ROI, bin, sample.

    ``coord`` is the sample coordinate before clamping, ``low``/``high`` (int64) its two taps
    and ``w_low``/``w_high`` their weights, which include ``1/g`` of the mean and are 0 for
    a sample outside the map or past the ROI's own ``g`` (groups lay out ``G >= g``).
    """

    coord: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    w_low: torch.Tensor
    w_high: torch.Tensor


class SampleGroup(NamedTuple):
    """ROIs of one level sampled together: the interface between geometry and the samplers.

    The sample of ROI ``r``, bin ``(py, px)`` and sub-bin ``(i, j)`` is at
    ``(ys.coord[r, py, i], xs.coord[r, px, j])`` and has weight
    ``(ys.w_low + ys.w_high)[r, py, i] * (xs.w_low + xs.w_high)[r, px, j]``. The rotated
    geometry (:mod:`.rotated_geometry`) is not separable: its ``ys`` and ``xs`` are *dense*,
    both (n, Ph, Pw, gh, gw), the sample of ``(r, py, px, i, j)`` at
    ``(ys.coord[r, py, px, i, j], xs.coord[r, py, px, i, j])``, weight the product of the two
    at that index. The grid_sample sampler tells the two apart by ``ys.coord.dim()``
    (``grid_sample._group_sets`` / ``_units_layout``); the gather sampler takes groups
    for rotated boxes only (``gather_plan._dense_group_taps``; upright boxes go through
    :mod:`.axis_taps`), see docs/ARCHITECTURE.md.
    """

    rois: torch.Tensor  # (n,) int64 positions of these ROIs in the pooler's output
    batch: torch.Tensor  # (n,) int64 image of each ROI
    ys: Optional[AxisSamples]  # (n, Ph, gh), dense (n, Ph, Pw, gh, gw); None: no samples, output 0
    xs: Optional[AxisSamples]  # (n, Pw, gw), dense (n, Ph, Pw, gh, gw); None with ys


class LevelSamples(NamedTuple):
    """The sample groups of the ROIs routed to one level (levels without ROIs are left out)."""

    level: int  # index into the pooler's feature list
    groups: List[SampleGroup]


def level_boxes(boxes: torch.Tensor, scale, aligned: bool) -> Tuple[torch.Tensor, ...]:
    """(N, 4) input-pixel boxes -> ``start_x, start_y, width, height`` (N,) in level pixel-centre
    coordinates; ``scale`` is the level's (float) or each box's ((N,) tensor)."""
    if isinstance(scale, torch.Tensor):
        scale = scale[:, None]
    bx = boxes * scale - (0.5 if aligned else 0.0)
    width, height = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
    if not aligned:  # legacy ROIAlign: force malformed ROIs to be 1x1
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    return bx[:, 0], bx[:, 1], width, height


def axis_samples(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, gmax: int, size: int
) -> AxisSamples:
    """Sample coordinates along one axis and their two linear-interpolation taps.

    Args:
        start, length: (n,) ROI start and extent along this axis, in level pixels.
        pooled: output bins along the axis. size: map size along the axis.
        grid: (n,) samples per bin of each ROI (>= 1); ``gmax >= grid.max()`` samples
            are laid out per bin (fewer, see the window below), those past an ROI's own
            ``grid`` get weight 0.
    Returns:
        :class:`AxisSamples`, each (n, pooled, G) with G <= gmax.
    """
    bin_size = (length / pooled)[:, None, None]
    g = grid.to(start.dtype)[:, None, None]
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    # The huge-box window. The valid samples of a bin (within [-1, size]) are consecutive,
    # and at most (size + 1) / spacing + 1 of them. For ROIs much larger than the map
    # (adaptive sampling gives ceil(extent / pooled) samples per bin) lay out only a window
    # that starts at each bin's first valid sample: the result is unchanged and memory is
    # bounded by the map size, not the box size.
    spacing = (bin_size / g).flatten()
    spacing = spacing[spacing > 0]
    window, margin = gmax, 1
    far = None
    if spacing.numel():
        # A progression of step `spacing` has at most floor((size + 1) / spacing) + 1 points
        # in [-1, size]; the window starts `margin` samples early (rounding of `first`).
        bound = math.floor((size + 1) / float(spacing.min())) + 1 + 2 * margin
        window = min(gmax, bound)
        far = needs_float64(start, length, (bin_size / g).flatten())
        far = far[:, None, None] if bool(far.any()) else None
    k = torch.arange(window, device=start.device, dtype=torch.float64)[None, None, :]
    if window < gmax:
        base = start.double()[:, None, None] + p.double() * bin_size.double()
        k = k + first_sample_on_map(base, bin_size.double() / g.double(), margin).clamp(min=0)
    i = k + 0.5
    coord = sample_coordinates(start[:, None, None], bin_size, p, i.to(start.dtype), g)
    if far is not None:  # needs_float64's ROIs in float64
        coord64 = sample_coordinates(start.double()[:, None, None], bin_size.double(), p.double(), i, g.double())
        coord = torch.where(far, coord64, coord.double())
    valid = on_map(coord, size) & (i < g)
    return bilinear_taps(coord, valid, g, size, start.dtype)


def bilinear_taps(
    coord: torch.Tensor, valid: torch.Tensor, g: torch.Tensor, size: int, dtype: torch.dtype
) -> AxisSamples:
    """The two linear-interpolation taps of sample coordinates ``coord`` along an axis of ``size``
    pixels (clamp to >= 0, ``low = floor``, the last pixel's rule), weighted by ``valid / g``.

    Shared by the upright geometry (``coord`` (n, P, G)), the flat tap lists (:mod:`.axis_taps`,
    ``coord`` (S,) with ``size`` an (S,) int64 tensor: each sample's own map) and the rotated
    geometry (:mod:`.rotated_geometry`, ``coord`` (n, Ph, Pw, Gh, Gw)); ``g`` broadcasts.
    Returns :class:`AxisSamples` in ``dtype``.
    """
    c = coord.clamp(min=0)
    low = c.floor().to(torch.int64)
    last = size - 1  # the last pixel: an int, or an int64 tensor of each sample's map
    at_edge = low >= last
    low = torch.where(at_edge, last, low).clamp(min=0)
    high = torch.where(at_edge, low, low + 1)
    high = high.clamp(max=max(last, 0)) if isinstance(last, int) else torch.minimum(high, last.clamp(min=0))
    frac = torch.where(at_edge, torch.zeros_like(c), c - low.to(c.dtype)).to(dtype)
    coord = coord.to(dtype)
    scale = valid.to(dtype) / g
    return AxisSamples(coord, low, high, (1.0 - frac) * scale, frac * scale)


def _bucket(g: torch.Tensor, exact_up_to: int = 0) -> torch.Tensor:
    """Round grid sizes above ``exact_up_to`` up to a power of two (0 stays 0): few sampling
    groups per level."""
    pow2 = torch.where(g > 0, 2 ** torch.ceil(torch.log2(g.clamp(min=1).double())).long(), g)
    return pow2 if exact_up_to <= 0 else torch.where(g <= exact_up_to, g, pow2)


def grid_groups(gh: torch.Tensor, gw: torch.Tensor, exact_up_to: int = 0) -> List[Tuple[torch.Tensor, int, int]]:
    """ROIs (positions in ``gh``/``gw``) sampled together and their ``(Gh, Gw)`` layout.

    ROIs whose grid sizes round up to the same powers of two (sizes up to ``exact_up_to``
    are kept exact) share a layout, extra samples masked: one group for a fixed ratio, a
    handful per level under adaptive sampling.
    """
    bh, bw = _bucket(gh, exact_up_to), _bucket(gw, exact_up_to)
    key = bh * (int(bw.max()) + 1) + bw
    out = []
    for k in torch.unique(key).tolist():
        sel = (key == k).nonzero().flatten()
        out.append((sel, int(gh[sel].max()), int(gw[sel].max())))
    return out


def sample_groups(
    boxes: torch.Tensor,
    batch: torch.Tensor,
    level_of: torch.Tensor,
    sizes: List[Tuple[int, int]],
    scales: Tuple[float, ...],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> List[LevelSamples]:
    """The samples of all ROIs, level by level, in groups that share a sample layout.

    Args:
        boxes: (N, 4) ``x1, y1, x2, y2`` in input-image pixels, in the compute dtype.
        batch: (N,) image of each box. level_of: (N,) level of each box (index into ``sizes``).
        sizes: (H, W) of each level. scales: 1/stride of each level.
        output_size: (Ph, Pw). sampling_ratio: samples per bin and axis, 0 = adaptive.
        aligned: ROIAlignV2's half-pixel shift.
    """
    ph, pw = output_size
    plans = []
    for level, ((h, w), scale) in enumerate(zip(sizes, scales)):
        rois = (level_of == level).nonzero().flatten()
        if rois.numel() == 0:
            continue
        start_x, start_y, width, height = level_boxes(boxes[rois], scale, aligned)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        groups = []
        for sel, g_h, g_w in grid_groups(gh, gw):
            if g_h == 0 or g_w == 0:  # empty aligned ROIs: no samples, output 0
                groups.append(SampleGroup(rois[sel], batch[rois[sel]], None, None))
                continue
            ys = axis_samples(start_y[sel], height[sel], ph, gh[sel], g_h, h)
            xs = axis_samples(start_x[sel], width[sel], pw, gw[sel], g_w, w)
            groups.append(SampleGroup(rois[sel], batch[rois[sel]], ys, xs))
        plans.append(LevelSamples(level, groups))
    return plans
