"""``ROIAlignPooler(pooler_type="ROIAlignRotated")`` against references we did not write.

* the float64 transcription of Detectron2's ROIAlignRotated CPU kernel (tests/rotated_reference.py),
  level by level, on random rotated boxes (across the border, outside the map, huge, tiny, empty),
  sampling ratio 0..3, routed over a 4-level pyramid by Detectron2's own
  ``poolers.assign_boxes_to_levels`` on ``RotatedBoxes``;
* at angle 0, Detectron2's ``ROIPooler(pooler_type="ROIAlignV2")`` (torchvision's kernel) on the
  same boxes written ``x1, y1, x2, y2``;
* ``torch.rot90`` of the map (with the box turned alike) leaves the output unchanged;
* ``gradcheck`` and ``gradgradcheck`` in float64, both samplers; traced, scripted and compiled
  poolers equal eager bit for bit.

Detectron2's own ROIAlignRotated tests run on the pooler in tests/test_d2_roi_align_rotated.py.
"""
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.modules.utils import _pair

from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes, RotatedBoxes

from roi_plugin import SAMPLERS, ROIAlignPooler
from roi_plugin.layers.levels import route_boxes

from helpers import SCALES, pyramid
from rotated_reference import roi_align_rotated_reference

HEIGHT, WIDTH = 192, 224  # the images of the tests' pyramids (P2 maps of 48 x 56, 3 channels)


