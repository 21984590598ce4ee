"""Rotated export: the exportable rotated IoU / NMS (``layers/rotated_ops.py``, ``*_static``) and
their ONNX form (``export/rotated_nms.py``) against the operators and references we did not
write (torchvision's ``box_iou`` / ``nms`` on axis-aligned boxes, a brute-force greedy NMS,
Detectron2's compiled kernels where they load), and the whole rotated detector (RRPN +
PluginRROIHeads) through ONNX and TorchScript against eager; ``tools/export_model.py`` on it.

The rotated pooler's ONNX path: ``test_rotated_pooler.py::test_onnx_export_matches_eager``.
"""
import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import box_iou, nms

import detectron2.layers
from detectron2.layers.rotated_boxes import pairwise_iou_rotated
from detectron2.modeling import build_model

from roi_plugin.export.onnx_model import compare, export_model_onnx, run_eager, run_onnx
from roi_plugin.export.rotated_nms import (
    DOMAIN, _used_functions, export_nms_rotated, inline_rotated_functions, rotated_symbolics,
)
from roi_plugin.export.torchscript_model import export_torchscript, run_torchscript
from roi_plugin.layers.rotated_ops import box_iou_rotated, box_iou_rotated_static, nms_rotated, nms_rotated_static

from helpers import REPO, detectron2_compiled, load_tool, shipped_cfg

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def rotated_boxes(n, seed, spread=60.0):
    """n float32 rotated boxes, many overlapping: random ones and jittered copies of them."""
    g = torch.Generator().manual_seed(seed)
    base = torch.cat([torch.rand(n // 2, 2, generator=g) * spread, torch.rand(n // 2, 2, generator=g) * 30 + 0.5,
                      torch.rand(n // 2, 1, generator=g) * 720 - 360], 1)
    jitter = base + torch.randn(n // 2, 5, generator=g) * torch.tensor([1, 1, 1, 1, 5.0])
    return torch.cat([base, jitter])


def as_rotated(xyxy):
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2], torch.zeros(len(xyxy), 1)], 1)


def xyxy_boxes(n, seed):
    """Upright boxes on a 1/8 px grid (exact in float32)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 8 * 60, (n, 2), generator=g).float() / 8
    return torch.cat([xy, xy + torch.randint(8, 8 * 40, (n, 2), generator=g).float() / 8], 1)


DEGENERATE = torch.tensor([[5, 5, 0, 4, 0], [5, 5, 4, 0, 30], [5, 5, 1e-8, 1e-8, 0], [5, 5, 4, 4, 0],
                           [5, 5, -4, -4, 0], [5, 5, -4, 4, 0], [9, 9, 1, 1, 0], [500, 500, 3, 3, 45]])


def greedy_reference(boxes, scores, thr, stable=False):
    """The greedy loop of Detectron2's nms_rotated_cpu.cpp on the operator's float32 IoU matrix,
    visiting boxes by ``scores.sort(descending=True)`` (``stable``: ties by index)."""
    order = scores.sort(dim=0, descending=True, stable=stable)[1]
    iou = box_iou_rotated(boxes, boxes)
    suppressed, keep = torch.zeros(len(boxes), dtype=torch.bool), []
    for a, i in enumerate(order.tolist()):
        if not suppressed[i]:
            keep.append(i)
            for j in order[a + 1:].tolist():
                suppressed[j] |= bool(iou[i, j] >= thr)
    return torch.tensor(keep, dtype=torch.int64)


# --------------------------------------------------------------- the exportable forms in PyTorch
def test_static_iou_equals_operator():
    """box_iou_rotated_static: the operator's values bit for bit (random, overlapping, degenerate
    and far-apart boxes, empty sets), and torchvision's box_iou on axis-aligned boxes."""
    a, b = rotated_boxes(80, 0), rotated_boxes(60, 1)
    for x, y in [(a, b), (a, a), (DEGENERATE, DEGENERATE), (a, DEGENERATE), (a[:0], b), (a, b[:0])]:
        assert torch.equal(box_iou_rotated_static(x, y), box_iou_rotated(x, y))
    assert (box_iou_rotated_static(a, b) > 0.3).sum() > 20
    up1, up2 = xyxy_boxes(50, 2), xyxy_boxes(40, 3)
    torch.testing.assert_close(box_iou_rotated_static(as_rotated(up1), as_rotated(up2)), box_iou(up1, up2),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.5])
