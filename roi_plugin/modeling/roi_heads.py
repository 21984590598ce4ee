# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The plugin ROI heads: Detectron2's ROI-heads families, converted as they are built.

Detectron2 has no registry for poolers or box predictors: each ROI-heads class builds its own
``ROIPooler`` and ``FastRCNNOutputLayers``. Each plugin class here is the built-in class plus one
mixin, :class:`PluginHeadsMixin`, whose ``__init__`` runs the built-in ``__init__`` and then
converts the heads with :func:`~roi_plugin.modeling.convert.convert_model`, the function that
converts any model; its ``from_config`` adds the sampler (``MODEL.ROI_PLUGIN.SAMPLER``) and
applies the ``MODEL.ROI_PLUGIN`` keys Detectron2's builders do not know
(:func:`~roi_plugin.modeling.convert.apply_plugin_keys`). Training and inference code
(``_forward_box``, proposal sampling, losses, the cascade's stages) is Detectron2's, and so is
every construction hook: a default config draws the same random numbers as the built-in class,
so the same seed gives the same initial weights.

===================  =========================  ==========================================
built-in class       plugin class               swapped
===================  =========================  ==========================================
StandardROIHeads     PluginROIHeads             box / mask / keypoint poolers, box predictor
(same)               GridSampleROIHeads         as PluginROIHeads, sampler fixed to grid_sample
CascadeROIHeads      PluginCascadeROIHeads      box pooler (shared by the stages), every
                                                stage's predictor (its box2box weights kept),
                                                mask / keypoint poolers
Res5ROIHeads (C4)    PluginRes5ROIHeads         the single-level pooler on res4, box predictor
RROIHeads            PluginRROIHeads            (:mod:`.rotated_heads`) rotated box pooler,
                                                RotatedFastRCNNPredictor
===================  =========================  ==========================================

Built from keywords (LazyConfig's ``instantiate``) the classes receive already-built modules,
converted the same way (sampler: the ``sampler`` keyword); keyword sets of another family (C4's
``pooler``/``res5``, the cascade's ``box_heads``) raise an error naming the right class. Any
other ROI heads (a subclass with its own poolers) need no class: see ``convert_model`` and
``MODEL.META_ARCHITECTURE: "ROIPluginModel"`` (:mod:`.meta_arch`).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, Res5ROIHeads, StandardROIHeads

from ..config import roi_plugin_cfg
from .convert import apply_plugin_keys, cfg_for_detectron2, convert_model, head_pooler_types, plugin_pooler_options
from .poolers import SAMPLERS, ROIAlignPooler

__all__ = [
    "PluginROIHeads",
    "GridSampleROIHeads",
    "PluginCascadeROIHeads",
    "PluginRes5ROIHeads",
    "PluginHeadsMixin",
    "build_plugin_pooler",
    "PLUGIN_HEADS",
]


def build_plugin_pooler(cfg, head_cfg, input_shape, sampler: str) -> ROIAlignPooler:
    """An :class:`ROIAlignPooler` configured like Detectron2 would configure its ``ROIPooler``
    (plus the ``MODEL.ROI_PLUGIN`` pooler keys), for heads written by hand (the plugin heads
    convert the ``ROIPooler`` Detectron2 builds).

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
        **plugin_pooler_options(cfg, input_shape[in_features[0]].channels),
    )


class PluginHeadsMixin:
    """Put before a Detectron2 ROI-heads class: the heads are built by that class, then
    converted by :func:`convert_model` (every ``ROIPooler`` -> :class:`ROIAlignPooler`, every
    plain Fast R-CNN predictor -> roi_plugin's). The one swapping mechanism of all plugin heads."""

    # Keywords that only one family takes, by plugin class of that family.
    _family_keys = {"PluginROIHeads": ("box_head",),
                    "PluginCascadeROIHeads": ("box_heads", "box_predictors"),
                    "PluginRes5ROIHeads": ("pooler", "res5")}
    _family = "PluginROIHeads"

    @configurable
    def __init__(self, *, sampler: str = "gather", single_thread: bool = True, pooler_types=None,
                 pooler_options=None, **kwargs):
        """
        Args:
            sampler: sampler of the converted poolers; from a YACS cfg, ``MODEL.ROI_PLUGIN.SAMPLER``.
            single_thread: the converted poolers' thread choice (``MODEL.ROI_PLUGIN.SINGLE_THREAD``).
            pooler_types: ``{attribute: pooler_type}`` for converted poolers of another type than
                their ``ROIPooler`` (from a cfg: a head's ``POOLER_TYPE: "PrRoIPool"``).
            pooler_options: :class:`ROIAlignPooler` keywords for every converted pooler
                (``all_levels``, ``pool_mode``, ``roi_scale_factor``, ...; from a cfg, the
                ``MODEL.ROI_PLUGIN`` pooler keys).
            **kwargs: the built-in class's keywords. Detectron2's ``ROIPooler`` and plain
                ``FastRCNNOutputLayers`` among them are converted after the built-in ``__init__``.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not supported; use one of {SAMPLERS}")
        for family, keys in self._family_keys.items():
            wrong = [k for k in keys if k in kwargs and k not in self._family_keys[self._family]]
            if wrong:
                raise TypeError(f"{type(self).__name__} got {wrong[0]}=, a keyword of another ROI-heads "
                                f"family: use {family}")
        super().__init__(**kwargs)
        convert_model(self, sampler, single_thread, pooler_types=pooler_types, **(pooler_options or {}))

    @classmethod
    def from_config(cls, cfg, input_shape):
        # Detectron2's builders get a placeholder for a POOLER_TYPE only the plugin pools (PrRoIPool).
        d2_cfg, wanted = cfg_for_detectron2(cfg)
        ret = super().from_config(d2_cfg, input_shape)
        apply_plugin_keys(ret.values(), cfg)
        ret["sampler"] = cls._sampler(cfg)
        ret["single_thread"] = roi_plugin_cfg(cfg).SINGLE_THREAD
        ret["pooler_types"] = head_pooler_types(wanted, _Attributes(ret))
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        ret["pooler_options"] = plugin_pooler_options(cfg, channels)
        return ret

    @classmethod
    def _sampler(cls, cfg) -> str:
        return roi_plugin_cfg(cfg).SAMPLER


class _Attributes:
    """A ``from_config`` dict seen as the heads' attributes it will become."""

    def __init__(self, ret):
        self.__dict__.update(ret)


@ROI_HEADS_REGISTRY.register()
class PluginROIHeads(PluginHeadsMixin, StandardROIHeads):
    """StandardROIHeads with roi_plugin's poolers (box 7x7, mask 14x14, keypoint) and predictor.

    The sampler is ``MODEL.ROI_PLUGIN.SAMPLER``; the box head is whatever
    ``MODEL.ROI_BOX_HEAD.NAME`` names (``TwoMLPHead`` or a built-in).

    Scripting (``detectron2.export.scripting_with_instances``): the poolers script to their
    operator (bit-identical to eager). ``mask_on``/``keypoint_on`` are TorchScript constants, as
    Detectron2's export patch makes them for ``StandardROIHeads`` itself (from Python 3.10 a
    subclass does not see its base's class annotations), so branches that are off compile away.
    """

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]


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
class PluginCascadeROIHeads(PluginHeadsMixin, CascadeROIHeads):
    """CascadeROIHeads with roi_plugin's pooler (shared by all stages, and for mask/keypoint)
    and a :class:`FastRCNNPredictor` per stage, each keeping its stage's box2box weights.
    Each stage keeps its own box head (``MODEL.ROI_BOX_HEAD.NAME``)."""

    _family = "PluginCascadeROIHeads"


@ROI_HEADS_REGISTRY.register()
class PluginRes5ROIHeads(PluginHeadsMixin, Res5ROIHeads):
    """Res5ROIHeads (C4) with roi_plugin's single-level pooler on ``res4`` and predictor; the
    res5 block and the mask head (which pools nothing itself) are Detectron2's."""

    _family = "PluginRes5ROIHeads"


# built-in ROI-heads class name -> plugin class name (the README's table).
PLUGIN_HEADS = {
    "StandardROIHeads": "PluginROIHeads",
    "CascadeROIHeads": "PluginCascadeROIHeads",
    "Res5ROIHeads": "PluginRes5ROIHeads",
    "RROIHeads": "PluginRROIHeads",  # roi_plugin/modeling/rotated_heads.py
}
