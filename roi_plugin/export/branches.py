# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Export-friendly wrappers of the pooler and of the ROI heads' box and mask branches, and a
tensor-in/tensor-out ``roi_heads`` (:class:`ROIHeadsTensors`, for trying ``torch.export``).

The eager pooler takes a list of per-image ``Boxes``, so a trace would freeze the number
of images. These wrappers take Detectron2's pooler format instead, one (K, 5) tensor of
``batch_index, x1, y1, x2, y2``, so the number of ROIs *and* of images are dynamic axes of the
exported graph. ``tools/export_onnx.py`` uses them. Two paths:

* ``"roi_align"`` (default, :meth:`ROIAlignPooler.pool_rois`): the pooler's operator
  (``torch.ops.roi_plugin.*``; what ``torch.export`` and ``torch.jit.trace`` record), and
  under ``torch.onnx.export``, which cannot express it, ONNX ``RoiAlign`` per level, exact at
  every sampling ratio, adaptive included.
* ``"grid_sample"`` (:func:`roi_plugin.layers.static.grid_sample_static`): ONNX ``GridSample`` only (no
  ``RoiAlign``), for runtimes without it; under adaptive sampling it lays out at most
  ``max_grid`` samples per bin and axis, so ROIs needing more differ from eager.
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..layers.static import EXPORT_MAX_GRID
from ..modeling.poolers import ROIAlignPooler
from . import require_onnx

__all__ = ["ExportablePooler", "ExportableBoxBranch", "ExportableMaskBranch", "ROIHeadsTensors",
           "export_onnx", "boxes_to_rois"]


