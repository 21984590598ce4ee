# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The config-only route for any model: ``MODEL.META_ARCHITECTURE: "ROIPluginModel"``.

A model whose ROI heads have no plugin class (DensePose, TridentNet, PointSup, a user's
``StandardROIHeads`` subclass with its own poolers) needs no new Python class:
``ROIPluginModel`` (a ``META_ARCH_REGISTRY`` entry, so Detectron2's own ``build_model`` and
every training script that calls it pick it up) builds the meta-architecture named by
``MODEL.ROI_PLUGIN.META_ARCHITECTURE`` (default ``GeneralizedRCNN``) from the same config, and
returns it converted by :func:`~roi_plugin.modeling.convert.convert_model` with sampler
``MODEL.ROI_PLUGIN.SAMPLER`` (and ``SINGLE_THREAD`` and the pooler keys ``ALL_LEVELS``,
``POOL_MODE``, ``ROI_SCALE_FACTOR``; a head's ``POOLER_TYPE: "PrRoIPool"`` is honoured for the
poolers of ``model.roi_heads``). The model keeps its own class, so
checkpoints, evaluation and export are unchanged. A script that never calls ``add_roi_plugin_config`` (a project's
``train_net.py`` with ``import roi_plugin`` added) gets the keys' defaults.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from ..config import roi_plugin_cfg
from .convert import apply_plugin_keys, cfg_for_detectron2, convert_model, head_pooler_types, plugin_pooler_options

__all__ = ["ROIPluginModel"]


@META_ARCH_REGISTRY.register()
def ROIPluginModel(cfg):  # noqa: N802  (a registry name, spelled as Detectron2's meta-architectures)
    """The meta-architecture ``MODEL.ROI_PLUGIN.META_ARCHITECTURE`` built from ``cfg``, with every
    Detectron2 ``ROIPooler`` and plain Fast R-CNN predictor swapped for roi_plugin's."""
    plugin = roi_plugin_cfg(cfg)
    name = plugin.META_ARCHITECTURE
    if name == "ROIPluginModel":
        raise ValueError('MODEL.ROI_PLUGIN.META_ARCHITECTURE names the model to convert; it cannot be '
                         '"ROIPluginModel" itself (e.g. "GeneralizedRCNN")')
    d2_cfg, wanted = cfg_for_detectron2(cfg)  # placeholders for pooler types only the plugin knows
    inner = d2_cfg.clone()  # the built model's cfg names its own class
    inner.defrost()
    inner.MODEL.META_ARCHITECTURE = name
    if cfg.is_frozen():
        inner.freeze()
    model = META_ARCH_REGISTRY.get(name)(inner)
    apply_plugin_keys([model], cfg)
    roi_heads = getattr(model, "roi_heads", None)
    types = head_pooler_types(wanted, roi_heads, "roi_heads") if roi_heads is not None else {}
    return convert_model(model, plugin.SAMPLER, plugin.SINGLE_THREAD, pooler_types=types,
                         **plugin_pooler_options(cfg, _pooled_channels(model, cfg)))


def _pooled_channels(model, cfg):
    """Channels of the maps the ROI heads pool (``ALL_LEVELS: "conv"`` needs them), or None."""
    backbone = getattr(model, "backbone", None)
    try:
        return backbone.output_shape()[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
    except (AttributeError, KeyError, IndexError):
        return None
