"""The gather sampler's plan and execution: flat tap lists against the padded geometry, taps
merged to distinct pixels, exact chunking and blocks, the single-thread scope, and ROIs that
must not disturb each other."""
import pytest
import torch
from torchvision.ops import roi_align

from roi_plugin import SAMPLERS, ROIAlignPooler
from roi_plugin.layers import gather
from roi_plugin.layers.axis_taps import axis_taps, distinct_axis_taps, distinct_pixels
from roi_plugin.layers.geometry import axis_samples, level_boxes

from helpers import SCALES, box_zoo, padded_pyramid, tiny_cfg, torchvision_reference


def padded_taps(start, length, pooled, grid, size):
    """The non-zero taps of each bin from geometry.axis_samples (the padded layout the
    grid_sample sampler uses), in its (sample, low/high) order; one ROI per call."""
    out = []
    for r in range(start.numel()):
        g = int(grid[r])
        if g == 0:
            out += [[] for _ in range(pooled)]
            continue
        s = axis_samples(start[r:r + 1], length[r:r + 1], pooled, grid[r:r + 1], g, size)
        for p in range(pooled):
            taps = []
            for i in range(s.low.shape[2]):
                for pix, wt in ((s.low[0, p, i], s.w_low[0, p, i]), (s.high[0, p, i], s.w_high[0, p, i])):
                    if wt != 0:
                        taps.append((int(pix), float(wt)))
            out.append(taps)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_axis_taps_are_the_padded_layouts_nonzero_taps(aligned, sampling_ratio):
    """Same pixels, same weights bit for bit, same order, per bin; huge and empty ROIs too."""
    h, w = 200, 240
    boxes = torch.cat([box_zoo(h, w, n_random=30, seed=3),
                       torch.tensor([[-3e6, -2e6, 4e6, 5e6], [1e5, 1e5, 1e5 + 3, 1e5 + 9]])])
    size = 50  # a P3-like map of the 200-px side
    start_x, start_y, width, height = level_boxes(boxes, 1 / 4, aligned)
    for start, length in ((start_x, width), (start_y, height)):
        grid = (torch.full_like(boxes[:, 0], sampling_ratio, dtype=torch.int64) if sampling_ratio
                else torch.ceil(length / 7).to(torch.int64).clamp(min=0))
        flat = axis_taps(start, length, 7, grid, torch.full_like(grid, size))
        ours = [
            list(zip(flat.pixel[f:f + c].tolist(), flat.weight[f:f + c].tolist()))
            for f, c in zip(flat.first.tolist(), flat.count.tolist())
        ]
        assert ours == padded_taps(start, length, 7, grid, size)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_huge_box_does_not_disturb_other_rois(sampler):
    """A ~1e6 px box in the call is computed in float64; the other ROIs keep torchvision's
    float32 values. (The grouped layout once computed a whole group in float64 and missed a
    border box's samples in legacy ROIAlign: 0.6 off; grid_sample's groups did so until the
    float64 rule became per ROI, geometry.needs_float64.)"""
    feats = [torch.randn(2, 4, 16, 20, generator=torch.Generator().manual_seed(0))]
    border = torch.tensor([[318.0, 250.0, 320.0, 256.0], [10.0, 10.0, 10.0, 40.0]])
    huge = torch.tensor([[-3e6, -2e6, 4e6, 5e6]])
    for pooler_type in ("ROIAlign", "ROIAlignV2"):
        pooler = ROIAlignPooler(14, (1 / 16,), 2, pooler_type, sampler=sampler)
        alone = pooler(feats, [border, torch.zeros(0, 4)])
        mixed = pooler(feats, [border, huge])[:2]
        assert torch.equal(alone, mixed)
        rois = torch.cat([torch.zeros(2, 1), border], 1).double()
        ref = roi_align(feats[0].double(), rois, 14, 1 / 16, 2, aligned=pooler_type == "ROIAlignV2")
        torch.testing.assert_close(mixed.double(), ref, rtol=0, atol=1e-5)


