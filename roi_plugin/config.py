# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
from detectron2.config import CfgNode as CN


def add_roi_plugin_config(cfg):
    """Add the config keys of roi_plugin under ``cfg.MODEL.ROI_PLUGIN``.

    Pooler resolution, sampling ratio and pooler type stay in Detectron2's own keys
    (``MODEL.ROI_BOX_HEAD.POOLER_*``, ``MODEL.ROI_MASK_HEAD.POOLER_*``); the box head's
    width is ``MODEL.ROI_BOX_HEAD.FC_DIM``.
    """
    _C = cfg
    _C.MODEL.ROI_PLUGIN = CN()
    # How ROIAlign samples the features: "gather" (embedding_bag over bilinear taps; exact,
    # fastest on CPU) or "grid_sample" (F.grid_sample; exact, exports to ONNX GridSample).
    _C.MODEL.ROI_PLUGIN.SAMPLER = "gather"
    # Box size (input pixels) that the FPN level rule maps to CANONICAL_LEVEL (224 in the paper).
    _C.MODEL.ROI_PLUGIN.CANONICAL_BOX_SIZE = 224
    # k0 of the level rule k = clip(k0 + floor(log2(sqrt(wh) / CANONICAL_BOX_SIZE)), k_min, k_max).
    _C.MODEL.ROI_PLUGIN.CANONICAL_LEVEL = 4
    # Std of the normal init of the predictor's classification layer (bias 0).
    _C.MODEL.ROI_PLUGIN.CLS_SCORE_INIT_STD = 0.01
    # Std of the normal init of the predictor's box-regression layer (bias 0).
    _C.MODEL.ROI_PLUGIN.BBOX_PRED_INIT_STD = 0.001