def test_static_nms_equals_operator(thr):
    """nms_rotated_static: the operator's kept indices (order included), with many score ties
    (both visit boxes by the same sort call) and the brute-force greedy loop's."""
    boxes = rotated_boxes(200, 4)
    scores = (torch.rand(200, generator=torch.Generator().manual_seed(5)) * 20).round() / 20  # many ties
    keep = nms_rotated_static(boxes, scores, thr)
    assert torch.equal(keep, nms_rotated(boxes, scores, thr))
    assert torch.equal(keep, greedy_reference(boxes, scores, thr))
    if 0 < thr < 1:
        assert 10 < len(keep) < 200


def test_static_nms_edge_cases_and_torchvision():
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0], [0.25, 0.5, 0.5, 1.0, 0.0], [9, 9, 1, 1, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_rotated_static(boxes, scores, 0.5).tolist() == [0, 2]  # IoU == threshold suppresses
    assert nms_rotated_static(boxes, scores, 0.5001).tolist() == [0, 1, 2]
    assert nms_rotated_static(boxes, scores, 0.0).tolist() == [0]
    assert nms_rotated_static(boxes[:0], scores[:0], 0.5).shape == (0,)
    assert nms_rotated_static(boxes[:1], scores[:1], 0.5).tolist() == [0]
    assert nms_rotated_static(boxes.double(), scores.double(), 0.5).tolist() == [0, 2]
    up = xyxy_boxes(300, 6)
    s = torch.rand(300, generator=torch.Generator().manual_seed(7))
    for thr in (0.3, 0.5, 0.8):  # torchvision suppresses IoU > thr: equal off exact ties
        assert torch.equal(nms_rotated_static(as_rotated(up), s, thr), nms(up, s, thr))


@pytest.mark.skipif(not detectron2_compiled(), reason="needs Detectron2's compiled _C (a build from source)")
def test_static_forms_equal_detectron2_compiled_kernels():
    """Against Detectron2's own float32 kernels (torch.ops.detectron2 is _C's when it loads):
    IoU to float32 rounding, and the same kept indices where no IoU is within 1e-4 of the
    threshold."""
    boxes = rotated_boxes(120, 8)
    scores = torch.rand(120, generator=torch.Generator().manual_seed(9))
    iou = torch.ops.detectron2.box_iou_rotated(boxes, boxes)
    torch.testing.assert_close(box_iou_rotated_static(boxes, boxes), iou, atol=1e-5, rtol=0)
    for thr in (0.3, 0.5, 0.7):
        assert ((iou - thr).abs() > 1e-4).all()
        assert torch.equal(nms_rotated_static(boxes, scores, thr), torch.ops.detectron2.nms_rotated(boxes, scores, thr))


# -------------------------------------------------------------------------------- ONNX forms
@pytest.fixture(scope="module")
def nms_session(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("nms") / "nms_rotated.onnx")
    model = export_nms_rotated(path)
    onnx.checker.check_model(model, full_check=True)
    assert {"TopK", "NonZero", "Loop"} <= {n.op_type for n in model.graph.node}
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run_nms(session, boxes, scores, thr):
    (keep,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(),
                                 "iou_threshold": np.array(thr, np.float32)})
    return keep


@pytest.mark.parametrize("n", [0, 1, 2, 300])
def test_onnx_nms_equals_operator(nms_session, n):
    """The NMS graph in onnxruntime, on box counts the export did not use (none, one, no
    candidate pair, hundreds): the operator's kept indices, for every threshold."""
    boxes = rotated_boxes(300, 10)[:n] if n != 2 else torch.tensor([[0.0, 0, 2, 2, 0], [50, 50, 2, 2, 30]])
    scores = torch.rand(len(boxes), generator=torch.Generator().manual_seed(11))  # no ties
    for thr in (0.0, 0.3, 0.5, 0.7, 1.5):
        assert np.array_equal(run_nms(nms_session, boxes, scores, thr), nms_rotated(boxes, scores, thr).numpy()), thr
    up = xyxy_boxes(200, 12)
    s = torch.rand(200, generator=torch.Generator().manual_seed(13))
    assert np.array_equal(run_nms(nms_session, as_rotated(up), s, 0.5), nms(up, s, 0.5).numpy())


def test_onnx_nms_breaks_score_ties_by_index(nms_session):
    """ONNX TopK orders equal scores by index (a stable sort), PyTorch's CPU sort promises no
    order: on tied scores the graph is the greedy loop over the stable order."""
    boxes = rotated_boxes(200, 14)
    scores = (torch.rand(200, generator=torch.Generator().manual_seed(15)) * 10).round() / 10
    differ = 0
    for thr in (0.3, 0.7):
        stable = greedy_reference(boxes, scores, thr, stable=True)
        assert np.array_equal(run_nms(nms_session, boxes, scores, thr), stable)
        differ += not torch.equal(stable, nms_rotated(boxes, scores, thr))
    assert differ  # the case shows the difference: there the operator keeps other indices


