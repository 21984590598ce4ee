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

Memory. The plan comes in blocks of output bins (:class:`.gather_plan.GatherPlans`), each
built, summed and dropped in turn; within a block, the table is built a chunk of channels at a
time and the bins of a chunk a range at a time. So the transient memory is one block's taps
plus one chunk's table (or gradient rows) and bins, bounded by the output (forward) and the
feature gradients (backward) whatever the number of samples. With several blocks the backward
adds each block's gradient rows into the feature gradients, so a pixel read from two blocks
sums its two parts in block order (with one block, the usual case, it is written once).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .gather_plan import GatherPlan, GatherPlans, TransposedPlan

__all__ = ["gather_forward", "gather_backward"]

# Channels per embedding_bag call. The channels-last copy of the levels (forward) and of
# the output gradient (backward) is made one chunk of channels at a time, and the forward
# sums the bins of a chunk a range of bins at a time (at most a quarter of the table's rows,
# whole ROIs when one fits), so the transient memory is the block's taps plus one chunk's
# table and one range's bins. A call takes the widest chunk (up to 64 channels: fewer passes
# over the taps) that keeps this within _TRANSIENT of the output it returns (ROIPooler's own
# transient, its per-level results, is about half of it), and at least 8 channels.
_TRANSIENT = 0.6
_CHUNKS = (64, 32, 16, 8)


