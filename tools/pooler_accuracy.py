#!/usr/bin/env python
"""Max abs difference of ROIAlignPooler to torchvision's roi_align and Detectron2's ROIPooler.

Input: the benchmark's training case (2 images 800x1216, P2..P5 with 256 channels, 512 ROIs
per image with log-uniform sizes 16..800 px, some crossing the image border). Every sampler,
pooler type and sampling ratio 0..3, output 7 and 14. The reference is torchvision's
roi_align evaluated in float64 on the level Detectron2's rule picks; the float32 pooler and
float32 ROIPooler are both compared with it.

    python tools/pooler_accuracy.py            # writes results/pooler_accuracy.md
"""
import argparse
import math
import os
import platform

import torch
from torchvision.ops import roi_align

from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes

from roi_plugin import SAMPLERS, ROIAlignPooler

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def make_input(seed=0, rois=512, channels=256, size=(800, 1216), rotated=False):
    """P2..P5 maps of 2 images and ``rois`` boxes per image, sides log-uniform in 16..800 px
    (some cross the border): ``x1, y1, x2, y2``, or with ``rotated`` ``x_ctr, y_ctr, w, h,
    angle`` (any angle)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    feats = [torch.randn(2, channels, h // s, w // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = []
    for _ in range(2):
        wh = torch.exp(torch.empty(rois, 2).uniform_(math.log(16), math.log(800), generator=g))
        ctr = torch.rand(rois, 2, generator=g) * torch.tensor([w, h])
        if rotated:
            angle = torch.rand(rois, 1, generator=g) * 360 - 180
            boxes.append(torch.cat([ctr, wh, angle], 1))
        else:
            boxes.append(torch.cat([ctr - wh / 2, ctr + wh / 2], 1))
    return feats, boxes


def reference(feats, boxes, out, ratio, aligned):
    levels = assign_boxes_to_levels([Boxes(b) for b in boxes], 2, 5, 224, 4)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    res = torch.zeros(len(rois), feats[0].shape[1], out, out, dtype=torch.float64)
    for lvl, (f, s) in enumerate(zip(feats, SCALES)):
        sel = (levels == lvl).nonzero().flatten()
        if len(sel):
            res[sel] = roi_align(f.double(), rois[sel].double(), out, s, ratio, aligned)
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "results", "pooler_accuracy.md"))
    parser.add_argument("--rois", type=int, default=512, help="ROIs per image")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    feats, boxes = make_input(rois=args.rois)
    rows = []
    for pooler_type, aligned in (("ROIAlignV2", True), ("ROIAlign", False)):
        for out in (7, 14):
            for ratio in (0, 1, 2, 3):
                ref = reference(feats, boxes, out, ratio, aligned)
                d2 = ROIPooler(out, SCALES, ratio, pooler_type)(feats, [Boxes(b) for b in boxes])
                row = [pooler_type, out, ratio, (d2.double() - ref).abs().max().item()]
                for sampler in SAMPLERS:
                    ours = ROIAlignPooler(out, SCALES, ratio, pooler_type, sampler=sampler)(feats, boxes)
                    row += [(ours.double() - ref).abs().max().item(), (ours - d2).abs().max().item()]
                rows.append(row)
                print(" | ".join(str(v) if not isinstance(v, float) else f"{v:.2e}" for v in row), flush=True)
    lines = [
        "# Pooler accuracy",
        "",
        "Regenerate with `python tools/pooler_accuracy.py`. Max abs difference over all pooled values "
        f"(2 images 800x1216, P2..P5, 256 channels, {args.rois} ROIs per image, log-uniform 16..800 px; "
        "features ~N(0, 1)). Reference: torchvision `roi_align` in float64 on the level Detectron2's "
        "`assign_boxes_to_levels` picks. Every other column is float32.",
        "",
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads.",
        "",
        "| pooler_type | output | sampling_ratio | ROIPooler vs ref | "
        + " | ".join(f"{s} vs ref | {s} vs ROIPooler" for s in SAMPLERS)
        + " |",
        "|" + "---|" * (4 + 2 * len(SAMPLERS)),
    ]
    write_table(lines, rows, args.output)


def write_table(lines, rows, output):
    """Write the header ``lines`` and one markdown row per tuple of ``rows`` (floats as %.1e)."""
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.1e}" if isinstance(v, float) else str(v) for v in row) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.abspath(output)}")


if __name__ == "__main__":
    main()
