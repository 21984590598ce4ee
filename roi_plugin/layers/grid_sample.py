# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The grid_sample sampler: the notebook's formulation, made exact.

``F.grid_sample(align_corners=False)`` places pixel centre ``i`` of a map of ``size``
pixels at the normalised coordinate ``(2i + 1) / size - 1``; each sample coordinate of
:mod:`.geometry` is clamped to ``[0, size - 1]`` first, so that ``padding_mode="border"``
reproduces the kernel's clamp and the bilinear read is the taps' ``(1-frac, frac)`` mix.
Samples outside the map and past an ROI's grid are zeroed by their weight (validity x
``1/(gh*gw)``), and each bin sums its samples with ``scatter_add``:

    bin = sum over its samples s of  w_s * grid_sample(feature, point_s)

The sample points of all ROIs of all images of a level (any adaptive grid sizes) go
through one ``grid_sample`` call (a few for many ROIs, to bound memory). The backward
(:func:`grid_sample_roi_align_backward`) runs each step transposed, the reads through
``grid_sample``'s own backward kernel, from the same layout rebuilt from the boxes: these are
the operators ``roi_plugin::roi_align_grid_sample[_backward]`` (:mod:`.roi_align_ops`).
``GridSample`` is a standard ONNX operator, so this formulation is also the export path's
(:mod:`.static`).
"""
import math
from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F

from .geometry import AxisSamples, LevelSamples, SampleGroup

__all__ = ["grid_sample_roi_align", "grid_sample_roi_align_backward", "sample_points"]


def sample_points(ys: AxisSamples, xs: AxisSamples, h, w):
    """``grid_sample``'s view of samples: normalised coordinates ``gy``, ``gx`` and per-axis
    weights ``vy``, ``vx`` (shapes of ``ys.coord`` / ``xs.coord``). Also the rotated ONNX path's
    (:func:`.static.rotated_grid_sample_static`), where ``h`` and ``w`` may be traced sizes."""
    # Normalised coordinates for align_corners=False: pixel centre i <-> (2i+1)/size - 1.
    # Clamping to the map first makes "border" padding equal the kernel's clamp.
    gy = (2 * ys.coord.clamp(min=0).clamp(max=h - 1) + 1) / h - 1  # (n, ph, gh)
    gx = (2 * xs.coord.clamp(min=0).clamp(max=w - 1) + 1) / w - 1  # (n, pw, gw)
    # Per-sample weight: validity (within one pixel of the map, within the ROI's own grid)
    # times the 1/(gh*gw) of the mean.
    vy, vx = ys.w_low + ys.w_high, xs.w_low + xs.w_high  # (n, ph, gh), (n, pw, gw)
    return gy, gx, vy, vx


def _group_points(group: SampleGroup, h: int, w: int, ph: int, pw: int):
    """A sample group as sampling units ``(b, gy, gx, vy, vx)`` (see :func:`_units_layout`)
    and the bins they fill (None: all bins of all ROIs, in order)."""
    gy, gx, vy, vx = sample_points(group.ys, group.xs, h, w)
    if gy.dim() == 5:  # dense samples (rotated boxes), all (n, ph, pw, gh, gw): one unit per ROI
        return (group.batch, gy, gx, vy, vx), None
    live = (vy.sum(2) > 0)[:, :, None] & (vx.sum(2) > 0)[:, None, :]  # (n, ph, pw)
    if int(live.sum()) * 2 < live.numel():
        # Mostly empty bins (ROIs far larger than the map): sample each live bin as a
        # 1x1-bin unit and scatter the results into zeros.
        r_, py, px = live.nonzero(as_tuple=True)
        unit = (group.batch[r_], gy[r_, py][:, None], gx[r_, px][:, None], vy[r_, py][:, None], vx[r_, px][:, None])
        return unit, (r_ * ph + py) * pw + px
    return (group.batch, gy, gx, vy, vx), None


def _level_units(levels: List[LevelSamples], sizes, output_size: Tuple[int, int]):
    """The sampling units of every level: ``(rois of each group, in plan order, per level (level,
    unit sets, (group index, n, bins) of each set))``; groups without samples have no set."""
    ph, pw = output_size
    order, per_level = [], []
    for plan in levels:
        _, _, h, w = sizes[plan.level]
        sets, dest = [], []
        for group in plan.groups:
            if group.ys is not None:
                unit, bins = _group_points(group, h, w, ph, pw)
                sets.append(unit)
                dest.append((len(order), group.rois.numel(), bins))
            order.append(group.rois)
        per_level.append((plan.level, sets, dest))
    return order, per_level


def grid_sample_roi_align(
    x: List[torch.Tensor], levels: List[LevelSamples], num_rois: int, output_size: Tuple[int, int],
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Pool the sample groups ``levels`` from the maps ``x`` (B, C, H_l, W_l) -> (num_rois, C, Ph, Pw)."""
    ph, pw = output_size
    channels = x[0].shape[1]
    order, per_level = _level_units(levels, [f.shape for f in x], output_size)
    pieces = [None] * len(order)
    for level, sets, dest in per_level:
        feat = x[level]
        if feat.dtype != compute_dtype:  # grid_sample wants input and grid of one dtype
            feat = feat.to(compute_dtype)
        bsz, _, h, w = feat.shape
        for call in _grid_sample_calls(sets, bsz * h * w):
            layout = _units_layout(bsz, [sets[i] for i in call], feat.dtype, feat.device)
            for (k, n, bins), pooled in zip([dest[i] for i in call], _units_forward(feat, layout)):
                if bins is None:
                    pieces[k] = pooled
                else:
                    flat = pooled.new_zeros((n * ph * pw, channels)).index_copy(0, bins, pooled[:, :, 0, 0])
                    pieces[k] = flat.view(n, ph, pw, channels).permute(0, 3, 1, 2)
    for k, rois in enumerate(order):  # groups without samples (empty aligned boxes): zeros
        if pieces[k] is None:
            pieces[k] = x[0].new_zeros((rois.numel(), channels, ph, pw), dtype=compute_dtype)
    # One gather back to input order.
    inverse = torch.empty(num_rois, dtype=torch.int64, device=x[0].device)
    cat_order = torch.cat(order)
    inverse[cat_order] = torch.arange(num_rois, device=cat_order.device)
    # Contiguous NCHW, as ROIPooler returns: the pieces are channels-last views, and a
    # channels-last result would carry through the heads' convs (the keypoint loss .view()s).
    return torch.cat(pieces)[inverse].to(x[0].dtype).contiguous()


