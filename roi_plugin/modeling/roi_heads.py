# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""ROI heads that swap the plugin's pooler and predictor into each family of Detectron2's ROI heads.

Detectron2 has no registry for poolers or box predictors: its ROI heads build them in their
construction hooks (``_init_box_head`` / ``_init_mask_head`` / ``_init_keypoint_head`` of
``StandardROIHeads`` and ``CascadeROIHeads``, ``from_config`` of ``Res5ROIHeads``). Each plugin
class overrides those hooks only, replacing every ``ROIPooler`` by :class:`ROIAlignPooler`
(sampler ``MODEL.ROI_PLUGIN.SAMPLER``) and each Faster R-CNN predictor by
:class:`FastRCNNPredictor`; training and inference code (``_forward_box``, proposal sampling,
losses, the cascade's stages) is Detectron2's.

===================  =========================  ==========================================
built-in class       plugin class               swapped
===================  =========================  ==========================================
StandardROIHeads     PluginROIHeads             box / mask / keypoint poolers, box predictor
(same)               GridSampleROIHeads         as PluginROIHeads, sampler fixed to grid_sample
CascadeROIHeads      PluginCascadeROIHeads      box pooler (shared by the stages), every
                                                stage's predictor (its box2box weights kept),
                                                mask / keypoint poolers
Res5ROIHeads (C4)    PluginRes5ROIHeads         the single-level pooler on res4, box predictor
===================  =========================  ==========================================

Built from keywords (LazyConfig's ``instantiate``), the classes receive already-built modules:
a Detectron2 ``ROIPooler`` is converted to an :class:`ROIAlignPooler` with the same settings
(sampler: the ``sampler`` keyword) and a plain ``FastRCNNOutputLayers`` to a
:class:`FastRCNNPredictor` with the same settings and parameters (see :mod:`roi_plugin.modeling.convert`);
keyword sets of another family (C4's ``pooler``/``res5``, the cascade's ``box_heads``) raise
an error naming the right class.
"""
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, Res5ROIHeads, StandardROIHeads

from ..config import roi_plugin_cfg
from .convert import to_plugin_pooler, to_plugin_predictor
from .poolers import SAMPLERS, ROIAlignPooler
from .predictor import FastRCNNPredictor

__all__ = [
    "PluginROIHeads",
    "GridSampleROIHeads",
    "PluginCascadeROIHeads",
    "PluginRes5ROIHeads",
    "build_plugin_pooler",
    "PLUGIN_HEADS",
]


def build_plugin_pooler(cfg, head_cfg, input_shape, sampler: str) -> ROIAlignPooler:
    """An :class:`ROIAlignPooler` configured like Detectron2 would configure its ``ROIPooler``.

    Args:
        head_cfg: ``cfg.MODEL.ROI_BOX_HEAD``, ``ROI_MASK_HEAD`` or ``ROI_KEYPOINT_HEAD``.
        input_shape: dict of backbone ShapeSpecs.
    """
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    plugin = roi_plugin_cfg(cfg)
    return ROIAlignPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
        canonical_box_size=plugin.CANONICAL_BOX_SIZE,
        canonical_level=plugin.CANONICAL_LEVEL,
        sampler=sampler,
        single_thread=plugin.SINGLE_THREAD,
    )


class _PluginHooks:
    """What all plugin heads share: the sampler, the mask/keypoint pooler hooks, and the
    conversion of keyword-built modules in ``__init__``."""

    _pooler_keys = ("box_pooler", "mask_pooler", "keypoint_pooler")
    # Keywords that only one family takes, by plugin class of that family.
    _family_keys = {"PluginROIHeads": ("box_head",),
                    "PluginCascadeROIHeads": ("box_heads", "box_predictors"),
                    "PluginRes5ROIHeads": ("pooler", "res5")}
    _family = "PluginROIHeads"

    @configurable
    def __init__(self, *, sampler: str = "gather", **kwargs):
        """
        Args:
            sampler: sampler of the poolers converted from Detectron2's ``ROIPooler`` (keyword
                construction); from a YACS cfg, ``MODEL.ROI_PLUGIN.SAMPLER``.
            **kwargs: the built-in class's keywords. ``ROIPooler`` and plain
                ``FastRCNNOutputLayers`` among them are converted to the plugin's modules.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not supported; use one of {SAMPLERS}")
        for family, keys in self._family_keys.items():
            wrong = [k for k in keys if k in kwargs and k not in self._family_keys[self._family]]
            if wrong:
                raise TypeError(f"{type(self).__name__} got {wrong[0]}=, a keyword of another ROI-heads "
                                f"family: use {family}")
        for key in self._pooler_keys:
            if key in kwargs:
                kwargs[key] = to_plugin_pooler(kwargs[key], sampler)
        if "box_predictor" in kwargs:
            kwargs["box_predictor"] = to_plugin_predictor(kwargs["box_predictor"])
        if "box_predictors" in kwargs:
            kwargs["box_predictors"] = [to_plugin_predictor(p) for p in kwargs["box_predictors"]]
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["sampler"] = cls._sampler(cfg)
        return ret

    @classmethod
    def _sampler(cls, cfg) -> str:
        return roi_plugin_cfg(cfg).SAMPLER

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
class PluginROIHeads(_PluginHooks, StandardROIHeads):
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
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_plugin_pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, cls._sampler(cfg))
        ret["box_predictor"] = FastRCNNPredictor(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class GridSampleROIHeads(PluginROIHeads):
    """:class:`PluginROIHeads` whose poolers always use the ``grid_sample`` sampler.

    The notebook's design, made exact; ``MODEL.ROI_PLUGIN.SAMPLER`` does not apply to it.
    """

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, sampler: str = "grid_sample", **kwargs):
        super().__init__(sampler=sampler, **kwargs)

    @classmethod
    def _sampler(cls, cfg) -> str:
        return "grid_sample"


@ROI_HEADS_REGISTRY.register()
class PluginCascadeROIHeads(_PluginHooks, CascadeROIHeads):
    """CascadeROIHeads with roi_plugin's pooler (shared by all stages, and for mask/keypoint)
    and a :class:`FastRCNNPredictor` per stage, each keeping its stage's box2box weights.
    Each stage keeps its own box head (``MODEL.ROI_BOX_HEAD.NAME``)."""

    _family = "PluginCascadeROIHeads"

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_plugin_pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, cls._sampler(cfg))
        ret["box_predictors"] = [
            FastRCNNPredictor(cfg, head.output_shape, box2box_transform=built.box2box_transform)
            for head, built in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret


@ROI_HEADS_REGISTRY.register()
class PluginRes5ROIHeads(_PluginHooks, Res5ROIHeads):
    """Res5ROIHeads (C4) with roi_plugin's single-level pooler on ``res4`` and predictor; the
    res5 block and the mask head (which pools nothing itself) are Detectron2's."""

    _pooler_keys = ("pooler",)
    _family = "PluginRes5ROIHeads"

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["pooler"] = build_plugin_pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, cls._sampler(cfg))
        channels = ret["box_predictor"].cls_score.in_features
        ret["box_predictor"] = FastRCNNPredictor(cfg, ShapeSpec(channels=channels, height=1, width=1))
        return ret


# built-in ROI-heads class name -> plugin class name (the README's table).
PLUGIN_HEADS = {
    "StandardROIHeads": "PluginROIHeads",
    "CascadeROIHeads": "PluginCascadeROIHeads",
    "Res5ROIHeads": "PluginRes5ROIHeads",
    "RROIHeads": "PluginRROIHeads",  # roi_plugin/modeling/rotated_heads.py
}
