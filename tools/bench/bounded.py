# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The memory-bound cases: inputs where a pooler's work grows with the samples, not the output.

ROIAlign reads ``gh * gw`` samples per bin (``ceil(extent / P)`` per axis under adaptive
sampling, ``sampling_ratio`` otherwise), so large boxes or a large ratio mean many samples for a
small output. Detectron2's ``ROIPooler`` (torchvision's kernel) loops over them and needs no
memory for it; a sampler that lists them (taps, sample points) must bound that list. Each case
runs one forward+backward of a fresh pooler in a fresh process (``memory.py --cold``), as a new
user meets it:

* ``big20`` / ``big40``: one level at scale 1, a 1x4x512x512 map, 20 (40) boxes of 500x500 px,
  7x7, ratio 0 (72 x 72 samples per bin);
* ``c4``: a C4-like map (one level at 1/16 of an 800x1344 image, 1x16x50x84), 256 boxes with
  sides log-uniform in 16..900 px, 14x14, ratio 0;
* ``c4_r32``: the same map and 64 such boxes at sampling ratio 32 (1,024 samples per bin,
  whatever the box);
* ``rotated_huge``: P2..P5 of a 256x256 image (4 channels), one rotated box of 1e5 x 1e5 px at
  30 degrees, 7x7, ratio 0 (routed to P5: 447 x 447 samples per bin, most off the map).
  ``ROIPooler`` cannot pool rotated boxes without Detectron2's compiled ``_C``; its row pools the
  same box upright (angle 0), the same samples on the same map through torchvision's kernel.
"""
import math
from typing import Callable, List, NamedTuple, Sequence

import torch

BOUNDED_IMPLS = ("detectron2", "gather", "grid_sample")
BOUNDED_LIMIT = 2.0  # peak memory / ROIPooler's on these cases


class BoundedCase(NamedTuple):
    name: str
    description: str
    maps: Sequence[Sequence[int]]  # (B, C, H, W) of each level
    scales: Sequence[float]
    output: int
    ratio: int
    rotated: bool
    boxes: Callable[[], List[torch.Tensor]]  # one (N_i, 4) (or (N_i, 5)) tensor per image


def _big_boxes(n: int) -> Callable[[], List[torch.Tensor]]:
    def make():
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(n, 2, generator=g) * 12  # 500 px boxes inside the 512 px map
        return [torch.cat([xy, xy + 500.0], 1)]
    return make


def _c4_boxes(n: int = 256) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    height, width = 800, 1344
    side = torch.exp(torch.empty(n, 2).uniform_(math.log(16), math.log(900), generator=g))
    cx, cy = torch.rand(n, generator=g) * width, torch.rand(n, generator=g) * height
    b = torch.stack([cx - side[:, 0] / 2, cy - side[:, 1] / 2, cx + side[:, 0] / 2, cy + side[:, 1] / 2], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, width)
    b[:, 1::2] = b[:, 1::2].clamp(0, height)
    return [b]


def _rotated_box() -> List[torch.Tensor]:
    return [torch.tensor([[128.0, 128.0, 1e5, 1e5, 30.0]])]


FPN256 = [(1, 4, 64, 64), (1, 4, 32, 32), (1, 4, 16, 16), (1, 4, 8, 8)]
BOUNDED_CASES = (
    BoundedCase("big20", "1x4x512x512 at scale 1, 20 boxes of 500 px, 7x7, ratio 0", [(1, 4, 512, 512)], (1.0,),
                7, 0, False, _big_boxes(20)),
    BoundedCase("big40", "1x4x512x512 at scale 1, 40 boxes of 500 px, 7x7, ratio 0", [(1, 4, 512, 512)], (1.0,),
                7, 0, False, _big_boxes(40)),
    BoundedCase("c4", "C4-like 1x16x50x84 at 1/16, 256 boxes of 16..900 px, 14x14, ratio 0", [(1, 16, 50, 84)],
                (1 / 16,), 14, 0, False, _c4_boxes),
    BoundedCase("c4_r32", "C4-like 1x16x50x84 at 1/16, 64 boxes of 16..900 px, 14x14, ratio 32",
                [(1, 16, 50, 84)], (1 / 16,), 14, 32, False, lambda: _c4_boxes(64)),
    BoundedCase("rotated_huge", "P2..P5 of 256x256 (4 channels), one rotated 1e5 px box, 7x7, ratio 0", FPN256,
                (1 / 4, 1 / 8, 1 / 16, 1 / 32), 7, 0, True, _rotated_box),
)
BOUNDED_NAMES = tuple(c.name for c in BOUNDED_CASES)


def find_bounded(name: str) -> BoundedCase:
    for case in BOUNDED_CASES:
        if case.name == name:
            return case
    raise ValueError(f"unknown memory-bound case {name!r}; the cases are {', '.join(BOUNDED_NAMES)}")


def _upright(boxes: torch.Tensor) -> torch.Tensor:
    """Rotated (cx, cy, w, h, angle) -> the same box upright, x1 y1 x2 y2."""
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def make_bounded_step(impl: str, case: BoundedCase, mode: str, device: str = "cpu") -> Callable[[], None]:
    """A closure running one call of ``impl`` on ``case`` (and its backward for ``fwd+bwd``);
    ``step.feats`` are the maps (leaves with gradients)."""
    from detectron2.structures import Boxes

    gen = torch.Generator().manual_seed(2)
    feats = [torch.randn(*s, generator=gen).to(device).requires_grad_(mode != "infer") for s in case.maps]
    boxes = [b.to(device) for b in case.boxes()]
    if impl == "detectron2":
        from detectron2.modeling.poolers import ROIPooler

        pooler = ROIPooler(case.output, tuple(case.scales), case.ratio, "ROIAlignV2")
        box_arg = [Boxes(_upright(b) if case.rotated else b) for b in boxes]
        # one level: ROIPooler's level rule needs log2 scales that step by one; a single scale is fine
    else:
        from roi_plugin import ROIAlignPooler

        pooler = ROIAlignPooler(case.output, tuple(case.scales), case.ratio,
                                "ROIAlignRotated" if case.rotated else "ROIAlignV2", sampler=impl)
        box_arg = boxes

    def step():
        for f in feats:
            f.grad = None
        if mode == "infer":
            with torch.no_grad():
                pooler(feats, box_arg)
            return
        out = pooler(feats, box_arg)
        if mode == "fwd+bwd":
            out.backward(torch.ones_like(out))

    step.feats = feats
    return step
