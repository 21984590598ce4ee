"""A small plugin Mask R-CNN config (R18-FPN, 16 FPN channels, tiny heads) for CPU tests."""
import os

from detectron2.config import get_cfg

from roi_plugin import add_roi_plugin_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(sampler="gather", *overrides):
    """``configs/mask_rcnn_R_50_FPN_1x_plugin.yaml`` shrunk for CPU tests; ``overrides`` are
    further ``KEY, VALUE`` pairs as on a command line."""
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "mask_rcnn_R_50_FPN_1x_plugin.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ROI_PLUGIN.SAMPLER", sampler,
        *overrides,
    ])
    return cfg
