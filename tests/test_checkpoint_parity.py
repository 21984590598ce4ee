"""A Detectron2 Faster/Mask R-CNN R50-FPN checkpoint loads into the plugin model and detects the same."""
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, StandardROIHeads

from roi_plugin import FastRCNNPredictor, ROIAlignPooler, TwoMLPHead

from helpers import shipped_cfg

pytestmark = pytest.mark.slow  # two R50-FPN models, built, saved, loaded and run


def build(mask: bool, plugin: bool, sampler: str = "gather"):
    name = "mask_rcnn_R_50_FPN_1x_plugin.yaml" if mask else "faster_rcnn_R_50_FPN_1x_gridsample.yaml"
    cfg = shipped_cfg(name)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    # Random init + FrozenBN: unit-variance input keeps the activations of 50 layers sane.
    cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    cfg.MODEL.ROI_PLUGIN.SAMPLER = sampler
    cfg.MODEL.ROI_HEADS.NAME = "PluginROIHeads" if plugin else "StandardROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.NAME = "TwoMLPHead" if plugin else "FastRCNNConvFCHead"
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 2 and cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    return build_model(cfg).eval()


def images():
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(3, 224, 288, generator=g) * 255, "height": 224, "width": 288},
        {"image": torch.rand(3, 256, 200, generator=g) * 255, "height": 256, "width": 200},
    ]


@pytest.mark.parametrize("mask", [False, True], ids=["faster_rcnn", "mask_rcnn"])
def test_detectron2_checkpoint_loads_and_detects_the_same(mask, tmp_path):
    torch.manual_seed(0)
    ref = build(mask, plugin=False)
    assert isinstance(ref.roi_heads, StandardROIHeads) and type(ref.roi_heads) is StandardROIHeads
    assert isinstance(ref.roi_heads.box_pooler, ROIPooler)
    assert isinstance(ref.roi_heads.box_head, FastRCNNConvFCHead)
    with torch.no_grad():  # spread class scores so that ranking and NMS are well defined
        torch.nn.init.normal_(ref.roi_heads.box_predictor.cls_score.weight, std=0.3)
    # Save as Detectron2 would, load through Detectron2's checkpointer.
    DetectionCheckpointer(ref, save_dir=str(tmp_path)).save("model_d2")
    ours = build(mask, plugin=True)
    assert isinstance(ours.roi_heads.box_pooler, ROIAlignPooler)
    assert isinstance(ours.roi_heads.box_head, TwoMLPHead)
    assert isinstance(ours.roi_heads.box_predictor, FastRCNNPredictor)
    state = torch.load(tmp_path / "model_d2.pth", map_location="cpu", weights_only=False)["model"]
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert ours.state_dict().keys() == ref.state_dict().keys()
    DetectionCheckpointer(ours).load(str(tmp_path / "model_d2.pth"))  # the user's path, too

    with torch.no_grad():
        out_ref = ref.inference(images(), do_postprocess=False)
        out_ours = ours.inference(images(), do_postprocess=False)
        final_ref = ref(images())
        final_ours = ours(images())
    for a, b in zip(out_ours, out_ref):
        assert len(a) == len(b) > 10
        assert (a.pred_boxes.area() > 4).float().mean() > 0.5  # real boxes, not collapsed ones
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-3)
        assert torch.equal(a.pred_classes, b.pred_classes)
        if mask:  # mask probabilities before pasting (28x28 per detection)
            torch.testing.assert_close(a.pred_masks, b.pred_masks, rtol=0, atol=1e-3)
    for a, b in zip(final_ours, final_ref):
        a, b = a["instances"], b["instances"]
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-3)
        if mask:  # pasted binary masks: all but a handful of pixels at exactly the 0.5 threshold agree
            assert a.pred_masks.shape == b.pred_masks.shape
            assert (a.pred_masks != b.pred_masks).float().mean() < 1e-4
