"""Issue 10.2/10.3 (CI subset of tools/model_zoo_check.py): one model-zoo config per ROI-heads
family, with the README's swap and both samplers: builds with no Detectron2 ROIPooler (or plain
FastRCNNOutputLayers) left, loads the built-in model's weights strictly and gives its detections,
trains 2 iterations with finite losses, infers. Backbones narrowed (``tiny``) for CPU."""
import pytest

from checking import check_config

pytestmark = pytest.mark.slow  # per family: the built-in and the plugin model, trained and run, both samplers

FAMILIES = {
    "fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "c4": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "dc5": "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "keypoint": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "panoptic": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
}
PLUGIN = {"fpn": "PluginROIHeads", "c4": "PluginRes5ROIHeads", "dc5": "PluginROIHeads",
          "cascade": "PluginCascadeROIHeads", "keypoint": "PluginROIHeads", "panoptic": "PluginROIHeads"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_zoo_family(family):
    row = check_config(FAMILIES[family], tiny=True)
    assert row["plugin"] == PLUGIN[family]
    for sampler in ("gather", "grid_sample"):
        assert row[sampler] == {"build": "ok", "parity": "ok", "train": "ok", "infer": "ok"}, (sampler, row[sampler])
