"""Issue 15.4/15.5: configs that name the plugin heads without add_roi_plugin_config, and the
README's rule for the box head."""
import re

import pytest

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from roi_plugin import PLUGIN_HEADS, ROIAlignPooler, add_roi_plugin_config, roi_plugin_cfg

from checking import leftover_builtin_modules
from helpers import REPO, shipped_cfg


def _stock_cfg(name, *opts):
    """Detectron2's stock train_net.py set-up: get_cfg + merge, no add_roi_plugin_config."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.FPN.OUT_CHANNELS", 16, *opts])
    return cfg


def test_roi_plugin_cfg_defaults_are_add_roi_plugin_config():
    cfg = get_cfg()
    assert "ROI_PLUGIN" not in cfg.MODEL
    full = get_cfg()
    add_roi_plugin_config(full)
    assert roi_plugin_cfg(cfg) == full.MODEL.ROI_PLUGIN
    full.MODEL.ROI_PLUGIN.SAMPLER = "grid_sample"
    assert roi_plugin_cfg(full).SAMPLER == "grid_sample"


@pytest.mark.parametrize("heads", ["PluginROIHeads", "GridSampleROIHeads"])
def test_plugin_heads_build_without_add_roi_plugin_config(heads):
    cfg = _stock_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "MODEL.ROI_HEADS.NAME", heads,
                     "MODEL.ROI_BOX_HEAD.NAME", "TwoMLPHead")
    model = build_model(cfg)
    sampler = "grid_sample" if heads == "GridSampleROIHeads" else "gather"
    for p in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert isinstance(p, ROIAlignPooler) and p.sampler == sampler
        assert (p.canonical_box_size, p.canonical_level) == (224, 4)
    w = model.roi_heads.box_predictor.cls_score.weight
    assert abs(float(w.std()) - 0.01) < 0.003  # CLS_SCORE_INIT_STD default


def test_readme_swap_table_matches_the_registry():
    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+ROIHeads)` \| `(\w+ROIHeads)` \|", text, flags=re.M))
    assert rows == PLUGIN_HEADS


def test_gn_config_keeps_its_box_head_and_two_mlp_head_refuses_it():
    # The README: keep the config's own box head unless it is 2 FC and no conv. GN configs
    # have 4 convs + 1 FC: the swap of ROI_HEADS.NAME alone builds ...
    cfg = _stock_cfg("Misc/mask_rcnn_R_50_FPN_3x_gn.yaml", "MODEL.ROI_HEADS.NAME", "PluginROIHeads",
                     "MODEL.ROI_BOX_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
                     "MODEL.FPN.OUT_CHANNELS", 32)
    model = build_model(cfg)
    assert isinstance(model.roi_heads.box_pooler, ROIAlignPooler)
    assert type(model.roi_heads.box_head).__name__ == "FastRCNNConvFCHead"
    # ... and naming TwoMLPHead there fails with the one-line reason.
    cfg.MODEL.ROI_BOX_HEAD.NAME = "TwoMLPHead"
    with pytest.raises(ValueError, match="NUM_FC: 2"):
        build_model(cfg)


@pytest.mark.parametrize("name,heads", [
    ("mask_rcnn_R_50_FPN_1x_plugin.yaml", "PluginROIHeads"),
    ("mask_rcnn_R_50_C4_1x_plugin.yaml", "PluginRes5ROIHeads"),
    ("cascade_mask_rcnn_R_50_FPN_1x_plugin.yaml", "PluginCascadeROIHeads"),
])
def test_shipped_family_configs_build_with_the_plugin_only(name, heads):
    cfg = shipped_cfg(name, "MODEL.RESNETS.WIDTH_PER_GROUP", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                      "MODEL.FPN.OUT_CHANNELS", 16)
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == heads and not leftover_builtin_modules(model)
    assert any(isinstance(m, ROIAlignPooler) for m in model.modules())
