"""Whole-model deployment: ONNX (Detectron2's TracingAdapter), TorchScript (scripting_with_instances),
torch.compile and torch.export, each against the eager model. ``tools/export_model.py
--compare-builtin`` runs Detectron2's built-in heads side by side (the same weights: parameter
names are shared); the ``test_docs_*`` tests guard what docs/deployment.md says fails in
Detectron2 for the built-in heads too."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from detectron2.export import scripting_with_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from roi_plugin import ROIAlignPooler, TwoMLPHead
from roi_plugin.export.branches import ExportableBoxBranch, boxes_to_rois
from roi_plugin.export.onnx_batch import export_batched_onnx, pad_batch, run_onnx_batched
from roi_plugin.export.onnx_model import compare, export_model_onnx, run_eager, run_onnx

from helpers import (
    REPO, SCALES, TINY_OVERRIDES, ListCall, load_tool, pyramid, random_boxes, shipped_cfg, tiny_cfg,
)
from timing import compile_counts

pytestmark = pytest.mark.filterwarnings("ignore")
BOX_TOL, SCORE_TOL, MASK_IOU = 1e-3, 1e-3, 0.99


def tiny_model(*overrides):
    """The tiny plugin Mask R-CNN (``tiny_cfg``, 30 proposals), seeded, in eval mode."""
    cfg = tiny_cfg("gather", "MODEL.RPN.POST_NMS_TOPK_TEST", "30", *overrides)
    torch.manual_seed(0)
    return build_model(cfg).eval()


# Detectron2's built-in heads and box head in the same model (the docs' comparisons)
BUILTIN = ("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead")
SCRIPTED_FIELDS = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
                   "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_masks": torch.Tensor}


def images(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]


def assert_same_detections(ref, got, hw):
    r = compare(ref, got, hw)
    assert not r["unmatched"], r
    assert r["box_diff"] <= BOX_TOL and r["score_diff"] <= SCORE_TOL and r["mask_iou_min"] >= MASK_IOU, r
    return r


# ------------------------------------------------------------------------------------ ONNX
@pytest.mark.slow
def test_whole_model_onnx_matches_eager(tmp_path):
    """Mask R-CNN with PluginROIHeads (adaptive sampling, the configs' default) through
    Detectron2's TracingAdapter to ONNX opset 17; onnxruntime on batches of 1, 2 and 3 images of
    sizes the export never saw, one of them without detections, equals the eager model run on
    each image. (The built-in heads: test_export_model_tool --compare-builtin.)"""
    model = tiny_model()
    batches = [images([(96, 128)], 1), images([(128, 96), (112, 144)], 2), images([(80, 160), (144, 112), (96, 96)], 3)]
    # One image without detections: a score threshold between the lowest and the second
    # lowest best score of the images (the threshold is a constant of the graph).
    predictor = model.roi_heads.box_predictor
    predictor.test_score_thresh = 0.0
    best = sorted((float(d["scores"].max()), k) for k, d in enumerate(run_eager(model, sum(batches, []))))
    predictor.test_score_thresh = (best[0][0] + best[1][0]) / 2
    path = str(tmp_path / "model.onnx")
    names = export_model_onnx(model, images([(112, 128)], 0)[0], path)
    assert names == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    graph = onnx.load(path)
    ops = {n.op_type for n in graph.graph.node}
    # plugin: the pooler's deployment path, exact under adaptive sampling (no GridSample cap)
    assert "RoiAlign" in ops and "GridSample" not in ops
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims["image"][0] == 3 and isinstance(dims["image"][1], str) and isinstance(dims["image"][2], str)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    counts = []
    for batch in batches:
        for im, e, o in zip(batch, run_eager(model, batch), run_onnx(sess, names, batch)):
            assert_same_detections(e, o, tuple(im.shape[1:]))
            counts.append(len(e["scores"]))
    assert sorted(counts)[0] == 0 and sorted(counts)[1] > 0

    # The dynamic-batch graph (ONNX Loop around the graph above): one call per batch of images of
    # different sizes, padded into one tensor, the image without detections among them; each
    # image's first num_detections rows equal eager on that image alone, and the single-image
    # graph's output up to float rounding (bit for bit with onnxruntime's optimisations off).
    K = predictor.test_topk_per_image
    batched = export_batched_onnx(path, str(tmp_path / "model_batched.onnx"), K)
    assert {n.op_type for n in batched.graph.node} == {"Shape", "Gather", "Loop"}
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*batched.graph.input, *batched.graph.output]}
    assert dims["images"] == ["batch", 3, "height", "width"] and dims["image_sizes"] == ["batch", 2]
    assert dims["pred_boxes"] == ["batch", K, 4] and dims["pred_masks"] == ["batch", K, 1, 28, 28]
    assert dims["num_detections"] == ["batch"]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
                for p in (path, str(tmp_path / "model_batched.onnx")) for so in (ort.SessionOptions(), plain)]
    mixed = [batches[2][0], next(im for b in batches for im, n in zip(b, run_eager(model, b)) if not len(n["scores"])),
             batches[1][1]]
    for batch in batches + [mixed]:
        eager = run_eager(model, batch)
        got = run_onnx_batched(sessions[2], batch)
        for im, e, b in zip(batch, eager, got):
            assert_same_detections(e, b, tuple(im.shape[1:]))
        for a, b in zip(run_onnx(sessions[1], names, batch), run_onnx_batched(sessions[3], batch)):
            for k in b:
                np.testing.assert_array_equal(a[k], b[k])
    raw = dict(zip([o.name for o in sessions[2].get_outputs()], sessions[2].run(None, dict(zip(("images", "image_sizes"), pad_batch(mixed))))))
    n = raw["num_detections"]
    assert n[1] == 0 and n[0] > 0 and n[2] > 0 and raw["pred_boxes"].shape == (3, K, 4)
    assert (raw["pred_classes"][1] == -1).all() and not raw["scores"][1].any()  # padding rows


@pytest.mark.slow
def test_export_model_tool(tmp_path):
    """tools/export_model.py: config + checkpoint -> model.onnx, --verify (batches 1-3 of other
    sizes and a blank image) and --compare-builtin, writing the results table."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = tiny_model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    results = tmp_path / "deployment.md"
    summaries = load_tool("export_model").main([
        "--config-file", os.path.join(REPO, "configs", "mask_rcnn_R_50_FPN_1x_plugin.yaml"),
        "--checkpoint", str(tmp_path / "tiny.pth"), "--output-dir", str(tmp_path / "out"),
        "--height", "128", "--width", "160", "--verify", "--compare-builtin", "--results", str(results),
        "--sizes", "96x128;112x80,128x128", "--repeats", "1", *TINY_OVERRIDES,
        "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    ])
    assert [s["label"] for s in summaries] == ["PluginROIHeads", "StandardROIHeads (built-in)"]
    assert all(s["ok"] for s in summaries)
    # each image through the single-image graph, then through the batched one; + the blank image
    assert [(r["graph"], r["batch"]) for r in summaries[0]["rows"]] == [
        ("per image", 1), ("batched", 1), ("per image", 2), ("per image", 2), ("batched", 2), ("batched", 2),
        ("per image", 1), ("batched", 1)]
    assert os.path.exists(tmp_path / "out" / "model_batched.onnx")
    assert os.path.exists(tmp_path / "out" / "builtin" / "model_batched.onnx")
    text = results.read_text()
    assert "| PluginROIHeads | batched | 2 | 112x80 |" in text and "StandardROIHeads (built-in) | batched" in text


# ----------------------------------------------------------------------------- TorchScript
def test_box_head_and_predictor_script():
    """TwoMLPHead (output_shape is @torch.jit.unused, as in FastRCNNConvFCHead) and
    FastRCNNPredictor script and equal eager."""
    heads = tiny_model().roi_heads
    x = torch.randn(5, 16, 7, 7)
    assert isinstance(heads.box_head, TwoMLPHead)
    torch.testing.assert_close(torch.jit.script(heads.box_head)(x), heads.box_head(x), rtol=0, atol=0)
    feats = heads.box_head(x)
    for a, b in zip(torch.jit.script(heads.box_predictor)(feats), heads.box_predictor(feats)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_pooler_script_equals_eager(pooler_type):
    """The scripted pooler runs the eager pooler's operator (``torch.ops.roi_plugin.*``): output
    and gradients bit for bit, adaptive sampling included, with long boxes whose adaptive grid
    exceeds the old export cap of 4."""
    pooler = ROIAlignPooler(7, SCALES, 0, pooler_type)
    scripted = torch.jit.script(pooler)
    assert "roi_plugin::roi_align_gather" in str(scripted.inlined_graph)
    feats = [f.requires_grad_() for f in pyramid(2, 160, 128)]
    boxes = [random_boxes(7, 160, 128, 1, max_side=400), torch.tensor([[2.0, 10.0, 150.0, 16.0]])]
    got, ref = scripted(feats, [Boxes(b) for b in boxes]), pooler(feats, boxes)
    assert torch.equal(got, ref)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    for a, b in zip(torch.autograd.grad(got, feats, grad), torch.autograd.grad(ref, feats, grad)):
        assert torch.equal(a, b)
    boxes[0][3, 3] = float("nan")  # the operator's check, inside TorchScript's error
    with pytest.raises(RuntimeError, match=r"boxes of image 0 have non-finite coordinates \(box 3"):
        scripted(feats, [Boxes(b) for b in boxes])


def test_scripting_with_instances():
    """Detectron2's scripting export (``scripting_with_instances``) scripts the Mask R-CNN with
    PluginROIHeads, and the scripted model gives the eager detections."""
    model = tiny_model()
    scripted = scripting_with_instances(model, SCRIPTED_FIELDS)
    assert_scripted_equals_eager(model, scripted, images([(96, 128), (128, 80)], 4))


def assert_scripted_equals_eager(model, scripted, ims):
    """The scripted model's detections (boxes, scores, ROI masks) equal eager ones on ``ims``."""
    for im in ims:
        with torch.no_grad():
            e = model.inference([{"image": im}], do_postprocess=False)[0]
            s = scripted.inference([{"image": im}], do_postprocess=False)[0]
        assert len(e) == len(s) > 0
        torch.testing.assert_close(s.pred_boxes.tensor, e.pred_boxes.tensor, atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(s.scores, e.scores, atol=SCORE_TOL, rtol=0)
        torch.testing.assert_close(s.pred_masks, e.pred_masks, atol=1e-4, rtol=0)


def _family_model(config, heads, *overrides):
    cfg = shipped_cfg(config, "MODEL.ROI_HEADS.NAME", heads, "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *overrides)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_c4_plugin_heads_script():
    """PluginRes5ROIHeads (C4) scripts with ``scripting_with_instances``, and the scripted model
    gives the eager detections and ROI masks."""
    model = _family_model("mask_rcnn_R_50_C4_1x_plugin.yaml", "PluginRes5ROIHeads")
    assert_scripted_equals_eager(model, scripting_with_instances(model, SCRIPTED_FIELDS), images([(128, 160)], 5))


@pytest.mark.slow
def test_docs_cascade_heads_do_not_script_builtin_included():
    """Guards docs/deployment.md: Detectron2's CascadeROIHeads does not script, and neither does
    PluginCascadeROIHeads (the same RuntimeError from ``scripting_with_instances``)."""
    config = "cascade_mask_rcnn_R_50_FPN_1x_plugin.yaml"
    for model in (_family_model(config, "PluginCascadeROIHeads"),
                  _family_model(config, "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead")):
        with pytest.raises(RuntimeError):
            scripting_with_instances(model, SCRIPTED_FIELDS)


# -------------------------------------------------------------------- torch.compile / export
@pytest.mark.slow
def test_compile_pooler_no_recompiles():
    """Issue 15.2: torch.compile of the pooler on 10 different box sets (and ROI counts): no graph
    break, no recompile after the first call, results equal eager bit for bit (the pooler's
    operator is opaque to Dynamo: no Python value from box data reaches a guard). Before, Dynamo
    specialised on Python floats taken from box data and recompiled for every box set (35 graph
    breaks and 12 recompiles over 4 box sets, then the recompile limit)."""
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")
    feats = pyramid(2, 64, 64, channels=4)
    # ROI counts that never equal a map size (Dynamo's duck sizing would tie them)
    calls = [(*feats, random_boxes(5 + 2 * k, 64, 64, 2 * k, max_side=90), random_boxes(6, 64, 64, 2 * k + 1))
             for k in range(10)]
    stats = compile_counts(ListCall(pooler), calls, dynamic=True)
    assert stats["graph_breaks"] == 0, stats["break_reasons"]
    assert stats["frames_per_call"][0] == 1 and stats["recompiles"] == 0, stats
    assert stats["max_diff"] == 0  # the eager pooler's operator, not a twin


@pytest.mark.slow
def test_compile_pooler_training_equals_eager():
    """A compiled training step of the pooler (inductor) runs the eager operators, forward and
    backward: output and feature gradients bit for bit on two box sets, one graph, no recompile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(ListCall(pooler), dynamic=True)
    feats = [f.requires_grad_() for f in pyramid(2, 64, 64, channels=4)]
    # boxes of side 112 and 224 px lie on level boundaries (P2/P3, P3/P4): routed inside the
    # operator, as eagerly
    on_boundary = torch.tensor([[3.0, 5.0, 115.0, 117.0], [-80.0, -90.0, 144.0, 134.0]])
    for k in range(2):
        boxes = [torch.cat([random_boxes(5 + 2 * k, 64, 64, 2 * k, max_side=90), on_boundary]),
                 random_boxes(6, 64, 64, 2 * k + 1)]
        got, ref = compiled(*feats, *boxes), pooler(feats, boxes)
        assert torch.equal(got, ref)
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(k))
        for a, b in zip(torch.autograd.grad(got, feats, grad), torch.autograd.grad(ref, feats, grad)):
            assert torch.equal(a, b)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    # the box checks run inside the operator: the eager error, from the compiled graph
    boxes[1][2] = torch.tensor([40.0, 9.0, 20.0, 30.0])
    with pytest.raises(ValueError, match=r"boxes of image 1 are inverted .*box 2: \[40.0, 9.0, 20.0, 30.0\]"):
        compiled(*feats, *boxes)


@pytest.mark.slow
def test_compile_roi_heads_matches_eager():
    """torch.compile of model.roi_heads (Detectron2's inference code around the plugin's
    modules) gives the eager detections; graph breaks are Detectron2's (Instances, per-image
    loops), counted in results/deployment.md."""
    model = tiny_model()
    ims = images([(96, 128)], 5)
    with torch.no_grad():
        imlist = model.preprocess_image([{"image": im} for im in ims])
        features = model.backbone(imlist.tensor)
        proposals, _ = model.proposal_generator(imlist, features, None)
        ref, _ = model.roi_heads(imlist, features, proposals, None)
        got, _ = torch.compile(model.roi_heads)(imlist, features, proposals, None)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g.pred_boxes.tensor, r.pred_boxes.tensor, atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(g.scores, r.scores, atol=SCORE_TOL, rtol=0)
        torch.testing.assert_close(g.pred_masks, r.pred_masks, atol=1e-4, rtol=0)


def test_torch_export_box_branch():
    """torch.export of the ROI heads' box branch (pooler + TwoMLPHead + predictor) with symbolic
    image and ROI counts, adaptive sampling: the pooler's operator in the graph, equals eager."""
    heads = tiny_model().roi_heads
    branch = ExportableBoxBranch(heads)
    feats = pyramid(2, 96, 128, channels=16)
    rois = boxes_to_rois([random_boxes(5, 96, 128, 0), random_boxes(7, 96, 128, 1)])
    images_dim, rois_dim = torch.export.Dim("images"), torch.export.Dim("rois")
    program = torch.export.export(branch, (*feats, rois), dynamic_shapes=(tuple([{0: images_dim}] * 4 + [{0: rois_dim}]),))
    assert "roi_plugin.roi_align_gather.default" in {str(n.target) for n in program.graph.nodes}
    feats = pyramid(3, 96, 128, channels=16, seed=3)
    boxes = [random_boxes(n, 96, 128, 20 + n, max_side=200) for n in (4, 0, 9)]
    with torch.no_grad():
        ref = heads.box_predictor(heads.box_head(heads.box_pooler(feats, boxes)))
    for a, b in zip(program.module()(*feats, boxes_to_rois(boxes)), ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def _roi_heads_inputs(model):
    """The tiny model's features and proposals for one 96 x 128 image, with the image list."""
    with torch.no_grad():
        imlist = model.preprocess_image([{"image": im} for im in images([(96, 128)], 5)])
        features = model.backbone(imlist.tensor)
        proposals, _ = model.proposal_generator(imlist, features, None)
    return imlist, features, proposals


def _exported_programs_take_empty_inputs() -> bool:
    """Whether this torch's exported programs accept 0 along a dynamic axis. torch 2.4's input
    check refuses it for any module (``Expected input x.shape[0] = 0 to be of the form s0``),
    although the axis's range starts at 0; later releases accept it."""
    program = torch.export.export(nn.Linear(2, 1), (torch.zeros(3, 2),), dynamic_shapes=({0: torch.export.Dim("n")},))
    try:
        program.module()(torch.zeros(0, 2))
    except RuntimeError as e:
        if "to be of the form" in str(e):
            return False
        raise
    return True


def test_torch_export_mask_branch():
    """torch.export of the mask branch (ExportableMaskBranch: pooler + mask head on the
    detections' boxes) with a dynamic detection count, adaptive sampling: equals eager, as the
    box branch does (test_torch_export_box_branch); the mask head's parameters are the branch's.
    Zero detections too, where torch's exported programs take an empty dynamic axis (not
    torch 2.4's: there the program refuses it with torch's own error, for any module)."""
    from roi_plugin.export.branches import ExportableMaskBranch

    model = tiny_model()
    heads = model.roi_heads
    _, features, _ = _roi_heads_inputs(model)
    branch = ExportableMaskBranch(heads).eval()
    assert {id(p) for p in branch.parameters()} == {id(p) for p in heads.mask_head.parameters()}
    maps = [features[k] for k in heads.mask_in_features]
    rois = boxes_to_rois([random_boxes(6, 96, 128, 0)])
    program = torch.export.export(branch, (*maps, rois), dynamic_shapes=(tuple([None] * len(maps) + [{0: torch.export.Dim("rois")}]),))
    empty_ok = _exported_programs_take_empty_inputs()
    for n in (3, 11, 0):
        boxes = random_boxes(n, 96, 128, n + 7, max_side=200)
        with torch.no_grad():
            ref = heads.mask_head.layers(heads.mask_pooler(maps, [Boxes(boxes)]))
        if n == 0 and not empty_ok:
            with pytest.raises(RuntimeError, match="to be of the form"):
                program.module()(*maps, boxes_to_rois([boxes]))
            continue
        out = program.module()(*maps, boxes_to_rois([boxes]))
        assert out.shape == ref.shape == (n, 3, 28, 28)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_torch_export_roi_heads_stops_in_detectron2_postprocessing():
    """ROIHeadsTensors (features + proposal boxes + image in, boxes/scores/classes/masks out)
    equals model.roi_heads eagerly; torch.export of it (non-strict, proposals dynamic; it fails
    with static shapes too) stops in Detectron2's post-processing, at
    fast_rcnn_inference_single_image's data-dependent `if not valid_mask.all()`, not in the
    plugin's modules (docs/deployment.md)."""
    import traceback

    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    from roi_plugin.export.branches import ROIHeadsTensors

    model = tiny_model()
    heads = model.roi_heads
    imlist, features, proposals = _roi_heads_inputs(model)
    with torch.no_grad():
        ref = heads(imlist, features, proposals, None)[0][0]
        wrapper = ROIHeadsTensors(heads).eval()
        args = ([features[k] for k in wrapper.in_features], proposals[0].proposal_boxes.tensor, imlist.tensor[0])
        got = wrapper(*args)
    assert len(ref) > 0
    for a, b in zip(got, (ref.pred_boxes.tensor, ref.scores, ref.pred_classes, ref.pred_masks)):
        assert torch.equal(a, b)
    dynamic = ([None] * len(args[0]), {0: torch.export.Dim("proposals")}, None)
    with pytest.raises(GuardOnDataDependentSymNode) as info:
        torch.export.export(wrapper, args, dynamic_shapes=dynamic, strict=False)
    frames = [f for f in traceback.extract_tb(info.value.__traceback__) if "detectron2" in f.filename]
    assert frames[-1].filename.endswith("roi_heads/fast_rcnn.py") and "valid_mask.all()" in frames[-1].line


# A tiny keypoint R-CNN (random init, 5 keypoints, no masks)
KEYPOINT = ("MODEL.MASK_ON", "False", "MODEL.KEYPOINT_ON", "True", "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "5",
            "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(8, 8)")


def test_keypoint_rcnn_trace_matches_eager():
    """The keypoint R-CNN with the plugin heads through Detectron2's TracingAdapter +
    torch.jit.trace gives the eager detections, keypoints and heatmaps on images of other sizes."""
    from roi_plugin.export.onnx_model import trace_adapter

    model = tiny_model(*KEYPOINT)
    example = images([(112, 128)], 0)[0]
    adapter = trace_adapter(model, example)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (example,))
        for im in images([(80, 160), (144, 112)], 3):
            e = model.inference([{"image": im}], do_postprocess=False)[0]
            t = adapter.outputs_schema(traced(im))[0]
            assert len(e) == len(t) > 0 and torch.equal(e.pred_classes, t.pred_classes)
            torch.testing.assert_close(t.pred_boxes.tensor, e.pred_boxes.tensor, atol=BOX_TOL, rtol=0)
            torch.testing.assert_close(t.scores, e.scores, atol=SCORE_TOL, rtol=0)
            # x, y in pixels; the keypoint score is a heatmap logit (large for a random init)
            torch.testing.assert_close(t.pred_keypoints[..., :2], e.pred_keypoints[..., :2], atol=BOX_TOL, rtol=0)
            torch.testing.assert_close(t.pred_keypoints[..., 2], e.pred_keypoints[..., 2], atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(t.pred_keypoint_heatmaps, e.pred_keypoint_heatmaps, atol=1e-3, rtol=1e-4)


def test_docs_keypoint_rcnn_onnx_fails_in_detectron2_builtin_heads_included(tmp_path):
    """Guards docs/deployment.md: the keypoint R-CNN's ONNX export fails, for the plugin heads
    and for the built-in heads alike, in Detectron2's keypoint post-processing
    (heatmaps_to_keypoints, @script_if_tracing: aten::index on a Resize output of unknown rank),
    not in the plugin's modules. So there is no keypoint ONNX graph, single or batched."""
    from torch.onnx.errors import SymbolicValueError

    example = images([(112, 128)], 0)[0]
    for model in (tiny_model(*KEYPOINT), tiny_model(*KEYPOINT, *BUILTIN)):
        with pytest.raises(SymbolicValueError, match="aten::index") as info:
            export_model_onnx(model, example, str(tmp_path / "keypoint.onnx"))
        assert "keypoints.py" in str(info.value) and "roi_map" in str(info.value)
