# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The gather sampler's plan: every output bin as a bag of (table row, weight) taps.

A level viewed channels-last is a table of ``B*H*W`` rows of ``C`` features; pixel
``(b, y, x)`` is row ``b*H*W + y*W + x``, and the levels are stacked one after the other.
A sample with y-taps ``(y0, y1; wy0, wy1)`` and x-taps ``(x0, x1; wx0, wx1)`` reads the
four rows ``y*W + x`` with weights ``wy * wx``; a bin's bag holds the taps of its
``gh * gw`` samples (the weights already include the mean's ``1/(gh*gw)``), so

    bin = sum over the bag's taps t of  weight_t * table[row_t],

which :mod:`.gather` computes with ``F.embedding_bag``. Taps of weight 0 (outside the
map, past an ROI's own grid, exact pixel hits) are dropped, so bags differ in length.
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .axis_taps import axis_taps
from .geometry import LevelSamples, SampleGroup, level_boxes, samples_per_bin

__all__ = ["GatherPlan", "gather_plan", "upright_gather_plan"]


class GatherPlan(NamedTuple):
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


def _dense_group_taps(group: SampleGroup, row0: int, h: int, w: int, ph: int, pw: int):
    """The taps of one group of dense samples (rotated boxes: each axis (n, Ph, Pw, gh, gw),
    see :class:`.geometry.SampleGroup`): (index (T,), weight (T,), bag sizes (n*Ph*Pw,)) in
    bin order; a bin's bag is the (gh, gw, 2, 2) taps of its own samples, those of weight 0
    dropped."""
    n, nbins = group.rois.numel(), ph * pw
    b, ys, xs = group.batch, group.ys, group.xs
    yi = torch.stack([ys.low, ys.high], -1)
    xi = torch.stack([xs.low, xs.high], -1)
    yw = torch.stack([ys.w_low, ys.w_high], -1)
    xw = torch.stack([xs.w_low, xs.w_high], -1)
    row = (row0 + b * (h * w))[:, None, None, None, None, None] + yi * w
    idx = (row[..., :, None] + xi[..., None, :]).reshape(n * nbins, -1)
    wt = (yw[..., :, None] * xw[..., None, :]).reshape(n * nbins, -1)
    keep = wt != 0
    return idx[keep], wt[keep], keep.sum(1)


def upright_gather_plan(
    sizes: List[Tuple[int, int, int]], boxes: torch.Tensor, batch: torch.Tensor, level_of: torch.Tensor,
    scales: Sequence[float], output_size: Tuple[int, int], sampling_ratio: int, aligned: bool,
    axis_rule: Optional[Callable] = None,
) -> GatherPlan:
    """The bags of upright boxes, built for all ROIs and levels at once, in output order.

    A bin's samples are separable (:mod:`.geometry`): its bag is every y-tap of its row
    times every x-tap of its column (:func:`.axis_taps.axis_taps`), y-major, the order of
    the padded layout, so the sums are the same bit for bit. A fixed number of tensor ops
    builds the bags of any mix of ROI sizes and levels: no grouping by grid size.

    Args:
        sizes: (B, H, W) of every level of the pooler.
        boxes: (N, 4) ``x1, y1, x2, y2`` in input-image pixels, in the compute dtype.
        batch: (N,) image of each box. level_of: (N,) level of each box.
        output_size: (Ph, Pw). sampling_ratio: samples per bin and axis, 0 = adaptive.
        axis_rule: another pooling rule's separable taps, ``axis_rule(boxes, scale, heights,
            widths) -> (ys, xs)`` :class:`.axis_taps.AxisTaps` (each ROI's level scale and map
            size, (N,)); the ROIPool windows and PrRoIPool integrals of :mod:`.roi_pool` and
            :mod:`.prroi_pool`. Default: ROIAlign's samples (``sampling_ratio``, ``aligned``).
    """
    ph, pw = output_size
    device, n = boxes.device, boxes.shape[0]
    # Table rows: the levels that pool some ROI, stacked, images one after the other.
    present = torch.bincount(level_of, minlength=len(sizes)).tolist()
    dense, first_row, row0 = [], [0] * len(sizes), 0
    for level, (bsz, h, w) in enumerate(sizes):
        if present[level]:
            dense.append((level, row0, bsz, h, w))
            first_row[level] = row0
            row0 += bsz * h * w
    lv = torch.tensor([[first_row[k], h, w] for k, (_, h, w) in enumerate(sizes)], device=device)[level_of]
    scale = torch.tensor(scales, dtype=boxes.dtype, device=device)[level_of]
    if axis_rule is None:
        start_x, start_y, width, height = level_boxes(boxes, scale, aligned)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        ys = axis_taps(start_y, height, ph, gh, lv[:, 1])
        xs = axis_taps(start_x, width, pw, gw, lv[:, 2])
    else:
        ys, xs = axis_rule(boxes, scale, lv[:, 1], lv[:, 2])
    # Bag of bin (r, py, px): every y-tap of (r, py) times every x-tap of (r, px), y-major.
    # Listed in two steps: segments (a bag's y-tap: its table row offset, the ROI's image
    # block plus pixel row times the level's width, and its weight), then each segment's
    # run of x-taps; every per-tap value is one index_select of a per-segment one.
    y_roi = torch.repeat_interleave(torch.arange(n, device=device), ys.count.view(n, ph).sum(1))
    y_row = (lv[:, 0] + batch * lv[:, 1] * lv[:, 2])[y_roi] + ys.pixel * lv[y_roi, 2]
    ny = ys.count.view(n, ph, 1).expand(n, ph, pw).flatten()
    nx = xs.count.view(n, 1, pw).expand(n, ph, pw).flatten()
    bag_sizes = ny * nx
    nseg = int(ny.sum())
    seg_bag = torch.repeat_interleave(torch.arange(bag_sizes.numel(), device=device), ny)
    y_first = ys.first.view(n, ph, 1).expand(n, ph, pw).flatten()
    y_tap = (y_first - (torch.cumsum(ny, 0) - ny))[seg_bag] + torch.arange(nseg, device=device)
    seg_len = nx[seg_bag]
    seg_start = torch.cumsum(seg_len, 0) - seg_len  # first tap of each segment
    total = int(seg_start[-1] + seg_len[-1]) if nseg else 0
    itype = torch.int32 if max(row0, total) < 2**31 else torch.int64
    x_first = xs.first.view(n, 1, pw).expand(n, ph, pw).flatten()
    seg = torch.repeat_interleave(torch.arange(nseg, dtype=itype, device=device), seg_len)
    x_tap = torch.arange(total, dtype=itype, device=device)
    x_tap += (x_first[seg_bag] - seg_start).to(itype).index_select(0, seg)
    index = y_row.to(itype).index_select(0, y_tap.to(itype)).index_select(0, seg)
    index += xs.pixel.to(itype).index_select(0, x_tap)
    weight = ys.weight.index_select(0, y_tap).index_select(0, seg)
    weight *= xs.weight.index_select(0, x_tap)
    del seg, x_tap
    offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
    index, blocks, num_rows = _table_blocks(dense, index, row0)
    return GatherPlan(dense, blocks, num_rows, index, weight, offsets.to(itype), bag_sizes)


def gather_plan(
    sizes: List[Tuple[int, int, int]], levels: List[LevelSamples], output_size: Tuple[int, int],
    compute_dtype: torch.dtype, device: torch.device,
) -> GatherPlan:
    """The bags of all sample groups, moved to output order: the dense groups of rotated
    boxes (upright boxes take :func:`upright_gather_plan`, without groups).

    Args:
        sizes: (B, H, W) of every level of the pooler.
        levels: the geometry's sample groups (:func:`.geometry.sample_groups`).
    """
    ph, pw = output_size
    nbins = ph * pw
    dense, rois, index, weight, bags = [], [], [], [], []
    row0 = 0
    for plan in levels:
        bsz, h, w = sizes[plan.level]
        dense.append((plan.level, row0, bsz, h, w))
        for group in plan.groups:
            rois.append(group.rois)
            if group.ys is None:
                bags.append(torch.zeros(group.rois.numel() * nbins, dtype=torch.int64, device=device))
                continue
            idx, wt, bag = _dense_group_taps(group, row0, h, w, ph, pw)
            index.append(idx)
            weight.append(wt)
            bags.append(bag)
        row0 += bsz * h * w
    plan_sizes = torch.cat(bags)  # bags in plan order: level, then grid group
    if index:
        plan_index, plan_weight = torch.cat(index), torch.cat(weight).to(compute_dtype)
    else:
        plan_index = torch.zeros(0, dtype=torch.int64, device=device)
        plan_weight = torch.zeros(0, dtype=compute_dtype, device=device)
    plan_index, blocks, row0 = _table_blocks(dense, plan_index, row0)
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
    return GatherPlan(dense, blocks, row0, index_t, weight_t, offsets.to(itype), bag_sizes)


def _table_blocks(levels, index: torch.Tensor, num_rows: int):
    """The table's row blocks for taps ``index`` (rows of the dense table of ``levels``).

    When the taps touch at most half of the dense rows, the table keeps only those rows
    (compact numbering, in dense order) and ``index`` is renumbered.

    Returns:
        (index, blocks, table rows), blocks as in :class:`GatherPlan`.
    """
    dense = [(level, i, row0 + i * h * w, h * w) for level, row0, b, h, w in levels for i in range(b)]
    whole = (index, [(lv, i, r, n, None) for lv, i, r, n in dense], num_rows)
    if index.numel() == 0 or num_rows == 0:
        return whole
    used = torch.bincount(index, minlength=num_rows) > 0
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
