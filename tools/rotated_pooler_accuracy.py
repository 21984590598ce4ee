#!/usr/bin/env python
"""Max abs difference of ROIAlignPooler(pooler_type="ROIAlignRotated") to Detectron2's ROIAlignRotated.

Detectron2's kernel needs its compiled _C, so the reference is its float64 transcription
(tests/rotated_reference.py), evaluated on the level Detectron2's ``assign_boxes_to_levels``
picks for ``RotatedBoxes``. Input: 2 images of 800x1216, P2..P5 with 64 channels (the float64
reference holds every tap's features at once), 256 rotated ROIs per image with log-uniform
sides 16..800 px, any angle, centres anywhere in the image (some cross the border). Every
sampler, sampling ratio 0..3, output 7 and 14; a last row compares angle 0 with Detectron2's
``ROIPooler(pooler_type="ROIAlignV2")`` on the same boxes (torchvision's float32 kernel).

    python tools/rotated_pooler_accuracy.py      # writes results/rotated_pooler_accuracy.md
"""
import argparse
import os
import platform
import sys

import torch

from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes, RotatedBoxes

from roi_plugin import SAMPLERS, ROIAlignPooler

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from rotated_reference import roi_align_rotated_reference  # noqa: E402

import pooler_accuracy  # noqa: E402  (this folder, tools/): the benchmark input

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def make_input(seed=0, rois=256, channels=64, size=(800, 1216)):
    return pooler_accuracy.make_input(seed, rois, channels, size, rotated=True)


def reference(feats, boxes, out, ratio):
    levels = assign_boxes_to_levels([RotatedBoxes(b) for b in boxes], 2, 5, 224, 4)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    res = torch.zeros(len(rois), feats[0].shape[1], out, out, dtype=torch.float64)
    for lvl, (f, s) in enumerate(zip(feats, SCALES)):
        sel = (levels == lvl).nonzero().flatten()
        for chunk in sel.split(64):  # bounds the reference's (taps, C) float64 buffer
            res[chunk] = roi_align_rotated_reference(f, rois[chunk].double(), out, s, ratio)
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "results",
                                                         "rotated_pooler_accuracy.md"))
    parser.add_argument("--rois", type=int, default=256, help="ROIs per image")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    feats, boxes = make_input(rois=args.rois)
    rows = []
    for out in (7, 14):
        for ratio in (0, 1, 2, 3):
            ref = reference(feats, boxes, out, ratio)
            row = [f"ROIAlignRotated vs float64 reference", out, ratio]
            for sampler in SAMPLERS:
                ours = ROIAlignPooler(out, SCALES, ratio, "ROIAlignRotated", sampler=sampler)(feats, boxes)
                row.append((ours.double() - ref).abs().max().item())
            rows.append(row)
            print(" | ".join(str(v) if not isinstance(v, float) else f"{v:.2e}" for v in row), flush=True)
    upright = [torch.cat([b[:, :2] - b[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2], 1) for b in boxes]
    at_zero = [torch.cat([b[:, :4], torch.zeros_like(b[:, 4:])], 1) for b in boxes]
    d2 = ROIPooler(7, SCALES, 0, "ROIAlignV2")(feats, [Boxes(b) for b in upright])
    row = ["angle 0 vs Detectron2's ROIPooler ROIAlignV2 (float32)", 7, 0]
    for sampler in SAMPLERS:
        ours = ROIAlignPooler(7, SCALES, 0, "ROIAlignRotated", sampler=sampler)(feats, at_zero)
        row.append((ours - d2).abs().max().item())
    rows.append(row)
    print(row, flush=True)
    lines = [
        "# Rotated pooler accuracy",
        "",
        "Regenerate with `python tools/rotated_pooler_accuracy.py`. Max abs difference over all pooled "
        f"values (2 images 800x1216, P2..P5, 64 channels, {args.rois} rotated ROIs per image, sides "
        "log-uniform 16..800 px, angles uniform in [-180, 180); features ~N(0, 1)). Reference: the "
        "float64 transcription of Detectron2's ROIAlignRotated CPU kernel (tests/rotated_reference.py) "
        "on the level Detectron2's `assign_boxes_to_levels` picks. The pooler runs in float32 "
        "(its rotated geometry in float64).",
        "",
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads.",
        "",
        "| comparison | output | sampling_ratio | " + " | ".join(SAMPLERS) + " |",
        "|" + "---|" * (3 + len(SAMPLERS)),
    ]
    pooler_accuracy.write_table(lines, rows, args.output)


if __name__ == "__main__":
    main()
