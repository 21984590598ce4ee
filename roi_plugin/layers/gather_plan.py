# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The gather sampler's plan: every output bin as a bag of (table row, weight) taps, in blocks.

A level viewed channels-last is a table of ``B*H*W`` rows of ``C`` features; pixel
``(b, y, x)`` is row ``b*H*W + y*W + x``, and the levels are stacked one after the other.
A bin's bag lists the pixels its samples read with their weights (bilinear weight x validity x
the mean's ``1/(gh*gw)``), so

    bin = sum over the bag's taps t of  weight_t * table[row_t],

which :mod:`.gather` computes with ``F.embedding_bag``. Taps of weight 0 (outside the map,
past an ROI's own grid, exact pixel hits) are dropped, so bags differ in length.

Blocks. The taps grow with the samples (``gh * gw`` per bin), not with the output: 20 boxes of
500 px at scale 1 read 72 x 72 samples per bin. So a call's plan is a :class:`GatherPlans`, a
sequence of :class:`GatherPlan` blocks, each the bags of a contiguous range of output bins,
built one at a time when iterated: a block holds at most ``max_taps`` taps (plus one bag), and
:func:`plan_budget` sets ``max_taps`` to a share of the output's bytes (of the output and the
feature gradients for the backward), at least ``_MIN_BLOCK_TAPS``. The usual calls
(Detectron2's box and mask heads) fit in one block; the sampler's transient memory is bounded
by what the call returns, whatever the samples.

The backward sums the same taps the other way, per table row (pixel), so it wants them
sorted by row: :meth:`GatherPlans.transposed` gives :class:`TransposedPlan` blocks, each the
taps of a range of rows, also within the budget. For upright boxes these are stripes of pixel
rows, every tap of a row in one stripe, listed in the order of the forward's bags: the
gradient is the same bit for bit whatever the blocks (tested). Rotated boxes transpose each
forward block; with several blocks a pixel read from two of them gets its two partial sums
added, in block order.

How a consumer (a sampler, or another pooling type over the same taps) uses it::

    for plan in plans:                       # GatherPlans: len(plans) blocks, in bin order
        k0, k1 = plan.bins                   # output bins k0..k1-1 (bin k: ROI k // (Ph*Pw))
        # bag j (bin k0 + j): taps index[offsets[j] : offsets[j] + bag_sizes[j]], weight[...]
        # rows of the table: plan.blocks (which image of which level, and which of its pixels)
    for t in plans.transposed():             # TransposedPlan blocks, in row order
        # row q of t: taps src_bin[start[q] : start[q+1]] (output bin minus t.bins[0]), weight[...]
        # where row q's gradient goes: t.parts; t.exclusive: no other block has taps of its rows
"""
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .axis_taps import distinct_axis_taps
from .geometry import LevelSamples, SampleGroup, level_boxes, samples_per_bin

__all__ = ["GatherPlan", "GatherPlans", "TransposedPlan", "plan_budget", "rotated_gather_plan", "upright_gather_plan"]

# A block's taps (index + weight; four times that in the backward, which sorts them) stay within
# _PLAN_SHARE of what the call returns, and a block may always hold _MIN_BLOCK_TAPS taps (256 KiB
# of int32 + float32): smaller blocks for small outputs would save less memory than their calls
# cost in time (the memory-bound cases of tools/bench/bounded.py: within 2x ROIPooler's peak).
_PLAN_SHARE = 0.25
_MIN_BLOCK_TAPS = 2**15
_SORT_FACTOR = 4  # the backward's transient per tap (rows, weights, bins, the sort's), in taps
_BIN_TAPS = 4  # a bin's (or a segment's) own int32 temporaries, in taps
_SAMPLE_TAPS = 16  # the temporaries of one sample of axis_taps, in taps
# Rotated blocks get this many times the budget: each block lays out its ROIs' sample groups
# anew (per level and grid size, some hundred operator calls a group), so a quarter of the
# output cut Detectron2-sized calls at 64-128 channels into 6-13 blocks and took 1.4x-1.8x the
# time of one block (2 x 512 ROIs, 400x608, P2..P5). With 16 such calls are one block again;
# many-sample inputs, whose output is small, are still cut by the floor and the bin rows.
_ROTATED_BUDGET_FACTOR = 16


class GatherPlan(NamedTuple):
    """One block of bags: the bins ``bins = (k0, k1)`` of the output in order (bag ``j`` is bin
    ``k0 + j``, bin ``k`` being bin ``k % (Ph*Pw)`` of ROI ``k // (Ph*Pw)``), indexing the rows
    of a table of the sampled levels stacked channels-last."""

    levels: List[Tuple[int, int, int, int, int]]  # (level, first dense row, B, H, W) of each sampled level
    # The table's rows, one block per (level, image): (level, image, first table row, rows,
    # positions in the image's H*W map or None for all of them, in order). When the taps touch
    # at most half of the sampled levels' rows (the mask head's few ROIs, or one block of many),
    # only those rows are copied.
    blocks: List[Tuple[int, int, int, int, Optional[torch.Tensor]]]
    num_rows: int  # rows of the table
    index: torch.Tensor  # (T,) int32 table rows of all taps
    weight: torch.Tensor  # (T,) bilinear weight x validity x 1/(gh*gw)
    offsets: torch.Tensor  # (k1-k0,) int32 start of each bag in index
    bag_sizes: torch.Tensor  # (k1-k0,) int64
    bins: Tuple[int, int]  # (k0, k1): the output bins of this block


class TransposedPlan(NamedTuple):
    """One block of the transposed sums: the taps of ``num_rows`` gradient rows, sorted by row
    (row ``q``'s taps are ``[start[q], start[q+1])``, in the order of the forward's bags)."""

    # Where the rows go: (level, image, first row, rows, positions in the image's H*W map or
    # None, first position when None): rows [first, first + rows) of this block are pixels
    # positions[:] (or first position + 0, 1, ...) of that image of that level.
    parts: List[Tuple[int, int, int, int, Optional[torch.Tensor], int]]
    num_rows: int
    src_bin: torch.Tensor  # (T,) output bin of each tap, minus bins[0]
    weight: torch.Tensor  # (T,)
    start: torch.Tensor  # (num_rows + 1,)
    bins: Tuple[int, int]  # (k0, k1): the output bins its taps read
    exclusive: bool  # its rows' taps are all here: the rows are written, not added to
    alone: bool  # the only block


class GatherPlans:
    """The plan of one pooler call: ``len(self)`` :class:`GatherPlan` blocks covering output bins
    ``0..num_bins-1`` in order, each built when the iteration reaches it (so one block's taps are
    alive at a time), and their transpose (:meth:`transposed`). ``levels`` as in :class:`GatherPlan`."""

    def __init__(self, levels, num_bins: int, cuts: Sequence[int], build: Callable[[int, int], GatherPlan],
                 transposed: Optional[Callable[[], Iterator[TransposedPlan]]] = None):
        self.levels, self.num_bins, self.cuts, self._build = levels, num_bins, list(cuts), build
        self._transposed = transposed

    def __len__(self) -> int:
        return len(self.cuts) - 1

    def __iter__(self) -> Iterator[GatherPlan]:
        for k0, k1 in zip(self.cuts[:-1], self.cuts[1:]):
            yield self._build(k0, k1)

    def transposed(self) -> Iterator[TransposedPlan]:
        """The taps sorted by table row, block by block (the backward's sums)."""
        if self._transposed is not None:
            yield from self._transposed()
            return
        alone = len(self) == 1
        for plan in self:
            yield transpose(plan, exclusive=alone, alone=alone)


def transpose(plan: GatherPlan, exclusive: bool, alone: bool) -> TransposedPlan:
    """The taps of one forward block sorted by table row (stable: bag order within a row)."""
    k0, k1 = plan.bins
    bag = torch.repeat_interleave(torch.arange(k1 - k0, dtype=plan.index.dtype, device=plan.index.device),
                                  plan.bag_sizes)
    rows, src_bin, weight, start = _by_row(plan.index, bag, plan.weight)
    del bag
    start = start.index_select(0, torch.searchsorted(
        rows, torch.arange(plan.num_rows + 1, dtype=rows.dtype, device=rows.device)))
    parts = [(level, i, r, n, local, 0) for level, i, r, n, local in plan.blocks]
    return TransposedPlan(parts, plan.num_rows, src_bin, weight, start, plan.bins, exclusive, alone)


def plan_budget(num_rois: int, output_size: Sequence[int], sizes: Sequence[Sequence[int]], itemsize: int,
                backward: bool = False) -> int:
    """Taps per block of a call pooling ``num_rois`` ROIs at ``output_size`` from maps of
    ``sizes`` (B, C, H, W) in a compute dtype of ``itemsize`` bytes: :data:`_PLAN_SHARE` of what
    the call returns (the output for a forward, the output and the feature gradients for a
    backward) in the block's taps (an int32 row and a weight of ``itemsize`` bytes each; the
    backward sorts them, some four times that while it does), at least :data:`_MIN_BLOCK_TAPS`."""
    returned = num_rois * output_size[0] * output_size[1] * sizes[0][1]
    if backward:
        returned += sum(s[0] * s[1] * s[2] * s[3] for s in sizes)
    per_tap = (4 + itemsize) * (_SORT_FACTOR if backward else 1)
    return max(_MIN_BLOCK_TAPS, int(_PLAN_SHARE * returned * itemsize / per_tap))


def _cuts(bag_sizes: torch.Tensor, max_taps: int) -> List[int]:
    """Bin boundaries of blocks of at most ``max_taps`` taps plus one bag (a bag larger than that
    is a block of its own), ``[0, ..., num_bins]``."""
    n = bag_sizes.numel()
    cum = torch.cumsum(bag_sizes, 0)
    total = int(cum[-1]) if n else 0
    if total <= max_taps:
        return [0, n]
    marks = torch.arange(max_taps, total, max_taps, device=cum.device, dtype=cum.dtype)
    inner = torch.unique(torch.searchsorted(cum, marks, right=True)).tolist()
    return [0] + [k for k in inner if 0 < k < n] + [n]


def _dense_levels(sizes: List[Tuple[int, int, int]], present: List[int]):
    """The table's levels (those some ROI reads), stacked: ((level, first row, B, H, W) list,
    first row of each level, rows)."""
    dense, first_row, row0 = [], [0] * len(sizes), 0
    for level, (bsz, h, w) in enumerate(sizes):
        if present[level]:
            dense.append((level, row0, bsz, h, w))
            first_row[level] = row0
            row0 += bsz * h * w
    return dense, first_row, row0


def upright_gather_plan(
    sizes: List[Tuple[int, int, int]], boxes: torch.Tensor, batch: torch.Tensor, level_of: torch.Tensor,
    scales: Sequence[float], output_size: Tuple[int, int], sampling_ratio: int, aligned: bool, max_taps: int,
    axis_rule: Optional[Callable] = None,
) -> GatherPlans:
    """The bags of upright boxes, for all ROIs and levels, in output order, in blocks.

    A bin's samples are separable (:mod:`.geometry`): its bag is every y-tap of its row times
    every x-tap of its column (:func:`.axis_taps.axis_taps`, each axis merged to distinct pixels
    by :func:`.axis_taps.distinct_pixels`), y-major. A fixed number of tensor ops builds the bags
    of any mix of ROI sizes and levels (no grouping by grid size), per block.

    Args:
        sizes: (B, H, W) of every level of the pooler.
        boxes: (N, 4) ``x1, y1, x2, y2`` in input-image pixels, in the compute dtype.
        batch: (N,) image of each box. level_of: (N,) level of each box.
        output_size: (Ph, Pw). sampling_ratio: samples per bin and axis, 0 = adaptive.
        max_taps: taps per block (:func:`plan_budget`).
        axis_rule: another pooling rule's separable taps, ``axis_rule(boxes, scale, heights,
            widths) -> (ys, xs)`` :class:`.axis_taps.AxisTaps` (each ROI's level scale and map
            size, (N,)); the PrRoIPool integrals of :mod:`.prroi_pool`. Default: ROIAlign's
            samples (``sampling_ratio``, ``aligned``), merged to distinct pixels.
    """
    ph, pw = output_size
    device, n = boxes.device, boxes.shape[0]
    dense, first_row, row0 = _dense_levels(sizes, torch.bincount(level_of, minlength=len(sizes)).tolist())
    lv = torch.tensor([[first_row[k], h, w] for k, (_, h, w) in enumerate(sizes)], device=device)[level_of]
    scale = torch.tensor(scales, dtype=boxes.dtype, device=device)[level_of]
    if axis_rule is None:
        start_x, start_y, width, height = level_boxes(boxes, scale, aligned)
        gh, gw = samples_per_bin(height, ph, sampling_ratio), samples_per_bin(width, pw, sampling_ratio)
        # The samples along each axis are listed a run of ROIs at a time (some 120 bytes each
        # while listed), merged to distinct pixels (bounded by the pixels the bins cover) and kept.
        ys = distinct_axis_taps(start_y, height, ph, gh, lv[:, 1], max(1, max_taps // _SAMPLE_TAPS))
        xs = distinct_axis_taps(start_x, width, pw, gw, lv[:, 2], max(1, max_taps // _SAMPLE_TAPS))
    else:
        ys, xs = axis_rule(boxes, scale, lv[:, 1], lv[:, 2])
    # Table row of each y-tap: the ROI's image block plus pixel row times the level's width.
    y_roi = torch.repeat_interleave(torch.arange(n, device=device), ys.count.view(n, ph).sum(1))
    y_row = (lv[:, 0] + batch * lv[:, 1] * lv[:, 2])[y_roi] + ys.pixel * lv[y_roi, 2]
    bag_sizes = (ys.count.view(n, ph, 1) * xs.count.view(n, 1, pw)).flatten()
    total = int(bag_sizes.sum())
    # int32 indices (embedding_bag takes them) where they fit: half the memory of the taps.
    it = torch.int32 if max(row0, total, n * ph * pw) < 2**31 else torch.int64
    y_row, x_pixel = y_row.to(it), xs.pixel.to(it)
    y_count, y_first, x_count, x_first = (t.to(it) for t in (ys.count, ys.first, xs.count, xs.first))
    # A block's temporaries also hold a few int32 per bin: count each bin as _BIN_TAPS taps more.
    cuts = _cuts(bag_sizes + _BIN_TAPS, max_taps)
    del bag_sizes

    def before(x: torch.Tensor) -> torch.Tensor:
        """Exclusive cumulative sum, in ``it``."""
        return torch.cumsum(x, 0, dtype=it) - x

    def runs(seg_len: torch.Tensor, seg_x: torch.Tensor):
        """Each segment's run of ``seg_len`` consecutive x-taps from ``seg_x``: (segment of each
        tap, x-tap of each tap), (T,) each."""
        seg_start = before(seg_len)
        count = int(seg_start[-1] + seg_len[-1]) if seg_len.numel() else 0
        seg = torch.repeat_interleave(torch.arange(seg_len.numel(), dtype=it, device=device), seg_len)
        x_tap = torch.arange(count, dtype=it, device=device)
        x_tap += (seg_x - seg_start).index_select(0, seg)
        return seg, x_tap

    def build(k0: int, k1: int) -> GatherPlan:
        # Bag of bin k = (r, py, px): every y-tap of (r, py) times every x-tap of (r, px), y-major.
        # Listed in two steps: segments (a bag's y-taps), then each segment's run of x-taps;
        # every per-tap value is one index_select of a per-segment one.
        k = torch.arange(k0, k1, dtype=it, device=device)
        yb = torch.div(k, pw, rounding_mode="floor")  # r * ph + py
        xb = torch.div(yb, ph, rounding_mode="floor") * pw + (k - yb * pw)  # r * pw + px
        del k
        ny, nx = y_count[yb], x_count[xb]
        bag_sizes = ny * nx
        nseg = int(ny.sum())
        seg_bag = torch.repeat_interleave(torch.arange(k1 - k0, dtype=it, device=device), ny)
        y_tap = (y_first[yb] - before(ny)).index_select(0, seg_bag)
        y_tap += torch.arange(nseg, dtype=it, device=device)
        del yb, ny
        seg, x_tap = runs(nx.index_select(0, seg_bag), x_first[xb].index_select(0, seg_bag))
        del seg_bag, xb, nx
        index = y_row.index_select(0, y_tap).index_select(0, seg)
        index += x_pixel.index_select(0, x_tap)
        weight = ys.weight.index_select(0, y_tap).index_select(0, seg)
        weight *= xs.weight.index_select(0, x_tap)
        del seg, x_tap, y_tap
        index, blocks, num_rows = _table_blocks(dense, index, row0)
        return GatherPlan(dense, blocks, num_rows, index, weight, before(bag_sizes), bag_sizes.long(), (k0, k1))

    def stripes() -> Iterator[TransposedPlan]:
        # Pixel rows of the table: (level, image, y), numbered in table order. A y-tap of bin row
        # (r, py) at pixel row q reads q in every bin (r, py, px): as many taps as r has x-taps.
        pix_row0, nq = [0] * len(sizes), 0
        for level, _, bsz, h, _ in dense:
            pix_row0[level] = nq
            nq += bsz * h
        q = (torch.tensor(pix_row0, device=device)[level_of] + batch * lv[:, 1])[y_roi] + ys.pixel
        per_row = torch.zeros(nq, dtype=torch.int64, device=device)
        per_row.index_add_(0, q, x_count.view(n, pw).sum(1)[y_roi] + pw)  # + its segments
        q_cuts = _cuts(per_row, max_taps)
        del per_row
        alone = len(q_cuts) == 2
        y_bin = torch.repeat_interleave(torch.arange(n * ph, dtype=it, device=device), y_count)  # r * ph + py
        px = torch.arange(pw, dtype=it, device=device)
        for a, b in zip(q_cuts[:-1], q_cuts[1:]):
            # The y-taps reading pixel rows a..b-1, in (r, py) order: the bags' order. Each is a
            # segment in every bin (r, py, px) of its bin row, so a row's taps come in bin order.
            sel = None if alone else ((q >= a) & (q < b)).nonzero().flatten()
            yt = y_bin if sel is None else y_bin[sel]
            xb = ((torch.div(yt, ph, rounding_mode="floor") * pw)[:, None] + px).flatten()
            seg, x_tap = runs(x_count[xb], x_first[xb])
            del xb
            seg_y = torch.arange(yt.numel(), dtype=it, device=device).repeat_interleave(pw)  # y-tap of each segment
            if sel is not None:
                seg_y = sel.to(it).index_select(0, seg_y)
            index = y_row.index_select(0, seg_y).index_select(0, seg)
            index += x_pixel.index_select(0, x_tap)
            weight = ys.weight.index_select(0, seg_y).index_select(0, seg)
            weight *= xs.weight.index_select(0, x_tap)
            src = (yt[:, None] * pw + px).flatten().index_select(0, seg)  # the bin of each tap
            del seg, x_tap, seg_y, yt
            # The table rows of pixel rows a..b-1: one contiguous range of the table.
            parts, first = [], None
            for level, lrow0, bsz, h, w in dense:
                for i in range(bsz):
                    qa, qb = max(a, pix_row0[level] + i * h), min(b, pix_row0[level] + (i + 1) * h)
                    if qa < qb:
                        y0 = qa - pix_row0[level] - i * h
                        row = lrow0 + (i * h + y0) * w
                        first = row if first is None else first
                        parts.append((level, i, row - first, (qb - qa) * w, None, y0 * w))
            num_rows = sum(p[3] for p in parts)
            if first:
                index -= first
            rows, src, weight, start = _by_row(index, src, weight)
            del index
            parts, start = _compact_parts(parts, rows, start, num_rows)
            yield TransposedPlan(parts, start.numel() - 1, src, weight, start, (0, n * ph * pw), True, alone)
            del src, weight, start

    return GatherPlans(dense, n * ph * pw, cuts, build, stripes)


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


def rotated_gather_plan(
    sizes: List[Tuple[int, int, int]], level_of: torch.Tensor, samples_of: torch.Tensor,
    levels_of: Callable[..., List[LevelSamples]], output_size: Tuple[int, int], compute_dtype: torch.dtype,
    max_taps: int,
) -> GatherPlans:
    """The bags of rotated boxes (dense sample groups, :mod:`.rotated_geometry`), in output order,
    in blocks of whole bin rows: whole ROIs, or some rows of one ROI that alone exceeds the budget.

    Args:
        sizes: (B, H, W) of every level of the pooler. level_of: (N,) level of each ROI.
        samples_of: (N,) int64 samples each ROI lays out (an upper bound of its taps / 4).
        levels_of: ``(r0, r1, rows) ->`` the sample groups of ROIs ``r0..r1-1`` (their ``rois``
            counted from ``r0``), of their bin rows ``rows = (py0, py1)`` only if not None:
            :func:`.rotated_geometry.rotated_sample_groups` on those ROIs.
        max_taps: taps per block (:func:`plan_budget`), times :data:`_ROTATED_BUDGET_FACTOR`.
    """
    ph, pw = output_size
    nbins = ph * pw
    max_taps *= _ROTATED_BUDGET_FACTOR
    device, n = level_of.device, level_of.numel()
    dense, first_row, row0 = _dense_levels(sizes, torch.bincount(level_of, minlength=len(sizes)).tolist())
    row_cost = torch.div(4 * samples_of, ph, rounding_mode="floor") + _BIN_TAPS * pw
    cuts = [u * pw for u in _cuts(row_cost.repeat_interleave(ph), max_taps)]  # whole bin rows

    def piece(r0: int, r1: int, rows: Optional[Tuple[int, int]]):
        """(index, weight, bag sizes) of ROIs r0..r1-1 (of their rows ``rows``), in output order."""
        nb = nbins if rows is None else (rows[1] - rows[0]) * pw
        ph_ = nb // pw
        rois, index, weight, bags = [], [], [], []
        for plan in levels_of(r0, r1, rows):
            bsz, h, w = sizes[plan.level]
            for group in plan.groups:
                rois.append(group.rois)
                if group.ys is None:
                    bags.append(torch.zeros(group.rois.numel() * nb, dtype=torch.int64, device=device))
                    continue
                idx, wt, bag = _dense_group_taps(group, first_row[plan.level], h, w, ph_, pw)
                index.append(idx)
                weight.append(wt.to(compute_dtype))
                bags.append(bag)
        plan_sizes = torch.cat(bags)  # bags in plan order: level, then grid group
        plan_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64, device=device)
        plan_weight = torch.cat(weight) if weight else torch.zeros(0, dtype=compute_dtype, device=device)
        del index, weight
        # Move bags (and their taps) to output order, so that the forward writes each chunk
        # of bins with one copy and the backward reads the gradient without a gather.
        dest = (torch.cat(rois)[:, None] * nb + torch.arange(nb, device=device)).flatten()
        bag_sizes = torch.empty_like(plan_sizes)
        bag_sizes[dest] = plan_sizes
        offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
        shift = offsets[dest] - (torch.cumsum(plan_sizes, 0) - plan_sizes)
        position = torch.arange(plan_index.numel(), device=device) + torch.repeat_interleave(shift, plan_sizes)
        index_t = torch.empty_like(plan_index)
        index_t[position] = plan_index
        weight_t = torch.empty_like(plan_weight)
        weight_t[position] = plan_weight
        return index_t, weight_t, bag_sizes

    def build(k0: int, k1: int) -> GatherPlan:
        parts = [piece(r0, r1, rows) for r0, r1, rows in _row_pieces(k0 // pw, k1 // pw, ph)]
        index, weight, bag_sizes = (torch.cat(t) if len(parts) > 1 else t[0] for t in zip(*parts))
        del parts
        # int32 rows and offsets (embedding_bag takes them): half the memory of the taps.
        itype = torch.int32 if max(row0, index.numel()) < 2**31 else torch.int64
        index, blocks, num_rows = _table_blocks(dense, index.to(itype), row0)
        offsets = (torch.cumsum(bag_sizes, 0) - bag_sizes).to(itype)
        return GatherPlan(dense, blocks, num_rows, index, weight, offsets, bag_sizes, (k0, k1))

    return GatherPlans(dense, n * nbins, cuts, build)


def _row_pieces(u0: int, u1: int, ph: int) -> List[Tuple[int, int, Optional[Tuple[int, int]]]]:
    """Bin rows ``u0..u1-1`` (row ``u`` is row ``u % ph`` of ROI ``u // ph``) as ``(r0, r1, rows)``:
    whole ROIs (rows None), or rows ``(py0, py1)`` of one ROI."""
    out = []
    while u0 < u1:
        r, py = divmod(u0, ph)
        if py == 0 and u1 - u0 >= ph:
            r1 = r + (u1 - u0) // ph
            out.append((r, r1, None))
            u0 = r1 * ph
        else:
            py1 = min(ph, py + u1 - u0)
            out.append((r, r + 1, (py, py1)))
            u0 += py1 - py
    return out


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
    index = (torch.cumsum(used, 0, dtype=index.dtype) - 1).index_select(0, index)
    first = torch.tensor([r for _, _, r, _ in dense] + [num_rows], dtype=rows.dtype, device=rows.device)
    bounds = torch.searchsorted(rows, first).tolist()
    blocks = [
        (lv, i, bounds[k], bounds[k + 1] - bounds[k], rows[bounds[k]:bounds[k + 1]] - r)
        for k, (lv, i, r, n) in enumerate(dense)
    ]
    return index, blocks, rows.numel()


def _by_row(index: torch.Tensor, src: torch.Tensor, weight: torch.Tensor):
    """Taps sorted by row, stably (a row's taps in their given order): (the rows read, sorted,
    (U,); src and weight in that order; start of each row's taps in them, (U + 1,))."""
    index, order = torch.sort(index, stable=True)
    src, weight = src.index_select(0, order), weight.index_select(0, order)
    del order
    rows = torch.unique_consecutive(index)
    start = torch.searchsorted(index, rows, out_int32=index.dtype == torch.int32)
    start = torch.cat([start, start.new_tensor([index.numel()])])
    return rows, src, weight, start


def _compact_parts(parts, rows: torch.Tensor, start: torch.Tensor, num_rows: int):
    """The start of each of ``num_rows`` rows' taps (rows no tap reads have none), or, when
    those rows are at least half of them (their gradient is then 0), of the ``rows`` read only,
    with the parts' pixel positions (``local``): (parts, start)."""
    if 2 * rows.numel() > num_rows:
        full = torch.searchsorted(rows, torch.arange(num_rows + 1, dtype=rows.dtype, device=rows.device),
                                  out_int32=start.dtype == torch.int32)
        return parts, start.index_select(0, full)
    bounds = torch.searchsorted(rows, torch.tensor([p[2] for p in parts] + [num_rows], device=rows.device)).tolist()
    out = [(level, i, bounds[k], bounds[k + 1] - bounds[k], rows[bounds[k]:bounds[k + 1]].long() - r + p0, 0)
           for k, (level, i, r, n, _, p0) in enumerate(parts)]
    return out, start