def boxes_to_rois(box_lists: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of B (N_i, 4) box tensors (or ``Boxes``) -> (sum N_i, 5) ``batch_index, x1, y1, x2, y2``."""
    rois = []
    for i, b in enumerate(box_lists):
        t = getattr(b, "tensor", b).float()
        rois.append(torch.cat([torch.full_like(t[:, :1], i), t], 1))
    return torch.cat(rois)


EXPORT_METHODS = ("roi_align", "grid_sample")


class ExportablePooler(nn.Module):
    """``forward(*features, rois) -> (K, C, h, w)``: an :class:`ROIAlignPooler` for tracing/ONNX.

    Args:
        pooler: the pooler to export (either sampler).
        max_grid: ``grid_sample`` path only: samples per bin and axis laid out when
            ``pooler.sampling_ratio == 0`` (exact for ROIs whose adaptive grid is at most
            this; see :meth:`ROIAlignPooler._grid_sample_static`).
        method: ``"roi_align"`` (exact, ONNX ``RoiAlign``) or ``"grid_sample"`` (ONNX
            ``GridSample``, capped by ``max_grid`` under adaptive sampling). A rotated pooler
            (``ROIAlignRotated``, rois (K, 6) ``batch_index, x_ctr, y_ctr, w, h, angle``) takes
            ``"roi_align"`` only, :meth:`ROIAlignPooler.pool_rois`: its exact ``GridSample`` path.
    """

    def __init__(self, pooler: ROIAlignPooler, max_grid: int = EXPORT_MAX_GRID, method: str = "roi_align"):
        super().__init__()
        if not isinstance(pooler, ROIAlignPooler):
            raise TypeError(f"ExportablePooler needs an ROIAlignPooler, got {type(pooler).__name__}")
        if method not in EXPORT_METHODS:
            raise ValueError(f"method {method!r} is not supported; use one of {EXPORT_METHODS}")
        if pooler.rotated and method != "roi_align":
            raise ValueError("a rotated pooler has one ONNX path, its own GridSample one (method 'roi_align': "
                             "ROIAlignPooler.pool_rois); method 'grid_sample' is the upright GridSample-only path")
        self.pooler = pooler
        self.max_grid = int(max_grid)
        self.method = method

    def exact_for_all_boxes(self) -> bool:
        """Whether the graph equals the eager pooler for every ROI (``False`` only for the
        ``grid_sample`` path under adaptive sampling)."""
        return self.method == "roi_align" or self.pooler.sampling_ratio > 0

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            inputs: L feature maps (B, C, H_l, W_l) then rois (K, 5).
        Returns:
            (K, C, h, w) pooled features.
        """
        *features, rois = inputs
        p = self.pooler
        if self.method == "roi_align":
            return p.pool_rois(list(features), rois)
        return p._grid_sample_static(list(features), rois, self.max_grid)


class ExportableBoxBranch(nn.Module):
    """Pooler + box head + box predictor of a ``StandardROIHeads`` (e.g. ``PluginROIHeads``).

    ``forward(*features, rois) -> (scores, deltas)``: the predictor's raw outputs,
    (K, num_classes + 1) classification logits and (K, 4 * num_classes) (or (K, 4),
    class-agnostic) box deltas. Box decoding, score threshold and NMS stay outside the graph
    (``predictor.inference`` in PyTorch, or the deployment's own post-processing).

    Args:
        roi_heads: a ``StandardROIHeads`` whose ``box_pooler`` is an :class:`ROIAlignPooler`.
        in_features: names of the feature maps fed to the pooler, in order (default
            ``roi_heads.box_in_features``); only used to document the input order.
        max_grid, method: as in :class:`ExportablePooler`.
    """

    def __init__(self, roi_heads: nn.Module, max_grid: int = EXPORT_MAX_GRID, method: str = "roi_align"):
        super().__init__()
        self.pooler = ExportablePooler(roi_heads.box_pooler, max_grid, method)
        self.box_head = roi_heads.box_head
        self.box_predictor = roi_heads.box_predictor
        self.in_features: List[str] = list(roi_heads.box_in_features)

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            inputs: the maps named ``in_features`` (B, C, H_l, W_l), then rois (K, 5).
        Returns:
            scores (K, num_classes + 1), deltas (K, 4 * num_classes).
        """
        box_features = self.box_head(self.pooler(*inputs))
        scores, deltas = self.box_predictor(box_features)
        return scores, deltas


class ExportableMaskBranch(nn.Module):
    """Mask pooler + mask head layers of a ``StandardROIHeads``: ``forward(*features, rois) ->
    mask logits`` (K, num_classes, M, M) (or (K, 1, M, M), class-agnostic) for the (K, 5) rois
    (at inference: the detections' boxes). Picking each detection's class and the sigmoid stay
    outside (``mask_rcnn_inference``), as box post-processing does for :class:`ExportableBoxBranch`.

    The mask head is a submodule (its parameters are the branch's, ``.eval()`` reaches it), and
    ``forward`` calls its ``layers`` method (Detectron2's ``BaseMaskRCNNHead.layers``: conv stack +
    predictor). Holding the bound method alone hid the parameters from the module, and
    ``torch.export`` of torch 2.4 failed on them (``KeyError`` in its parameter table)."""

    def __init__(self, roi_heads: nn.Module, max_grid: int = EXPORT_MAX_GRID, method: str = "roi_align"):
        super().__init__()
        self.pooler = ExportablePooler(roi_heads.mask_pooler, max_grid, method)
        self.mask_head = roi_heads.mask_head

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.mask_head.layers(self.pooler(*inputs))


class ROIHeadsTensors(nn.Module):
    """``model.roi_heads`` at inference (Detectron2's own code: box branch, ``fast_rcnn_inference``
    post-processing, mask branch on the detections) with tensors in and out, for ``torch.export``:
    ``forward(features, proposal_boxes, image) -> (pred_boxes (N, 4), scores (N,), pred_classes
    (N,), pred_masks (N, 1, M, M))`` of one image; ``features`` are the maps named
    ``roi_heads.in_features`` in that order, ``proposal_boxes`` (R, 4) and ``image`` only gives
    the image size (its last two axes, so that the size stays symbolic).

    Eagerly it equals ``roi_heads`` on that image's proposals. ``torch.export`` of it fails in
    Detectron2's inference code, not in the plugin's modules (``tests/test_deploy.py``
    ``test_torch_export_roi_heads_stops_in_detectron2_postprocessing``): ``fast_rcnn_inference_single_image`` branches on data
    (``if not valid_mask.all()``, and ``Boxes.clip`` asserts ``isfinite(...).all()``), and
    ``Instances.set`` calls Python's ``len()``, which must return an int, so the numbers of
    proposals and detections cannot stay symbolic. The pooler-to-predictor parts export
    (:class:`ExportableBoxBranch`, :class:`ExportableMaskBranch`)."""

    def __init__(self, roi_heads: nn.Module):
        super().__init__()
        self.heads = roi_heads
        self.in_features: List[str] = list(roi_heads.in_features)

    def forward(self, features: List[torch.Tensor], proposal_boxes: torch.Tensor, image: torch.Tensor):
        from detectron2.structures import Boxes, Instances

        proposals = Instances(tuple(image.shape[-2:]), proposal_boxes=Boxes(proposal_boxes))
        out, _ = self.heads(None, dict(zip(self.in_features, features)), [proposals], None)
        inst = out[0]
        masks = inst.pred_masks if inst.has("pred_masks") else inst.scores.new_zeros((len(inst), 0))
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes, masks


def export_onnx(
    module: nn.Module,
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    path: str,
    *,
    output_names: Sequence[str] = ("pooled",),
    opset_version: int = 17,
    dynamic_spatial: bool = True,
) -> None:
    """Export an :class:`ExportablePooler` / :class:`ExportableBoxBranch` to ONNX.

    The number of ROIs (``rois`` axis 0) and of images (axis 0 of every map) are dynamic,
    and so are the maps' heights and widths when ``dynamic_spatial``. Uses the
    TorchScript-based exporter (``dynamo=False``), the one that takes ``dynamic_axes``.

    Args:
        features: example maps (B, C, H_l, W_l), one per pooler level.
        rois: example (K, 5) rois.
        output_names: one name per output of ``module``.
    """
    require_onnx()  # torch.onnx.export needs it; the error names the extra
    names = [f"feature{i}" for i in range(len(features))]
    dynamic = {}
    for name in names:
        dynamic[name] = (
            {0: "images", 2: f"{name}_height", 3: f"{name}_width"} if dynamic_spatial else {0: "images"}
        )
    dynamic["rois"] = {0: "rois"}
    for name in output_names:
        dynamic[name] = {0: "rois"}
    module = module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(features) + (rois,),
            path,
            input_names=names + ["rois"],
            output_names=list(output_names),
            dynamic_axes=dynamic,
            opset_version=opset_version,
            dynamo=False,
        )
