# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Rotated-box ROI heads: Detectron2's ``RROIHeads`` with roi_plugin's pooler and predictor.

``RROIHeads`` (Rotated Fast R-CNN: boxes ``(x_ctr, y_ctr, w, h, angle_degrees)``) builds a
``ROIPooler(pooler_type="ROIAlignRotated")``, whose kernel exists only in Detectron2's compiled
``_C``, and a ``RotatedFastRCNNOutputLayers``. :class:`PluginRROIHeads` is ``RROIHeads`` with
the mixin of all plugin heads (:class:`~roi_plugin.modeling.roi_heads.PluginHeadsMixin`): once
built, the box pooler becomes roi_plugin's pure-PyTorch pooler in ``ROIAlignRotated`` mode
(sampler ``MODEL.ROI_PLUGIN.SAMPLER``) and the predictor a :class:`RotatedFastRCNNPredictor`,
by :func:`~roi_plugin.modeling.convert.convert_model`. Proposal matching, sampling, losses and
rotated inference stay Detectron2's; the rotated IoU and NMS they call come from
``roi_plugin/layers/rotated_ops.py`` where ``_C`` is missing.
"""
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.rotated_fast_rcnn import RROIHeads

from .predictor import RotatedFastRCNNPredictor
from .roi_heads import PluginHeadsMixin

__all__ = ["PluginRROIHeads", "RotatedFastRCNNPredictor"]


@ROI_HEADS_REGISTRY.register()
class PluginRROIHeads(PluginHeadsMixin, RROIHeads):
    """``RROIHeads`` with roi_plugin's ``ROIAlignRotated`` pooler and :class:`RotatedFastRCNNPredictor`.

    Config: ``MODEL.ROI_BOX_HEAD.POOLER_TYPE: "ROIAlignRotated"`` (required by ``RROIHeads``),
    ``MODEL.ROI_PLUGIN.SAMPLER`` (``gather`` or ``grid_sample``), any registered box head
    (``TwoMLPHead`` keeps checkpoints compatible with ``FastRCNNConvFCHead``).
    """