class _Detectron2Rotated(torch.nn.Module):
    """Detectron2's API for both operators: pairwise_iou_rotated and batched_nms_rotated."""

    def forward(self, boxes1, boxes2, scores, classes):
        return pairwise_iou_rotated(boxes1, boxes2), detectron2.layers.batched_nms_rotated(boxes1, scores, classes, 0.5)


def test_symbolics_export_detectron2_rotated_ops():
    """torch.onnx.export under rotated_symbolics writes Detectron2's two operators as roi_plugin
    functions; inlined, the graph holds standard operators only, and onnxruntime gives the
    eager IoU (float64 rounding) and kept indices, on other box counts than the export's."""
    a, b = rotated_boxes(20, 16), rotated_boxes(10, 17)
    args = (a, b, torch.rand(20), torch.randint(0, 3, (20,)))
    buf = io.BytesIO()
    with torch.no_grad(), rotated_symbolics():
        torch.onnx.export(_Detectron2Rotated(), args, buf, input_names=["a", "b", "scores", "classes"],
                          output_names=["iou", "keep"], opset_version=17, dynamo=False, custom_opsets={DOMAIN: 1},
                          dynamic_axes={"a": {0: "n"}, "b": {0: "m"}, "scores": {0: "n"}, "classes": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    assert _used_functions(model.graph) == {"NMSRotated", "BoxIoURotated"}  # calls (NMS inside an If) before inlining
    model = inline_rotated_functions(model)
    onnx.checker.check_model(model, full_check=True)
    domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
    assert domains <= {"", "ai.onnx"} and not model.functions
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(18)
    for n, m in [(120, 70), (1, 5), (0, 3)]:
        a, b = rotated_boxes(120, 19)[:n], rotated_boxes(70, 20)[:m]
        scores, classes = torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g)
        iou, keep = sess.run(None, {"a": a.numpy(), "b": b.numpy(), "scores": scores.numpy(), "classes": classes.numpy()})
        ref_iou, ref_keep = _Detectron2Rotated()(a, b, scores, classes)
        np.testing.assert_allclose(iou, ref_iou.numpy(), atol=1e-12, rtol=0)
        assert np.array_equal(keep, ref_keep.numpy())


def test_results_sections_merge(tmp_path):
    """tools/export_model.py writes one section per --config-file into the results file: a rerun
    replaces its own section and keeps the others."""
    merge = load_tool("export_model").merge_section
    path = str(tmp_path / "deployment.md")
    upright = ["# Whole-model deployment: upright", "", "Generated by `tools/export_model.py --config-file a.yaml`.", "", "| x |"]
    merge(path, upright, "a.yaml")
    merge(path, ["# Rotated", "", "Generated by `tools/export_model.py --config-file b.yaml --verify`.", "", "v1"], "b.yaml")
    merge(path, ["# Rotated", "", "Generated by `tools/export_model.py --config-file b.yaml --verify`.", "", "v2"], "b.yaml")
    text = open(path).read()
    assert text.startswith("\n".join(upright) + "\n\n# Rotated") and "v2" in text and "v1" not in text
    assert text.count("# Rotated") == 1


# ------------------------------------------------------------------------------- whole model
# configs/rotated/rrcnn_R_18_FPN_plugin.yaml shrunk for CPU tests (random init: every class
# scores about 1/5 > SCORE_THRESH_TEST, so there are detections).
ROTATED_CONFIG = "rotated/rrcnn_R_18_FPN_plugin.yaml"
ROTATED_TINY = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                "MODEL.RPN.PRE_NMS_TOPK_TEST", "150", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
                "TEST.DETECTIONS_PER_IMAGE", "20"]


def images(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]


