# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Turn Detectron2's built ``ROIPooler`` / ``FastRCNNOutputLayers`` into the plugin's modules.

The plugin heads build their poolers and predictors from a YACS cfg in their construction
hooks. Instantiated from keywords (LazyConfig's ``instantiate``), they receive modules that a
config already built, usually Detectron2's own; these functions convert them, keeping every
setting (and, for the predictor, its parameters), so that ``model.roi_heads._target_ =
PluginROIHeads`` swaps as the YAML path does instead of silently keeping Detectron2's modules.
"""
import torch
from torch import nn

from detectron2.layers import ROIAlign, ROIAlignRotated, ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from .poolers import ROIAlignPooler
from .predictor import FastRCNNPredictor

__all__ = ["pooler_from_roi_pooler", "predictor_from_output_layers", "to_plugin_pooler", "to_plugin_predictor"]


def pooler_from_roi_pooler(pooler: ROIPooler, sampler: str = "gather", single_thread: bool = True) -> ROIAlignPooler:
    """An :class:`ROIAlignPooler` with the output size, scales, sampling ratio, ROIAlign mode and
    level rule of Detectron2's ``pooler``.

    Raises ``ValueError`` for the pooler type the plugin does not implement (``ROIPool``).
    """
    first = pooler.level_poolers[0]
    if type(first) is ROIAlign:
        pooler_type = "ROIAlignV2" if first.aligned else "ROIAlign"
    elif type(first) is ROIAlignRotated:
        pooler_type = "ROIAlignRotated"
    else:
        raise ValueError(
            f"roi_plugin implements ROIAlign, ROIAlignV2 and ROIAlignRotated only; this ROIPooler uses "
            f"{type(first).__name__}"
        )
    return ROIAlignPooler(
        output_size=tuple(pooler.output_size),
        scales=tuple(float(p.spatial_scale) for p in pooler.level_poolers),
        sampling_ratio=int(first.sampling_ratio),
        pooler_type=pooler_type,
        canonical_box_size=pooler.canonical_box_size,
        canonical_level=pooler.canonical_level,
        sampler=sampler,
        single_thread=single_thread,
    )


def predictor_from_output_layers(layers: FastRCNNOutputLayers) -> FastRCNNPredictor:
    """A :class:`FastRCNNPredictor` with the settings and the parameters of ``layers``."""
    box_dim = len(layers.box2box_transform.weights)
    kwargs = dict(
        box2box_transform=layers.box2box_transform,
        num_classes=layers.num_classes,
        test_score_thresh=layers.test_score_thresh,
        test_nms_thresh=layers.test_nms_thresh,
        test_topk_per_image=layers.test_topk_per_image,
        cls_agnostic_bbox_reg=layers.bbox_pred.out_features == box_dim,
        smooth_l1_beta=layers.smooth_l1_beta,
        box_reg_loss_type=layers.box_reg_loss_type,
        loss_weight=dict(layers.loss_weight),
        use_sigmoid_ce=layers.use_sigmoid_ce,
        fed_loss_num_classes=layers.fed_loss_num_classes,
    )
    if layers.use_fed_loss:
        weights = layers.fed_loss_cls_weights
        kwargs.update(use_fed_loss=True, get_fed_loss_cls_weights=lambda: weights.clone())
    out = FastRCNNPredictor(ShapeSpec(channels=layers.cls_score.in_features), **kwargs)
    out.load_state_dict(layers.state_dict(), strict=True)
    return out.to(layers.cls_score.weight.device)


def to_plugin_pooler(pooler, sampler: str):
    """``pooler`` if it is already ours (or None, or another module we leave alone); a
    converted copy if it is Detectron2's ``ROIPooler``."""
    if isinstance(pooler, ROIPooler):
        return pooler_from_roi_pooler(pooler, sampler)
    return pooler


def to_plugin_predictor(predictor):
    """A converted copy of a plain ``FastRCNNOutputLayers``; anything else (ours, a subclass
    with its own behaviour, another predictor) unchanged."""
    if type(predictor) is FastRCNNOutputLayers:
        return predictor_from_output_layers(predictor)
    return predictor
