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
from typing import List, NamedTuple, Optional, Tuple

import torch

from .geometry import LevelSamples, SampleGroup

__all__ = ["GatherPlan", "gather_plan"]


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


def _group_taps(group: SampleGroup, row0: int, h: int, w: int, ph: int, pw: int):
    """The taps of one sample group: (index (T,), weight (T,), bag sizes (n*Ph*Pw,)) in bin order."""
    n, nbins, device = group.rois.numel(), ph * pw, group.rois.device
    b, ys, xs = group.batch, group.ys, group.xs
    yi = torch.stack([ys.low, ys.high], -1)  # (n, ph, gh, 2); dense: (n, ph, pw, gh, gw, 2)
    xi = torch.stack([xs.low, xs.high], -1)  # (n, pw, gw, 2); dense: (n, ph, pw, gh, gw, 2)
    yw = torch.stack([ys.w_low, ys.w_high], -1)
    xw = torch.stack([xs.w_low, xs.w_high], -1)
    if ys.coord.dim() == 5:
        # Dense samples (rotated boxes): each axis is (n, ph, pw, gh, gw, 2) already; a bin's
        # bag is the (gh, gw, 2, 2) taps of its own samples.
        row = (row0 + b * (h * w))[:, None, None, None, None, None] + yi * w
        idx = (row[..., :, None] + xi[..., None, :]).reshape(n * nbins, -1)
        wt = (yw[..., :, None] * xw[..., None, :]).reshape(n * nbins, -1)
        keep = wt != 0
        return idx[keep], wt[keep], keep.sum(1)
    # (n, ph, pw, gh, 2, gw, 2): a bag of up to 4*gh*gw taps per bin; taps of weight 0 are dropped.
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
    return idx[keep], wt[keep], bag


def gather_plan(
    sizes: List[Tuple[int, int, int]], levels: List[LevelSamples], output_size: Tuple[int, int],
    compute_dtype: torch.dtype, device: torch.device,
) -> GatherPlan:
    """The bags of all sample groups, moved to output order.

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
            idx, wt, bag = _group_taps(group, row0, h, w, ph, pw)
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
