# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The pooler's samplers as PyTorch operators: ``torch.ops.roi_plugin.*``.

Multi-level ROIAlign, ``(features, rois) -> pooled``, one operator per sampler and direction:

    roi_align_gather(features, rois, ...)                  -> (K, C, Ph, Pw)    (:mod:`.gather`)
    roi_align_gather_backward(grad, rois, sizes, dtype, ...) -> [dL/dfeatures]
    roi_align_grid_sample(...), roi_align_grid_sample_backward(...)             (:mod:`.grid_sample`)

``features`` are the L maps (B, C, H_l, W_l), ``rois`` (K, 5) ``batch_index, x1, y1, x2, y2``
(``(K, 6)`` ``batch_index, x_ctr, y_ctr, w, h, angle`` for ``ROIAlignRotated``) in input-image
pixels, and every setting is an int/float/bool/str argument, so eager, ``torch.compile``
(an opaque op: no graph break, no guard on box data), TorchScript, ``torch.jit.trace``,
``torch.export`` and the profiler all run this one implementation. Inside the op: the box
value checks (the pooler's error messages), level routing (:mod:`.levels`), the geometry
(:mod:`.axis_taps` / :mod:`.geometry` / :mod:`.rotated_geometry`) and the sampler, on one
intra-op thread unless ``single_thread`` is False (:mod:`.threads`).

Autograd. Pooling is linear in the features: ``pooled = P(rois) features``, so the backward
is the transpose, ``dfeatures = P(rois)^T grad``, an operator of its own, and the derivative
of the backward with respect to ``grad`` is the forward operator again (double backward).
No derivative flows to ``rois`` (as for torchvision's ``roi_align``). The backward rebuilds
the plan (taps, sample points) from ``rois``: a saved plan would be an op output of
data-dependent size, which ``torch.compile`` captures only behind a graph break (unless a
global Dynamo flag is set). The rebuild is 7-9 % of the pooler's training step (30-33 ms of
380-410 ms, 2 x 512 ROIs at 800x1216, ``results/compiled_pooler.md``).

Fake (meta) implementations give the output shapes from the input shapes alone, for
``torch.compile`` and ``torch.export``. The Python reference is torchvision's ``roi_align``
(``tests/test_pooler.py``); the module is :class:`roi_plugin.modeling.poolers.ROIAlignPooler`.
"""
import contextlib
from typing import List, NamedTuple, Sequence

import torch

from .gather import gather_backward, gather_forward
from .gather_plan import gather_plan, upright_gather_plan
from .geometry import compute_dtype, sample_groups
from .grid_sample import grid_sample_roi_align, grid_sample_roi_align_backward
from .levels import route_boxes
from .rotated_geometry import rotated_sample_groups
from .threads import single_threaded

__all__ = ["POOLER_TYPES", "OTHER_POOLER_TYPES", "SAMPLERS"]

# name -> aligned (half-pixel offset); ROIAlignRotated (rotated boxes) is always aligned
POOLER_TYPES = {"ROIAlign": False, "ROIAlignV2": True, "ROIAlignRotated": True}
# Pooler types with operators of their own (below): name -> operator. Not in POOLER_TYPES, the
# table of the align operators, which would otherwise sample them as ROIAlign.
OTHER_POOLER_TYPES = {"ROIPool": "roi_pool", "PrRoIPool": "prroi_pool"}
SAMPLERS = ("gather", "grid_sample")
_SETTINGS = ("SymInt[] output_size, float[] scales, int sampling_ratio, str pooler_type, "
             "float canonical_box_size, int canonical_level, bool single_thread")
_FORWARD = f"(Tensor[] features, Tensor rois, {_SETTINGS}) -> Tensor"
_BACKWARD = f"(Tensor grad, Tensor rois, SymInt[] sizes, ScalarType dtype, {_SETTINGS}) -> Tensor[]"


class _Rois(NamedTuple):
    boxes: torch.Tensor  # (K, 4) or (K, 5) in the compute dtype
    batch: torch.Tensor  # (K,) int64 image of each ROI
    level_of: torch.Tensor  # (K,) int64 level of each ROI
    compute_dtype: torch.dtype


def _check_rois(rois: torch.Tensor, batch_size: int, rotated: bool) -> None:
    """The box value checks (one host sync when all is well), with the pooler's messages."""
    t = rois[:, 1:]
    image = rois[:, 0]
    finite = torch.isfinite(t).all(1)
    if rotated:
        wrong = (t[:, 2] < 0) | (t[:, 3] < 0)
    else:
        wrong = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
    indexed = (image >= 0) & (image < batch_size) & (image == image.floor())
    if bool((finite & ~wrong & indexed).all()):
        return
    if not bool(indexed.all()):
        k = int((~indexed).nonzero()[0, 0])
        raise ValueError(f"rois[{k}, 0] = {image[k].item()} is not the index of an image of the batch "
                         f"({batch_size} images)")
    i = int(image[~finite | wrong].min())
    mine = image == i
    position = torch.cumsum(mine, 0) - 1  # of each ROI among its image's boxes
    if bool((mine & ~finite).any()):
        k = int((mine & ~finite).nonzero()[0, 0])
        raise ValueError(f"boxes of image {i} have non-finite coordinates (box {int(position[k])}: {t[k].tolist()})")
    k = int((mine & wrong).nonzero()[0, 0])
    if rotated:
        raise ValueError(
            f"boxes of image {i} have a negative width or height (box {int(position[k])}: {t[k].tolist()}); "
            f"rotated boxes must be x_ctr, y_ctr, w, h, angle"
        )
    raise ValueError(
        f"boxes of image {i} are inverted (x2 < x1 or y2 < y1; box {int(position[k])}: {t[k].tolist()}); "
        f"boxes must be x1, y1, x2, y2"
    )


def _prepare(rois: torch.Tensor, batch_size: int, dtype: torch.dtype, scales: Sequence[float], pooler_type: str,
             canonical_box_size: float, canonical_level: int, check: bool) -> _Rois:
    """Validate ``rois`` and route each to its level; geometry in float64 for float64 maps
    (gradcheck), float32 otherwise (half precision maps are sampled in float32)."""
    if pooler_type not in POOLER_TYPES:
        raise ValueError(f"pooler_type {pooler_type!r} is not supported; use one of {sorted(POOLER_TYPES)}")
    width = 6 if pooler_type == "ROIAlignRotated" else 5
    if rois.dim() != 2 or rois.shape[1] != width:
        raise ValueError(f"rois must be (K, {width}) batch_index, box for pooler_type {pooler_type!r}, "
                         f"got {tuple(rois.shape)}")
    if check and rois.numel():
        _check_rois(rois, batch_size, width == 6)
    work = compute_dtype(dtype)
    boxes = rois[:, 1:].to(work)
    level_of = route_boxes(boxes, scales, canonical_box_size, canonical_level)
    return _Rois(boxes, rois[:, 0].to(torch.int64), level_of, work)


def _threads(single_thread: bool, device: torch.device):
    return single_threaded(device) if single_thread else contextlib.nullcontext()


def _levels(r: _Rois, sizes, scales, output_size, sampling_ratio: int, pooler_type: str):
    """The sample groups of :mod:`.geometry` (or :mod:`.rotated_geometry`), level by level."""
    hw = [(s[2], s[3]) for s in sizes]
    if pooler_type == "ROIAlignRotated":
        return rotated_sample_groups(r.boxes, r.batch, r.level_of, hw, scales, output_size, sampling_ratio,
                                     r.compute_dtype)
    return sample_groups(r.boxes, r.batch, r.level_of, hw, scales, output_size, sampling_ratio,
                         POOLER_TYPES[pooler_type])


def _gather_plan(r: _Rois, sizes, scales, output_size, sampling_ratio: int, pooler_type: str):
    bhw = [(s[0], s[2], s[3]) for s in sizes]
    if pooler_type == "ROIAlignRotated":
        levels = _levels(r, sizes, scales, output_size, sampling_ratio, pooler_type)
        return gather_plan(bhw, levels, output_size, r.compute_dtype, r.boxes.device)
    # upright boxes: all ROIs in one plan, no sample groups
    return upright_gather_plan(bhw, r.boxes, r.batch, r.level_of, scales, output_size, sampling_ratio,
                               POOLER_TYPES[pooler_type])


# ------------------------------------------------------------------ implementations
def _forward(sampler: str, features: List[torch.Tensor], rois: torch.Tensor, output_size: List[int],
             scales: List[float], sampling_ratio: int, pooler_type: str, canonical_box_size: float,
             canonical_level: int, single_thread: bool) -> torch.Tensor:
    if len(features) != len(scales):
        raise ValueError(f"got {len(features)} feature maps for {len(scales)} scales {list(scales)}")
    sizes = [f.shape for f in features]
    out_hw = (int(output_size[0]), int(output_size[1]))
    with _threads(single_thread, rois.device):
        r = _prepare(rois, sizes[0][0], features[0].dtype, scales, pooler_type, canonical_box_size,
                     canonical_level, check=True)
        if len(r.boxes) == 0:
            return features[0].new_zeros((0, sizes[0][1], *out_hw))
        if sampler == "gather":
            plan = _gather_plan(r, sizes, scales, out_hw, sampling_ratio, pooler_type)
            return gather_forward(plan, list(features), len(r.boxes), out_hw, r.compute_dtype)
        levels = _levels(r, sizes, scales, out_hw, sampling_ratio, pooler_type)
        return grid_sample_roi_align(list(features), levels, len(r.boxes), out_hw, r.compute_dtype)


def _backward(sampler: str, grad: torch.Tensor, rois: torch.Tensor, sizes: List[int], dtype: torch.dtype,
              output_size: List[int], scales: List[float], sampling_ratio: int, pooler_type: str,
              canonical_box_size: float, canonical_level: int, single_thread: bool) -> List[torch.Tensor]:
    shapes = [tuple(int(v) for v in sizes[4 * i:4 * i + 4]) for i in range(len(sizes) // 4)]
    out_hw = (int(output_size[0]), int(output_size[1]))
    with _threads(single_thread, grad.device):
        r = _prepare(rois, shapes[0][0], dtype, scales, pooler_type, canonical_box_size, canonical_level,
                     check=False)
        if len(r.boxes) == 0:
            return [torch.zeros(s, dtype=dtype, device=grad.device) for s in shapes]
        if sampler == "gather":
            plan = _gather_plan(r, shapes, scales, out_hw, sampling_ratio, pooler_type)
            return gather_backward(plan, grad, shapes, dtype, r.compute_dtype)
        levels = _levels(r, shapes, scales, out_hw, sampling_ratio, pooler_type)
        return grid_sample_roi_align_backward(grad, levels, shapes, dtype, out_hw, r.compute_dtype)


# ------------------------------------------------------------------ operators, fakes, autograd
def _define(sampler: str):
    """``roi_plugin::roi_align_<sampler>`` and its ``_backward``, with fakes and autograd."""
    def forward_impl(*args):
        return _forward(sampler, *args)

    def backward_impl(*args):
        return _backward(sampler, *args)

    forward = torch.library.custom_op(f"roi_plugin::roi_align_{sampler}", forward_impl, mutates_args=(),
                                      schema=_FORWARD)
    backward = torch.library.custom_op(f"roi_plugin::roi_align_{sampler}_backward", backward_impl,
                                       mutates_args=(), schema=_BACKWARD)

    @forward.register_fake
    def _(features, rois, output_size, *settings):
        return features[0].new_empty((rois.shape[0], features[0].shape[1], output_size[0], output_size[1]))

    @backward.register_fake
    def _(grad, rois, sizes, dtype, *settings):
        return [grad.new_empty(tuple(sizes[i:i + 4]), dtype=dtype) for i in range(0, len(sizes), 4)]

    def setup_forward(ctx, inputs, output):
        features, rois, *settings = inputs
        ctx.save_for_backward(rois)
        ctx.sizes = [s for f in features for s in f.shape]
        ctx.dtype = features[0].dtype
        ctx.settings = settings

    def backward_of_forward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grads = backward(grad, rois, ctx.sizes, ctx.dtype, *ctx.settings)
        return (list(grads), None) + (None,) * len(ctx.settings)

    def setup_backward(ctx, inputs, output):
        grad, rois, sizes, dtype, *settings = inputs
        ctx.save_for_backward(rois)
        ctx.sizes, ctx.dtype, ctx.settings = sizes, dtype, settings

    def backward_of_backward(ctx, grad_grads):
        # d(backward)/d(grad) applied to grad_grads: the forward operator (P^T is linear in grad).
        (rois,) = ctx.saved_tensors
        gg = [torch.zeros(ctx.sizes[4 * i:4 * i + 4], dtype=ctx.dtype, device=rois.device) if g is None else g
              for i, g in enumerate(grad_grads)]
        return (forward(gg, rois, *ctx.settings), None, None, None) + (None,) * len(ctx.settings)

    forward.register_autograd(backward_of_forward, setup_context=setup_forward)
    backward.register_autograd(backward_of_backward, setup_context=setup_backward)
    return forward, backward


roi_align_gather, roi_align_gather_backward = _define("gather")
roi_align_grid_sample, roi_align_grid_sample_backward = _define("grid_sample")