def _bin_calls(plan: GatherPlan, roi_bins: int) -> List[Tuple[int, int]]:
    """Bin ranges of ``plan``'s block summed by one embedding_bag call each."""
    step = max(1, plan.num_rows // 4 // roi_bins) * roi_bins
    k0, k1 = plan.bins
    return [(b0, min(b0 + step, k1)) for b0 in range(k0, k1, step)]


def _chunk_width(plan: GatherPlan, out_bins: int, call_bins: int, channels: int, itemsize: int) -> int:
    taps = plan.index.numel() * (plan.index.element_size() + plan.weight.element_size())
    budget = _TRANSIENT * out_bins * channels * itemsize - taps
    per_channel = (plan.num_rows + call_bins) * itemsize
    return next((c for c in _CHUNKS if c * per_channel <= budget), _CHUNKS[-1])


def _grad_chunk_width(t: TransposedPlan, levels, channels: int, itemsize: int) -> int:
    """The backward's chunk: its transient (a chunk of the output gradient channels-last and of
    one image's gradient rows) within a tenth of the feature gradients it returns."""
    rows = max((n for _, _, _, n, _, _ in t.parts), default=0)
    grads = sum(b * h * w for _, _, b, h, w in levels) * channels * itemsize
    per_channel = (t.bins[1] - t.bins[0] + rows) * itemsize
    return next((c for c in _CHUNKS if c * per_channel <= 0.1 * grads), _CHUNKS[-1])


def _channel_chunks(channels: int, width: int) -> List[Tuple[int, int]]:
    return [(c0, min(c0 + width, channels)) for c0 in range(0, channels, width)]


def _pieces(k0: int, k1: int, roi_bins: int) -> List[Tuple[int, int, int, int]]:
    """Bins ``k0..k1-1`` as rectangles ``(r0, r1, p0, p1)`` of the (ROI, bin) grid: whole ROIs
    in one piece, a block's partial first and last ROI in pieces of their own."""
    out = []
    while k0 < k1:
        r, p = divmod(k0, roi_bins)
        if p == 0 and k1 - k0 >= roi_bins:
            r1 = r + (k1 - k0) // roi_bins
            out.append((r, r1, 0, roi_bins))
            k0 = r1 * roi_bins
        else:
            p1 = min(roi_bins, p + k1 - k0)
            out.append((r, r + 1, p, p1))
            k0 += p1 - p
    return out


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
    plans: GatherPlans, features: List[torch.Tensor], num_rois: int, out_hw: Sequence[int],
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Sum the bags of ``plans`` from ``features`` (L x (B, C, H_l, W_l)) -> (num_rois, C, Ph, Pw)
    in the features' dtype.

    Block by block; the table is built a chunk of channels at a time (:func:`_chunk_width`),
    so the transient copy is a fraction of the pyramid, and bags are already in output order,
    so each range of bins lands in the output with one strided copy per piece (no scatter).
    """
    ph, pw = out_hw
    roi_bins = ph * pw
    channels = features[0].shape[1]
    out = features[0].new_empty((num_rois, channels, ph, pw))
    if num_rois == 0:
        return out
    flat = out.view(num_rois, channels, roi_bins)
    itemsize = compute_dtype.itemsize
    for plan in plans:
        calls = _bin_calls(plan, roi_bins)
        width = _chunk_width(plan, num_rois * roi_bins, calls[0][1] - calls[0][0], channels, itemsize)
        k0 = plan.bins[0]
        # First tap of each call's first bag (one read of the offsets).
        first_tap = torch.cat([plan.offsets[[b0 - k0 for b0, _ in calls]].long(),
                               plan.offsets.new_tensor([plan.index.numel()]).long()]).tolist()
        for c0, c1 in _channel_chunks(channels, width):
            table = torch.empty((plan.num_rows, c1 - c0), dtype=compute_dtype, device=out.device)
            for level, i, r, n, local in plan.blocks:
                _copy_to_rows(table[r:r + n], features[level][i, c0:c1], local)
            for j, (b0, b1) in enumerate(calls):
                t0, t1 = first_tap[j], first_tap[j + 1]
                bins = F.embedding_bag(
                    plan.index[t0:t1], table, plan.offsets[b0 - k0:b1 - k0] - t0, mode="sum",
                    per_sample_weights=plan.weight[t0:t1],
                )
                at = 0
                for r0, r1, p0, p1 in _pieces(b0, b1, roi_bins):
                    m = (r1 - r0) * (p1 - p0)
                    flat[r0:r1, c0:c1, p0:p1] = bins[at:at + m].view(r1 - r0, p1 - p0, c1 - c0).permute(0, 2, 1)
                    at += m
                del bins
            del table  # before the next chunk's copy is made
        del plan
    return out


def gather_backward(
    plans: GatherPlans, grad_out: torch.Tensor, sizes: Sequence[Sequence[int]], dtype: torch.dtype,
    compute_dtype: torch.dtype,
) -> List[torch.Tensor]:
    """The transposed sums: the gradient of each level (B, C, H_l, W_l) of ``sizes``, in
    ``dtype``, for ``grad_out`` (num_rois, C, Ph, Pw); levels no tap reads get zeros.

    Runs per transposed block (:meth:`.gather_plan.GatherPlans.transposed`), image and channel
    chunk and transposes straight into a contiguous NCHW gradient (what the FPN convolutions and
    autograd's accumulation want: a channels-last gradient would be re-laid out by them at
    several times the cost). Each gradient row is written once, except where blocks share rows
    (rotated boxes in several blocks), which add into zeros in the compute dtype.
    """
    num_rois, channels, ph, pw = grad_out.shape
    roi_bins = ph * pw
    device = grad_out.device
    sampled = {level for level, _, _, _, _ in plans.levels}
    itemsize = compute_dtype.itemsize
    grads: Optional[List[torch.Tensor]] = None
    fresh = False
    for t in plans.transposed():
        if grads is None:
            # Every row of the sampled levels written once: no zero-fill. A compact block (one
            # that leaves out the rows no tap reads), several blocks or added blocks need zeros.
            fresh = t.alone and t.exclusive and all(p[4] is None for p in t.parts)
            grads = [(torch.empty if level in sampled and fresh else torch.zeros)(
                tuple(size), dtype=dtype if t.exclusive else compute_dtype, device=device)
                for level, size in enumerate(sizes)]
        k0, k1 = t.bins
        bounds = t.start[[p[2] for p in t.parts] + [t.num_rows]].tolist()
        width = _grad_chunk_width(t, plans.levels, channels, itemsize)
        pieces = _pieces(k0, k1, roi_bins)
        for c0, c1 in _channel_chunks(channels, width):
            g = torch.empty((k1 - k0, c1 - c0), dtype=compute_dtype, device=device)
            at = 0
            for r0, r1, p0, p1 in pieces:
                m = (r1 - r0) * (p1 - p0)
                src = grad_out[r0:r1, c0:c1].flatten(2)[:, :, p0:p1]  # (r1-r0, c, p1-p0)
                g[at:at + m].view(r1 - r0, p1 - p0, c1 - c0).copy_(src.permute(0, 2, 1))
                at += m
            for k, (level, i, r, n, local, first) in enumerate(t.parts):
                lo, hi = bounds[k], bounds[k + 1]
                if lo == hi and not fresh:
                    continue  # no tap reads these rows: their gradient stays 0
                rows = F.embedding_bag(
                    t.src_bin[lo:hi], g, t.start[r:r + n] - lo, mode="sum", per_sample_weights=t.weight[lo:hi]
                )  # (n, c1-c0): these gradient rows
                dst = grads[level][i, c0:c1].flatten(1)  # (c1-c0, H*W), contiguous
                if local is None and (first, n) != (0, dst.shape[1]):
                    dst = dst[:, first:first + n]
                if not t.exclusive:
                    if local is None:
                        dst.add_(rows.t())
                    else:
                        dst.index_add_(1, local, rows.t())
                elif local is None:
                    # A 2-D transpose into a contiguous block takes copy_'s blocked-transpose path.
                    dst.copy_(rows.t())
                else:
                    dst.index_copy_(1, local, rows.t().to(dst.dtype))
            del g
        del t
    if grads is None:  # no ROIs
        grads = [torch.zeros(tuple(size), dtype=dtype, device=device) for size in sizes]
    return [g.to(dtype) for g in grads]
