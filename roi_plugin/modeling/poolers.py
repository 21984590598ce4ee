# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Multi-level ROIAlign in pure PyTorch, a drop-in for Detectron2's ``ROIPooler``.

The module validates its input (types, shapes, devices), turns the per-image box lists into
one (K, 5) ``batch_index, x1, y1, x2, y2`` tensor and calls one operator,
``torch.ops.roi_plugin.roi_align_gather`` (the default sampler: ``embedding_bag`` over
bilinear taps, fastest on CPU) or ``roi_align_grid_sample`` (:mod:`..layers.roi_align_ops`),
which checks the box values, routes each box to a level (:mod:`..layers.levels`), lays out
its samples (:mod:`..layers.geometry`) and sums them into bins. Eager, ``torch.compile``,
TorchScript, ``torch.jit.trace`` and ``torch.export`` all run that one implementation, with
bit-identical results and gradients. Both samplers reproduce ``torchvision.ops.roi_align``
(the kernel behind Detectron2's ``ROIPooler``) sample for sample; see ``tests/test_pooler.py``.
With ``pooler_type="ROIAlignRotated"`` the boxes are rotated, ``(x_ctr, y_ctr, w, h, angle)``,
and the samples come from :mod:`..layers.rotated_geometry` (Detectron2's ``ROIAlignRotated``
kernel); the operators are the same.

The one exception is ONNX export (``torch.onnx.export``), which cannot express the
operators: there the pooler runs :func:`..layers.static.roi_align_levels`, ONNX ``RoiAlign``
once per level (the same values; onnxruntime's kernel is torchvision's), for rotated boxes
:func:`..layers.static.rotated_grid_sample_static` (ONNX ``GridSample``), or, through
:class:`roi_plugin.export.branches.ExportablePooler`, the ``GridSample``-only
:func:`..layers.static.grid_sample_static` for runtimes without ``RoiAlign``.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.structures import Boxes

from ..layers import roi_align_ops  # noqa: F401  (registers torch.ops.roi_plugin.*)
from ..layers.geometry import compute_dtype
from ..layers.levels import pyramid_levels, route_boxes
from ..layers.roi_align_ops import POOLER_TYPES, SAMPLERS
from ..layers.static import EXPORT_MAX_GRID, grid_sample_static, roi_align_levels, rotated_grid_sample_static

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "SAMPLERS", "POOLER_TYPES"]


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
            (legacy, no half-pixel shift, ROI extent clamped to >= 1 level pixel), or
            ``"ROIAlignRotated"``: rotated boxes ``(x_ctr, y_ctr, w, h, angle)`` (angle in
            degrees, counter-clockwise), Detectron2's ``ROIAlignRotated`` (always aligned).
        canonical_box_size, canonical_level: ``k0`` and the 224 of the level rule.
        sampler: ``"gather"`` (default, fastest on CPU) or ``"grid_sample"``.
        single_thread: run the sampler's CPU work on one intra-op thread (set around each
            operator call, the caller's count restored after; :mod:`..layers.threads`).
            The default: a pooler call is hundreds of small ops, and with several threads
            each waits for a thread that another process may have descheduled. False
            leaves ``torch.get_num_threads()`` as the caller set it.

    Call: ``pooler(features, box_lists)`` with ``features`` a list of (B, C, H_l, W_l)
    maps matching ``scales`` and ``box_lists`` a list of B ``Boxes`` or (N_i, 4) tensors
    (``RotatedBoxes`` or (N_i, 5) tensors for ``ROIAlignRotated``) in input-image pixels. Returns (sum N_i, C, h, w) in the features' dtype and
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
        single_thread: bool = True,
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
        self.min_level, self.max_level = pyramid_levels(scales)
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {canonical_box_size}")
        self.output_size = output_size
        self.scales = scales
        self.sampling_ratio = int(sampling_ratio)
        self.pooler_type = pooler_type
        self.aligned = POOLER_TYPES[pooler_type]
        self.rotated = pooler_type == "ROIAlignRotated"
        self.sampler = sampler
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.single_thread = bool(single_thread)
        # Typed copies for TorchScript (a scripted forward cannot index a tuple by a variable).
        self.scale_list: List[float] = list(scales)
        self.output_size_list: List[int] = list(output_size)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio="
            f"{self.sampling_ratio}, pooler_type={self.pooler_type}, sampler={self.sampler}, "
            f"single_thread={self.single_thread}"
        )

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
        self._check_features(x)
        boxes = self._check_boxes(box_lists, x[0].shape[0], x[0].device, self.rotated)
        return self.pool_rois(list(x), self._rois(boxes, x[0]))

    @torch.jit.unused
    def pool_rois(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Pool ``rois`` (K, 5) ``batch_index, x1, y1, x2, y2`` ((K, 6) with a rotated box) in
        input-image pixels from the maps ``x`` -> (K, C, h, w): the operator, or under
        ``torch.onnx.export`` (which cannot express it) ONNX ``RoiAlign`` per level (rotated
        boxes: ONNX ``GridSample``, ONNX ``RoiAlign`` having no rotation)."""
        if torch.onnx.is_in_onnx_export():
            if self.rotated:
                return self._rotated_static(x, rois)
            return self._roi_align_static(x, rois)
        return self._pool(x, rois)

    def _rois(self, boxes: List[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """B box tensors (N_i, 4) (or (N_i, 5) rotated) -> (sum N_i, 5) (or 6) with the image
        index first, in the boxes' floating dtype."""
        if len(boxes) == 0:
            return like.new_zeros((0, 6 if self.rotated else 5), dtype=torch.float32)
        return torch.cat([torch.cat([torch.full_like(b[:, :1], float(i)), b], 1) for i, b in enumerate(boxes)])

    def _pool(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The sampler's operator (:mod:`..layers.roi_align_ops`) on (K, 5) or (K, 6) ``rois``."""
        if self.sampler == "gather":
            return torch.ops.roi_plugin.roi_align_gather(
                x, rois, self.output_size_list, self.scale_list, self.sampling_ratio, self.pooler_type,
                float(self.canonical_box_size), self.canonical_level, self.single_thread,
            )
        return torch.ops.roi_plugin.roi_align_grid_sample(
            x, rois, self.output_size_list, self.scale_list, self.sampling_ratio, self.pooler_type,
            float(self.canonical_box_size), self.canonical_level, self.single_thread,
        )

    @torch.jit.unused
    def _roi_align_static(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The ONNX path (:func:`.static.roi_align_levels`: ``RoiAlign`` per level, static
        shapes) with this pooler's level rule: the operator's values at every sampling ratio.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
        """
        level_of = route_boxes(rois[:, 1:], self.scales, float(self.canonical_box_size), self.canonical_level)
        return roi_align_levels(
            x, rois, level_of, self.output_size_list, self.scale_list, self.sampling_ratio, self.aligned
        )

    @torch.jit.unused
    def _rotated_static(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The rotated ONNX path (:func:`.static.rotated_grid_sample_static`: ``GridSample`` on the
        rotated geometry's samples, static code, exact under adaptive sampling) with this pooler's
        level rule.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 6) ``batch_index, x_ctr, y_ctr, w, h, angle`` in input-image pixels.
        """
        level_of = route_boxes(rois[:, 1:].to(compute_dtype(x[0].dtype)), self.scales, float(self.canonical_box_size),
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
        level_of = route_boxes(rois[:, 1:].to(compute_dtype(x[0].dtype)), self.scales, float(self.canonical_box_size),
                               self.canonical_level)
        return grid_sample_static(x, rois, level_of, self.scales, self.output_size,
                                  self.sampling_ratio, self.aligned, max_grid)

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

    @staticmethod
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
            t = getattr(b, "tensor", b)
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
