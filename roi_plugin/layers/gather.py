# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The gather sampler: each bin is summed from its bag of taps with ``F.embedding_bag``.

Forward, for the table of rows ``T`` (all sampled levels, channels-last) and the plan of
:mod:`.gather_plan`:

    bins[k] = sum_{t in bag k} w_t * T[row_t]            (embedding_bag, mode="sum")

Backward, the transposed sum (a row receives from every tap that reads it):

    dT[r] = sum_{t : row_t = r} w_t * dbins[bag(t)]      (embedding_bag over row -> bins lists)

so nothing but the taps' rows and weights is needed for it. Bags may differ in length, so
adaptive sampling (``sampling_ratio=0``) needs no grouping, and one call serves all
ROIs of all levels. These are the two halves of the operators ``roi_plugin::roi_align_gather``
and ``roi_align_gather_backward`` (:mod:`.roi_align_ops`), which build the plan and pick the
intra-op threads.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .gather_plan import GatherPlan

__all__ = ["gather_forward", "gather_backward"]

# Channels per embedding_bag call. The channels-last copy of the levels (forward) and of
# the output gradient (backward) is made one chunk of channels at a time, and the forward
# sums the bins of a chunk a block of ROIs at a time (bins of at most a quarter of the
# table's rows), so the transient memory is the taps plus one chunk's table and one
# block's bins. A call takes the widest chunk (up to 64 channels: fewer passes over the
# taps) that keeps this within _TRANSIENT of the output it returns (ROIPooler's own
# transient, its per-level results, is about half of it), and at least 8 channels.
_TRANSIENT = 0.6
_CHUNKS = (64, 32, 16, 8)


def _roi_blocks(plan, num_rois: int, bins: int) -> List[Tuple[int, int]]:
    """ROI ranges summed by one embedding_bag call each."""
    step = max(1, plan.num_rows // 4 // bins)
    return [(r0, min(r0 + step, num_rois)) for r0 in range(0, num_rois, step)]


def _chunk_width(plan, num_rois: int, block_rois: int, bins: int, channels: int, itemsize: int) -> int:
    taps = plan.index.numel() * (plan.index.element_size() + plan.weight.element_size())
    budget = _TRANSIENT * num_rois * bins * channels * itemsize - taps
    per_channel = (plan.num_rows + block_rois * bins) * itemsize
    return next((c for c in _CHUNKS if c * per_channel <= budget), _CHUNKS[-1])


def _grad_chunk_width(plan, num_rois: int, bins: int, channels: int, itemsize: int) -> int:
    """The backward's chunk: its transient (a chunk of the output gradient channels-last and
    of one image's gradient rows) within a tenth of the feature gradients it returns."""
    rows = max((n for _, _, _, n, _ in plan.blocks), default=0)
    grads = sum(b * h * w for _, _, b, h, w in plan.levels) * channels * itemsize
    per_channel = (num_rois * bins + rows) * itemsize
    return next((c for c in _CHUNKS if c * per_channel <= 0.1 * grads), _CHUNKS[-1])


def _channel_chunks(channels: int, width: int) -> List[Tuple[int, int]]:
    return [(c0, min(c0 + width, channels)) for c0 in range(0, channels, width)]


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


def gather_forward(
    plan: GatherPlan, features: List[torch.Tensor], num_rois: int, out_hw: Sequence[int], compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Sum the bags of ``plan`` from ``features`` (L x (B, C, H_l, W_l)) -> (num_rois, C, Ph, Pw)
    in the features' dtype.

    The table is built a chunk of channels at a time (:func:`_chunk_width`), so the transient
    copy is a fraction of the pyramid, and bags are already in output order, so each chunk of
    bins lands in the output with one strided copy (no scatter).
    """
    ph, pw = out_hw
    channels = features[0].shape[1]
    out = features[0].new_empty((num_rois, channels, ph, pw))
    if num_rois == 0:
        return out
    itemsize = compute_dtype.itemsize
    blocks = _roi_blocks(plan, num_rois, ph * pw)
    width = _chunk_width(plan, num_rois, blocks[0][1], ph * pw, channels, itemsize)
    # First tap of each block's first bag (one read of the offsets).
    first_tap = torch.cat([plan.offsets[[r0 * ph * pw for r0, _ in blocks]].long(),
                           plan.offsets.new_tensor([plan.index.numel()]).long()]).tolist()
    for c0, c1 in _channel_chunks(channels, width):
        table = torch.empty((plan.num_rows, c1 - c0), dtype=compute_dtype, device=out.device)
        for level, i, r, n, local in plan.blocks:
            _copy_to_rows(table[r:r + n], features[level][i, c0:c1], local)
        for k, (r0, r1) in enumerate(blocks):
            t0, t1 = first_tap[k], first_tap[k + 1]
            bins = F.embedding_bag(
                plan.index[t0:t1], table, plan.offsets[r0 * ph * pw:r1 * ph * pw] - t0, mode="sum",
                per_sample_weights=plan.weight[t0:t1],
            )
            out[r0:r1, c0:c1] = bins.view(r1 - r0, ph, pw, c1 - c0).permute(0, 3, 1, 2)
            del bins
        del table  # before the next chunk's copy is made
    return out


def gather_backward(
    plan: GatherPlan, grad_out: torch.Tensor, sizes: Sequence[Sequence[int]], dtype: torch.dtype,
    compute_dtype: torch.dtype,
) -> List[torch.Tensor]:
    """The transposed sums: the gradient of each level (B, C, H_l, W_l) of ``sizes``, in
    ``dtype``, for ``grad_out`` (num_rois, C, Ph, Pw); levels no tap reads get zeros.

    Runs per level, image and channel chunk and transposes straight into a contiguous NCHW
    gradient (what the FPN convolutions and autograd's accumulation want: a channels-last
    gradient would be re-laid out by them at several times the cost).
    """
    num_rois, channels, ph, pw = grad_out.shape
    device = grad_out.device
    # A compact table (all blocks or none, see gather_plan._table_blocks) left out the
    # rows no tap touches: their gradient is 0.
    compact = any(blk[4] is not None for blk in plan.blocks)
    sampled = {level for level, _, _, _, _ in plan.levels}
    grads = [(torch.empty if level in sampled and not compact else torch.zeros)(tuple(size), dtype=dtype, device=device)
             for level, size in enumerate(sizes)]
    if not sampled:
        return grads
    # Transposed lists: taps sorted by table row, row r's bag is [start[r], start[r+1]),
    # each tap pointing at its output bin (= row of the channels-last gradient below).
    itype = plan.index.dtype
    bag = torch.repeat_interleave(torch.arange(plan.bag_sizes.numel(), dtype=itype, device=device), plan.bag_sizes)
    order = torch.argsort(plan.index, stable=True)
    src_bag, weight = bag.index_select(0, order), plan.weight.index_select(0, order)
    del bag, order
    start = torch.zeros(plan.num_rows + 1, dtype=itype, device=device)
    torch.cumsum(torch.bincount(plan.index, minlength=plan.num_rows), 0, out=start[1:])
    bounds = start[[r for _, _, r, _, _ in plan.blocks] + [plan.num_rows]].tolist()
    itemsize = compute_dtype.itemsize
    width = _grad_chunk_width(plan, num_rois, ph * pw, channels, itemsize)
    for c0, c1 in _channel_chunks(channels, width):
        g = grad_out[:, c0:c1].permute(0, 2, 3, 1).to(compute_dtype).reshape(-1, c1 - c0)
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
    return grads
