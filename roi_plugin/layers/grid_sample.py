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
from typing import Callable, List, NamedTuple, Sequence, Tuple

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


# A grid_sample call's points stay within a quarter of the level's positions (its samples, C
# values each, within a quarter of the level), and may always hold _MIN_SAMPLES values.
_MIN_SAMPLES = 2**17


def _point_cap(level_positions: int, channels: int) -> int:
    """Points of one ``grid_sample`` call at most (a single bin's may exceed it)."""
    return max(_MIN_SAMPLES // max(channels, 1), level_positions // 8)


class _UnitSet(NamedTuple):
    """A set of ``n`` sampling units of ``points`` points each; ``make()`` gives them as
    ``(b, gy, gx, vy, vx)`` (see :func:`_units_layout`)."""

    n: int
    points: int
    make: Callable[[], Tuple[torch.Tensor, ...]]
    part: bool = False  # a part of a group split to fit a call: a call of its own (a compact crop)


def _group_sets(group: SampleGroup, h: int, w: int, ph: int, pw: int, cap: int):
    """A sample group as sets of sampling units (:class:`_UnitSet`) of at most ``cap`` points
    each (a bin never split), each with the ROIs and bins they fill: ``(set, r0, r1, bins)``,
    ``bins`` None for all bins of the group's ROIs ``r0..r1-1``, else the flat (ROI, bin)
    positions in the group of 1x1-bin units."""
    gy, gx, vy, vx = sample_points(group.ys, group.xs, h, w)
    n, batch = group.rois.numel(), group.batch  # (the sets keep these, not the group's samples)
    dense = gy.dim() == 5  # rotated boxes: all (n, ph, pw, gh, gw)
    per_bin = gy.shape[3] * gy.shape[4] if dense else gy.shape[2] * gx.shape[2]
    if dense:
        live = (vy * vx).flatten(3).sum(3) > 0  # (n, ph, pw)
    else:
        live = (vy.sum(2) > 0)[:, :, None] & (vx.sum(2) > 0)[:, None, :]  # (n, ph, pw)
    many = n * ph * pw * per_bin > cap
    if (dense or int(live.sum()) * 2 >= live.numel()) and (not many or ph * pw * per_bin <= cap):
        # Whole ROIs: all in one set, or in runs of as many as fit.
        step = n if not many else max(1, cap // (ph * pw * per_bin))

        def rois(r0, r1):
            return lambda: (batch[r0:r1], gy[r0:r1], gx[r0:r1], vy[r0:r1], vx[r0:r1])
        return [(_UnitSet(min(r0 + step, n) - r0, ph * pw * per_bin, rois(r0, min(r0 + step, n)), many), r0,
                 min(r0 + step, n), None) for r0 in range(0, n, step)]
    # Mostly empty bins (ROIs far larger than the map), or ROIs of more points than a call
    # holds: sample each live bin as a 1x1-bin unit, as many per set as fit, and scatter the
    # results into zeros. (A set's units are gathered when its call is laid out.)
    r_, py, px = live.nonzero(as_tuple=True)
    step = max(1, cap // per_bin)

    def bins(r, y, x):
        if dense:
            return lambda: (batch[r], gy[r, y, x][:, None, None], gx[r, y, x][:, None, None],
                            vy[r, y, x][:, None, None], vx[r, y, x][:, None, None])
        return lambda: (batch[r], gy[r, y][:, None], gx[r, x][:, None], vy[r, y][:, None], vx[r, x][:, None])
    # Sets of bins of one ROI each when split (a compact crop per call), else of any ROIs.
    ends = (torch.cumsum(torch.unique_consecutive(r_, return_counts=True)[1], 0).tolist() if many
            else [r_.numel()])
    out, k0 = [], 0
    for end in ends:
        for k in range(k0, end, step):
            r, y, x = r_[k:min(k + step, end)], py[k:min(k + step, end)], px[k:min(k + step, end)]
            out.append((_UnitSet(r.numel(), per_bin, bins(r, y, x), many), 0, n, (r * ph + y) * pw + x))
        k0 = end
    return out


def _level_units(levels: List[LevelSamples], sizes, output_size: Tuple[int, int]):
    """The sampling units of every level: ``(rois of each group, in plan order, per level (level,
    unit sets, (group index, r0, r1, bins) of each set))``; groups without samples have no set."""
    ph, pw = output_size
    order, per_level = [], []
    for plan in levels:
        bsz, channels, h, w = sizes[plan.level]
        sets, dest = [], []
        for group in plan.groups:
            if group.ys is not None:
                for unit, r0, r1, bins in _group_sets(group, h, w, ph, pw, _point_cap(bsz * h * w, channels)):
                    sets.append(unit)
                    dest.append((len(order), r0, r1, bins))
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
    del levels  # the sets keep what they sample (the caller passes the groups on unnamed)
    pieces = [None] * len(order)
    for level, sets, dest in per_level:
        feat = x[level]
        if feat.dtype != compute_dtype:  # grid_sample wants input and grid of one dtype
            feat = feat.to(compute_dtype)
        bsz, _, h, w = feat.shape
        whole = {k for k, r0, r1, bins in dest if bins is None and (r0, r1) == (0, order[k].numel())}
        for call in _grid_sample_calls(sets, bsz * h * w, channels):
            layout = _units_layout(bsz, [sets[i].make() for i in call], feat.dtype, feat.device)
            for (k, r0, r1, bins), pooled in zip([dest[i] for i in call], _units_forward(feat, layout)):
                if k in whole:  # the group's ROIs in one set
                    pieces[k] = pooled
                    continue
                n = order[k].numel()
                if pieces[k] is None:  # channels-last zeros that the sets of the group fill
                    pieces[k] = pooled.new_zeros((n, ph, pw, channels)).permute(0, 3, 1, 2)
                flat = pieces[k].permute(0, 2, 3, 1).view(n * ph * pw, channels)
                if bins is None:
                    pieces[k][r0:r1] = pooled
                else:
                    flat.index_copy_(0, bins, pooled[:, :, 0, 0])
    for k, rois in enumerate(order):  # groups without samples (empty aligned boxes): zeros
        if pieces[k] is None:
            pieces[k] = x[0].new_zeros((rois.numel(), channels, ph, pw), dtype=compute_dtype)
    cat_order = torch.cat(order)
    if len(pieces) == 1 and bool((cat_order == torch.arange(num_rois, device=cat_order.device)).all()):
        out = pieces[0]  # one group of all ROIs in order (a fixed ratio): no copy to reorder
    else:  # one gather back to input order
        inverse = torch.empty(num_rois, dtype=torch.int64, device=x[0].device)
        inverse[cat_order] = torch.arange(num_rois, device=cat_order.device)
        out = torch.cat(pieces)[inverse]
    # Contiguous NCHW, as ROIPooler returns: the pieces are channels-last views, and a
    # channels-last result would carry through the heads' convs (the keypoint loss .view()s).
    return out.to(x[0].dtype).contiguous()


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
    del levels
    cat_order = torch.cat(order)
    grad = grad.to(compute_dtype)
    if len(order) > 1 or not bool((cat_order == torch.arange(len(cat_order), device=grad.device)).all()):
        grad = grad[cat_order]  # in plan order (not needed for one group of all ROIs in order)
    pieces = grad.split([rois.numel() for rois in order])
    device = grad.device
    del grad
    grads = [None] * len(sizes)
    for level, sets, dest in per_level:
        bsz, _, h, w = sizes[level]
        # Last call first: the order in which autograd summed them. With several calls each one's
        # gradient is that of the level's crop its points read, added into one level gradient.
        calls = _grid_sample_calls(sets, bsz * h * w, channels)
        for call in reversed(calls):
            layout = _units_layout(bsz, [sets[i].make() for i in call], compute_dtype, device)
            unit_grads = []
            for k, r0, r1, bins in (dest[i] for i in call):
                g = pieces[k]
                if bins is not None:  # the bins sampled as 1x1 units
                    g = g.flatten(2)[torch.div(bins, ph * pw, rounding_mode="floor"), :, bins % (ph * pw)]
                    g = g[:, :, None, None]
                elif (r0, r1) != (0, g.shape[0]):
                    g = g[r0:r1]
                unit_grads.append(g)
            if len(calls) == 1:
                grads[level] = _units_backward(unit_grads, layout, (bsz, channels, h, w))
                continue
            if grads[level] is None:
                grads[level] = torch.zeros((bsz, channels, h, w), dtype=compute_dtype, device=device)
            g, (y0, y1, x0, x1) = _units_backward(unit_grads, layout, (bsz, channels, h, w), crop=True)
            grads[level][:, :, y0:y1, x0:x1] += g
            del g
    return [torch.zeros(tuple(size), dtype=dtype, device=device) if g is None else g.to(dtype)
            for g, size in zip(grads, sizes)]


def _grid_sample_calls(sets, level_positions: int, channels: int) -> List[List[int]]:
    """Split the unit sets of a level into ``grid_sample`` calls.

    Two costs pull apart. A call's backward makes a gradient of the level (of the crop its
    points read when there are several calls, added into one level gradient), and each call's
    samples are a (B, C, points) tensor, twice over (samples, weighted samples). All sets go
    into one call when their points fit in the level's B*H*W positions (the mask head's few
    ROIs: one level-sized gradient, samples no larger than the level); otherwise calls of at
    most a quarter of that (:func:`_point_cap`; measured on the benchmark's 2 x 512 ROIs under
    adaptive sampling: 1.65x ROIPooler's peak memory, against 1.95x with level-sized calls).
    The parts of a group split to fit (:func:`_group_sets`) are calls of their own, so that
    each one's crop is a few bin rows of one ROI.
    """
    sizes = [u.n * u.points for u in sets]
    budget = level_positions if sum(sizes) <= level_positions else _point_cap(level_positions, channels)
    calls: List[List[int]] = []
    points = 0
    for i, p in enumerate(sizes):
        if calls and points + p <= budget and not sets[i].part and not sets[calls[-1][-1]].part:
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


def _units_backward(grads: List[torch.Tensor], layout: _UnitsLayout, size: Sequence[int], crop: bool = False):
    """The transpose of :func:`_units_forward`: the gradient of the level (``size`` (B, C, H, W))
    for the gradients ``grads`` (n, C, uh, uw) of its sets; with ``crop``, that of the crop of the
    level its points read and the crop, ``(grad (B, C, y1-y0, x1-x0), (y0, y1, x0, x1))``."""
    bsz, channels, h, w = size
    npoints = layout.weight.shape[1]
    grad_pooled = layout.weight.new_zeros((bsz, layout.nbins, channels))
    if npoints == 0:
        zeros = layout.weight.new_zeros((bsz, channels, 0, 0) if crop else tuple(size))
        return (zeros, (0, 0, 0, 0)) if crop else zeros
    for g, (b, idx, (n, uh, uw)) in zip(grads, layout.units):
        grad_pooled[b[:, None], idx] = g.permute(0, 2, 3, 1).reshape(n, uh * uw, channels)  # bins are disjoint
    grad_samples = grad_pooled.permute(0, 2, 1).gather(
        2, layout.point_bin[:, None, :].expand(bsz, channels, npoints)
    ) * layout.weight[:, None, :]
    del grad_pooled
    grid, box = layout.grid, None
    if crop:
        # The pixels the points read (padding points, weight 0, may fall outside: "border"
        # padding clamps them, and they add 0), one pixel of margin; the grid in the crop's frame.
        pixel = (grid + 1) * grid.new_tensor([w, h]) / 2 - 0.5  # (x, y) pixel coordinates, clamped to the map
        live = layout.weight[:, None, :, None].expand_as(pixel) != 0
        lo = torch.where(live, pixel, pixel.new_tensor(float("inf"))).amin((0, 1, 2)).floor()
        hi = torch.where(live, pixel, pixel.new_tensor(-float("inf"))).amax((0, 1, 2)).floor()
        (x0, y0), (x1, y1) = (lo - 1).clamp(min=0).long().tolist(), (hi + 2).long().tolist()
        x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
        size = (bsz, channels, y1 - y0, x1 - x0)
        grid = (2 * (pixel - pixel.new_tensor([x0, y0])) + 1) / pixel.new_tensor([x1 - x0, y1 - y0]) - 1
        box = (y0, y1, x0, x1)
    # grid_sample's own backward kernel (the one autograd calls), input gradient only: it reads
    # the input's shape and dtype, not its values.
    shape_only = layout.weight.new_zeros(()).expand(tuple(size))
    g = torch.ops.aten.grid_sampler_2d_backward(
        grad_samples.view(bsz, channels, 1, npoints), shape_only, grid, 0, 1, False, [True, False]
    )[0]
    return (g, box) if crop else g