def grid_sample_roi_align_backward(
    grad: torch.Tensor, levels: List[LevelSamples], sizes: Sequence[Sequence[int]], dtype: torch.dtype,
    output_size: Tuple[int, int], compute_dtype: torch.dtype,
) -> List[torch.Tensor]:
    """The transpose of :func:`grid_sample_roi_align`: the gradient (B, C, H_l, W_l) of each
    level of ``sizes``, in ``dtype``, for ``grad`` (num_rois, C, Ph, Pw); each step of the
    forward backwards (``grid_sample``'s own backward kernel for the reads)."""
    ph, pw = output_size
    channels = grad.shape[1]
    order, per_level = _level_units(levels, sizes, output_size)
    pieces = grad.to(compute_dtype)[torch.cat(order)].split([rois.numel() for rois in order])
    grads = [None] * len(sizes)
    for level, sets, dest in per_level:
        bsz, _, h, w = sizes[level]
        # Last call first: the order in which autograd summed them (bit-identical gradients).
        for call in reversed(_grid_sample_calls(sets, bsz * h * w)):
            layout = _units_layout(bsz, [sets[i] for i in call], compute_dtype, grad.device)
            unit_grads = []
            for k, n, bins in (dest[i] for i in call):
                g = pieces[k]
                if bins is not None:  # the bins sampled as 1x1 units
                    g = g.permute(0, 2, 3, 1).reshape(n * ph * pw, channels).index_select(0, bins)[:, :, None, None]
                unit_grads.append(g)
            g = _units_backward(unit_grads, layout, (bsz, channels, h, w))
            grads[level] = g if grads[level] is None else grads[level] + g
    return [torch.zeros(tuple(size), dtype=dtype, device=grad.device) if g is None else g.to(dtype)
            for g, size in zip(grads, sizes)]


