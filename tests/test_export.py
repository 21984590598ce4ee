"""Export: the pooler and the box branch to ONNX (opset 17) and TorchScript (trace), against eager PyTorch.

``test_docs_detectron2_roipooler_onnx_freezes_the_image_count`` guards what docs/deployment.md
says Detectron2's own ``ROIPooler`` gives under the same exporter.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from roi_plugin import ROIAlignPooler
from roi_plugin.export.branches import ExportableBoxBranch, ExportablePooler, boxes_to_rois, export_onnx

from helpers import REPO, SCALES, TINY_OVERRIDES, TOL, ListCall, load_tool, pyramid, random_boxes, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def run_onnx(path, feats, rois):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {f"feature{i}": f.numpy() for i, f in enumerate(feats)}
    feed["rois"] = rois.numpy()
    return sess.run(None, feed)


# (batch, height, width, ROIs per image): the export uses the first, the graph is run on the
# others (other ROI counts, image counts and map sizes, one image without ROIs).
EXPORT_SHAPE = (2, 128, 96, [5, 3])
RUN_SHAPES = [(3, 160, 128, [4, 0, 9]), (1, 64, 64, [11])]


@pytest.mark.parametrize("method", ["roi_align", "grid_sample"])
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_pooler_onnx_matches_eager(tmp_path, pooler_type, sampling_ratio, method):
    pooler = ROIAlignPooler(7, SCALES, sampling_ratio, pooler_type)
    # grid_sample: max_grid 16 >= every adaptive grid of these boxes (<= 161 px at P2 = 41 px / 7
    # bins); roi_align needs no cap
    module = ExportablePooler(pooler, max_grid=16, method=method)
    b, h, w, counts = EXPORT_SHAPE
    path = str(tmp_path / "pooler.onnx")
    export_onnx(
        module,
        pyramid(b, h, w),
        boxes_to_rois([random_boxes(n, h, w, i) for i, n in enumerate(counts)]),
        path,
    )
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    if method == "grid_sample":
        assert "GridSample" in ops and "NonZero" not in ops and "RoiAlign" not in ops
    else:
        assert "RoiAlign" in ops and "NonZero" not in ops and "GridSample" not in ops
    for seed, (b, h, w, counts) in enumerate(RUN_SHAPES, 1):
        feats = pyramid(b, h, w, seed=seed)
        boxes = [random_boxes(n, h, w, 10 * seed + i) for i, n in enumerate(counts)]
        with torch.no_grad():
            eager = pooler(feats, boxes)
        (got,) = run_onnx(path, feats, boxes_to_rois(boxes))
        assert got.shape == tuple(eager.shape)
        np.testing.assert_allclose(got, eager.numpy(), atol=TOL, rtol=0)


def test_adaptive_export_caps_the_grid():
    """Under adaptive sampling, ROIs needing more than ``max_grid`` samples per bin get
    ``max_grid``: such an ROI pools like a fixed ``sampling_ratio=max_grid`` pooler."""
    feats = pyramid(1, 128, 128)
    long_box = [torch.tensor([[2.0, 10.0, 120.0, 16.0]])]  # P2, 118/4 px over 7 bins -> 5 samples
    adaptive = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")
    fixed3 = ROIAlignPooler(7, SCALES, 3, "ROIAlignV2")
    rois = boxes_to_rois(long_box)
    capped = ExportablePooler(adaptive, max_grid=3, method="grid_sample")(*feats, rois)
    exact = ExportablePooler(adaptive, max_grid=5, method="grid_sample")(*feats, rois)
    torch.testing.assert_close(exact, adaptive(feats, long_box), atol=TOL, rtol=0)
    # the roi_align path has no cap
    torch.testing.assert_close(ExportablePooler(adaptive)(*feats, rois), exact, atol=TOL, rtol=0)
    # y extent 6/4 px -> 1 sample per bin (below the cap), x capped at 3: equals neither
    # the exact result nor a fixed ratio of 3 on both axes
    assert (capped - exact).abs().max() > 1e-3
    assert (capped - fixed3(feats, long_box)).abs().max() > 1e-3
    square = [torch.tensor([[2.0, 2.0, 120.0, 120.0]])]  # P3: 118/8 px over 7 bins -> 3 samples
    torch.testing.assert_close(
        ExportablePooler(adaptive, max_grid=2, method="grid_sample")(*feats, boxes_to_rois(square)),
        ROIAlignPooler(7, SCALES, 2, "ROIAlignV2")(feats, square),
        atol=TOL,
        rtol=0,
    )


@pytest.mark.parametrize("sampler", ["gather", "grid_sample"])
def test_pooler_trace_matches_eager(sampler):
    """``torch.jit.trace`` of the pooler itself (box lists) and of the rois wrapper records the
    pooler's operator: other box sets, ROI and image counts give the eager output bit for bit."""
    pooler = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2", sampler=sampler)
    b, h, w, counts = EXPORT_SHAPE
    feats = pyramid(b, h, w)
    boxes = [random_boxes(n, h, w, i) for i, n in enumerate(counts)]

    traced_list = torch.jit.trace(ListCall(pooler), (*feats, *boxes), check_trace=False)
    traced_rois = torch.jit.trace(ExportablePooler(pooler), (*feats, boxes_to_rois(boxes)), check_trace=False)
    feats2 = pyramid(b, 160, 128, seed=3)
    boxes2 = [random_boxes(9, 160, 128, 7), random_boxes(0, 160, 128, 8)]
    assert f"roi_plugin::roi_align_{sampler}" in str(traced_list.pooler.inlined_graph)
    eager = pooler(feats2, boxes2)
    assert torch.equal(traced_list(*feats2, *boxes2), eager)
    assert torch.equal(traced_rois(*feats2, boxes_to_rois(boxes2)), eager)
    feats3 = pyramid(3, 64, 64, seed=4)
    boxes3 = [random_boxes(n, 64, 64, 20 + n) for n in (2, 6, 1)]
    assert torch.equal(traced_rois(*feats3, boxes_to_rois(boxes3)), pooler(feats3, boxes3))


