# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Multi-level ROIAlign in pure PyTorch, a drop-in for Detectron2's ``ROIPooler``.

One geometry (FPN level rule, sample coordinates, bilinear taps, validity) is
shared by two exact samplers:

* ``"gather"`` (default): every output bin is a weighted sum of the feature rows
  its bilinear taps touch, computed with ``F.embedding_bag(mode="sum")`` on a
  channels-last view of each level. Bags may differ in length, so adaptive
  sampling (``sampling_ratio=0``) needs no grouping. Its backward is another
  ``embedding_bag`` over the transposed (row -> bins) lists, so nothing but
  indices and weights is kept for it.
* ``"grid_sample"``: the notebook's formulation done right: the sample points of
  all ROIs of all images of a level (any adaptive grid sizes) go through one
  ``F.grid_sample`` call (a few for many ROIs, to bound memory), each bin sums
  its samples with ``scatter_add``; ``padding_mode="border"`` plus an explicit validity mask,
  ``align_corners=False`` with coordinates normalised by each level's own size.
  ``GridSample`` is a standard ONNX operator, so this sampler exports.

Both reproduce ``torchvision.ops.roi_align`` (the kernel behind Detectron2's
``ROIPooler``) sample for sample; see ``tests/test_pooler.py``.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "assign_boxes_to_levels", "SAMPLERS"]

SAMPLERS = ("gather", "grid_sample")
POOLER_TYPES = {"ROIAlign": False, "ROIAlignV2": True}  # name -> aligned (half-pixel offset)


def assign_boxes_to_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """FPN level rule (Lin et al., eq. 1): ``k = clip(k0 + floor(log2(sqrt(wh) / 224)), k_min, k_max)``.

    The arithmetic (area as ``w*h``, the ``1e-8`` inside the log) is Detectron2's, so a box
    on a level boundary lands where Detectron2 puts it.

    Args:
        boxes: (N, 4) boxes ``x1, y1, x2, y2`` in input-image pixels.
    Returns:
        (N,) int64 level index relative to ``min_level`` (0 for P{min_level}).
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    level = torch.clamp(level, min=min_level, max=max_level)
    return level.to(torch.int64) - min_level


class _Taps(NamedTuple):
    """Bilinear taps of the sample points of ROIs that share one grid size (gh, gw).

    ``index`` are row numbers in the level's ``(B*H*W)`` channels-last table and
    ``weight`` already include validity and the ``1/(gh*gw)`` average, both shaped
    ``(n, Ph, Pw, gh*2*gw*2)``: one bag of taps per output bin.
    """

    rois: torch.Tensor  # (n,) positions of these ROIs in the pooler's output
    index: torch.Tensor
    weight: torch.Tensor


def _axis_samples(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, gmax: int, size: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample coordinates along one axis and their two linear-interpolation taps.

    Follows torchvision's ``roi_align`` kernel exactly: bin ``p`` of an ROI starting at
    ``start`` (already scaled to the level and shifted by -0.5 in aligned mode, so that
    integer coordinates are pixel *centres*) has ``grid`` samples at the centres of
    ``grid`` equal sub-bins. A sample further than one pixel outside the map
    (``c < -1`` or ``c > size``) contributes 0; one within a pixel of the border is
    clamped onto the border pixel.

    Args:
        start, length: (n,) ROI start and extent along this axis, in level pixels.
        pooled: output bins along the axis. size: map size along the axis.
        grid: (n,) samples per bin of each ROI (>= 1); ``gmax >= grid.max()`` samples
            are laid out per bin (fewer, see the window below), those past an ROI's own
            ``grid`` get weight 0.
    Returns:
        coord (n, pooled, G) sample coordinates (before clamping), G <= gmax,
        low, high (n, pooled, G) int64 tap positions, and
        w_low, w_high (n, pooled, G) their weights including ``1/grid``; zero for
        samples outside the map or past ``grid``.
    """
    bin_size = (length / pooled)[:, None, None]
    g = grid.to(start.dtype)[:, None, None]
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    # The valid samples of a bin (within [-1, size]) are consecutive, and at most
    # (size + 1) / spacing + 1 of them. For ROIs much larger than the map (huge boxes,
    # adaptive sampling gives ceil(extent / pooled) samples per bin) lay out only a window
    # that starts at each bin's first valid sample: the result is unchanged and memory is
    # bounded by the map size, not the box size.
    spacing = (bin_size / g).flatten()
    spacing = spacing[spacing > 0]
    window, margin, work = gmax, 1, start.dtype
    if spacing.numel():
        # A progression of step `spacing` has at most floor((size + 1) / spacing) + 1 points
        # in [-1, size]; the window starts `margin` samples early (rounding of `first`).
        bound = math.floor((size + 1) / float(spacing.min())) + 1 + 2 * margin
        window = min(gmax, bound)
        # Far from the origin (boxes of ~1e6 px and more) float32 rounds a coordinate by a
        # sizeable part of the sample spacing: torchvision's float32 kernel is noise there.
        # Compute such ROIs in float64 so that the window needs only its small margin.
        ulps = float((start.abs() + length.abs()).max()) * 2.0**-23 / float(spacing.min())
        if ulps > 0.25:
            work = torch.float64
    start_w, bin_w, g_w, p_w = (t.to(work) for t in (start, bin_size, g, p))
    k = torch.arange(window, device=start.device, dtype=work)[None, None, :]
    if window < gmax:
        first = (-1.0 - start.double()[:, None, None] - p.double() * bin_size.double()) / (
            bin_size.double() / g.double()
        )
        k = k + (torch.floor(first - 0.5) - margin).clamp(min=0).to(work)
    i = k + 0.5
    # Same association as the kernel: start + p*bin + (i+0.5)*bin/grid.
    coord = start_w[:, None, None] + p_w * bin_w + i * bin_w / g_w
    valid = (coord >= -1.0) & (coord <= size) & (i < g_w)
    c = coord.clamp(min=0)
    low = c.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low).clamp(min=0)
    high = torch.where(at_edge, low, low + 1).clamp(max=max(size - 1, 0))
    frac = torch.where(at_edge, torch.zeros_like(c), c - low.to(c.dtype)).to(start.dtype)
    coord = coord.to(start.dtype)
    scale = valid.to(start.dtype) / g
    return coord, low, high, (1.0 - frac) * scale, frac * scale