def _grid_sample_calls(sets, level_positions: int) -> List[List[int]]:
    """Split the unit sets of a level into ``grid_sample`` calls.

    Two costs pull apart. Each call's backward allocates a gradient the size of the level
    (autograd then sums them, holding two at once), and each call's samples are a
    (B, C, points) tensor, twice over (samples, weighted samples). All sets go into one call
    when their points fit in the level's B*H*W positions (the mask head's few ROIs: one
    level-sized gradient, samples no larger than the level); otherwise calls of at most a
    quarter of that (measured on the benchmark's 2 x 512 ROIs under adaptive sampling: 1.65x
    ROIPooler's peak memory, against 1.95x with level-sized calls).
    """
    sizes = [b.numel() * math.prod(_unit_layout(gy, gx)) for b, gy, gx, _, _ in sets]
    budget = level_positions if sum(sizes) <= level_positions else level_positions // 4
    calls: List[List[int]] = []
    points = 0
    for i, p in enumerate(sizes):
        if calls and points + p <= budget:
            calls[-1].append(i)
            points += p
        else:  # a set larger than the budget is a call of its own
            calls.append([i])
            points = p
    return calls


def _unit_layout(gy: torch.Tensor, gx: torch.Tensor) -> Tuple[int, int, int]:
    """``(uh, uw, samples per bin)`` of a unit set: separable ``gy`` (n, uh, gh) and ``gx``
    (n, uw, gw), or dense, both (n, uh, uw, gh, gw)."""
    if gy.dim() == 5:
        return gy.shape[1], gy.shape[2], gy.shape[3] * gy.shape[4]
    return gy.shape[1], gx.shape[1], gy.shape[2] * gx.shape[2]


class _UnitsLayout(NamedTuple):
    """Sampling units of one ``grid_sample`` call: every image's sample points one unit after
    the other, each weighted and pointing at its bin; padding points have weight 0 (bin 0)."""

    grid: torch.Tensor  # (B, 1, P, 2) normalised sample points
    weight: torch.Tensor  # (B, P) validity x 1/grid of each point
    point_bin: torch.Tensor  # (B, P) int64 bin of each point within its image
    nbins: int  # bins per image
    units: List[Tuple[torch.Tensor, torch.Tensor, Tuple[int, int, int]]]  # (b, bins (n, uh*uw), (n, uh, uw)) per set


def _units_layout(bsz: int, sets, dtype: torch.dtype, device: torch.device) -> _UnitsLayout:
    """Lay out sets of sampling units (ROIs, or single bins of ROIs) of one level for a single
    ``grid_sample`` call.

    Sets of several adaptive grid sizes share one call (see :func:`_grid_sample_calls`):
    ``grid_sampler_2d_backward`` allocates and zero-fills a gradient the size of the whole
    level per call.

    Args:
        sets: list of ``(b, gy, gx, vy, vx)``: b (n,) image of each unit; gy, gx (n, uh, gh),
            (n, uw, gw) normalised sample coordinates of uh x uw bins, or dense ones, both
            (n, uh, uw, gh, gw) (rotated boxes); vy, vx same shapes, per-sample weights
            (validity x 1/grid) along each axis.
    """
    shapes = [(b.numel(), *_unit_layout(gy, gx)) for b, gy, gx, _, _ in sets]
    # Every image's points (and bins) are laid out one unit after the other: the start of each
    # unit within its image, for bins and for sample points.
    unit_image = torch.cat([b for b, _, _, _, _ in sets])
    unit_bins = torch.cat([torch.full((n,), uh * uw, dtype=torch.int64, device=device) for n, uh, uw, _ in shapes])
    unit_points = torch.cat(
        [torch.full((n,), uh * uw * g, dtype=torch.int64, device=device) for n, uh, uw, g in shapes]
    )

    by_image = torch.argsort(unit_image, stable=True)
    sorted_image = unit_image[by_image]

    counts = torch.bincount(unit_image, minlength=bsz)  # units per image (no weights: deterministic on CUDA)
    ends = torch.cumsum(counts, 0)  # each image's units end there in by_image order

    def starts(sizes):
        csum = torch.cumsum(sizes[by_image], 0)
        before = csum - sizes[by_image]
        csum0 = torch.cat([csum.new_zeros(1), csum])
        first = csum0[ends - counts]  # each image's first position
        totals = csum0[ends] - first
        out = torch.empty_like(sizes)
        out[by_image] = before - first[sorted_image]
        return out, int(totals.max()) if totals.numel() else 0

    bin_start, nbins = starts(unit_bins)
    point_start, npoints = starts(unit_points)
    grid = torch.zeros((bsz, npoints, 2), dtype=dtype, device=device)
    weight = torch.zeros((bsz, npoints), dtype=dtype, device=device)
    point_bin = torch.zeros((bsz, npoints), dtype=torch.int64, device=device)
    units, u0 = [], 0
    for (b, gy, gx, vy, vx), (n, uh, uw, g) in zip(sets, shapes):
        units.append((b, bin_start[u0:u0 + n, None] + torch.arange(uh * uw, device=device), (n, uh, uw)))
        if n == 0:
            continue
        # Points in (unit, bin row, bin column, sample row, sample column) order, so that the
        # samples of a bin are consecutive.
        if gy.dim() == 5:  # dense: every point has its own (y, x)
            pts, w = torch.stack([gx, gy], -1), vy * vx
        else:
            pts = torch.stack(torch.broadcast_tensors(gx[:, None, :, None, :], gy[:, :, None, :, None]), -1)
            w = vy[:, :, None, :, None] * vx[:, None, :, None, :]  # (n, uh, uw, gh, gw)
        slots = point_start[u0:u0 + n, None] + torch.arange(uh * uw * g, device=device)
        bins = bin_start[u0:u0 + n, None] + torch.arange(uh * uw, device=device).repeat_interleave(g)
        grid[b[:, None], slots] = pts.reshape(n, -1, 2)
        weight[b[:, None], slots] = w.reshape(n, -1)
        point_bin[b[:, None], slots] = bins
        u0 += n
    return _UnitsLayout(grid.view(bsz, 1, npoints, 2), weight, point_bin, nbins, units)


