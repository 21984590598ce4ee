# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROI heads that swap the plugin's pooler and predictor into Detectron2's StandardROIHeads.

Detectron2 has no registry for poolers or box predictors: ``StandardROIHeads`` builds
them in ``_init_box_head`` / ``_init_mask_head`` / ``_init_keypoint_head``. We override
those hooks only, replacing the built-in ``ROIPooler`` by :class:`ROIAlignPooler` and
the predictor by :class:`FastRCNNPredictor`; training/inference code (``_forward_box``,
proposal sampling, losses) is Detectron2's.
"""
import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from .layers import ROIAlignPooler
from .predictor import FastRCNNPredictor

__all__ = ["PluginROIHeads", "GridSampleROIHeads", "build_plugin_pooler"]


def build_plugin_pooler(cfg, head_cfg, input_shape, sampler: str) -> ROIAlignPooler:
    """An :class:`ROIAlignPooler` configured like Detectron2 would configure its ``ROIPooler``.

    Args:
        head_cfg: ``cfg.MODEL.ROI_BOX_HEAD``, ``ROI_MASK_HEAD`` or ``ROI_KEYPOINT_HEAD``.
        input_shape: dict of backbone ShapeSpecs.
    """
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    return ROIAlignPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        canonical_box_size=cfg.MODEL.ROI_PLUGIN.CANONICAL_BOX_SIZE,
        canonical_level=cfg.MODEL.ROI_PLUGIN.CANONICAL_LEVEL,
        sampler=sampler,
    )


@ROI_HEADS_REGISTRY.register()
class PluginROIHeads(StandardROIHeads):
    """StandardROIHeads with roi_plugin's pooler (box 7x7, mask 14x14, keypoint) and predictor.

    The sampler is ``MODEL.ROI_PLUGIN.SAMPLER``; the box head is whatever
    ``MODEL.ROI_BOX_HEAD.NAME`` names (``TwoMLPHead`` or a built-in).

    Scripting (``detectron2.export.scripting_with_instances``): the poolers script to their
    static path (same values as eager). ``mask_on``/``keypoint_on`` are TorchScript constants, as
    Detectron2's export patch makes them for ``StandardROIHeads`` itself (from Python 3.10 a
    subclass does not see its base's class annotations), so branches that are off compile away.
    """

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _sampler(cls, cfg) -> str:
        return cfg.MODEL.ROI_PLUGIN.SAMPLER

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_plugin_pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, cls._sampler(cfg))
        ret["box_predictor"] = FastRCNNPredictor(cfg, ret["box_head"].output_shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return cls._swap_pooler(super()._init_mask_head(cfg, input_shape), "mask_pooler",
                                cfg, cfg.MODEL.ROI_MASK_HEAD, input_shape)

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        return cls._swap_pooler(super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler",
                                cfg, cfg.MODEL.ROI_KEYPOINT_HEAD, input_shape)

    @classmethod
    def _swap_pooler(cls, ret, key, cfg, head_cfg, input_shape):
        """Replace the ``ROIPooler`` Detectron2 built under ``ret[key]`` (None when the head
        pools nothing, i.e. POOLER_TYPE is empty, or the branch is off) by ours."""
        if ret.get(key) is not None:
            ret[key] = build_plugin_pooler(cfg, head_cfg, input_shape, cls._sampler(cfg))
        return ret


@ROI_HEADS_REGISTRY.register()
class GridSampleROIHeads(PluginROIHeads):
    """:class:`PluginROIHeads` whose poolers always use the ``grid_sample`` sampler.

    The notebook's design, made exact; ``MODEL.ROI_PLUGIN.SAMPLER`` does not apply to it.
    """

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @classmethod
    def _sampler(cls, cfg) -> str:
        return "grid_sample"