def test_chunking_is_exact(monkeypatch):
    """Channel chunks and ROI blocks change the memory, not one bit of outputs or gradients."""
    sizes = [(256, 320), (200, 288)]
    feats = padded_pyramid(sizes, channels=24, seed=4)
    boxes = [box_zoo(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    grad = torch.randn(sum(len(b) for b in boxes), 24, 7, 7, generator=torch.Generator().manual_seed(1))

    def run():
        x = [f.clone().requires_grad_() for f in feats]
        out = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")(x, boxes)
        out.backward(grad)
        return [out] + [f.grad for f in x]

    default = run()
    monkeypatch.setattr(gather, "_CHUNKS", (8,))  # 3 chunks of 8 channels
    monkeypatch.setattr(gather, "_bin_calls", lambda plan, roi_bins: [
        (b, min(b + 5 * roi_bins - 3, plan.bins[1])) for b in range(plan.bins[0], plan.bins[1], 5 * roi_bins - 3)])
    chunked = run()
    for a, b in zip(default, chunked):
        assert torch.equal(a, b)
    ref = torchvision_reference(feats, boxes, 7, 0, True)
    torch.testing.assert_close(chunked[0].double(), ref, rtol=0, atol=1e-4)


def _counting_threads(seen):
    """The gather sampler's ``embedding_bag``, appending each call's intra-op thread count to
    ``seen``."""
    embedding_bag = gather.F.embedding_bag

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return embedding_bag(*args, **kwargs)

    return spy


def test_runs_on_one_thread_and_restores_the_callers_count(monkeypatch):
    """Every embedding_bag of the forward and backward runs with one intra-op thread; the
    caller's setting is back afterwards, also when the sampler raises; results do not depend
    on the caller's thread count."""
    seen = []
    spy = _counting_threads(seen)
    feats = padded_pyramid([(256, 320)], channels=8, seed=2)
    boxes = [box_zoo(256, 320, seed=5)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            monkeypatch.setattr(gather.F, "embedding_bag", spy)
            x = [f.clone().requires_grad_() for f in feats]
            out = ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")(x, boxes)
            out.sum().backward()
            assert torch.get_num_threads() == threads
            results.append([out] + [f.grad for f in x])

            def broken(*args, **kwargs):
                raise RuntimeError("boom")

            monkeypatch.setattr(gather.F, "embedding_bag", broken)
            with pytest.raises(RuntimeError, match="boom"):
                ROIAlignPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_single_thread_off_keeps_the_callers_threads(monkeypatch):
    """``single_thread=False`` (``MODEL.ROI_PLUGIN.SINGLE_THREAD: False``, reaching the poolers
    built from a cfg and converted from an ``ROIPooler``) leaves the caller's thread count to
    the sampler's ops; the numbers are those of the single-thread default."""
    from detectron2.modeling import build_model
    from detectron2.modeling.poolers import ROIPooler

    from roi_plugin.modeling.convert import pooler_from_roi_pooler

    heads = build_model(tiny_cfg("gather", "MODEL.ROI_PLUGIN.SINGLE_THREAD", "False")).roi_heads
    assert not heads.box_pooler.single_thread and not heads.mask_pooler.single_thread
    seen = []
    spy = _counting_threads(seen)
    feats = padded_pyramid([(128, 160)], channels=8, seed=2)
    boxes = [box_zoo(128, 160, seed=5)]
    poolers = [ROIAlignPooler(7, SCALES, 0, "ROIAlignV2"),
               pooler_from_roi_pooler(ROIPooler(7, SCALES, 0, "ROIAlignV2"), single_thread=False)]
    assert poolers[0].single_thread and not poolers[1].single_thread
    before = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(gather.F, "embedding_bag", spy)
        for pooler in poolers:
            seen.clear()
            x = [f.clone().requires_grad_() for f in feats]
            out = pooler(x, boxes)
            out.sum().backward()
            results.append([out] + [f.grad for f in x])
            assert set(seen) == ({1} if pooler.single_thread else {2})
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_distinct_pixels_sum_each_pixels_taps():
    """Merged taps: one per pixel a bin reads, in increasing pixel order, weighing the float32 sum
    of that pixel's taps in tap order (ratio 32 on small boxes: up to 64 taps a pixel)."""
    h, w = 200, 240
    boxes = torch.cat([box_zoo(h, w, n_random=20, seed=6), torch.tensor([[-3e6, -2e6, 4e6, 5e6]])])
    start_x, _, width, _ = level_boxes(boxes, 1 / 4, True)
    for ratio in (0, 2, 32):
        grid = (torch.full_like(width, ratio, dtype=torch.int64) if ratio
                else torch.ceil(width / 7).to(torch.int64).clamp(min=0))
        taps = axis_taps(start_x, width, 7, grid, torch.full_like(grid, 60))
        merged = distinct_pixels(taps)
        runs = distinct_axis_taps(start_x, width, 7, grid, torch.full_like(grid, 60), 50)  # a few ROIs at a time
        assert all(torch.equal(a, b) for a, b in zip(merged, runs))
        for b in range(taps.count.numel()):
            f, c = int(taps.first[b]), int(taps.count[b])
            sums = {}
            for pixel, weight in zip(taps.pixel[f:f + c].tolist(), taps.weight[f:f + c]):
                sums[pixel] = sums.get(pixel, torch.zeros((), dtype=weight.dtype)) + weight
            f, c = int(merged.first[b]), int(merged.count[b])
            assert merged.pixel[f:f + c].tolist() == sorted(sums)
            assert torch.equal(merged.weight[f:f + c], torch.stack([sums[p] for p in sorted(sums)]) if sums
                               else merged.weight[f:f])


@pytest.mark.parametrize("rotated", [False, True], ids=["upright", "rotated"])
def test_plan_blocks_change_memory_not_results(monkeypatch, rotated):
    """A plan in many blocks (a budget of a few hundred taps; axis taps a few ROIs at a time)
    gives the one-block outputs bit for bit, and the gradients too for upright boxes (the
    backward's stripes keep each pixel's sum in one piece, in bag order); rotated boxes add
    their blocks' partial gradients (rounding only)."""
    from roi_plugin.layers import gather_plan

    sizes = [(256, 320), (200, 288)]
    feats = padded_pyramid(sizes, channels=16, seed=4)
    boxes = [box_zoo(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    ptype = "ROIAlignRotated" if rotated else "ROIAlignV2"
    if rotated:
        boxes = [torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1],
                              torch.linspace(-180, 180, len(b))], 1) for b in boxes]
    grad = torch.randn(sum(len(b) for b in boxes), 16, 7, 7, generator=torch.Generator().manual_seed(1))

    def run():
        x = [f.clone().requires_grad_() for f in feats]
        out = ROIAlignPooler(7, SCALES, 0, ptype)(x, boxes)
        out.backward(grad)
        return [out] + [f.grad for f in x]

    whole = run()
    monkeypatch.setattr(gather_plan, "_MIN_BLOCK_TAPS", 300)
    monkeypatch.setattr(gather_plan, "_PLAN_SHARE", 0.0)
    blocks = []
    plans = gather_plan.GatherPlans.__iter__
    monkeypatch.setattr(gather_plan.GatherPlans, "__iter__", lambda self: (blocks.append(len(self)), plans(self))[1])
    blocked = run()
    assert min(blocks) > 10
    assert torch.equal(whole[0], blocked[0])
    for a, b in zip(whole[1:], blocked[1:]):
        if rotated:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        else:
            assert torch.equal(a, b)