@pytest.mark.slow
def test_rotated_model_onnx_and_torchscript_match_eager(tmp_path):
    """RRPN + PluginRROIHeads (adaptive sampling) through Detectron2's TracingAdapter to ONNX and
    to TorchScript (torch.jit.trace): on an image of another size than the export's, both give
    the eager detections (boxes within 1e-3 px, angles within 1e-3 degree, same classes, scores
    within 1e-3). The ONNX graph has the rotated pooler as GridSample and the rotated NMS as a
    Loop, and standard operators only."""
    torch.manual_seed(0)
    model = build_model(shipped_cfg(ROTATED_CONFIG, *ROTATED_TINY)).eval()
    example, (im,) = images([(96, 128)], 0)[0], images([(112, 96)], 1)
    path = str(tmp_path / "rotated.onnx")
    names = export_model_onnx(model, example, path)
    assert names == ["pred_boxes", "pred_classes", "scores", "image_size"]
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = load_tool("export_model")._op_types(graph.graph)
    assert {"GridSample", "Loop", "TopK"} <= ops and "RoiAlign" not in ops
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    ts_path = str(tmp_path / "rotated.ts")
    assert export_torchscript(model, example, ts_path) == names
    (eager,) = run_eager(model, [im])
    assert eager["pred_boxes"].shape[1] == 5 and len(eager["scores"]) > 5
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for got in (run_onnx(sess, names, [im])[0], run_torchscript(torch.jit.load(ts_path), names, [im])[0]):
        r = compare(eager, got, tuple(im.shape[1:]))
        assert not r["unmatched"], r
        assert r["box_diff"] <= 1e-3 and r["angle_diff"] <= 1e-3 and r["score_diff"] <= 1e-3, r


@pytest.mark.slow
def test_export_model_tool_rotated(tmp_path):
    """tools/export_model.py on a rotated config + checkpoint: ONNX (single-image and batched),
    TorchScript, the rotated NMS graph alone on every NMS call of the eager model (RRPN and ROI
    heads, kept indices equal), appended to a results file whose other section it keeps."""
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    model = build_model(shipped_cfg(ROTATED_CONFIG, *ROTATED_TINY))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    results = tmp_path / "deployment.md"
    results.write_text("# Upright\n\nGenerated by `tools/export_model.py --config-file configs/shapes/x.yaml`.\n")
    summaries = load_tool("export_model").main([
        "--config-file", os.path.join(REPO, "configs", ROTATED_CONFIG), "--checkpoint", str(tmp_path / "tiny.pth"),
        "--output-dir", str(tmp_path / "out"), "--height", "96", "--width", "128", "--verify", "--torchscript",
        "--results", str(results), "--sizes", "112x96", "--repeats", "1", *ROTATED_TINY,
    ])
    (s,) = summaries
    assert s["ok"] and s["rotated"]
    # the image and the blank one, each through the single-image graph, the batched one and TorchScript
    assert [r["graph"] for r in s["rows"]] == ["per image", "batched", "TorchScript"] * 2
    assert {c["where"] for c in s["nms"]} == {"RRPN", "ROI heads"} and all(c["equal"] for c in s["nms"])
    text = results.read_text()
    assert text.startswith("# Upright") and "| PluginRROIHeads | TorchScript | 1 | 112x96 |" in text
    assert "| 112x96 | RRPN |" in text
    for name in ("model.onnx", "model_batched.onnx", "nms_rotated.onnx", "model.ts"):
        assert os.path.exists(tmp_path / "out" / name)


class _ClipLike(torch.nn.Module):
    """RotatedBoxes.clip's pattern: assign through the indices of the near-upright boxes."""

    def forward(self, t):
        t = t.clone()
        idx = torch.where(torch.abs(t[:, 4]) <= 1.0)[0]
        t[idx, 0] = t[idx, 0].clamp(min=0, max=50)
        return t


def _boxes(n, upright):
    t = torch.rand(n, 5, generator=torch.Generator().manual_seed(n)) * 60
    t[:, 4] = 30.0
    t[:upright, 4] = 0.5
    return t


def test_one_element_index_put_is_what_the_exporter_mistraces(tmp_path):
    """torch.onnx.export gives an index_put traced with a one-element index a scalar value
    shape (the graph then fails on other lengths); export/onnx_model.example_image avoids such
    examples, counted by one_element_index_puts. If this starts passing the other way, PyTorch
    fixed it and the redraw can go."""
    import onnxruntime as ort

    from roi_plugin.export.onnx_model import one_element_index_puts

    assert [one_element_index_puts(_ClipLike(), _boxes(20, k)) for k in (0, 1, 2, 5)] == [0, 1, 0, 0]
    for traced_with, fails in ((1, True), (3, False)):
        path = str(tmp_path / f"clip{traced_with}.onnx")
        torch.onnx.export(_ClipLike(), (_boxes(20, traced_with),), path, input_names=["t"], output_names=["o"],
                          dynamic_axes={"t": {0: "n"}, "o": {0: "n"}}, opset_version=17, dynamo=False)
        session = ort.InferenceSession(path)
        t = _boxes(30, 11)
        if fails:
            with pytest.raises(Exception, match="requested shape"):
                session.run(None, {"t": t.numpy()})
        else:
            assert torch.equal(torch.from_numpy(session.run(None, {"t": t.numpy()})[0]), _ClipLike()(t))
