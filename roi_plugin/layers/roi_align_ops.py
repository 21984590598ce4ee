# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The pooler's samplers as PyTorch operators: ``torch.ops.roi_plugin.*``.

Multi-level ROIAlign, ``(features, rois) -> pooled``, one operator per sampler and direction:

    roi_align_gather(features, rois, ...)                  -> (K, C, Ph, Pw)    (:mod:`.gather`)
    roi_align_gather_backward(grad, rois, sizes, dtype, ...) -> [dL/dfeatures]
    roi_align_grid_sample(...), roi_align_grid_sample_backward(...)             (:mod:`.grid_sample`)

and, beside them, with the same settings, one operator pair per other pooler type or mode:

    roi_pool(features, rois, ...)       -> (pooled, argmax)   ROIPool            (:mod:`.roi_pool`)
    prroi_pool(features, rois, ...)     -> pooled             PrRoIPool, box gradient too (:mod:`.prroi_pool`)
    roi_align_max(features, rois, ...)  -> (pooled, argmax)   ROIAlign max mode  (:mod:`.roi_align_max`)

``features`` are the L maps (B, C, H_l, W_l), ``rois`` (K, 5) ``batch_index, x1, y1, x2, y2``
(``(K, 6)`` ``batch_index, x_ctr, y_ctr, w, h, angle`` for ``ROIAlignRotated``) in input-image
pixels, and every setting is an int/float/bool/str argument, so eager, ``torch.compile``
(an opaque op: no graph break, no guard on box data), TorchScript, ``torch.jit.trace``,
``torch.export`` and the profiler all run this one implementation. Inside the op: the box
value checks (the pooler's error messages), level routing (:mod:`.levels`), the geometry
(:mod:`.axis_taps` / :mod:`.geometry` / :mod:`.rotated_geometry`) and the sampler, on one
intra-op thread unless ``single_thread`` is False (:mod:`.threads`). On CUDA, ``gather`` takes
the device path instead (:mod:`.device_path`): Triton kernels with the same geometry, no host
reads but the box check's, a deterministic backward.

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

from . import device_path
from .gather import gather_backward, gather_forward
from .gather_plan import plan_budget, rotated_gather_plan, upright_gather_plan
from .geometry import compute_dtype, sample_groups
from .grid_sample import grid_sample_roi_align, grid_sample_roi_align_backward
from .levels import route_boxes
from .prroi_pool import prroi_pool_backward as prroi_pool_backward_impl
from .prroi_pool import prroi_pool_forward
from .roi_align_max import roi_align_max_backward as roi_align_max_backward_impl
from .roi_align_max import roi_align_max_forward
from .roi_pool import roi_pool_backward as roi_pool_backward_impl
from .roi_pool import roi_pool_forward
from .rotated_geometry import rotated_sample_groups, rotated_samples_per_roi
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


def _check_level_sizes(r: _Rois, sizes, scales) -> None:
    """A box routed to a level whose map has no pixel (height or width 0): the pooler's error
    instead of an indexing failure deep inside a sampler. Shapes only unless such a level exists."""
    for level, s in enumerate(sizes):
        if (s[2] == 0 or s[3] == 0) and r.level_of.numel():
            hit = (r.level_of == level).nonzero()
            if hit.numel():
                k = int(hit[0, 0])
                raise ValueError(
                    f"box {k} ({r.boxes[k].tolist()}) is pooled from level {level} (scale {scales[level]}), whose "
                    f"feature map is {s[2]}x{s[3]}: the image is too small for that level; pad the images "
                    f"(Detectron2's SIZE_DIVISIBILITY) or pool from fewer levels"
                )


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


def _gather_plan(r: _Rois, sizes, scales, output_size, sampling_ratio: int, pooler_type: str, backward: bool):
    """The gather sampler's plan, in blocks of at most :func:`.gather_plan.plan_budget` taps: a
    share of the output (forward), of the output and the feature gradients (backward)."""
    bhw = [(s[0], s[2], s[3]) for s in sizes]
    max_taps = plan_budget(len(r.boxes), output_size, sizes, r.compute_dtype.itemsize, backward)
    if pooler_type == "ROIAlignRotated":
        return rotated_gather_plan(
            bhw, r.level_of,
            rotated_samples_per_roi(r.boxes, r.level_of, [(s[2], s[3]) for s in sizes], scales, output_size,
                                    sampling_ratio),
            lambda r0, r1, rows: rotated_sample_groups(r.boxes[r0:r1], r.batch[r0:r1], r.level_of[r0:r1],
                                                       [(s[2], s[3]) for s in sizes], scales, output_size,
                                                       sampling_ratio, r.compute_dtype, rows),
            output_size, r.compute_dtype, max_taps)
    # upright boxes: all ROIs in one plan, no sample groups
    return upright_gather_plan(bhw, r.boxes, r.batch, r.level_of, scales, output_size, sampling_ratio,
                               POOLER_TYPES[pooler_type], max_taps)


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
        _check_level_sizes(r, sizes, scales)
        if len(r.boxes) == 0:
            return features[0].new_zeros((0, sizes[0][1], *out_hw))
        if device_path.enabled(sampler, pooler_type, features):
            return device_path.forward(list(features), rois, r.level_of, out_hw, scales, sampling_ratio, pooler_type)
        if sampler == "gather":
            plan = _gather_plan(r, sizes, scales, out_hw, sampling_ratio, pooler_type, backward=False)
            return gather_forward(plan, list(features), len(r.boxes), out_hw, r.compute_dtype)
        # the sample groups passed on unnamed: the sampler drops them once laid out
        return grid_sample_roi_align(list(features), _levels(r, sizes, scales, out_hw, sampling_ratio, pooler_type),
                                     len(r.boxes), out_hw, r.compute_dtype)


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
        if device_path.enabled(sampler, pooler_type, [grad] * len(shapes)):
            return device_path.backward(grad, rois, r.level_of, shapes, dtype, out_hw, scales, sampling_ratio,
                                        pooler_type)
        if sampler == "gather":
            plan = _gather_plan(r, shapes, scales, out_hw, sampling_ratio, pooler_type, backward=True)
            return gather_backward(plan, grad, shapes, dtype, r.compute_dtype)
        return grid_sample_roi_align_backward(grad, _levels(r, shapes, scales, out_hw, sampling_ratio, pooler_type),
                                              shapes, dtype, out_hw, r.compute_dtype)


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


# ------------------------------------------------------------------ the other pooler types and modes
# ROIPool (:mod:`.roi_pool`), PrRoIPool (:mod:`.prroi_pool`) and ROIAlign's max mode
# (:mod:`.roi_align_max`): operators of their own, with the settings of the align operators
# (``sampling_ratio`` is ignored by ROIPool and PrRoIPool), beside the ones above.
_ARGMAX_FORWARD = f"(Tensor[] features, Tensor rois, {_SETTINGS}) -> (Tensor, Tensor)"


def _prepare_any(rois: torch.Tensor, features: List[torch.Tensor], pooler_type: str, types, scales,
                 canonical_box_size: float, canonical_level: int, check: bool, dtype=None) -> _Rois:
    """:func:`_prepare` for the operators below (upright boxes, their own ``types``), with the
    zero-size level check of the forward."""
    if pooler_type not in types:
        raise ValueError(f"pooler_type {pooler_type!r} is not one of this operator's {sorted(types)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) batch_index, x1, y1, x2, y2 for pooler_type {pooler_type!r}, "
                         f"got {tuple(rois.shape)}")
    if len(features) != len(scales):
        raise ValueError(f"got {len(features)} feature maps for {len(scales)} scales {list(scales)}")
    sizes = [f.shape for f in features]
    if check and rois.numel():
        _check_rois(rois, sizes[0][0], False)
    work = compute_dtype(features[0].dtype if dtype is None else dtype)
    boxes = rois[:, 1:].detach().to(work)
    r = _Rois(boxes, rois[:, 0].detach().to(torch.int64), route_boxes(boxes, scales, canonical_box_size,
                                                                        canonical_level), work)
    if check:
        _check_level_sizes(r, sizes, scales)
    return r


def _flat_sizes(features) -> List[int]:
    return [int(s) for f in features for s in f.shape]


def _shapes(sizes) -> List[tuple]:
    return [tuple(int(v) for v in sizes[4 * i:4 * i + 4]) for i in range(len(sizes) // 4)]


def _argmax_operator(op, backward_op) -> None:
    """Fakes and the first derivative of an operator that returns ``(pooled, int32 argmax)``
    and whose ``backward_op(grad, argmax, rois, sizes, dtype, *settings)`` sends each output's
    gradient to its winner (ROIPool, max mode): one rule for both."""

    @op.register_fake
    def _(features, rois, output_size, *settings):
        shape = (rois.shape[0], features[0].shape[1], output_size[0], output_size[1])
        return features[0].new_empty(shape), features[0].new_empty(shape, dtype=torch.int32)

    @backward_op.register_fake
    def _(grad, argmax, rois, sizes, dtype, *settings):
        return [grad.new_empty(tuple(sizes[i:i + 4]), dtype=dtype) for i in range(0, len(sizes), 4)]

    def setup(ctx, inputs, output):
        features, rois, *settings = inputs
        ctx.save_for_backward(output[1], rois)
        ctx.sizes, ctx.dtype, ctx.settings = _flat_sizes(features), features[0].dtype, settings

    def grad_fn(ctx, grad, _grad_argmax):
        argmax, rois = ctx.saved_tensors
        grads = backward_op(grad, argmax, rois, ctx.sizes, ctx.dtype, *ctx.settings)
        return (list(grads), None) + (None,) * len(ctx.settings)

    op.register_autograd(grad_fn, setup_context=setup)


# ROIPool: forward -> (pooled, argmax: the kernel's winner y * W + x in its plane, -1 for none)
def _roi_pool_impl(features, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                   canonical_level, single_thread):
    with _threads(single_thread, rois.device):
        r = _prepare_any(rois, features, pooler_type, ("ROIPool",), scales, canonical_box_size, canonical_level,
                         check=True)
        return roi_pool_forward(list(features), rois.detach(), r.level_of, scales,
                                (int(output_size[0]), int(output_size[1])), r.compute_dtype)


roi_pool = torch.library.custom_op("roi_plugin::roi_pool", _roi_pool_impl, mutates_args=(), schema=_ARGMAX_FORWARD)


@torch.library.custom_op("roi_plugin::roi_pool_backward", mutates_args=(),
                         schema=f"(Tensor grad, Tensor argmax, Tensor rois, SymInt[] sizes, ScalarType dtype, "
                                f"{_SETTINGS}) -> Tensor[]")
def roi_pool_backward(grad, argmax, rois, sizes, dtype, output_size, scales, sampling_ratio, pooler_type,
                      canonical_box_size, canonical_level, single_thread):
    with _threads(single_thread, grad.device):
        level_of = route_boxes(rois[:, 1:].to(compute_dtype(dtype)), scales, canonical_box_size, canonical_level)
        return roi_pool_backward_impl(grad, argmax, rois.detach(), level_of, _shapes(sizes), scales, dtype)


_argmax_operator(roi_pool, roi_pool_backward)


def _roi_pool_backward_setup(ctx, inputs, output):
    grad, argmax, rois, sizes, dtype, *settings = inputs
    ctx.save_for_backward(argmax, rois)
    ctx.sizes, ctx.settings = sizes, settings


def _roi_pool_backward_grad(ctx, grad_grads):
    # linear in grad: the transpose reads grad_grads at the winners (the pooling, winners fixed)
    argmax, rois = ctx.saved_tensors
    _, scales, _, _, canonical_box_size, canonical_level, _ = ctx.settings
    level_of = route_boxes(rois[:, 1:].float(), scales, canonical_box_size, canonical_level)
    out = grad_grads[0].new_zeros(argmax.shape)
    for level, (b_, c_, h, w) in enumerate(_shapes(ctx.sizes)):
        sel = (level_of == level).nonzero().flatten()
        if sel.numel() and grad_grads[level] is not None:
            planes = grad_grads[level].reshape(b_ * c_, h * w)
            winner = argmax.index_select(0, sel).long()
            rows = ((rois[sel, 0].long() * c_)[:, None] + torch.arange(c_, device=rois.device))[:, :, None, None]
            vals = planes[rows.expand_as(winner), winner.clamp(min=0)]
            out[sel] = torch.where(winner >= 0, vals, torch.zeros_like(vals))
    return (out, None, None, None, None) + (None,) * len(ctx.settings)


roi_pool_backward.register_autograd(_roi_pool_backward_grad, setup_context=_roi_pool_backward_setup)


# PrRoIPool: forward -> pooled; backward -> (feature gradients, rois gradient)
def _prroi_impl(features, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                canonical_level, single_thread):
    with _threads(single_thread, rois.device):
        r = _prepare_any(rois, features, pooler_type, ("PrRoIPool",), scales, canonical_box_size, canonical_level,
                         check=True)
        return prroi_pool_forward(list(features), r.boxes, r.batch, r.level_of, scales,
                                  (int(output_size[0]), int(output_size[1])), r.compute_dtype)


prroi_pool = torch.library.custom_op("roi_plugin::prroi_pool", _prroi_impl, mutates_args=(), schema=_FORWARD)


@torch.library.custom_op("roi_plugin::prroi_pool_backward", mutates_args=(),
                         schema=f"(Tensor grad, Tensor[] features, Tensor rois, {_SETTINGS}, bool rois_grad) "
                                "-> (Tensor[], Tensor)")
def prroi_pool_backward(grad, features, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                        canonical_level, single_thread, rois_grad):
    with _threads(single_thread, grad.device):
        r = _prepare_any(rois, features, pooler_type, ("PrRoIPool",), scales, canonical_box_size, canonical_level,
                         check=False)
        grads, box = prroi_pool_backward_impl(grad, list(features), r.boxes, r.batch, r.level_of, scales,
                                              (int(output_size[0]), int(output_size[1])), r.compute_dtype,
                                              rois_grad)
        return grads, box.to(rois.dtype)


@prroi_pool.register_fake
def _(features, rois, output_size, *settings):
    return features[0].new_empty((rois.shape[0], features[0].shape[1], output_size[0], output_size[1]))


@prroi_pool_backward.register_fake
def _(grad, features, rois, *settings):
    return [torch.empty_like(f) for f in features], rois.new_empty(rois.shape)


def _prroi_setup(ctx, inputs, output):
    features, rois, *settings = inputs
    ctx.save_for_backward(rois, *features)
    ctx.settings = settings


def _prroi_grad(ctx, grad):
    rois, *features = ctx.saved_tensors
    grads, box = prroi_pool_backward(grad, features, rois, *ctx.settings, bool(ctx.needs_input_grad[1]))
    return list(grads), (box if ctx.needs_input_grad[1] else None), *((None,) * len(ctx.settings))


def _prroi_backward_setup(ctx, inputs, output):
    grad, features, rois, *settings = inputs
    ctx.save_for_backward(rois)
    ctx.settings = settings[:-1]
    ctx.sizes = [tuple(f.shape) for f in features]
    ctx.dtype = features[0].dtype


def _prroi_backward_grad(ctx, grad_grads, grad_box):
    # linear in grad for the feature gradients: their transpose is the forward. The box
    # gradient's own derivatives (second order in the boxes) are not implemented.
    if grad_box is not None and bool(grad_box.ne(0).any()) or any(ctx.needs_input_grad[1:3]):
        raise NotImplementedError("PrRoIPool has no double backward through its box gradient or with respect "
                                  "to the features and boxes; only d(feature gradient)/d(grad) is defined")
    (rois,) = ctx.saved_tensors
    gg = [torch.zeros(s, dtype=ctx.dtype, device=rois.device) if g is None else g
          for g, s in zip(grad_grads, ctx.sizes)]
    return (prroi_pool(gg, rois, *ctx.settings), None, None) + (None,) * (len(ctx.settings) + 1)


prroi_pool.register_autograd(_prroi_grad, setup_context=_prroi_setup)
prroi_pool_backward.register_autograd(_prroi_backward_grad, setup_context=_prroi_backward_setup)


# ROIAlign max mode: forward -> (pooled, argmax: winner within its group's sample layout)
def _max_levels(rois, features_or_sizes, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                canonical_level, check, dtype=None):
    if pooler_type not in ("ROIAlign", "ROIAlignV2"):
        raise ValueError(f"pool_mode 'max' pools ROIAlign and ROIAlignV2, not {pooler_type!r}")
    if check:
        r = _prepare_any(rois, features_or_sizes, pooler_type, ("ROIAlign", "ROIAlignV2"), scales,
                         canonical_box_size, canonical_level, check=True)
        sizes = [f.shape for f in features_or_sizes]
    else:
        sizes = features_or_sizes
        r = _prepare(rois, sizes[0][0], dtype, scales, pooler_type, canonical_box_size, canonical_level, check=False)
    out_hw = (int(output_size[0]), int(output_size[1]))
    return r, _levels(r, sizes, scales, out_hw, sampling_ratio, pooler_type), out_hw


def _max_impl(features, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size, canonical_level,
              single_thread):
    with _threads(single_thread, rois.device):
        r, levels, out_hw = _max_levels(rois, features, output_size, scales, sampling_ratio, pooler_type,
                                        canonical_box_size, canonical_level, check=True)
        return roi_align_max_forward(list(features), levels, len(r.boxes), out_hw, r.compute_dtype)


roi_align_max = torch.library.custom_op("roi_plugin::roi_align_max", _max_impl, mutates_args=(),
                                        schema=_ARGMAX_FORWARD)


@torch.library.custom_op("roi_plugin::roi_align_max_backward", mutates_args=(),
                         schema=f"(Tensor grad, Tensor argmax, Tensor rois, SymInt[] sizes, ScalarType dtype, "
                                f"{_SETTINGS}) -> Tensor[]")
def roi_align_max_backward(grad, argmax, rois, sizes, dtype, output_size, scales, sampling_ratio, pooler_type,
                           canonical_box_size, canonical_level, single_thread):
    shapes = _shapes(sizes)
    with _threads(single_thread, grad.device):
        r, levels, _ = _max_levels(rois, shapes, output_size, scales, sampling_ratio, pooler_type,
                                   canonical_box_size, canonical_level, check=False, dtype=dtype)
        return roi_align_max_backward_impl(grad, argmax, levels, shapes, dtype, r.compute_dtype)


_argmax_operator(roi_align_max, roi_align_max_backward)
