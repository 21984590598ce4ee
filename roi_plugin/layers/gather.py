# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The gather sampler: each bin is summed from its bag of taps with ``F.embedding_bag``.

Forward, for the table of rows ``T`` (all sampled levels, channels-last) and the plan of
:mod:`.gather_plan`:

    bins[k] = sum_{t in bag k} w_t * T[row_t]            (embedding_bag, mode="sum")

Backward, the transposed sum (a row receives from every tap that reads it):

    dT[r] = sum_{t : row_t = r} w_t * dbins[bag(t)]      (embedding_bag over row -> bins lists)

so nothing but the taps' rows and weights is kept for it. Bags may differ in length, so
adaptive sampling (``sampling_ratio=0``) needs no grouping, and one call serves all
ROIs of all levels. On CPU the ops run on one intra-op thread (:mod:`.threads`: a core
taken by another process would otherwise stall every parallel region).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .gather_plan import gather_plan, upright_gather_plan
from .geometry import LevelSamples
from .threads import single_threaded

__all__ = ["gather_roi_align", "gather_roi_align_boxes"]

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


class _GatherROIAlign(torch.autograd.Function):
    """Multi-level ROIAlign as sums over bags of taps; ``apply(plan, num_rois, (Ph, Pw),
    compute_dtype, *features) -> (num_rois, C, Ph, Pw)``.

    The table is built a chunk of channels at a time (:func:`_chunk_width`), so the transient
    copy is a fraction of the pyramid, and bags are already in output order, so each chunk of bins
    lands in the output with one strided copy (no scatter). The backward runs per level,
    image and channel chunk and transposes straight into a contiguous NCHW gradient (what
    the FPN convolutions and autograd's accumulation want: a channels-last gradient would be
    re-laid out by them at several times the cost). It is built from differentiable ops, so
    double backward works too.
    """

    @staticmethod
    def forward(ctx, plan, num_rois, out_hw, compute_dtype, *features):
        ph, pw = out_hw
        channels = features[0].shape[1]
        out = features[0].new_empty((num_rois, channels, ph, pw))
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
        ctx.plan = plan
        ctx.dtype = features[0].dtype
        ctx.compute_dtype = compute_dtype
        ctx.num_features = len(features)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with single_threaded(grad_out.device):
            return _GatherROIAlign._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        plan = ctx.plan
        num_rois, channels, ph, pw = grad_out.shape
        device = grad_out.device
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
        grads: List[Optional[torch.Tensor]] = [None] * ctx.num_features
        # A compact table (all blocks or none, see gather_plan._table_blocks) left out the
        # rows no tap touches: their gradient is 0.
        compact = any(blk[4] is not None for blk in plan.blocks)
        for level, _, b, h, w in plan.levels:
            grads[level] = (torch.zeros if compact else torch.empty)(
                (b, channels, h, w), dtype=ctx.dtype, device=device
            )
        itemsize = ctx.compute_dtype.itemsize
        width = _grad_chunk_width(plan, num_rois, ph * pw, channels, itemsize)
        for c0, c1 in _channel_chunks(channels, width):
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


def gather_roi_align(
    x: List[torch.Tensor], levels: List[LevelSamples], num_rois: int, output_size: Tuple[int, int],
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Pool the sample groups ``levels`` from the maps ``x`` (B, C, H_l, W_l) -> (num_rois, C, Ph, Pw)."""
    sizes = [(f.shape[0], f.shape[2], f.shape[3]) for f in x]
    with single_threaded(x[0].device):
        plan = gather_plan(sizes, levels, output_size, compute_dtype, x[0].device)
        return _GatherROIAlign.apply(plan, num_rois, output_size, compute_dtype, *x)


def gather_roi_align_boxes(
    x: List[torch.Tensor], boxes: torch.Tensor, batch: torch.Tensor, level_of: torch.Tensor,
    scales: Sequence[float], output_size: Tuple[int, int], sampling_ratio: int, aligned: bool,
) -> torch.Tensor:
    """Pool upright ``boxes`` (N, 4) (input pixels, compute dtype), ROI ``i`` of image
    ``batch[i]`` from level ``level_of[i]`` of ``x`` -> (N, C, Ph, Pw); the plan comes
    from :func:`.gather_plan.upright_gather_plan` (all ROIs at once, no sample groups)."""
    sizes = [(f.shape[0], f.shape[2], f.shape[3]) for f in x]
    with single_threaded(boxes.device):
        plan = upright_gather_plan(sizes, boxes, batch, level_of, scales, output_size, sampling_ratio, aligned)
        return _GatherROIAlign.apply(plan, boxes.shape[0], output_size, boxes.dtype, *x)
