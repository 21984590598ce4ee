# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
from detectron2.config import CfgNode as CN

__all__ = ["add_roi_plugin_config", "roi_plugin_cfg"]


def add_roi_plugin_config(cfg):
    """Add the config keys of roi_plugin under ``cfg.MODEL.ROI_PLUGIN``.

    Pooler resolution, sampling ratio and pooler type stay in Detectron2's own keys
    (``MODEL.ROI_BOX_HEAD.POOLER_*``, ``MODEL.ROI_MASK_HEAD.POOLER_*``; the plugin heads also
    take ``POOLER_TYPE: "PrRoIPool"``, which Detectron2's ``ROIPooler`` does not know); the box
    head's width is ``MODEL.ROI_BOX_HEAD.FC_DIM``.
    """
    _C = cfg
    _C.MODEL.ROI_PLUGIN = CN()
    # How ROIAlign samples the features: "gather" (embedding_bag over bilinear taps; exact,
    # fastest on CPU) or "grid_sample" (F.grid_sample; exact, exports to ONNX GridSample).
    _C.MODEL.ROI_PLUGIN.SAMPLER = "gather"
    # Run the sampler's CPU work on one intra-op thread (set around each call, then restored):
    # on a machine where other processes take cores, every multi-threaded op waits for a
    # descheduled thread; False keeps torch.get_num_threads() (may help on idle many-core CPUs).
    _C.MODEL.ROI_PLUGIN.SINGLE_THREAD = True
    # Box size (input pixels) that the FPN level rule maps to CANONICAL_LEVEL (224 in the paper).
    _C.MODEL.ROI_PLUGIN.CANONICAL_BOX_SIZE = 224
    # k0 of the level rule k = clip(k0 + floor(log2(sqrt(wh) / CANONICAL_BOX_SIZE)), k_min, k_max).
    _C.MODEL.ROI_PLUGIN.CANONICAL_LEVEL = 4
    # Std of the normal init of the predictor's classification layer (bias 0).
    _C.MODEL.ROI_PLUGIN.CLS_SCORE_INIT_STD = 0.01
    # Std of the normal init of the predictor's box-regression layer (bias 0).
    _C.MODEL.ROI_PLUGIN.BBOX_PRED_INIT_STD = 0.001
    # Pool every ROI from every pyramid level: "" (off: the level its size picks), "sum" (all
    # levels summed, GRoIE) or "conv" (GRoIE's learned variant: a conv + ReLU shared by the levels,
    # the sum, a conv + ReLU). Applies to every pooler of the plugin heads / ROIPluginModel.
    _C.MODEL.ROI_PLUGIN.ALL_LEVELS = ""
    # Kernel size of both convs of ALL_LEVELS "conv" (odd; GRoIE's best used 5, 1 costs least).
    _C.MODEL.ROI_PLUGIN.ALL_LEVELS_KERNEL = 3
    # "avg" (ROIAlign: the mean of a bin's bilinear samples) or "max" (mmcv's max mode: the largest
    # sample) for the ROIAlign / ROIAlignV2 poolers of the plugin heads / ROIPluginModel.
    _C.MODEL.ROI_PLUGIN.POOL_MODE = "avg"
    # Scale every pooled box about its centre by this factor (context), keeping the level of the
    # unscaled box (mmdetection's roi_scale_factor); 1.0 = unchanged.
    _C.MODEL.ROI_PLUGIN.ROI_SCALE_FACTOR = 1.0
    # With MODEL.META_ARCHITECTURE "ROIPluginModel": the meta-architecture built, then converted.
    _C.MODEL.ROI_PLUGIN.META_ARCHITECTURE = "GeneralizedRCNN"


def roi_plugin_cfg(cfg) -> CN:
    """``cfg.MODEL.ROI_PLUGIN``, or the defaults of :func:`add_roi_plugin_config` when the config
    never had them added (e.g. Detectron2's stock ``train_net.py`` with ``import roi_plugin``).

    A config that sets ``MODEL.ROI_PLUGIN.*`` keys must call ``add_roi_plugin_config(cfg)``
    before merging (YACS rejects unknown keys); one that only names the plugin heads gets the
    documented defaults.
    """
    model = cfg.MODEL
    if "ROI_PLUGIN" in model:
        return model.ROI_PLUGIN
    defaults = CN({"MODEL": CN()})
    add_roi_plugin_config(defaults)
    return defaults.MODEL.ROI_PLUGIN
