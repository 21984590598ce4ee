"""Precision, determinism and gradients of the pooler (and the plugin model under autocast).

Tolerances stated here are those of docs/testing.md: half-precision outputs are within the rounding of
their own dtype of the float32 result (the pooler samples half maps in float32 and casts the
result back once), i.e. ``|out - ref| <= atol + rtol * |ref|`` with (atol, rtol) =
(1e-3, 1e-3) for float16 and (1e-2, 8e-3) for bfloat16 against float32 on the same values.
"""


import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from roi_plugin import SAMPLERS, ROIAlignPooler
from roi_plugin.export.branches import boxes_to_rois

from helpers import SCALES, annotated_image, pyramid, tiny_cfg

HALF_TOL = {torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 8e-3)}

BOXES = [
    # P2 (inside, whole image, across the top-left and the bottom-right border), P3, P4
    torch.tensor(
        [
            [10.0, 12.0, 60.0, 70.0],
            [0.0, 0.0, 96.0, 128.0],
            [-8.0, -5.0, 20.0, 17.0],
            [90.0, 120.0, 97.0, 129.0],
            [0.0, 0.0, 150.0, 150.0],
            [-100.0, -100.0, 200.0, 200.0],
        ]
    ),
    # P2, zero area (P2), P5
    torch.tensor([[30.0, 40.0, 38.0, 47.0], [5.0, 5.0, 5.0, 5.0], [-200.0, -200.0, 300.0, 300.0]]),
]


# --------------------------------------------------------------------- half precision
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pooler_type,sampling_ratio", [("ROIAlignV2", 0), ("ROIAlign", 2)])
def test_half_features_follow_their_dtype(sampler, dtype, pooler_type, sampling_ratio):
    feats = pyramid(dtype=dtype)
    pooler = ROIAlignPooler(7, SCALES, sampling_ratio, pooler_type, sampler=sampler)
    out = pooler(feats, BOXES)
    assert out.dtype == dtype
    ref = pooler([f.float() for f in feats], BOXES)  # float32 on the same values
    atol, rtol = HALF_TOL[dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    # the float32 result is itself torchvision's on those values (the P5 ROI of image 1)
    torch.testing.assert_close(
        ref[-1:],
        roi_align(
            feats[3][1:].float(), [BOXES[1][-1:]], 7, 1 / 32, sampling_ratio, pooler_type == "ROIAlignV2"
        ),
        atol=1e-5,
        rtol=0,
    )
    # the static (export) path casts back too: grid_sample itself would return float32 for
    # bf16 maps with a float32 grid
    static = pooler._grid_sample_static(feats, boxes_to_rois(BOXES), max_grid=8)
    assert static.dtype == dtype


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_half_gradients_keep_dtype(sampler):
    feats = [f.requires_grad_() for f in pyramid(dtype=torch.bfloat16)]
    out = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)(feats, BOXES)
    out.float().square().sum().backward()
    assert all(f.grad is not None and f.grad.dtype == torch.bfloat16 for f in feats)
    assert all(bool(torch.isfinite(f.grad.float()).all()) for f in feats)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cpu_autocast(sampler):
    """Under CPU autocast the pooler keeps the features' dtype: float32 maps give float32
    (identical to no autocast), bf16 maps (what autocast convs produce) give bf16."""
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    feats = pyramid()
    plain = pooler(feats, BOXES)
    conv = torch.nn.Conv2d(8, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = pooler(feats, BOXES)
        conv_feats = [conv(f) for f in feats]
        assert conv_feats[0].dtype == torch.bfloat16
        pooled = pooler(conv_feats, BOXES)
    assert same.dtype == torch.float32
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    assert pooled.dtype == torch.bfloat16
    atol, rtol = HALF_TOL[torch.bfloat16]
    torch.testing.assert_close(
        pooled.float(), pooler([f.float() for f in conv_feats], BOXES), atol=atol, rtol=rtol
    )


# --------------------------------------------------------------------- model-level runs


def make_batch(seed):
    """Two 96 x 80 images, with 2 and 1 annotated objects."""
    return [annotated_image(96, 80, n, seed=2 * seed + k) for k, n in enumerate((2, 1))]


def train_losses(sampler, iterations, autocast=False, seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(sampler, "MODEL.RESNETS.NORM", "GN")).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    with EventStorage():
        for it in range(iterations):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                losses = model(make_batch(it))
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            history.append({k: v.detach().float() for k, v in losses.items()})
    return history


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_autocast_training_is_finite(sampler):
    history = train_losses(sampler, 3, autocast=True)
    for losses in history:
        assert {"loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
        assert all(bool(torch.isfinite(v)) for v in losses.values()), losses


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_losses(sampler):
    first, second = train_losses(sampler, 2), train_losses(sampler, 2)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (k, a[k].item(), b[k].item())


def _pool_and_grads(pooler, feats):
    feats = [f.detach().clone().requires_grad_() for f in feats]
    out = pooler(feats, [b.to(feats[0].device) for b in BOXES])
    weights = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), [f.grad for f in feats]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_deterministic_algorithms_cpu(sampler):
    """Under torch.use_deterministic_algorithms the CPU pooler runs and is bit-reproducible."""
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    feats = pyramid()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out1, grads1 = _pool_and_grads(pooler, feats)
        out2, grads2 = _pool_and_grads(pooler, feats)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(grads1, grads2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_deterministic_algorithms_cuda(sampler):
    """CUDA: either bit-reproducible or a clear RuntimeError (grid_sample's backward has no
    deterministic CUDA kernel); never silently varying."""
    pooler = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2", sampler=sampler)
    feats = [f.cuda() for f in pyramid()]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        try:
            out1, grads1 = _pool_and_grads(pooler, feats)
        except RuntimeError as e:
            assert "deterministic" in str(e)
            assert sampler == "grid_sample", f"the gather sampler should have a deterministic path: {e}"
            return
        out2, grads2 = _pool_and_grads(pooler, feats)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(grads1, grads2))


# --------------------------------------------------------------------- gradients
# Two levels (P2, P3) on a 24x24 image, one channel: small enough for numerical Jacobians.
GRAD_BOXES = [
    torch.tensor(
        [
            [-3.0, -2.0, 10.0, 9.0],  # crosses the top-left border
            [18.0, 17.5, 24.5, 25.0],  # past the bottom-right border
            [6.0, 6.0, 6.0, 11.0],  # zero width
            [-50.0, -50.0, 70.0, 70.0],
        ],
        dtype=torch.float64,
    ),  # P3, larger than the image
    torch.tensor([[4.0, 4.0, 20.0, 8.0], [0.0, 0.0, 24.0, 24.0]], dtype=torch.float64),
]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck_and_gradgradcheck(sampler, pooler_type, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    feats = tuple(
        torch.randn(2, 1, 24 // s, 24 // s, generator=g, dtype=torch.float64, requires_grad=True)
        for s in (4, 8)
    )
    pooler = ROIAlignPooler(3, (1 / 4, 1 / 8), sampling_ratio, pooler_type, sampler=sampler)

    def fn(*maps):
        return pooler(list(maps), GRAD_BOXES)

    assert gradcheck(fn, feats, eps=1e-6, atol=1e-6)
    assert gradgradcheck(fn, feats, eps=1e-6, atol=1e-6)
    static = lambda *maps: pooler._grid_sample_static(
        list(maps), boxes_to_rois(GRAD_BOXES).double()
    )  # noqa: E731
    assert gradcheck(static, feats, eps=1e-6, atol=1e-6, fast_mode=True)
