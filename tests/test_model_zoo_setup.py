"""The environment the README's commands build keeps Detectron2's model-zoo API working.

torch 2.14.1 requires setuptools>=77.0.3; setuptools 81+ has no ``pkg_resources``, which
``detectron2.model_zoo`` imports. ``scripts/bootstrap.sh`` pins the range in every pip call.
"""
import os

from detectron2.config import LazyConfig, get_cfg


def test_model_zoo_get_config_file_yacs():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    cfg = get_cfg()
    cfg.merge_from_file(path)  # resolves its _BASE_ inside the installed package
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert cfg.MODEL.MASK_ON
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"


def test_model_zoo_get_config_lazy():
    from detectron2 import model_zoo

    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    assert cfg.model.roi_heads.box_pooler.pooler_type == "ROIAlignV2"
    assert tuple(cfg.model.roi_heads.box_pooler.scales) == (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    # A whole LazyConfig training recipe loads too.
    full = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
    assert isinstance(full, type(LazyConfig.load(model_zoo.get_config_file(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"))))
    assert "model" in full and "train" in full