def _units_forward(feat: torch.Tensor, layout: _UnitsLayout) -> List[torch.Tensor]:
    """Average-pool the units of ``layout`` from the level ``feat`` (B, C, H, W): one
    (n, C, uh, uw) tensor per set, for each bin the weighted sum of its gh x gw samples."""
    bsz, channels = feat.shape[:2]
    npoints = layout.weight.shape[1]
    if npoints == 0:
        return [feat.new_zeros((n, channels, uh, uw)) for _, _, (n, uh, uw) in layout.units]
    samples = F.grid_sample(
        feat, layout.grid, mode="bilinear", padding_mode="border", align_corners=False
    ).view(bsz, channels, npoints)
    # Padding points have weight 0 (and bin 0): they add nothing.
    pooled = feat.new_zeros((bsz, channels, layout.nbins)).scatter_add(
        2, layout.point_bin[:, None, :].expand(bsz, channels, npoints), samples * layout.weight[:, None, :]
    ).permute(0, 2, 1)  # (B, bins, C)
    return [pooled[b[:, None], idx].view(n, uh, uw, channels).permute(0, 3, 1, 2)
            for b, idx, (n, uh, uw) in layout.units]


def _units_backward(grads: List[torch.Tensor], layout: _UnitsLayout, size: Sequence[int]) -> torch.Tensor:
    """The transpose of :func:`_units_forward`: the gradient of the level (``size`` (B, C, H, W))
    for the gradients ``grads`` (n, C, uh, uw) of its sets."""
    bsz, channels = size[0], size[1]
    npoints = layout.weight.shape[1]
    grad_pooled = layout.weight.new_zeros((bsz, layout.nbins, channels))
    if npoints == 0:
        return layout.weight.new_zeros(tuple(size))
    for g, (b, idx, (n, uh, uw)) in zip(grads, layout.units):
        grad_pooled[b[:, None], idx] = g.permute(0, 2, 3, 1).reshape(n, uh * uw, channels)  # bins are disjoint
    grad_samples = grad_pooled.permute(0, 2, 1).gather(
        2, layout.point_bin[:, None, :].expand(bsz, channels, npoints)
    ) * layout.weight[:, None, :]
    # grid_sample's own backward kernel (the one autograd calls), input gradient only: it reads
    # the input's shape and dtype, not its values.
    shape_only = layout.weight.new_zeros(()).expand(tuple(size))
    return torch.ops.aten.grid_sampler_2d_backward(
        grad_samples.view(bsz, channels, 1, npoints), shape_only, layout.grid, 0, 1, False, [True, False]
    )[0]