def test_pooler_torch_export_dynamic_shapes():
    """``torch.export`` (the graph capture behind ``torch.compile``/dynamo-ONNX) with symbolic
    numbers of images and ROIs: the graph holds the pooler's operator and gives the eager output
    bit for bit."""
    pooler = ROIAlignPooler(7, SCALES, 2, "ROIAlignV2")
    b, h, w, counts = EXPORT_SHAPE
    feats = pyramid(b, h, w)
    rois = boxes_to_rois([random_boxes(n, h, w, i) for i, n in enumerate(counts)])
    images, num_rois = torch.export.Dim("images"), torch.export.Dim("rois")
    program = torch.export.export(
        ExportablePooler(pooler), (*feats, rois), dynamic_shapes=(tuple([{0: images}] * 4 + [{0: num_rois}]),)
    )
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "roi_plugin.roi_align_gather.default" in targets and not any("roi_align.default" == t for t in targets)
    feats = pyramid(3, h, w, seed=5)  # map sizes were not declared dynamic: other counts only
    boxes = [random_boxes(n, h, w, 30 + i) for i, n in enumerate([4, 0, 9])]
    assert torch.equal(program.module()(*feats, boxes_to_rois(boxes)), pooler(feats, boxes))


def test_box_branch_onnx_matches_eager(tmp_path):
    """Pooler + TwoMLPHead + FastRCNNPredictor of PluginROIHeads (sampling ratio 2: exact)."""
    cfg = tiny_cfg("gather", "MODEL.MASK_ON", "False")
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    torch.manual_seed(0)
    heads = build_model(cfg).roi_heads.eval()
    branch = ExportableBoxBranch(heads)
    assert branch.in_features == ["p2", "p3", "p4", "p5"]
    b, h, w, counts = EXPORT_SHAPE
    path = str(tmp_path / "box_branch.onnx")
    feats = pyramid(b, h, w, channels=16)
    export_onnx(
        branch,
        feats,
        boxes_to_rois([random_boxes(n, h, w, i) for i, n in enumerate(counts)]),
        path,
        output_names=("scores", "deltas"),
    )
    for seed, (b, h, w, counts) in enumerate(RUN_SHAPES, 1):
        feats = pyramid(b, h, w, channels=16, seed=seed)
        boxes = [random_boxes(n, h, w, 10 * seed + i) for i, n in enumerate(counts)]
        with torch.no_grad():
            scores, deltas = heads.box_predictor(heads.box_head(heads.box_pooler(feats, boxes)))
        got_scores, got_deltas = run_onnx(path, feats, boxes_to_rois(boxes))
        assert got_scores.shape == (sum(counts), 4) and got_deltas.shape == (sum(counts), 12)
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(got_deltas, deltas.numpy(), atol=TOL, rtol=0)


def _run_export_tool(tmp_path, sampling_ratio, *extra):
    """tools/export_onnx.py --verify on a saved tiny checkpoint; returns (tool output, model)."""
    from detectron2.checkpoint import DetectionCheckpointer

    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_cfg("gather", "MODEL.MASK_ON", "False")
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = sampling_ratio
    torch.manual_seed(1)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    out = load_tool("export_onnx").main(
        [
            "--config-file", os.path.join(REPO, "configs", "mask_rcnn_R_50_FPN_1x_plugin.yaml"),
            "--checkpoint", str(tmp_path / "tiny.pth"), "--output-dir", str(tmp_path / "onnx"),
            "--height", "128", "--width", "96", "--num-rois", "6", "--verify", *extra,
            *TINY_OVERRIDES, "MODEL.MASK_ON", "False", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", str(sampling_ratio),
        ]
    )
    return out, model


def test_export_tool(tmp_path):
    """tools/export_onnx.py on a config + checkpoint, with its onnxruntime check."""
    out, model = _run_export_tool(tmp_path, 2)
    assert os.path.isfile(out["box_branch"]) and os.path.isfile(out["box_pooler"])
    for name in ("box_branch", "box_pooler"):
        assert out[f"{name}_max_rel_diff"] <= TOL
        assert out[f"{name}_max_rel_diff_eager"] <= TOL
    # the loaded checkpoint is the one exported: the fc1 weight is in the graph
    graph = onnx.load(out["box_branch"])
    fc1 = model.roi_heads.box_head.fc1.weight.detach().numpy()
    inits = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer]
    assert any(a.shape == fc1.shape and np.array_equal(a, fc1) for a in inits) or any(
        a.shape == fc1.T.shape and np.array_equal(a, fc1.T) for a in inits
    )