def _bucket(g: torch.Tensor) -> torch.Tensor:
    """Round grid sizes up to a power of two (0 stays 0): few sampling groups per level."""
    return torch.where(g > 0, 2 ** torch.ceil(torch.log2(g.clamp(min=1).double())).long(), g)


# Samples per bin and axis that the static (export) path lays out under adaptive sampling
# (``sampling_ratio=0``); see ``ROIAlignPooler._grid_sample_static``.
EXPORT_MAX_GRID = 4


def _is_exporting() -> bool:
    """True while the module is traced (``torch.jit.trace``) or exported (ONNX, ``torch.export``)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())


def _static_axis_samples(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, gmax: int, size
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_axis_samples` on a fixed ``gmax`` layout, in ``grid_sample``'s coordinates.

    No data-dependent shapes or Python branches, so it traces and exports; ``size`` may be
    a traced size. Sample coordinates use the same expression as :func:`_axis_samples`,
    so values are identical to the eager samplers'.

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
    coord = start[:, None, None] + p * bin_size + i * bin_size / g.clamp(min=1)
    valid = (coord >= -1.0) & (coord <= size) & (i < g)
    norm = (2 * torch.minimum(coord.clamp(min=0), (size - 1) + torch.zeros_like(coord)) + 1) / size - 1
    weight = valid.to(coord.dtype) / g.clamp(min=1)
    return norm.flatten(1), weight.flatten(1)


class _LevelPlan(NamedTuple):
    """Everything a sampler needs for the ROIs of one level."""

    level: int
    groups: List[Tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    # each group: (gh, gw, rois (n,), batch (n,), y-samples, x-samples); the samples are the
    # 5-tuples returned by _axis_samples for that group's ROIs.


class _GatherPlan(NamedTuple):
    """Bags of bilinear taps of all ROIs, in output order (bag ``k`` is bin ``k % (Ph*Pw)``
    of ROI ``k // (Ph*Pw)``), indexing the rows of all sampled levels stacked channels-last."""

    levels: List[Tuple[int, int, int, int, int]]  # (level, first dense row, B, H, W) of each level
    # The table's rows, one block per (level, image): (level, image, first table row, rows,
    # positions in the image's H*W map or None for all of them, in order). When the taps touch
    # at most half of the pyramid (the mask head's few ROIs), only those rows are copied.
    blocks: List[Tuple[int, int, int, int, Optional[torch.Tensor]]]
    num_rows: int  # rows of the table
    index: torch.Tensor  # (T,) int32 table rows of all taps
    weight: torch.Tensor  # (T,) bilinear weight x validity x 1/(gh*gw)
    offsets: torch.Tensor  # (N*Ph*Pw,) int32 start of each bag in index
    bag_sizes: torch.Tensor  # (N*Ph*Pw,) int64


class _GatherROIAlign(torch.autograd.Function):
    """Multi-level ROIAlign as sums over bags of bilinear taps (``embedding_bag``).

    Forward: ``bins = embedding_bag(table, index, offsets, weights)``, one call for all
    ROIs of all levels, where ``table`` stacks the sampled levels channels-last as rows
    ``(sum B*H*W, c)``. The table is built ``_CHANNEL_CHUNK`` channels at a time, so the
    transient copy is a fraction of the pyramid, and bags are already in output order, so
    each chunk of bins lands in the output with one strided copy (no scatter).

    Only ``index``/``weights`` are saved: the backward is the transposed sum
    ``grad_table[r] = sum_{taps t on row r} w_t * grad_bins[bag(t)]``, again
    ``embedding_bag`` with one (possibly empty) bag per table row, done per level, image
    and channel chunk and transposed straight into a contiguous NCHW gradient (what the
    FPN convolutions and autograd's accumulation want: a channels-last gradient would be
    re-laid out by them at several times the cost). The backward is built from
    differentiable ops, so double backward works too.
    """

    @staticmethod
    def forward(ctx, plan, num_rois, out_hw, compute_dtype, *features):
        ph, pw = out_hw
        channels = features[0].shape[1]
        out = features[0].new_empty((num_rois, channels, ph, pw))
        for c0, c1 in _channel_chunks(channels):
            table = torch.empty((plan.num_rows, c1 - c0), dtype=compute_dtype, device=out.device)
            for level, i, r, n, local in plan.blocks:
                _copy_to_rows(table[r:r + n], features[level][i, c0:c1], local)
            bins = F.embedding_bag(
                plan.index, table, plan.offsets, mode="sum", per_sample_weights=plan.weight
            )
            del table  # before the next chunk's copy is made
            out[:, c0:c1] = bins.view(num_rois, ph, pw, c1 - c0).permute(0, 3, 1, 2)
        ctx.plan = plan
        ctx.dtype = features[0].dtype
        ctx.compute_dtype = compute_dtype
        ctx.num_features = len(features)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        plan = ctx.plan
        num_rois, channels, ph, pw = grad_out.shape
        device = grad_out.device
        # Transposed lists: taps sorted by table row, row r's bag is [start[r], start[r+1]),
        # each tap pointing at its output bin (= row of the channels-last gradient below).
        itype = plan.index.dtype
        bag = torch.repeat_interleave(torch.arange(plan.bag_sizes.numel(), dtype=itype, device=device), plan.bag_sizes)
        order = torch.argsort(plan.index, stable=True)
        src_bag, weight = bag[order], plan.weight[order]
        del bag, order
        start = torch.zeros(plan.num_rows + 1, dtype=itype, device=device)
        torch.cumsum(torch.bincount(plan.index, minlength=plan.num_rows), 0, out=start[1:])
        bounds = start[[r for _, _, r, _, _ in plan.blocks] + [plan.num_rows]].tolist()
        grads: List[Optional[torch.Tensor]] = [None] * ctx.num_features
        # A compact table (all blocks or none, see _table_blocks) left out the rows no tap
        # touches: their gradient is 0.
        compact = any(blk[4] is not None for blk in plan.blocks)
        for level, _, b, h, w in plan.levels:
            grads[level] = (torch.zeros if compact else torch.empty)(
                (b, channels, h, w), dtype=ctx.dtype, device=device
            )
        for c0, c1 in _channel_chunks(channels):
            g = grad_out[:, c0:c1].permute(0, 2, 3, 1).to(ctx.compute_dtype).reshape(-1, c1 - c0)
            for k, (level, i, r, n, local) in enumerate(plan.blocks):
                lo, hi = bounds[k], bounds[k + 1]
                rows = F.embedding_bag(
                    src_bag[lo:hi], g, start[r:r + n] - lo, mode="sum", per_sample_weights=weight[lo:hi]
                )  # (n, c1-c0): this image's gradient rows
                dst = grads[level][i, c0:c1].flatten(1)  # (c1-c0, H*W), contiguous
                if local is None:
                    # A 2-D transpose into a contiguous block takes copy_'s blocked-transpose path.
                    dst.copy_(rows.t())
                else:
                    dst.index_copy_(1, local, rows.t().to(dst.dtype))
        return (None, None, None, None, *grads)


def _table_blocks(levels, index: torch.Tensor, num_rows: int):
    """The table's row blocks for taps ``index`` (rows of the dense table of ``levels``).

    When the taps touch at most half of the dense rows, the table keeps only those rows
    (compact numbering, in dense order) and ``index`` is renumbered.

    Returns:
        (index, blocks, table rows), blocks as in :class:`_GatherPlan`.
    """
    dense = [(level, i, row0 + i * h * w, h * w) for level, row0, b, h, w in levels for i in range(b)]
    whole = (index, [(lv, i, r, n, None) for lv, i, r, n in dense], num_rows)
    if index.numel() == 0 or num_rows == 0:
        return whole
    used = torch.zeros(num_rows, dtype=torch.bool, device=index.device)
    used[index] = True
    rows = used.nonzero().flatten()  # sorted
    if 2 * rows.numel() > num_rows:
        return whole
    index = (torch.cumsum(used, 0) - 1)[index]
    first = torch.tensor([r for _, _, r, _ in dense] + [num_rows], dtype=rows.dtype, device=rows.device)
    bounds = torch.searchsorted(rows, first).tolist()
    blocks = [
        (lv, i, bounds[k], bounds[k + 1] - bounds[k], rows[bounds[k]:bounds[k + 1]] - r)
        for k, (lv, i, r, n) in enumerate(dense)
    ]
    return index, blocks, rows.numel()


# Channels per embedding_bag call. The channels-last copies of the levels (forward) and of
# the gradient (backward) are made one chunk at a time: 64 of 256 channels keeps the
# transient copy at a quarter of the pyramid, and (H*W, 64) blocks transpose cache-friendly.
_CHANNEL_CHUNK = 64


def _channel_chunks(channels: int) -> List[Tuple[int, int]]:
    return [(c0, min(c0 + _CHANNEL_CHUNK, channels)) for c0 in range(0, channels, _CHANNEL_CHUNK)]


def _copy_to_rows(rows: torch.Tensor, chw: torch.Tensor, local: Optional[torch.Tensor] = None) -> None:
    """``rows`` (n, c) <- ``chw`` (c, H, W) of one image, channels-last: all H*W positions
    (``local`` None) or those at the sorted flat positions ``local`` (n,)."""
    c, h, w = chw.shape
    if local is not None:
        # Gather along each channel's row (sorted positions: cache-friendly), then one
        # blocked 2-D transpose of the (c, n) result.
        rows.copy_(chw.reshape(c, h * w).index_select(1, local).t())
    elif chw.is_contiguous() and chw.dtype == rows.dtype:
        rows.copy_(chw.view(c, h * w).t())  # 2-D transpose: copy_'s blocked path
    else:
        rows.view(h, w, c).copy_(chw.permute(1, 2, 0))


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
    sizes = [b.numel() * gy.shape[1] * gy.shape[2] * gx.shape[1] * gx.shape[2] for b, gy, gx, _, _ in sets]
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


def _grid_sample_units(feat: torch.Tensor, sets) -> List[torch.Tensor]:
    """Average-pool sets of sampling units (ROIs, or single bins of ROIs) of one level with a
    single ``grid_sample`` call.

    Sets of several adaptive grid sizes share one call (see :func:`_grid_sample_calls`):
    ``grid_sampler_2d_backward`` allocates and zero-fills a gradient the size of the whole
    level per call.

    Args:
        feat: (B, C, H, W) level.
        sets: list of ``(b, gy, gx, vy, vx)``: b (n,) image of each unit; gy, gx (n, uh, gh),
            (n, uw, gw) normalised sample coordinates of uh x uw bins; vy, vx same shapes,
            per-sample weights (validity x 1/grid) along each axis.
    Returns:
        one (n, C, uh, uw) tensor per set: for each bin the weighted sum of its gh x gw samples.
    """
    bsz, channels = feat.shape[:2]
    device = feat.device
    shapes = [(b.numel(), gy.shape[1], gx.shape[1], gy.shape[2] * gx.shape[2]) for b, gy, gx, _, _ in sets]
    # Every image's points (and bins) are laid out one unit after the other: the start of each
    # unit within its image, for bins and for sample points.
    unit_image = torch.cat([b for b, _, _, _, _ in sets])
    unit_bins = torch.cat([torch.full((n,), uh * uw, dtype=torch.int64, device=device) for n, uh, uw, _ in shapes])
    unit_points = torch.cat(
        [torch.full((n,), uh * uw * g, dtype=torch.int64, device=device) for n, uh, uw, g in shapes]
    )

    by_image = torch.argsort(unit_image, stable=True)
    sorted_image = unit_image[by_image]

    def starts(sizes):
        before = torch.cumsum(sizes[by_image], 0) - sizes[by_image]
        totals = torch.bincount(unit_image, weights=sizes.double(), minlength=bsz).long()
        first = torch.cumsum(totals, 0) - totals
        out = torch.empty_like(sizes)
        out[by_image] = before - first[sorted_image]
        return out, int(totals.max()) if totals.numel() else 0

    bin_start, nbins = starts(unit_bins)
    point_start, npoints = starts(unit_points)
    if npoints == 0:
        return [feat.new_zeros((n, channels, uh, uw)) for n, uh, uw, _ in shapes]
    grid = feat.new_zeros((bsz, npoints, 2))
    weight = feat.new_zeros((bsz, npoints))
    point_bin = torch.zeros((bsz, npoints), dtype=torch.int64, device=device)
    u0 = 0
    for (b, gy, gx, vy, vx), (n, uh, uw, g) in zip(sets, shapes):
        if n == 0:
            continue
        # Points in (unit, bin row, bin column, sample row, sample column) order, so that the
        # samples of a bin are consecutive.
        pts = torch.stack(torch.broadcast_tensors(gx[:, None, :, None, :], gy[:, :, None, :, None]), -1)
        w = vy[:, :, None, :, None] * vx[:, None, :, None, :]  # (n, uh, uw, gh, gw)
        slots = point_start[u0:u0 + n, None] + torch.arange(uh * uw * g, device=device)
        bins = bin_start[u0:u0 + n, None] + torch.arange(uh * uw, device=device).repeat_interleave(g)
        grid[b[:, None], slots] = pts.reshape(n, -1, 2)
        weight[b[:, None], slots] = w.reshape(n, -1)
        point_bin[b[:, None], slots] = bins
        u0 += n
    samples = F.grid_sample(
        feat, grid.view(bsz, 1, npoints, 2), mode="bilinear", padding_mode="border", align_corners=False
    ).view(bsz, channels, npoints)
    # Padding points have weight 0 (and bin 0): they add nothing.
    pooled = feat.new_zeros((bsz, channels, nbins)).scatter_add(
        2, point_bin[:, None, :].expand(bsz, channels, npoints), samples * weight[:, None, :]
    ).permute(0, 2, 1)  # (B, bins, C)
    out, u0 = [], 0
    for (b, _, _, _, _), (n, uh, uw, _) in zip(sets, shapes):
        idx = bin_start[u0:u0 + n, None] + torch.arange(uh * uw, device=device)
        out.append(pooled[b[:, None], idx].view(n, uh, uw, channels).permute(0, 3, 1, 2))
        u0 += n
    return out


class ROIAlignPooler(nn.Module):
    """Multi-level ROIAlign over an FPN, with the constructor and call of Detectron2's ``ROIPooler``.

    Args:
        output_size: int or (h, w) of each pooled map (7 for the box head, 14 for masks).
        scales: 1/stride of each input level, finest first, e.g. ``(1/4, 1/8, 1/16, 1/32)``;
            strides must be consecutive powers of two.
        sampling_ratio: samples per bin along each axis; 0 = adaptive,
            ``ceil(roi_size / output_size)`` per ROI and axis, as torchvision does.
        pooler_type: ``"ROIAlignV2"`` (aligned: a box edge at pixel coordinate x maps to
            ``x * scale - 0.5`` in the level's pixel-centre coordinates) or ``"ROIAlign"``
            (legacy, no half-pixel shift, ROI extent clamped to >= 1 level pixel).
        canonical_box_size, canonical_level: ``k0`` and the 224 of the level rule.
        sampler: ``"gather"`` (default, fastest on CPU) or ``"grid_sample"``.

    Call: ``pooler(features, box_lists)`` with ``features`` a list of (B, C, H_l, W_l)
    maps matching ``scales`` and ``box_lists`` a list of B ``Boxes`` or (N_i, 4) tensors
    in input-image pixels. Returns (sum N_i, C, h, w) in the features' dtype and
    device, ROIs in input order.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
        *,
        sampler: str = "gather",
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be a positive int or (h, w), got {output_size}")
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"pooler_type {pooler_type!r} is not supported; use one of {sorted(POOLER_TYPES)}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not supported; use one of {SAMPLERS}")
        if int(sampling_ratio) != sampling_ratio or sampling_ratio < 0:
            raise ValueError(f"sampling_ratio must be an int >= 0, got {sampling_ratio}")
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
        levels = [-math.log2(s) for s in scales]
        if any(not math.isclose(lv, round(lv), abs_tol=1e-6) for lv in levels):
            raise ValueError(f"every scale must be 1/2^k (stride a power of two), got {scales}")
        levels = [int(round(lv)) for lv in levels]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f"scales must be consecutive pyramid levels, finest first, got strides "
                f"{[2 ** lv for lv in levels]}"
            )
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {canonical_box_size}")
        self.output_size = output_size
        self.scales = scales
        self.sampling_ratio = int(sampling_ratio)
        self.pooler_type = pooler_type
        self.aligned = POOLER_TYPES[pooler_type]
        self.sampler = sampler
        self.min_level = levels[0]
        self.max_level = levels[-1]
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio="
            f"{self.sampling_ratio}, pooler_type={self.pooler_type}, sampler={self.sampler}"
        )

    # ------------------------------------------------------------------ validation
    def _check_features(self, x) -> None:
        if not isinstance(x, (list, tuple)) or not all(isinstance(f, torch.Tensor) for f in x):
            raise TypeError("features must be a list of tensors, one per pyramid level")
        if len(x) != len(self.scales):
            raise ValueError(
                f"got {len(x)} feature maps but the pooler was built for {len(self.scales)} "
                f"scales {self.scales}"
            )
        ref = x[0]
        for i, f in enumerate(x):
            if f.dim() != 4:
                raise ValueError(f"feature map {i} must be 4-D (B, C, H, W), got {tuple(f.shape)}")
            if not f.is_floating_point():
                raise TypeError(f"feature map {i} has dtype {f.dtype}; a floating dtype is needed")
            if f.shape[:2] != ref.shape[:2] or f.dtype != ref.dtype or f.device != ref.device:
                raise ValueError(
                    f"feature map {i} is {tuple(f.shape)} {f.dtype} on {f.device}, but map 0 is "
                    f"{tuple(ref.shape)} {ref.dtype} on {ref.device}: batch, channels, dtype "
                    f"and device must agree"
                )
            if i > 0:
                prev = x[i - 1]
                for axis, name in ((2, "height"), (3, "width")):
                    if abs(prev.shape[axis] - 2 * f.shape[axis]) > 1:
                        raise ValueError(
                            f"feature map sizes do not halve with the stride: level {i - 1} "
                            f"{name} {prev.shape[axis]} -> level {i} {name} {f.shape[axis]}"
                        )

    @staticmethod
    def _check_boxes(box_lists, batch: int, device: torch.device) -> List[torch.Tensor]:
        if not isinstance(box_lists, (list, tuple)):
            raise TypeError("box_lists must be a list with one Boxes (or Nx4 tensor) per image")
        if len(box_lists) != batch:
            raise ValueError(
                f"got boxes for {len(box_lists)} images but the features have batch size {batch}"
            )
        out = []
        for i, b in enumerate(box_lists):
            t = getattr(b, "tensor", b)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"boxes of image {i} are {type(b).__name__}, not Boxes or a tensor")
            if t.dim() != 2 or t.shape[1] != 4:
                raise ValueError(f"boxes of image {i} must be Nx4 (x1, y1, x2, y2), got {tuple(t.shape)}")
            if t.device != device:
                raise ValueError(f"boxes of image {i} are on {t.device} but the features on {device}")
            if not t.is_floating_point():
                t = t.float()
            # Value checks read data, which a trace would freeze into the graph: skipped there.
            if not _is_exporting() and t.numel():
                if not bool(torch.isfinite(t).all()):
                    bad = (~torch.isfinite(t)).any(dim=1).nonzero()[0, 0].item()
                    raise ValueError(
                        f"boxes of image {i} have non-finite coordinates (box {bad}: {t[bad].tolist()})"
                    )
                inverted = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
                if bool(inverted.any()):
                    bad = inverted.nonzero()[0, 0].item()
                    raise ValueError(
                        f"boxes of image {i} are inverted (x2 < x1 or y2 < y1; box {bad}: "
                        f"{t[bad].tolist()}); boxes must be x1, y1, x2, y2"
                    )
            out.append(t)
        return out

    # ------------------------------------------------------------------ geometry
    def _geometry(self, x: List[torch.Tensor], boxes: List[torch.Tensor], dtype: torch.dtype):
        """Level assignment and per-level sample taps for all ROIs.

        Returns a list of (level, groups), groups as in ``_LevelPlan``.
        """
        device = x[0].device
        all_boxes = torch.cat([b.to(dtype) for b in boxes])
        batch = torch.cat(
            [torch.full((len(b),), i, dtype=torch.int64, device=device) for i, b in enumerate(boxes)]
        )
        if len(x) == 1:
            level_of = torch.zeros(len(all_boxes), dtype=torch.int64, device=device)
        else:
            # Routed in float32 whatever the maps' dtype: Detectron2's Boxes are float32, so
            # its rule always sees float32 coordinates (and a box on a boundary must agree).
            level_of = assign_boxes_to_levels(
                all_boxes.float(), self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
            )
        offset = 0.5 if self.aligned else 0.0
        ph, pw = self.output_size
        plans = []
        for level, (feat, scale) in enumerate(zip(x, self.scales)):
            rois = (level_of == level).nonzero().flatten()
            if rois.numel() == 0:
                continue
            bx = all_boxes[rois] * scale - offset  # level pixel-centre coordinates
            start_x, start_y = bx[:, 0], bx[:, 1]
            width, height = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
            if not self.aligned:  # legacy ROIAlign: force malformed ROIs to be 1x1
                width, height = width.clamp(min=1.0), height.clamp(min=1.0)
            if self.sampling_ratio > 0:
                gh = gw = torch.full_like(rois, self.sampling_ratio)
            else:
                gh = torch.ceil(height / ph).to(torch.int64).clamp(min=0)
                gw = torch.ceil(width / pw).to(torch.int64).clamp(min=0)
            groups = []
            # ROIs whose grid sizes round up to the same powers of two are sampled
            # together on a (Gh, Gw) layout, extra samples masked: one group for a fixed
            # ratio, a handful per level under adaptive sampling.
            bh, bw = _bucket(gh), _bucket(gw)
            key = bh * (int(bw.max()) + 1) + bw
            for k in torch.unique(key).tolist():
                sel = (key == k).nonzero().flatten()
                g_h, g_w = int(gh[sel].max()), int(gw[sel].max())
                if g_h == 0 or g_w == 0:  # empty aligned ROIs: no samples, output 0
                    groups.append((0, 0, rois[sel], batch[rois[sel]], None, None))
                    continue
                ys = _axis_samples(start_y[sel], height[sel], ph, gh[sel], g_h, feat.shape[2])
                xs = _axis_samples(start_x[sel], width[sel], pw, gw[sel], g_w, feat.shape[3])
                g_h, g_w = ys[0].shape[-1], xs[0].shape[-1]  # laid-out samples per bin
                groups.append((g_h, g_w, rois[sel], batch[rois[sel]], ys, xs))
            plans.append(_LevelPlan(level, groups))
        return plans

    # ------------------------------------------------------------------ samplers
    def _gather(self, x, plans, num_rois, compute_dtype):
        ph, pw = self.output_size
        nbins = ph * pw
        device = x[0].device
        levels, rois, index, weight, sizes = [], [], [], [], []
        row0 = 0
        for plan in plans:
            bsz, _, h, w = x[plan.level].shape
            levels.append((plan.level, row0, bsz, h, w))
            for g_h, g_w, r, b, ys, xs in plan.groups:
                n = r.numel()
                rois.append(r)
                if ys is None:
                    sizes.append(torch.zeros(n * nbins, dtype=torch.int64, device=device))
                    continue
                _, ylo, yhi, wylo, wyhi = ys
                _, xlo, xhi, wxlo, wxhi = xs
                yi = torch.stack([ylo, yhi], -1)  # (n, ph, gh, 2)
                xi = torch.stack([xlo, xhi], -1)  # (n, pw, gw, 2)
                yw = torch.stack([wylo, wyhi], -1)
                xw = torch.stack([wxlo, wxhi], -1)
                # (n, ph, pw, gh, 2, gw, 2): a bag of up to 4*gh*gw taps per bin; taps of
                # weight 0 (padding, outside the map, exact pixel hits) are dropped.
                live = (yw.sum((2, 3)) > 0)[:, :, None] & (xw.sum((2, 3)) > 0)[:, None, :]  # (n, ph, pw)
                if int(live.sum()) * 2 < live.numel():
                    # Mostly empty bins (ROIs far larger than the map: one or two bins per axis
                    # overlap it): build taps for the live bins only.
                    r_, py, px = live.nonzero(as_tuple=True)
                    row = (row0 + b[r_] * (h * w))[:, None, None] + yi[r_, py] * w  # (m, gh, 2)
                    taps = 4 * yi.shape[2] * xi.shape[2]
                    idx = (row[:, :, :, None, None] + xi[r_, px][:, None, None]).reshape(len(r_), taps)
                    wt = (yw[r_, py][:, :, :, None, None] * xw[r_, px][:, None, None]).reshape(len(r_), taps)
                    keep = wt != 0
                    bag = torch.zeros(n * nbins, dtype=torch.int64, device=device)
                    bag[(r_ * ph + py) * pw + px] = keep.sum(1)
                else:
                    row = (row0 + b * (h * w))[:, None, None, None, None] + yi[:, :, None, :, :] * w
                    idx = (row[..., None, None] + xi[:, None, :, None, None, :, :]).reshape(n * nbins, -1)
                    wt = (yw[:, :, None, :, :, None, None] * xw[:, None, :, None, None, :, :]).reshape(n * nbins, -1)
                    keep = wt != 0
                    bag = keep.sum(1)
                index.append(idx[keep])
                weight.append(wt[keep])
                sizes.append(bag)
            row0 += bsz * h * w
        plan_sizes = torch.cat(sizes)  # bags in plan order: level, then grid group
        if index:
            plan_index, plan_weight = torch.cat(index), torch.cat(weight).to(compute_dtype)
        else:
            plan_index = torch.zeros(0, dtype=torch.int64, device=device)
            plan_weight = torch.zeros(0, dtype=compute_dtype, device=device)
        plan_index, blocks, row0 = _table_blocks(levels, plan_index, row0)
        # Move bags (and their taps) to output order, so that the forward writes each chunk
        # of bins with one copy and the backward reads the gradient without a gather.
        dest = (torch.cat(rois)[:, None] * nbins + torch.arange(nbins, device=device)).flatten()
        bag_sizes = torch.empty_like(plan_sizes)
        bag_sizes[dest] = plan_sizes
        offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
        shift = offsets[dest] - (torch.cumsum(plan_sizes, 0) - plan_sizes)
        position = torch.arange(plan_index.numel(), device=device) + torch.repeat_interleave(shift, plan_sizes)
        # int32 rows and offsets (embedding_bag takes them): half the memory of the taps.
        itype = torch.int32 if max(row0, plan_index.numel()) < 2**31 else torch.int64
        index_t = torch.empty(plan_index.shape, dtype=itype, device=device)
        index_t[position] = plan_index.to(itype)
        weight_t = torch.empty_like(plan_weight)
        weight_t[position] = plan_weight
        del plan_index, plan_weight, position, index, weight
        gplan = _GatherPlan(levels, blocks, row0, index_t, weight_t, offsets.to(itype), bag_sizes)
        return _GatherROIAlign.apply(gplan, num_rois, self.output_size, compute_dtype, *x)

    def _grid_sample(self, x, plans, num_rois, compute_dtype):
        ph, pw = self.output_size
        channels = x[0].shape[1]
        pieces, order = [], []
        for plan in plans:
            feat = x[plan.level]
            bsz, _, h, w = feat.shape
            if feat.dtype != compute_dtype:  # grid_sample wants input and grid of one dtype
                feat = feat.to(compute_dtype)
            sets, finish = [], []
            for g_h, g_w, rois, b, ys, xs in plan.groups:
                n = rois.numel()
                order.append(rois)
                if ys is None:  # no samples at all
                    pieces.append(feat.new_zeros((n, channels, ph, pw)))
                    continue
                ycoord, _, _, wylo, wyhi = ys
                xcoord, _, _, wxlo, wxhi = xs
                # Normalised coordinates for align_corners=False: pixel centre i <-> (2i+1)/size - 1.
                # Clamping to the map first makes "border" padding equal the kernel's clamp.
                gy = (2 * ycoord.clamp(0, h - 1) + 1) / h - 1  # (n, ph, gh)
                gx = (2 * xcoord.clamp(0, w - 1) + 1) / w - 1  # (n, pw, gw)
                # Per-sample weight: validity (within one pixel of the map, within the
                # ROI's own grid) times the 1/(gh*gw) of the mean.
                vy, vx = wylo + wyhi, wxlo + wxhi  # (n, ph, gh), (n, pw, gw)
                live = (vy.sum(2) > 0)[:, :, None] & (vx.sum(2) > 0)[:, None, :]  # (n, ph, pw)
                if int(live.sum()) * 2 < live.numel():
                    # Mostly empty bins (ROIs far larger than the map): sample each live bin
                    # as a 1x1-bin unit and scatter the results into zeros.
                    r_, py, px = live.nonzero(as_tuple=True)
                    sets.append((b[r_], gy[r_, py][:, None], gx[r_, px][:, None],
                                 vy[r_, py][:, None], vx[r_, px][:, None]))
                    finish.append((len(pieces), n, (r_ * ph + py) * pw + px))
                else:
                    sets.append((b, gy, gx, vy, vx))
                    finish.append((len(pieces), n, None))
                pieces.append(None)  # filled below, after the level's grid_sample call
            for call in _grid_sample_calls(sets, bsz * h * w):
                for (k, n, bins), pooled in zip([finish[i] for i in call],
                                                _grid_sample_units(feat, [sets[i] for i in call])):
                    if bins is None:
                        pieces[k] = pooled
                    else:
                        flat = pooled.new_zeros((n * ph * pw, channels)).index_copy(0, bins, pooled[:, :, 0, 0])
                        pieces[k] = flat.view(n, ph, pw, channels).permute(0, 3, 1, 2)
        # One gather back to input order (in-place writes would clone the gradient per group).
        inverse = torch.empty(num_rois, dtype=torch.int64, device=x[0].device)
        cat_order = torch.cat(order)
        inverse[cat_order] = torch.arange(num_rois, device=cat_order.device)
        # contiguous NCHW like ROIPooler: the pieces are channels-last views, and a channels-last
        # result would propagate through the heads' convs (keypoint loss .view()s the logits).
        return torch.cat(pieces)[inverse].to(x[0].dtype).contiguous()

    # ------------------------------------------------------------------ export path
    def _grid_sample_static(
        self, x: List[torch.Tensor], rois: torch.Tensor, max_grid: int = EXPORT_MAX_GRID
    ) -> torch.Tensor:
        """ROIAlign with static shapes and no Python control flow on data, for tracing and ONNX.

        The eager samplers group ROIs by level and grid size with ``nonzero``/``unique`` and
        Python loops over the result, which a trace would freeze. Here every ROI is sampled
        on every level and every image with one ``F.grid_sample`` per level on a fixed
        ``(gh, gw)`` layout, and the samples are weighted by a mask (level rule x image x
        validity). The number of ROIs and of images stay dynamic; the cost is
        ``levels x images`` times the eager work, irrelevant for export.

        Exact (same values as the eager samplers) for ``sampling_ratio > 0``. With adaptive
        sampling (``sampling_ratio=0``) each ROI uses ``min(ceil(extent / output), max_grid)``
        samples per bin: exact for every ROI whose adaptive grid is at most ``max_grid``
        (e.g. all boxes up to ``7 * 4 * stride`` px per side at their level for the
        7x7 box pooler with the default 4), sub-sampled beyond.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels (Detectron2's
                pooler format).
            max_grid: samples per bin and axis laid out under adaptive sampling.
        Returns:
            (K, C, h, w) pooled features in the features' dtype.
        """
        ph, pw = self.output_size
        dtype = x[0].dtype
        compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        boxes = rois[:, 1:].to(compute_dtype)
        image = rois[:, 0].to(torch.int64)
        if len(x) == 1:
            level_of = torch.zeros_like(image)
        else:
            level_of = assign_boxes_to_levels(  # float32, as in _geometry
                boxes.float(), self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
            )
        offset = 0.5 if self.aligned else 0.0
        gmax = self.sampling_ratio if self.sampling_ratio > 0 else int(max_grid)
        if gmax < 1:
            raise ValueError(f"max_grid must be >= 1 for adaptive sampling, got {max_grid}")
        out = None
        for level, (feat, scale) in enumerate(zip(x, self.scales)):
            bsz, channels, h, w = feat.shape
            bx = boxes * scale - offset
            width, height = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
            if not self.aligned:
                width, height = width.clamp(min=1.0), height.clamp(min=1.0)
            if self.sampling_ratio > 0:
                gh = gw = torch.full_like(image, gmax)
            else:
                gh = torch.ceil(height / ph).clamp(min=0, max=gmax).to(torch.int64)
                gw = torch.ceil(width / pw).clamp(min=0, max=gmax).to(torch.int64)
            gy, wy = _static_axis_samples(bx[:, 1], height, ph, gh, gmax, h)  # (K, ph*G)
            gx, wx = _static_axis_samples(bx[:, 0], width, pw, gw, gmax, w)  # (K, pw*G)
            grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
            grid = grid.reshape(1, -1, pw * gmax, 2).expand(bsz, -1, -1, -1)  # (B, K*ph*G, pw*G, 2)
            samples = F.grid_sample(
                feat.to(compute_dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
            ).reshape(bsz, channels, -1, ph * gmax, pw * gmax)
            # weight (B, K, ph*G, pw*G): validity x 1/(gh*gw) x "on this level" x "of this image"
            on_level = (level_of == level).to(compute_dtype)
            of_image = (image[None, :] == torch.arange(bsz, device=image.device)[:, None]).to(compute_dtype)
            weight = wy[:, :, None] * wx[:, None, :] * on_level[:, None, None]
            weight = weight[None] * of_image[:, :, None, None]
            pooled = (samples * weight[:, None]).sum(0)  # (C, K, ph*G, pw*G)
            pooled = pooled.reshape(channels, -1, ph, gmax, pw, gmax).sum((3, 5)).permute(1, 0, 2, 3)
            out = pooled if out is None else out + pooled
        return out.to(dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, x: List[torch.Tensor], box_lists: List) -> torch.Tensor:
        """
        Args:
            x: list of L feature maps (B, C, H_l, W_l), finest first, matching ``scales``.
            box_lists: list of B ``Boxes`` (or (N_i, 4) tensors), input-image pixels.
        Returns:
            Tensor (sum_i N_i, C, h, w): pooled features, ROIs in input order.
        """
        self._check_features(x)
        batch, channels = x[0].shape[:2]
        boxes = self._check_boxes(box_lists, batch, x[0].device)
        if _is_exporting():
            # Static-shape path: the eager samplers' grouping would be frozen by a trace.
            fdt = torch.float64 if x[0].dtype == torch.float64 else torch.float32
            rois = torch.cat(
                [torch.cat([torch.full_like(b[:, :1], i), b], 1).to(fdt) for i, b in enumerate(boxes)]
            )
            return self._grid_sample_static(list(x), rois)
        num_rois = sum(len(b) for b in boxes)
        ph, pw = self.output_size
        if num_rois == 0:
            return x[0].new_zeros((0, channels, ph, pw))
        # Geometry in float64 for float64 features (gradcheck), float32 otherwise; half
        # precision maps are sampled in float32 and the result cast back.
        compute_dtype = torch.float64 if x[0].dtype == torch.float64 else torch.float32
        plans = self._geometry(list(x), boxes, compute_dtype)
        if self.sampler == "gather":
            return self._gather(list(x), plans, num_rois, compute_dtype)
        return self._grid_sample(list(x), plans, num_rois, compute_dtype)


class GridSampleROIPooler(ROIAlignPooler):
    """:class:`ROIAlignPooler` fixed to the ``grid_sample`` sampler (the notebook's design, made exact)."""

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__(
            output_size, scales, sampling_ratio, pooler_type, canonical_box_size, canonical_level,
            sampler="grid_sample",
        )
