#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Export the box branch (pooler + box head + predictor) of a roi_plugin model to ONNX.

Example::

    python tools/export_onnx.py --config-file configs/mask_rcnn_R_50_FPN_1x_plugin.yaml \\
        --checkpoint output/model_final.pth --output-dir output/onnx --verify

writes ``box_branch.onnx`` (inputs ``feature0..feature{L-1}`` = the maps named by
``MODEL.ROI_HEADS.IN_FEATURES`` and ``rois`` (K, 5) = ``batch_index, x1, y1, x2, y2`` in
input-image pixels; outputs ``scores`` (K, num_classes + 1) logits and ``deltas``) and
``box_pooler.onnx`` (same inputs, output ``pooled`` (K, C, 7, 7)). The number of ROIs, of
images and the maps' sizes are dynamic. ``--verify`` reruns both graphs in onnxruntime on
a different number of ROIs and images than the export used and compares with the eager model
(the heads' own pooler and samplers): beyond ``--tolerance`` it prints the difference and exits
with status 1. For the whole model (backbone, RPN, heads, post-processing) see
``tools/export_model.py``. Trailing ``KEY VALUE`` pairs override the config, as in Detectron2's tools.
"""

import argparse
import os
import sys

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from roi_plugin import ROIAlignPooler, add_roi_plugin_config
from roi_plugin.export.branches import EXPORT_METHODS, ExportableBoxBranch, ExportablePooler, boxes_to_rois, export_onnx
from roi_plugin.layers import EXPORT_MAX_GRID


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="a roi_plugin config (PluginROIHeads/GridSampleROIHeads)"
    )
    parser.add_argument(
        "--checkpoint", default="", help="weights to load; empty = the config's MODEL.WEIGHTS"
    )
    parser.add_argument("--output-dir", default="output/onnx")
    parser.add_argument("--height", type=int, default=320, help="example image height used for the export")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--num-rois", type=int, default=16, help="example ROIs per image used for the export")
    parser.add_argument(
        "--pooler-export",
        choices=EXPORT_METHODS,
        default="roi_align",
        help="roi_align: ONNX RoiAlign per level, exact at every sampling ratio (default); "
        "grid_sample: ONNX GridSample only, capped at --max-grid samples under adaptive sampling",
    )
    parser.add_argument(
        "--max-grid",
        type=int,
        default=EXPORT_MAX_GRID,
        help="--pooler-export grid_sample: samples per bin and axis laid out when "
        "POOLER_SAMPLING_RATIO is 0 (adaptive); exact for ROIs whose adaptive grid is at most this",
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--verify", action="store_true", help="compare onnxruntime with PyTorch (needs onnxruntime)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |onnxruntime - eager PyTorch| / max(1, max |eager|) accepted by --verify",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"  # export runs on CPU; the graph is device-agnostic
    cfg.freeze()
    return cfg


def random_rois(num_images: int, per_image: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(num_images * per_image, 5) boxes of many sizes, some crossing the image border."""
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(num_images):
        xy = torch.rand(per_image, 2, generator=g) * torch.tensor([width, height])
        wh = 4 + torch.rand(per_image, 2, generator=g) ** 2 * torch.tensor([width, height]) * 0.8
        boxes.append(torch.cat([xy - wh / 4, xy + wh * 3 / 4], 1))
    return boxes_to_rois(boxes)


def example_features(model, cfg, num_images: int, height: int, width: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, 3, height, width, generator=g) * 255
    images = (images - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        feats = model.backbone(images)
    return [feats[f] for f in cfg.MODEL.ROI_HEADS.IN_FEATURES]


def _rel_diff(got, ref) -> float:
    import numpy as np

    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


def main(argv=None) -> dict:
    """Returns ``{name: path}`` of the written files (and ``{name}_max_rel_diff[_eager]`` with --verify)."""
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(args.checkpoint or cfg.MODEL.WEIGHTS)
    heads = model.roi_heads
    if not isinstance(getattr(heads, "box_pooler", None), ROIAlignPooler):
        raise ValueError(
            f"{type(heads).__name__}.box_pooler is {type(getattr(heads, 'box_pooler', None)).__name__}, "
            "not roi_plugin's ROIAlignPooler: use MODEL.ROI_HEADS.NAME PluginROIHeads or GridSampleROIHeads"
        )
    os.makedirs(args.output_dir, exist_ok=True)
    modules = {
        "box_branch": (ExportableBoxBranch(heads, args.max_grid, args.pooler_export), ("scores", "deltas")),
        "box_pooler": (ExportablePooler(heads.box_pooler, args.max_grid, args.pooler_export), ("pooled",)),
    }
    if not modules["box_pooler"][0].exact_for_all_boxes():
        print(
            f"note: POOLER_SAMPLING_RATIO is 0 (adaptive) and --pooler-export grid_sample lays out at "
            f"most {args.max_grid} samples per bin and axis: ROIs whose adaptive grid is larger "
            "(extent > max_grid * output_size level pixels on an axis) differ from the eager model; "
            "--verify measures by how much. --pooler-export roi_align is exact for every ROI."
        )
    feats = example_features(model, cfg, 2, args.height, args.width, seed=0)
    rois = random_rois(2, args.num_rois, args.height, args.width, seed=0)
    written = {}
    for name, (module, outputs) in modules.items():
        path = os.path.join(args.output_dir, f"{name}.onnx")
        export_onnx(module, feats, rois, path, output_names=outputs, opset_version=args.opset)
        written[name] = path
        print(f"wrote {path}")
    if args.verify:
        import numpy as np
        import onnxruntime as ort

        # Other image count, image size and ROI count than the export used.
        h2, w2 = args.height + 64, args.width - 32
        feats2 = example_features(model, cfg, 3, h2, w2, seed=1)
        rois2 = random_rois(3, args.num_rois + 5, h2, w2, seed=1)
        feed = {f"feature{i}": f.numpy() for i, f in enumerate(feats2)}
        feed["rois"] = rois2.numpy()
        # The reference is the eager model, the heads' own pooler with its operator: what a
        # user runs. The exported wrapper run in PyTorch is printed alongside (the operator for
        # --pooler-export roi_align; GridSample's static path, capped, for grid_sample).
        box_lists = [rois2[rois2[:, 0] == i, 1:] for i in range(3)]
        with torch.no_grad():
            pooled = heads.box_pooler(feats2, box_lists)
            eager = {
                "box_pooler": (pooled,),
                "box_branch": tuple(heads.box_predictor(heads.box_head(pooled))),
            }
        failed = []
        for name, (module, _) in modules.items():
            sess = ort.InferenceSession(written[name], providers=["CPUExecutionProvider"])
            with torch.no_grad():
                ref = module(*feats2, rois2)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, feed)
            # relative to the outputs' magnitude (randomly initialised backbones give large maps)
            diff_eager = max(_rel_diff(g, r.numpy()) for g, r in zip(got, eager[name]))
            diff = max(_rel_diff(g, r.numpy()) for g, r in zip(got, ref))
            written[f"{name}_max_rel_diff_eager"] = diff_eager
            written[f"{name}_max_rel_diff"] = diff
            ok = diff_eager <= args.tolerance
            print(
                f"{name}: onnxruntime vs eager PyTorch max relative diff {diff_eager:.2e} "
                f"({'within' if ok else 'EXCEEDS'} --tolerance {args.tolerance:g}); vs the exported "
                f"wrapper in PyTorch {diff:.2e}; {len(rois2)} ROIs, 3 images of {h2}x{w2}"
            )
            if not ok:
                failed.append(f"{name} {diff_eager:.2e}")
        if failed:
            hint = "" if modules["box_pooler"][0].exact_for_all_boxes() else (
                " (--pooler-export grid_sample caps adaptive sampling at --max-grid; "
                "--pooler-export roi_align is exact)"
            )
            raise SystemExit(
                f"--verify failed: onnxruntime differs from eager PyTorch beyond --tolerance "
                f"{args.tolerance:g}: {', '.join(failed)}{hint}"
            )
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
