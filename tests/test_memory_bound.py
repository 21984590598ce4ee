"""Memory bounded by what the pooler returns, not by its samples: where a bin has thousands of
samples (large boxes under adaptive sampling, ``sampling_ratio`` 32), one forward+backward's peak
of live CPU memory (torch's allocations, from the profiler's memory events) stays within 2x that of
Detectron2's ``ROIPooler``, for both samplers; the rotated pooler's does not grow with the box.
Small versions of ``tools/benchmark.py --bounded`` (which measures the process's resident memory,
cold and warm; docs/performance.md)."""
import pytest
import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch.profiler import ProfilerActivity, profile

from roi_plugin import SAMPLERS, ROIAlignPooler


def peak_bytes(fn) -> int:
    """Peak of live CPU memory allocated by torch while ``fn`` runs (profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def training_step(pooler, feats, boxes):
    def step():
        x = [f.detach().requires_grad_() for f in feats]
        out = pooler(x, boxes)
        out.backward(torch.ones_like(out))
    return step


CASES = {
    # one level at scale 1, four 500 px boxes: 72 x 72 samples per bin (tools/bench/bounded.py: big20)
    "large_boxes": ((1, 4, 512, 512), 1.0, 7, 0, torch.tensor([[3.0, 5.0, 503.0, 505.0], [0.5, 7.0, 500.5, 507.0],
                                                               [11.0, 2.0, 511.0, 502.0], [6.0, 6.0, 506.0, 506.0]])),
    # a C4-like map at 1/16 (64 channels), sampling ratio 32: 1,024 samples per bin (as c4_r32)
    "ratio_32": ((1, 64, 50, 84), 1 / 16, 7, 32, None),
}


def c4_boxes(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([1344.0, 800.0])
    side = torch.exp(torch.empty(n, 2).uniform_(2.8, 6.8, generator=g))  # 16..900 px
    return torch.cat([xy - side / 2, xy + side / 2], 1).clamp(min=0).minimum(torch.tensor([1344.0, 800, 1344, 800]))


@pytest.mark.parametrize("sampler,case", [
    (sampler, case) if (sampler, case) != ("grid_sample", "ratio_32")
    else pytest.param(sampler, case, marks=pytest.mark.slow)  # 800,000 grid_sample points: ~6 s
    for sampler in SAMPLERS for case in CASES])
def test_peak_within_twice_roipoolers(sampler, case):
    size, scale, out, ratio, boxes = CASES[case]
    boxes = c4_boxes(16) if boxes is None else boxes
    feats = [torch.randn(*size, generator=torch.Generator().manual_seed(0))]
    ref = peak_bytes(training_step(ROIPooler(out, (scale,), ratio, "ROIAlignV2"), feats, [Boxes(boxes)]))
    ours = peak_bytes(training_step(ROIAlignPooler(out, (scale,), ratio, "ROIAlignV2", sampler=sampler), feats,
                                    [boxes]))
    assert ours <= 2 * ref, f"{sampler} {case}: peak {ours / 2**20:.1f} MB, ROIPooler's {ref / 2**20:.1f} MB"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_rotated_peak_does_not_grow_with_the_box(sampler):
    """A rotated box far larger than the map (P5 of a 256 px image, 8 x 8) lays out only the
    samples the map can hold: 1e5 px (447 x 447 samples per bin, 1.9 GB before the window) and
    1e6 px peak within 2x of 1e4 px (45 x 45 samples per bin); the output is ROIPooler's on
    the same box upright where the rotation is 0."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 4, 256 // s, 256 // s, generator=g) for s in (4, 8, 16, 32)]
    pooler = ROIAlignPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignRotated", sampler=sampler)

    def box(side, angle=30.0):
        return [torch.tensor([[128.0, 128.0, side, side, angle]])]

    reference = peak_bytes(training_step(pooler, feats, box(1e4)))
    for side in (1e5, 1e6):
        huge = peak_bytes(training_step(pooler, feats, box(side)))
        assert huge <= 2 * reference, f"{huge} B for a {side:g} px box, {reference} B for a 1e4 px one"
    upright = ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2")(
        feats, [Boxes(torch.tensor([[128.0 - 5e4, 128.0 - 5e4, 128.0 + 5e4, 128.0 + 5e4]]))])
    torch.testing.assert_close(pooler(feats, box(1e5, 0.0)), upright, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlignRotated"])
def test_grid_sample_calls_split_change_memory_not_outputs(monkeypatch, pooler_type):
    """grid_sample calls of a few hundred points (whole ROIs in runs, then 1x1-bin units, each
    call's gradient that of its crop): outputs bit for bit those of a few large calls, gradients
    within rounding."""
    from roi_plugin.layers import grid_sample

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 64, 80, generator=g), torch.randn(2, 8, 32, 40, generator=g)]
    xy = torch.rand(2, 12, 2, generator=g) * torch.tensor([320.0, 256.0])
    side = torch.exp(torch.empty(2, 12, 2).uniform_(2.0, 6.0, generator=g))
    if pooler_type == "ROIAlignRotated":
        boxes = [torch.cat([xy[i], side[i], torch.linspace(-90, 90, 12)[:, None]], 1) for i in range(2)]
    else:
        boxes = [torch.cat([xy[i] - side[i] / 2, xy[i] + side[i] / 2], 1) for i in range(2)]
    grad = torch.randn(24, 8, 7, 7, generator=g)

    def run():
        x = [f.clone().requires_grad_() for f in feats]
        out = ROIAlignPooler(7, (1 / 4, 1 / 8), 0, pooler_type, canonical_box_size=64, canonical_level=3,
                             sampler="grid_sample")(x, boxes)
        out.backward(grad)
        return [out] + [f.grad for f in x]

    few = run()
    monkeypatch.setattr(grid_sample, "_point_cap", lambda positions, channels: 300)
    many = run()
    assert torch.equal(few[0], many[0])
    for a, b in zip(few[1:], many[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
