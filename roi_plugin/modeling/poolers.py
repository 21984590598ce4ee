# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Multi-level ROIAlign in pure PyTorch, a drop-in for Detectron2's ``ROIPooler``.

The module validates its input, routes each box to a level (:mod:`.levels`), lays out its
sample points (:mod:`..layers.geometry`) and hands them to one of two exact samplers that sum
them into bins: ``"gather"`` (:mod:`.gather`, ``embedding_bag`` over bilinear taps; the
default, fastest on CPU) or ``"grid_sample"`` (:mod:`.grid_sample`). While traced or
exported it takes the static path (:mod:`.static`). Both samplers reproduce
``torchvision.ops.roi_align`` (the kernel behind Detectron2's ``ROIPooler``) sample for
sample; see ``tests/test_pooler.py``. With ``pooler_type="ROIAlignRotated"`` the boxes are
rotated, ``(x_ctr, y_ctr, w, h, angle)``, and the samples come from :mod:`.rotated_geometry`
(Detectron2's ``ROIAlignRotated`` kernel); the samplers are the same.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.structures import Boxes

from ..layers.gather import gather_roi_align, gather_roi_align_boxes
from ..layers.geometry import sample_groups
from ..layers.grid_sample import grid_sample_roi_align
from ..layers.levels import assign_boxes_to_levels, pyramid_levels
from ..layers.rotated_geometry import rotated_sample_groups
from ..layers.static import EXPORT_MAX_GRID, grid_sample_static, is_exporting, roi_align_levels

__all__ = ["ROIAlignPooler", "GridSampleROIPooler", "SAMPLERS", "POOLER_TYPES"]

_SAMPLERS = {"gather": gather_roi_align, "grid_sample": grid_sample_roi_align}
SAMPLERS = tuple(_SAMPLERS)  # ("gather", "grid_sample")
# name -> aligned (half-pixel offset); ROIAlignRotated (rotated boxes) is always aligned
POOLER_TYPES = {"ROIAlign": False, "ROIAlignV2": True, "ROIAlignRotated": True}


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
        # Typed copies for TorchScript (a scripted forward cannot index a tuple by a variable).
        self.scale_list: List[float] = list(scales)
        self.output_size_list: List[int] = list(output_size)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio="
            f"{self.sampling_ratio}, pooler_type={self.pooler_type}, sampler={self.sampler}"
        )

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: list of L feature maps (B, C, H_l, W_l), finest first, matching ``scales``.
            box_lists: list of B ``Boxes`` (or (N_i, 4) tensors), input-image pixels;
                ``RotatedBoxes`` (or (N_i, 5) tensors) for ``ROIAlignRotated``.
        Returns:
            Tensor (sum_i N_i, C, h, w): pooled features, ROIs in input order.

        Traced, exported, compiled or scripted, the pooler runs :meth:`_roi_align_static`
        (static shapes, the same values); eagerly, the configured sampler.
        """
        if torch.jit.is_scripting():
            if self.rotated:
                raise NotImplementedError("ROIAlignPooler cannot be scripted for pooler_type 'ROIAlignRotated'")
            rois = torch.cat(
                [torch.cat([torch.full_like(b.tensor[:, :1], i), b.tensor], 1) for i, b in enumerate(box_lists)]
            )
            return self._roi_align_static(x, rois)
        return self._forward_python(x, box_lists)

    @torch.jit.unused
    def _forward_python(self, x: List[torch.Tensor], box_lists) -> torch.Tensor:
        self._check_features(x)
        batch, channels = x[0].shape[:2]
        boxes = self._check_boxes(box_lists, batch, x[0].device, self.rotated)
        if is_exporting():
            if self.rotated:
                raise NotImplementedError(
                    "ROIAlignPooler has no static (trace/export/compile) path for pooler_type "
                    "'ROIAlignRotated'; rotated boxes are pooled eagerly only"
                )
            # Static-shape path: the eager samplers' grouping would be frozen by a trace, and
            # their Python values from box data would break Dynamo's graphs.
            fdt = torch.float64 if x[0].dtype == torch.float64 else torch.float32
            rois = torch.cat(
                [torch.cat([torch.full_like(b[:, :1], i), b], 1).to(fdt) for i, b in enumerate(boxes)]
            )
            return self._roi_align_static(list(x), rois)
        num_rois = sum(len(b) for b in boxes)
        if num_rois == 0:
            return x[0].new_zeros((0, channels, *self.output_size))
        # Geometry in float64 for float64 features (gradcheck), float32 otherwise; half
        # precision maps are sampled in float32 and the result cast back.
        compute_dtype = torch.float64 if x[0].dtype == torch.float64 else torch.float32
        all_boxes = torch.cat([b.to(compute_dtype) for b in boxes])
        batch_of = torch.cat(
            [torch.full((len(b),), i, dtype=torch.int64, device=x[0].device) for i, b in enumerate(boxes)]
        )
        sizes = [(f.shape[2], f.shape[3]) for f in x]
        level_of = self._route(all_boxes)
        if self.rotated:
            levels = rotated_sample_groups(all_boxes, batch_of, level_of, sizes, self.scales,
                                           self.output_size, self.sampling_ratio, compute_dtype)
        elif self.sampler == "gather":  # all ROIs in one plan, no sample groups
            return gather_roi_align_boxes(list(x), all_boxes, batch_of, level_of, self.scales,
                                          self.output_size, self.sampling_ratio, self.aligned)
        else:
            levels = sample_groups(all_boxes, batch_of, level_of, sizes, self.scales,
                                   self.output_size, self.sampling_ratio, self.aligned)
        return _SAMPLERS[self.sampler](list(x), levels, num_rois, self.output_size, compute_dtype)

    def _route(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N,) level of each of the (N, 4) boxes (or (N, 5) rotated ones, by their area
        ``w * h``), as an index into the feature list."""
        if len(self.scales) == 1:
            return torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        # Routed in float32 whatever the maps' dtype: Detectron2's Boxes are float32, so
        # its rule always sees float32 coordinates (and a box on a boundary must agree).
        return assign_boxes_to_levels(
            boxes.float(), self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )

    def _roi_align_static(self, x: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """The deployment path (:func:`.static.roi_align_levels`) with this pooler's level rule:
        the eager samplers' values at every sampling ratio, static shapes, scriptable.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
        """
        if len(x) == 1:
            level_of = torch.zeros_like(rois[:, 0], dtype=torch.int64)
        else:  # float32 coordinates, as in _route
            level_of = assign_boxes_to_levels(
                rois[:, 1:].float(), self.min_level, self.max_level,
                float(self.canonical_box_size), self.canonical_level,
            )
        return roi_align_levels(
            x, rois, level_of, self.output_size_list, self.scale_list, self.sampling_ratio, self.aligned
        )

    def _grid_sample_static(
        self, x: List[torch.Tensor], rois: torch.Tensor, max_grid: int = EXPORT_MAX_GRID
    ) -> torch.Tensor:
        """The static-shape path (:func:`.static.grid_sample_static`) for tracing and ONNX.

        Args:
            x: list of L feature maps (B, C, H_l, W_l).
            rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input-image pixels.
            max_grid: samples per bin and axis laid out under adaptive sampling: exact for
                boxes up to ``7 * max_grid * stride`` px per side at their level (box pooler).
        Returns:
            (K, C, h, w) pooled features in the features' dtype.
        """
        compute_dtype = torch.float64 if x[0].dtype == torch.float64 else torch.float32
        level_of = self._route(rois[:, 1:].to(compute_dtype))
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
            if not t.is_floating_point():
                t = t.float()
            # Value checks read data, which a trace would freeze into the graph: skipped there.
            if not is_exporting() and t.numel():
                if not bool(torch.isfinite(t).all()):
                    bad = (~torch.isfinite(t)).any(dim=1).nonzero()[0, 0].item()
                    raise ValueError(
                        f"boxes of image {i} have non-finite coordinates (box {bad}: {t[bad].tolist()})"
                    )
                if rotated:
                    negative = (t[:, 2] < 0) | (t[:, 3] < 0)
                    if bool(negative.any()):
                        bad = negative.nonzero()[0, 0].item()
                        raise ValueError(
                            f"boxes of image {i} have a negative width or height (box {bad}: "
                            f"{t[bad].tolist()}); rotated boxes must be x_ctr, y_ctr, w, h, angle"
                        )
                else:
                    inverted = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
                    if bool(inverted.any()):
                        bad = inverted.nonzero()[0, 0].item()
                        raise ValueError(
                            f"boxes of image {i} are inverted (x2 < x1 or y2 < y1; box {bad}: "
                            f"{t[bad].tolist()}); boxes must be x1, y1, x2, y2"
                        )
            out.append(t)
        return out


class GridSampleROIPooler(ROIAlignPooler):
    """:class:`ROIAlignPooler` fixed to the ``grid_sample`` sampler (the notebook's design, made exact).

    Takes :class:`ROIAlignPooler`'s arguments, less ``sampler``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, sampler="grid_sample", **kwargs)