def random_rotated_boxes(n, height, width, seed):
    """(n, 5) rotated boxes in input pixels over an image of height x width: centres from
    outside the image to past its far border, sizes from 0 to 1.5x the image, a few huge
    (10x the image) and tiny (< 1 px, one exactly 0) ones, any angle."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.4, height * 1.4]) - torch.tensor(
        [width * 0.2, height * 0.2])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.5, height * 1.5])
    wh[:2] *= 10.0  # huge
    wh[2:5] = torch.rand(3, 2, generator=g)  # tiny
    wh[5] = 0.0  # empty
    wh[6, 0] = 0.0  # a line
    angle = torch.rand(n, 1, generator=g) * 360 - 180
    angle[7] = 0.0
    angle[8] = 90.0
    return torch.cat([ctr, wh, angle], 1)


def reference_pyramid(feats, box_lists, output_size, sampling_ratio, scales=SCALES, canonical_box_size=224,
                      canonical_level=4):
    """Detectron2's ROIPooler for ROIAlignRotated with its levels' kernel replaced by the float64
    reference: Detectron2's level rule on RotatedBoxes, then the reference per level, float64."""
    levels = [int(round(-torch.log2(torch.tensor(s)).item())) for s in scales]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b.double()], 1) for i, b in enumerate(box_lists)])
    if len(scales) > 1:
        level_of = assign_boxes_to_levels([RotatedBoxes(b) for b in box_lists], levels[0], levels[-1],
                                          canonical_box_size, canonical_level)
    else:
        level_of = torch.zeros(len(rois), dtype=torch.int64)
    out = torch.zeros(len(rois), feats[0].shape[1], *_pair(output_size), dtype=torch.float64)
    for k, (f, s) in enumerate(zip(feats, scales)):
        sel = (level_of == k).nonzero().flatten()
        if sel.numel():
            out[sel] = roi_align_rotated_reference(f, rois[sel], output_size, s, sampling_ratio)
    return out, level_of


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(sampler, sampling_ratio, dtype):
    feats = pyramid(2, HEIGHT, WIDTH, 3, seed=sampling_ratio, dtype=dtype)
    boxes = [random_rotated_boxes(24, HEIGHT, WIDTH, seed=10 + i + sampling_ratio) for i in range(2)]
    pooler = ROIAlignPooler(7, SCALES, sampling_ratio, "ROIAlignRotated", sampler=sampler)
    out = pooler(feats, [RotatedBoxes(b) for b in boxes])
    ref, level_of = reference_pyramid(feats, boxes, 7, sampling_ratio)
    assert out.dtype == dtype and out.shape == ref.shape
    assert len(set(level_of.tolist())) >= 3, "the boxes should spread over the pyramid"
    assert ref.abs().amax((1, 2, 3)).gt(0).sum() > 30
    # float32: features and the sum in float32 (geometry in float64); float64: summation order only
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("sampling_ratio,output_size,levels", [(0, 7, 4), (2, 7, 4), (0, (3, 5), 1)])
def test_angle_zero_matches_detectron2_roialignv2(sampler, sampling_ratio, output_size, levels):
    # (Detectron2's multi-level ROIPooler cannot pool non-square outputs: one level for (3, 5).)
    feats, scales = pyramid(2, HEIGHT, WIDTH, 3, seed=5)[:levels], SCALES[:levels]
    g = torch.Generator().manual_seed(6)
    box_lists, rotated = [], []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g) * 260 - 20
        wh = torch.rand(30, 2, generator=g) * 200
        wh[0] = torch.tensor([600.0, 500.0])
        xyxy = torch.cat([xy, xy + wh], 1)
        box_lists.append(Boxes(xyxy))
        rotated.append(RotatedBoxes(torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, wh, torch.zeros(30, 1)], 1)))
    ref = ROIPooler(output_size, scales, sampling_ratio, "ROIAlignV2")(feats, box_lists)
    out = ROIAlignPooler(output_size, scales, sampling_ratio, "ROIAlignRotated", sampler=sampler)(feats, rotated)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_rot90_of_the_map(sampler, sampling_ratio):
    """Turning the map 90 degrees counter-clockwise (``torch.rot90``), the box centre with it
    and its angle by +90 leaves every sample on the same feature value."""
    scale = 0.5
    feat = pyramid(1, 80, 108, 4, seed=7, dtype=torch.float64)[0]  # P2: 20 x 27
    boxes = random_rotated_boxes(12, 40, 54, seed=8).double()
    pooler = ROIAlignPooler(7, (scale,), sampling_ratio, "ROIAlignRotated", sampler=sampler)
    ours = pooler([feat], [boxes])
    turned_feat, turned = feat, boxes.clone()
    for k in range(3):
        width = turned_feat.shape[-1] / scale
        turned_feat = torch.rot90(turned_feat, 1, (-2, -1))
        x, y = turned[:, 0].clone(), turned[:, 1].clone()
        turned[:, 0], turned[:, 1] = y, width - x
        turned[:, 4] += 90
        out = pooler([turned_feat], [turned])
        assert ours.abs().sum() > 0
        torch.testing.assert_close(out, ours, atol=1e-9, rtol=0, msg=f"{k + 1} quarter turns")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck_float64(sampler, sampling_ratio):
    g = torch.Generator().manual_seed(9)
    feats = tuple(torch.randn(2, 1, 10 >> k, 8 >> k, generator=g, dtype=torch.float64, requires_grad=True)
                  for k in range(3))
    boxes = [torch.tensor([[10.0, 12, 20, 9, 30], [30, 2, 14, 30, -60], [21, 25, 40, 36, 100]]),
             torch.tensor([[5.0, 30, 12, 4, 170], [38, 44, 8, 8, 45]])]
    pooler = ROIAlignPooler(3, (1 / 4, 1 / 8, 1 / 16), sampling_ratio, "ROIAlignRotated", canonical_box_size=32,
                            canonical_level=3, sampler=sampler)
    levels = route_boxes(torch.cat(boxes), pooler.scales, pooler.canonical_box_size, pooler.canonical_level)
    assert len(set(levels.tolist())) >= 2
    assert gradcheck(lambda *f: pooler(list(f), [b.double() for b in boxes]), feats)
    assert gradgradcheck(lambda *f: pooler(list(f), [b.double() for b in boxes]), feats)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_half_features_and_empty_input(sampler):
    feats = pyramid(2, HEIGHT, WIDTH, 3, seed=11)
    boxes = [random_rotated_boxes(10, HEIGHT, WIDTH, seed=12), torch.zeros(0, 5)]
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignRotated", sampler=sampler)
    ref = pooler(feats, boxes)
    out = pooler([f.bfloat16() for f in feats], boxes)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), pooler([f.bfloat16().float() for f in feats], boxes), atol=1e-2, rtol=1e-2)
    assert ref.shape == (10, 3, 7, 7)
    assert pooler(feats, [torch.zeros(0, 5), torch.zeros(0, 5)]).shape == (0, 3, 7, 7)


@pytest.mark.parametrize(
    "boxes,error,match",
    [
        ([torch.zeros(2, 4)], ValueError, r"Nx5 \(x_ctr, y_ctr, w, h, angle\)"),
        ([Boxes(torch.zeros(2, 4))], ValueError, r"Nx5"),
        ([torch.tensor([[1.0, 2, 3, 4, float("nan")]])], ValueError, r"non-finite"),
        ([torch.tensor([[1.0, 2, float("inf"), 4, 0]])], ValueError, r"non-finite"),
        ([torch.tensor([[1.0, 2, 3, 4, 0], [1.0, 2, -3, 4, 0]])], ValueError, r"negative width or height \(box 1"),
        ([torch.tensor([[1.0, 2, 3, -0.5, 0]])], ValueError, r"negative width or height"),
    ],
)
def test_malformed_rotated_boxes_raise(boxes, error, match):
    pooler = ROIAlignPooler(7, (1 / 4,), 0, "ROIAlignRotated")
    with pytest.raises(error, match=match):
        pooler([torch.zeros(1, 2, 8, 8)], boxes)


