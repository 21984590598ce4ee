# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Multi-level ROI pooling in pure PyTorch, a drop-in for Detectron2's ``ROIPooler``.

The module validates its input (types, shapes, devices), turns the per-image box lists into
one (K, 5) ``batch_index, x1, y1, x2, y2`` tensor and calls one operator of
:mod:`..layers.roi_align_ops`, which checks the box values, routes each box to a level
(:mod:`..layers.levels`), lays out what each bin reads and reduces it:

===================  ==========================================================  ==========================
``pooler_type``      what a bin is                                               operator
===================  ==========================================================  ==========================
``ROIAlignV2``       mean of bilinear samples, half-pixel aligned (default)      ``roi_align_gather`` /
``ROIAlign``         the same without the half-pixel shift (legacy)              ``roi_align_grid_sample``
``ROIAlignRotated``  the same on rotated boxes ``(x_ctr, y_ctr, w, h, angle)``   (``sampler``)
``ROIPool``          max over the pixels of a quantised bin (torchvision)        ``roi_pool``
``PrRoIPool``        exact integral of the bilinear surface / bin area; also     ``prroi_pool``
                     differentiable in the box coordinates
===================  ==========================================================  ==========================

``pool_mode="max"`` takes the largest bilinear sample of a bin instead of their mean
(``ROIAlign`` / ``ROIAlignV2``; mmcv's ``mode="max"``, operator ``roi_align_max``).
``roi_scale_factor`` scales each box about its centre before pooling (mmdetection's; the level
is the unscaled box's). ``all_levels`` pools every ROI from every level and sums them
(``"sum"``; GRoIE, Rossi et al. 2020) or sums them after a shared conv and convolves the sum
(``"conv"``, the learned variant, :mod:`.all_levels`). The formulas: docs/pooling.md.

Eager, ``torch.compile``, TorchScript, ``torch.jit.trace`` and ``torch.export`` all run the
operator, with bit-identical results and gradients. ``torch.fx.symbolic_trace`` keeps the
pooling as one leaf node (:func:`pool_box_lists`, wrapped as torchvision wraps its ops), so
FX tools such as torchvision's ``create_feature_extractor`` work on models holding it.
Quantized maps (``quint8``, ...) are pooled in float and the output quantized with the first
map's scale and zero point, as torchvision's ``roi_align`` does for one map.

The one exception is ONNX export (``torch.onnx.export``), which cannot express the
operators: there the ROIAlign types (mean mode) run :func:`..layers.static.roi_align_levels`,
ONNX ``RoiAlign`` once per level (the same values; onnxruntime's kernel is torchvision's), rotated
boxes :func:`..layers.static.rotated_grid_sample_static` (ONNX ``GridSample``), or, through
:class:`roi_plugin.export.branches.ExportablePooler`, the ``GridSample``-only
:func:`..layers.static.grid_sample_static` for runtimes without ``RoiAlign``; the other types
and modes raise ``NotImplementedError`` there.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.structures import Boxes

from ..layers import roi_align_ops  # noqa: F401  (registers torch.ops.roi_plugin.*)
from ..layers.geometry import compute_dtype
from ..layers.levels import pyramid_levels, route_boxes
from ..layers.roi_align_ops import OTHER_POOLER_TYPES, POOLER_TYPES, SAMPLERS
from ..layers.static import EXPORT_MAX_GRID, grid_sample_static, roi_align_levels, rotated_grid_sample_static
from .all_levels import ALL_LEVELS, LevelConvFusion

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "SAMPLERS", "POOLER_TYPES", "PLUGIN_POOLER_TYPES",
           "POOL_MODES", "ALL_LEVELS", "pool_box_lists", "pool_levels", "scale_rois"]

# Every pooler_type the module takes: the ROIAlign family (the align operators' POOLER_TYPES)
# and the types with operators of their own.
PLUGIN_POOLER_TYPES = tuple(POOLER_TYPES) + tuple(OTHER_POOLER_TYPES)
POOL_MODES = ("avg", "max")  # ROIAlign's mean of a bin's samples, or mmcv's max mode


# ------------------------------------------------------------------ what every path runs
def scale_rois(rois: torch.Tensor, factor: float) -> torch.Tensor:
    """(K, 5) ``batch_index, x1, y1, x2, y2`` boxes scaled by ``factor`` about their centres
    (mmdetection's ``roi_rescale``: ``w' = w * factor``, ``x1' = cx - w' / 2``); (K, 6) rotated
    boxes ``batch_index, x_ctr, y_ctr, w, h, angle`` get ``w, h`` scaled."""
    if rois.shape[1] == 6:
        return torch.cat([rois[:, :3], rois[:, 3:5] * factor, rois[:, 5:]], 1)
    ctr = (rois[:, 1:3] + rois[:, 3:5]) * 0.5
    new_wh = (rois[:, 3:5] - rois[:, 1:3]) * factor
    return torch.cat([rois[:, :1], ctr - new_wh * 0.5, ctr + new_wh * 0.5], 1)


def _operator(x: List[torch.Tensor], rois: torch.Tensor, output_size: List[int], scales: List[float],
              sampling_ratio: int, pooler_type: str, canonical_box_size: float, canonical_level: int, sampler: str,
              single_thread: bool, pool_mode: str) -> torch.Tensor:
    """The one operator call of the pooler's settings (:mod:`..layers.roi_align_ops`)."""
    if pooler_type == "ROIPool":
        return torch.ops.roi_plugin.roi_pool(x, rois, output_size, scales, sampling_ratio, pooler_type,
                                             canonical_box_size, canonical_level, single_thread)[0]
    if pooler_type == "PrRoIPool":
        return torch.ops.roi_plugin.prroi_pool(x, rois, output_size, scales, sampling_ratio, pooler_type,
                                               canonical_box_size, canonical_level, single_thread)
    if pool_mode == "max":
        return torch.ops.roi_plugin.roi_align_max(x, rois, output_size, scales, sampling_ratio, pooler_type,
                                                  canonical_box_size, canonical_level, single_thread)[0]
    if sampler == "gather":
        return torch.ops.roi_plugin.roi_align_gather(x, rois, output_size, scales, sampling_ratio, pooler_type,
                                                     canonical_box_size, canonical_level, single_thread)
    return torch.ops.roi_plugin.roi_align_grid_sample(x, rois, output_size, scales, sampling_ratio, pooler_type,
                                                      canonical_box_size, canonical_level, single_thread)


def pool_levels(x: List[torch.Tensor], rois: torch.Tensor, output_size: List[int], scales: List[float],
                sampling_ratio: int, pooler_type: str, canonical_box_size: float, canonical_level: int, sampler: str,
                single_thread: bool, pool_mode: str, roi_scale_factor: float, all_levels: str) -> torch.Tensor:
    """(K, 5) (or (K, 6) rotated) ``rois`` pooled from the maps ``x`` with these settings:
    (K, C, h, w); with ``all_levels="conv"`` the levels stacked, (L, K, C, h, w), for the
    pooler's :class:`.all_levels.LevelConvFusion`. TorchScript compiles it (the scripted pooler)."""
    if roi_scale_factor != 1.0:
        rois = scale_rois(rois, roi_scale_factor)
        # mmdetection routes the unscaled box: sqrt(area) grows by the factor, so does the canonical size
        canonical_box_size = canonical_box_size * roi_scale_factor
    if all_levels == "":
        return _operator(x, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                         canonical_level, sampler, single_thread, pool_mode)
    pooled = [_operator([x[i]], rois, output_size, [scales[i]], sampling_ratio, pooler_type, canonical_box_size,
                        canonical_level, sampler, single_thread, pool_mode) for i in range(len(x))]
    if all_levels == "sum":
        out = pooled[0]
        for p in pooled[1:]:
            out = out + p
        return out
    return torch.stack(pooled)


@torch.fx.wrap
def pool_box_lists(x: List[torch.Tensor], box_lists, output_size: List[int], scales: List[float],
                   sampling_ratio: int, pooler_type: str, canonical_box_size: float, canonical_level: int,
                   sampler: str, single_thread: bool, pool_mode: str, roi_scale_factor: float,
                   all_levels: str) -> torch.Tensor:
    """The pooler's whole call on box lists, validation included: one leaf node for
    ``torch.fx`` (``torch.fx.wrap``, as torchvision wraps ``roi_align``), since a traced
    pooler cannot iterate over the box lists. Quantized maps are dequantized, pooled and the
    output quantized with the scale and zero point of ``x[0]``."""
    _check_features(x, scales)
    rotated = pooler_type == "ROIAlignRotated"
    boxes = _check_boxes(box_lists, x[0].shape[0], x[0].device, rotated)
    quantized = x[0].is_quantized
    if quantized:
        if all_levels == "conv":
            raise ValueError("quantized feature maps cannot go through all_levels='conv' (float convolutions); "
                             "use all_levels='sum' or dequantize the maps")
        q = x[0]
        x = [f.dequantize() for f in x]
    rois = _boxes_to_rois(boxes, x[0], rotated)
    out = pool_levels(x, rois, output_size, scales, sampling_ratio, pooler_type, canonical_box_size,
                      canonical_level, sampler, single_thread, pool_mode, roi_scale_factor, all_levels)
    if quantized:
        out = torch.quantize_per_tensor(out, q.q_scale(), q.q_zero_point(), q.dtype)
    return out


def _boxes_to_rois(boxes: List[torch.Tensor], like: torch.Tensor, rotated: bool) -> torch.Tensor:
    """B box tensors (N_i, 4) (or (N_i, 5) rotated) -> (sum N_i, 5) (or 6) with the image
    index first, in the boxes' floating dtype (differentiable in the boxes)."""
    if len(boxes) == 0:
        return like.new_zeros((0, 6 if rotated else 5), dtype=torch.float32)
    return torch.cat([torch.cat([torch.full_like(b[:, :1], float(i)), b], 1) for i, b in enumerate(boxes)])


# ------------------------------------------------------------------ the module
class ROIAlignPooler(nn.Module):
    """Multi-level ROI pooling over an FPN, with the constructor and call of Detectron2's ``ROIPooler``.

    Args:
        output_size: int or (h, w) of each pooled map (7 for the box head, 14 for masks).
        scales: 1/stride of each input level, finest first, e.g. ``(1/4, 1/8, 1/16, 1/32)``;
            strides must be consecutive powers of two.
        sampling_ratio: samples per bin along each axis; 0 (or any negative, as in
            ``ROIPooler`` and torchvision) = adaptive, ``ceil(roi_size / output_size)`` per ROI
            and axis. ``ROIPool`` and ``PrRoIPool`` take no samples and ignore it.
        pooler_type: ``"ROIAlignV2"`` (aligned: a box edge at pixel coordinate x maps to
            ``x * scale - 0.5`` in the level's pixel-centre coordinates), ``"ROIAlign"``
            (legacy, no half-pixel shift, ROI extent clamped to >= 1 level pixel),
            ``"ROIAlignRotated"``: rotated boxes ``(x_ctr, y_ctr, w, h, angle)`` (angle in
            degrees, counter-clockwise), Detectron2's ``ROIAlignRotated`` (always aligned);
            ``"ROIPool"`` (torchvision's ``roi_pool``: max over quantised bins) or
            ``"PrRoIPool"`` (precise ROI pooling: the integral of the bilinear surface over
            each bin divided by its area; gradients also to the boxes). docs/pooling.md.
        canonical_box_size, canonical_level: ``k0`` and the 224 of the level rule.
        sampler: ``"gather"`` (default, fastest on CPU) or ``"grid_sample"``: how the ROIAlign
            types (mean mode) sum their samples; the other types and ``pool_mode="max"`` have
            one implementation each and ignore it.
        single_thread: run the operator's CPU work on one intra-op thread (set around each
            operator call, the caller's count restored after; :mod:`..layers.threads`).
            The default: a pooler call is hundreds of small ops, and with several threads
            each waits for a thread that another process may have descheduled. False
            leaves ``torch.get_num_threads()`` as the caller set it.
        pool_mode: ``"avg"`` (ROIAlign's mean of a bin's samples) or ``"max"`` (mmcv's max
            mode: the largest bilinear sample; ``ROIAlign`` / ``ROIAlignV2`` only).
        roi_scale_factor: boxes are scaled by it about their centres before pooling, the level
            being the unscaled box's (mmdetection's ``roi_scale_factor``); 1.0: unchanged.
        all_levels: ``""`` (each ROI from the level its size picks), ``"sum"`` (every ROI from
            every level, summed: GRoIE) or ``"conv"`` (GRoIE's learned variant: a conv + ReLU
            shared by the levels on each level's pooled features, their sum, a conv + ReLU).
        channels: the maps' channels, needed by ``all_levels="conv"`` (its convs' width).
        all_levels_kernel: kernel size of both convs of ``all_levels="conv"``.

    Call: ``pooler(features, box_lists)`` with ``features`` a list of (B, C, H_l, W_l)
    maps matching ``scales`` and ``box_lists`` a list of B ``Boxes`` or (N_i, 4) tensors
    (``RotatedBoxes`` or (N_i, 5) tensors for ``ROIAlignRotated``) in input-image pixels.
    Returns (sum N_i, C, h, w) in the features' dtype and device, ROIs in input order.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
        *,
        sampler: str = "gather",
        single_thread: bool = True,
        pool_mode: str = "avg",
        roi_scale_factor: float = 1.0,
        all_levels: str = "",
        channels: Optional[int] = None,
        all_levels_kernel: int = 3,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be a positive int or (h, w), got {output_size}")
        if pooler_type not in PLUGIN_POOLER_TYPES:
            raise ValueError(
                f"pooler_type {pooler_type!r} is not supported; use one of {sorted(PLUGIN_POOLER_TYPES)}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not supported; use one of {SAMPLERS}")
        if int(sampling_ratio) != sampling_ratio:
            raise ValueError(f"sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio}")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode {pool_mode!r} is not supported; use one of {POOL_MODES}")
        if pool_mode == "max" and pooler_type not in ("ROIAlign", "ROIAlignV2"):
            raise ValueError(f"pool_mode='max' applies to pooler_type ROIAlign and ROIAlignV2, not {pooler_type!r}")
        if not roi_scale_factor > 0:
            raise ValueError(f"roi_scale_factor must be > 0, got {roi_scale_factor}")
        if all_levels not in ALL_LEVELS:
            raise ValueError(f"all_levels {all_levels!r} is not supported; use one of {ALL_LEVELS}")
        scales = tuple(float(s) for s in scales)
        self.min_level, self.max_level = pyramid_levels(scales)
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {canonical_box_size}")
        self.output_size = output_size
        self.scales = scales
        self.sampling_ratio = max(int(sampling_ratio), 0)  # any negative: adaptive, as 0
        self.pooler_type = pooler_type
        self.aligned = POOLER_TYPES.get(pooler_type, False)
        self.rotated = pooler_type == "ROIAlignRotated"
        self.sampler = sampler
        # a float, as the operator takes it: an int attribute is symbolic under torch 2.4's
        # torch.compile(dynamic=True), and float() of it made inductor fail ("False != True")
        self.canonical_box_size = float(canonical_box_size)
        self.canonical_level = canonical_level
        self.single_thread = bool(single_thread)
        self.pool_mode = pool_mode
        self.roi_scale_factor = float(roi_scale_factor)
        self.all_levels = all_levels
        self.fuse = None  # the learned fusion of all_levels='conv' (a submodule), else None
        if all_levels == "conv":
            if not channels:
                raise ValueError("all_levels='conv' needs channels= (the feature maps' channels)")
            self.fuse = LevelConvFusion(int(channels), int(all_levels_kernel))
        # Typed copies for TorchScript (a scripted forward cannot index a tuple by a variable).
        self.scale_list: List[float] = list(scales)
        self.output_size_list: List[int] = list(output_size)

    def extra_repr(self) -> str:
        text = (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio="
            f"{self.sampling_ratio}, pooler_type={self.pooler_type}, sampler={self.sampler}, "
            f"single_thread={self.single_thread}"
        )
        if self.pool_mode != "avg":
            text += f", pool_mode={self.pool_mode}"
        if self.roi_scale_factor != 1.0:
            text += f", roi_scale_factor={self.roi_scale_factor}"
        if self.all_levels:
            text += f", all_levels={self.all_levels}"
        return text

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: list of L feature maps (B, C, H_l, W_l), finest first, matching ``scales``.
            box_lists: list of B ``Boxes`` (or (N_i, 4) tensors), input-image pixels;
                ``RotatedBoxes`` (or (N_i, 5) tensors) for ``ROIAlignRotated``.
        Returns:
            Tensor (sum_i N_i, C, h, w): pooled features, ROIs in input order.
        """
        if torch.jit.is_scripting():
            return self._pool(x, self._rois([b.tensor for b in box_lists], x[0]))
        return self._forward_python(x, box_lists)

    @torch.jit.unused
    def _forward_python(self, x: List[torch.Tensor], box_lists) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            _check_features(x, self.scales)
            boxes = _check_boxes(box_lists, x[0].shape[0], x[0].device, self.rotated)
            return self.pool_rois(list(x), _boxes_to_rois(boxes, x[0], self.rotated))
        pooled = pool_box_lists(x, box_lists, *self._settings())  # one leaf node for torch.fx
        return pooled if self.fuse is None else self.fuse(pooled)

    @torch.jit.unused
    def _settings(self) -> tuple:
        """The arguments of :func:`pool_box_lists` / :func:`pool_levels` after the input."""
        return (self.output_size_list, self.scale_list, self.sampling_ratio, self.pooler_type,
                float(self.canonical_box_size), self.canonical_level, self.sampler, self.single_thread,
                self.pool_mode, self.roi_scale_factor, self.all_levels)

    @torch.jit.unused
    def pool_rois(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Pool ``rois`` (K, 5) ``batch_index, x1, y1, x2, y2`` ((K, 6) with a rotated box) in
        input-image pixels from the maps ``x`` -> (K, C, h, w): the operator, or under
        ``torch.onnx.export`` (which cannot express it) ONNX ``RoiAlign`` per level (rotated
        boxes: ONNX ``GridSample``, ONNX ``RoiAlign`` having no rotation)."""
        if torch.onnx.is_in_onnx_export():
            if self.pooler_type in OTHER_POOLER_TYPES or self.pool_mode != "avg":
                raise NotImplementedError(
                    f"ROIAlignPooler has no ONNX export for pooler_type {self.pooler_type!r}"
                    + (f" with pool_mode={self.pool_mode!r}" if self.pool_mode != "avg" else "")
                    + " (ONNX RoiAlign and GridSample pool ROIAlign / ROIAlignV2 / ROIAlignRotated means only); "
                    "torch.jit.trace, torch.export and torch.compile run it"
                )
            pooled = self._rotated_static(x, rois) if self.rotated else self._roi_align_static(x, rois)
            return pooled if self.fuse is None else self.fuse(pooled)
        return self._pool(x, rois)

    def _rois(self, boxes: List[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """B box tensors -> (sum N_i, 5) (or 6) rois (:func:`_boxes_to_rois`)."""
        return _boxes_to_rois(boxes, like, self.rotated)

    def _pool(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The operator(s) (:func:`pool_levels`) on (K, 5) or (K, 6) ``rois``, then the learned
        fusion of ``all_levels="conv"``."""
        pooled = pool_levels(x, rois, self.output_size_list, self.scale_list, self.sampling_ratio, self.pooler_type,
                             float(self.canonical_box_size), self.canonical_level, self.sampler, self.single_thread,
                             self.pool_mode, self.roi_scale_factor, self.all_levels)
        fuse = self.fuse
        if fuse is not None:
            pooled = fuse(pooled)
        return pooled

    @torch.jit.unused
    def _roi_align_static(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The ONNX path (:func:`.static.roi_align_levels`: ``RoiAlign`` per level, static
        shapes) with this pooler's level rule, ``roi_scale_factor`` and ``all_levels``: the
        operator's values at every sampling ratio (before the ``"conv"`` fusion).

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
        """
        canonical = float(self.canonical_box_size)
        if self.roi_scale_factor != 1.0:
            rois = scale_rois(rois, self.roi_scale_factor)
            canonical *= self.roi_scale_factor
        if self.all_levels:
            zero = torch.zeros_like(rois[:, 0], dtype=torch.int64)
            pooled = [roi_align_levels([x[i]], rois, zero, self.output_size_list, [self.scale_list[i]],
                                       self.sampling_ratio, self.aligned) for i in range(len(x))]
            return torch.stack(pooled) if self.all_levels == "conv" else torch.stack(pooled).sum(0)
        level_of = route_boxes(rois[:, 1:], self.scales, canonical, self.canonical_level)
        return roi_align_levels(
            x, rois, level_of, self.output_size_list, self.scale_list, self.sampling_ratio, self.aligned
        )

    @torch.jit.unused
    def _rotated_static(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The rotated ONNX path (:func:`.static.rotated_grid_sample_static`: ``GridSample`` on the
        rotated geometry's samples, static code, exact under adaptive sampling) with this pooler's
        level rule, ``roi_scale_factor`` and ``all_levels`` (before the ``"conv"`` fusion).

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 6) ``batch_index, x_ctr, y_ctr, w, h, angle`` in input-image pixels.
        """
        canonical = float(self.canonical_box_size)
        if self.roi_scale_factor != 1.0:
            rois = scale_rois(rois, self.roi_scale_factor)
            canonical *= self.roi_scale_factor
        if self.all_levels:
            zero = torch.zeros_like(rois[:, 0], dtype=torch.int64)
            pooled = [rotated_grid_sample_static([x[i]], rois, zero, [self.scales[i]], self.output_size,
                                                 self.sampling_ratio) for i in range(len(x))]
            return torch.stack(pooled) if self.all_levels == "conv" else torch.stack(pooled).sum(0)
        level_of = route_boxes(rois[:, 1:].to(compute_dtype(x[0].dtype)), self.scales, canonical,
                               self.canonical_level)
        return rotated_grid_sample_static(x, rois, level_of, self.scales, self.output_size, self.sampling_ratio)

    @torch.jit.unused
    def _grid_sample_static(
        self, x: List[torch.Tensor], rois: torch.Tensor, max_grid: int = EXPORT_MAX_GRID
    ) -> torch.Tensor:
        """The ``GridSample``-only ONNX path (:func:`.static.grid_sample_static`), static shapes.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
            max_grid: samples per bin and axis laid out under adaptive sampling: exact for
                boxes up to ``7 * max_grid * stride`` px per side at their level (box pooler).
        Returns:
            (K, C, h, w) pooled features in the features' dtype.
        """
        if self.pooler_type not in ("ROIAlign", "ROIAlignV2") or self.pool_mode != "avg" or self.all_levels \
                or self.roi_scale_factor != 1.0:
            raise NotImplementedError("the GridSample export path pools ROIAlign / ROIAlignV2 means on the routed "
                                      "level only (no pool_mode='max', all_levels or roi_scale_factor)")
        level_of = route_boxes(rois[:, 1:].to(compute_dtype(x[0].dtype)), self.scales, float(self.canonical_box_size),
                               self.canonical_level)
        return grid_sample_static(x, rois, level_of, self.scales, self.output_size,
                                  self.sampling_ratio, self.aligned, max_grid)


# ------------------------------------------------------------------ validation
def _check_features(x, scales: Sequence[float]) -> None:
    if not isinstance(x, (list, tuple)) or not all(isinstance(f, torch.Tensor) for f in x):
        raise TypeError("features must be a list of tensors, one per pyramid level")
    if len(x) != len(scales):
        raise ValueError(
            f"got {len(x)} feature maps but the pooler was built for {len(scales)} "
            f"scales {tuple(scales)}"
        )
    ref = x[0]
    for i, f in enumerate(x):
        if f.dim() != 4:
            raise ValueError(f"feature map {i} must be 4-D (B, C, H, W), got {tuple(f.shape)}")
        if not f.is_floating_point() and not f.is_quantized:
            raise TypeError(f"feature map {i} has dtype {f.dtype}; a floating dtype (or a quantized one) is needed")
        if f.shape[:2] != ref.shape[:2] or f.dtype != ref.dtype or f.device != ref.device:
            raise ValueError(
                f"feature map {i} is {tuple(f.shape)} {f.dtype} on {f.device}, but map 0 is "
                f"{tuple(ref.shape)} {ref.dtype} on {ref.device}: batch, channels, dtype "
                f"and device must agree"
            )
        # Maps in coarse-to-fine order are the one size mistake caught here. Other sizes
        # are accepted, as Detectron2's ROIPooler accepts them (its own tests pool one map
        # at two scales); each level is sampled within its own size.
        if i > 0:
            prev = x[i - 1]
            for axis, name in ((2, "height"), (3, "width")):
                if f.shape[axis] > prev.shape[axis]:
                    raise ValueError(
                        f"feature maps must come finest first, sizes that halve with the stride, "
                        f"but level {i - 1} {name} {prev.shape[axis]} -> level {i} {name} "
                        f"{f.shape[axis]} grows"
                    )


def _check_boxes(box_lists, batch: int, device: torch.device, rotated: bool = False) -> List[torch.Tensor]:
    if not isinstance(box_lists, (list, tuple)):
        kind = "RotatedBoxes (or Nx5 tensor)" if rotated else "Boxes (or Nx4 tensor)"
        raise TypeError(f"box_lists must be a list with one {kind} per image")
    if len(box_lists) != batch:
        raise ValueError(
            f"got boxes for {len(box_lists)} images but the features have batch size {batch}"
        )
    out = []
    for i, b in enumerate(box_lists):
        # isinstance first: torch 2.4's Dynamo breaks the graph on getattr of a tensor
        t = b if isinstance(b, torch.Tensor) else getattr(b, "tensor", b)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"boxes of image {i} are {type(b).__name__}, not Boxes or a tensor")
        if rotated and (t.dim() != 2 or t.shape[1] != 5):
            raise ValueError(
                f"boxes of image {i} must be Nx5 (x_ctr, y_ctr, w, h, angle) for pooler_type "
                f"'ROIAlignRotated', got {tuple(t.shape)}"
            )
        if not rotated and (t.dim() != 2 or t.shape[1] != 4):
            raise ValueError(f"boxes of image {i} must be Nx4 (x1, y1, x2, y2), got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"boxes of image {i} are on {t.device} but the features on {device}")
        if t.is_quantized:
            t = t.dequantize()
        if t.dtype not in (torch.float32, torch.float64):  # the image index must stay exact
            t = t.float()
        out.append(t)
    return out


class GridSampleROIPooler(ROIAlignPooler):
    """:class:`ROIAlignPooler` fixed to the ``grid_sample`` sampler (the notebook's design, made exact).

    Takes :class:`ROIAlignPooler`'s arguments, less ``sampler``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, sampler="grid_sample", **kwargs)