@pytest.mark.slow
def test_export_tool_verifies_against_eager(tmp_path, capsys):
    """Issue 15.1: --verify compares onnxruntime with the eager model, not with the static path
    the graph was traced from. Under adaptive sampling (the FPN configs' default) the default
    export (RoiAlign) is exact; the GridSample export capped at --max-grid 1 differs from eager
    (not from its own static path) and the tool must exit non-zero, printing the difference."""
    out, _ = _run_export_tool(tmp_path / "a", 0)
    for name in ("box_branch", "box_pooler"):
        assert out[f"{name}_max_rel_diff_eager"] <= TOL
    with pytest.raises(SystemExit) as exc:
        _run_export_tool(tmp_path / "b", 0, "--pooler-export", "grid_sample", "--max-grid", "1")
    assert "differs from eager PyTorch" in str(exc.value) and "box_pooler" in str(exc.value)
    printed = capsys.readouterr().out
    assert "EXCEEDS" in printed and "note: POOLER_SAMPLING_RATIO is 0" in printed


# --------------------------------------------------------------------- Detectron2's ROIPooler
class _D2ListCall(torch.nn.Module):
    """Detectron2's ROIPooler takes one Boxes per image: one graph input per image."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, f0, f1, f2, f3, b0, b1):
        return self.pooler([f0, f1, f2, f3], [Boxes(b0), Boxes(b1)])


@pytest.mark.parametrize(
    "pooler_type,mode", [("ROIAlignV2", b"half_pixel"), ("ROIAlign", b"output_half_pixel")]
)
def test_docs_detectron2_roipooler_onnx_freezes_the_image_count(tmp_path, pooler_type, mode):
    """Guards docs/deployment.md: Detectron2's ROIPooler exports with the same exporter (opset
    17). Each level is an ONNX ``RoiAlign`` (aligned -> ``half_pixel``, legacy ->
    ``output_half_pixel``), the level rule is in the graph (Sqrt/Log/Floor/Clip + NonZero +
    ScatterND), ROI counts per image are dynamic and onnxruntime's RoiAlign equals torchvision's
    kernel; but the number of images is frozen: one boxes input per image of the example batch.
    On the same edge boxes the plugin's pooler equals Detectron2's eagerly."""
    pooler = ROIPooler(7, SCALES, 0, pooler_type)
    b, h, w, counts = EXPORT_SHAPE
    feats = pyramid(b, h, w)
    boxes = [random_boxes(n, h, w, i) for i, n in enumerate(counts)]
    names = [f"feature{i}" for i in range(4)] + ["boxes0", "boxes1"]
    dynamic = {f"feature{i}": {2: f"h{i}", 3: f"w{i}"} for i in range(4)}
    dynamic.update({"boxes0": {0: "n0"}, "boxes1": {0: "n1"}, "pooled": {0: "rois"}})
    path = str(tmp_path / "d2_pooler.onnx")
    torch.onnx.export(
        _D2ListCall(pooler),
        (*feats, *boxes),
        path,
        input_names=names,
        output_names=["pooled"],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(path)
    roi_aligns = [n for n in graph.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 4
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in roi_aligns[0].attribute}
    assert attrs["coordinate_transformation_mode"] == mode and attrs["sampling_ratio"] == 0
    ops = {n.op_type for n in graph.graph.node}
    assert {"NonZero", "ScatterND", "Log", "Floor"} <= ops  # level routing inside the graph
    assert [i.name for i in graph.graph.input] == names  # one boxes input per image: batch frozen
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    edge = torch.tensor(
        [
            [3.0, 3, 3, 3],
            [10, 10, 10.5, 40],
            [-50, -50, -20, -20],
            [-1000, -1000, 1000, 1000],
            [0, 0, 160, 128],
            [-3, -3, 1, 1],
            [55.99, 10, 112.01, 66],
        ]
    )
    for seed, (h, w, per_image) in enumerate(
        [(160, 128, [random_boxes(4, 160, 128, 5), edge]), (64, 64, [random_boxes(11, 64, 64, 6), edge[:0]])],
        1,
    ):
        feats = pyramid(2, h, w, seed=seed)
        with torch.no_grad():
            eager = pooler(feats, [Boxes(t) for t in per_image])
            ours = ROIAlignPooler(7, SCALES, 0, pooler_type)(feats, per_image)
        feed = {f"feature{i}": f.numpy() for i, f in enumerate(feats)}
        feed.update({"boxes0": per_image[0].numpy(), "boxes1": per_image[1].numpy()})
        (got,) = sess.run(None, feed)
        np.testing.assert_allclose(got, eager.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours.numpy(), eager.numpy(), atol=TOL, rtol=0)