def test_upright_pooler_rejects_rotated_boxes():
    with pytest.raises(ValueError, match="Nx4"):
        ROIAlignPooler(7, (1 / 4,), 0, "ROIAlignV2")([torch.zeros(1, 2, 8, 8)], [RotatedBoxes(torch.zeros(1, 5))])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_trace_script_compile_equal_eager(sampler):
    """Rotated boxes go through the same operators: traced, scripted and compiled poolers give
    the eager output and gradients bit for bit (on box sets other than the traced one)."""
    pooler = ROIAlignPooler(7, (1 / 4, 1 / 8), 0, "ROIAlignRotated", canonical_box_size=32, canonical_level=3,
                            sampler=sampler)
    g = torch.Generator().manual_seed(3)
    feats = [torch.rand(2, 2, 16, 16, generator=g), torch.rand(2, 2, 8, 8, generator=g)]
    example = [torch.tensor([[10.0, 10, 8, 6, 30]]), torch.tensor([[30.0, 20, 40, 12, -45], [5, 5, 3, 3, 0]])]
    boxes = [torch.tensor([[20.0, 30, 50, 10, 60], [40, 8, 6, 6, 170]]), torch.tensor([[31.0, 33, 20, 44, 95]])]
    traced = torch.jit.trace(lambda f0, f1, b0, b1: pooler([f0, f1], [b0, b1]), (*feats, *example))
    scripted = torch.jit.script(pooler)
    compiled = torch.compile(pooler)
    runs = {"traced": lambda f, b: traced(*f, *b), "scripted": lambda f, b: scripted(f, [RotatedBoxes(t) for t in b]),
            "compiled": compiled}
    x = [f.clone().requires_grad_() for f in feats]
    ref = pooler(x, boxes)
    ref_grads = torch.autograd.grad(ref, x, torch.ones_like(ref))
    for name, run in runs.items():
        out = run(x, boxes)
        assert torch.equal(out, ref), name
        grads = torch.autograd.grad(out, x, torch.ones_like(out))
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads)), name


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("sampler,sampling_ratio", [pytest.param("gather", 0, marks=pytest.mark.slow), ("grid_sample", 2)])
def test_onnx_export_matches_eager(tmp_path, sampler, sampling_ratio):
    """ONNX RoiAlign has no rotation: under torch.onnx.export the rotated pooler takes its
    GridSample path (layers/static.py, the rotated geometry's own samples). onnxruntime, on
    other image counts, map sizes and ROI counts than the export's (an image without ROIs, no
    ROIs at all, levels without ROIs, huge and empty boxes), equals the eager pooler within
    1e-5 and the float64 reference within the pooler's tolerance, adaptive sampling included
    (no cap on the grid)."""
    import onnx
    import onnxruntime as ort

    from roi_plugin.export.branches import ExportablePooler, export_onnx

    pooler = ROIAlignPooler(7, SCALES, sampling_ratio, "ROIAlignRotated", sampler=sampler)

    def rois_of(box_lists):
        return torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(box_lists)])

    with pytest.raises(ValueError, match="rotated pooler has one ONNX path"):
        ExportablePooler(pooler, method="grid_sample")  # the upright GridSample path: not for rotated boxes
    feats = pyramid(2, HEIGHT, WIDTH, channels=3)
    path = str(tmp_path / "rotated_pooler.onnx")
    export_onnx(ExportablePooler(pooler), feats, rois_of([random_rotated_boxes(12, HEIGHT, WIDTH, s) for s in (0, 1)]), path)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert "GridSample" in ops and "RoiAlign" not in ops
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    runs = [(3, 160, 128, [12, 0, 9]), (1, 64, 96, [12]), (1, 96, 96, [0]),
            (1, 128, 128, [torch.tensor([[40.0, 40, 20, 10, 30], [60, 50, 30, 12, -70]])])]  # one level only
    for seed, (b, h, w, counts) in enumerate(runs, 1):
        feats = pyramid(b, h, w, channels=3, seed=seed)
        boxes = [c if isinstance(c, torch.Tensor) else random_rotated_boxes(12, h, w, 10 * seed + i)[:c]
                 for i, c in enumerate(counts)]
        with torch.no_grad():
            eager = pooler(feats, boxes)
        feed = {f"feature{i}": f.numpy() for i, f in enumerate(feats)}
        feed["rois"] = rois_of(boxes).numpy()
        (got,) = sess.run(None, feed)
        assert got.shape == tuple(eager.shape)
        torch.testing.assert_close(torch.from_numpy(got), eager, atol=1e-5, rtol=0)
        ref, _ = reference_pyramid(feats, boxes, 7, sampling_ratio)
        torch.testing.assert_close(torch.from_numpy(got).double(), ref, atol=1e-5, rtol=0)


class _OneLevel(nn.Module):
    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, feats, boxes):
        return self.pooler([feats], [boxes])
