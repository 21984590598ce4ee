#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Pictures of a finished run, written next to its metrics.json:

- ``predictions.png``: predictions (top) and ground truth (bottom) on a few val images,
  drawn with Detectron2's ``Visualizer``;
- ``loss_curves.png``: the losses and learning rate logged in ``metrics.json``;
- ``roi_crops.png``: the inspection view: for a few ROIs, the image crop, then the
  mean-over-channels of the 7x7 box-pooler and the 14x14 mask-pooler outputs, with the FPN
  level each ROI was assigned to. For a rotated model the ROIs are rotated ground-truth boxes
  and the crop is straightened (turned by minus the box's angle), as the rotated pooler samples
  it: the box's width runs along the crop's x axis.

Rotated models (boxes ``x_ctr, y_ctr, w, h, angle``) are drawn with Detectron2's
``Visualizer`` too, which draws rotated boxes (the dashed side is the box's left side).

    python tools/visualize.py --run output/shapes_mask_rcnn_plugin
"""
import argparse
import json
import os
import sys
from typing import List

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, BoxMode, RotatedBoxes  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

import roi_plugin  # noqa: E402
import roi_plugin.data  # noqa: E402,F401  registers shapes_train / shapes_val
from roi_plugin.engine.demo import draw_instances  # noqa: E402

LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def _inputs(cfg, record):
    """The model input for one dataset record (test images are already at the test size)."""
    image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return image, {"image": tensor, "height": image.shape[0], "width": image.shape[1]}


def _rgb(cfg, image):
    return image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image


def draw_predictions(cfg, model, records, path, score_thresh=0.5):
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    fig, axes = plt.subplots(2, len(records), figsize=(3.2 * len(records), 6.6), squeeze=False)
    for j, rec in enumerate(records):
        image, inp = _inputs(cfg, rec)
        with torch.no_grad():
            inst = model([inp])[0]["instances"].to("cpu")
        inst = inst[inst.scores >= score_thresh]
        pred = draw_instances(_rgb(cfg, image), inst, meta)  # as tools/demo.py draws
        gt = Visualizer(_rgb(cfg, image), meta).draw_dataset_dict(rec).get_image()
        for i, (vis, title) in enumerate(((pred, f"predicted ({len(inst)}, score>={score_thresh})"),
                                          (gt, f"ground truth ({len(rec['annotations'])})"))):
            axes[i, j].imshow(vis)
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_loss_curves(metrics_path, path):
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "total_loss" in r]
    if not rows:
        raise ValueError(f"{metrics_path} has no training losses")
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    it = [r["iteration"] for r in rows]
    for k in LOSS_KEYS:
        if k in rows[0]:
            ax.plot(it, [r[k] for r in rows], label=k, lw=2 if k == "total_loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title(f"losses (median over the {len(rows)} logging windows)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_lr.plot(it, [r.get("lr", float("nan")) for r in rows])
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _crop(image, box):
    """The pixels of an upright box ``x1, y1, x2, y2``, or of a rotated box ``x_ctr, y_ctr, w, h,
    angle`` straightened: the image turned by minus the box's angle (counter-clockwise degrees)
    about its centre, so that the box's width runs along x."""
    if len(box) == 4:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return image[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)]
    import cv2

    cx, cy, w, h, angle = box
    m = cv2.getRotationMatrix2D((cx, cy), -angle, 1.0)  # cv2: positive = counter-clockwise on screen
    m[:, 2] += (w / 2 - cx, h / 2 - cy)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (max(int(round(w)), 1), max(int(round(h)), 1)))


def draw_roi_crops(cfg, model, records, path, num_rois=6):
    """Mean-over-channels 7x7 (box pooler) and 14x14 (mask pooler) crops of ROIs of varied size."""
    # Ground-truth boxes from the first images, spread over sizes so several FPN levels show.
    cands = []
    for rec in records:
        for a in rec["annotations"]:
            if len(a["bbox"]) == 5:  # rotated: x_ctr, y_ctr, w, h, angle
                box = list(a["bbox"])
                size = float(np.sqrt(box[2] * box[3]))
            else:
                box = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                size = float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
            cands.append((size, rec, box, a["category_id"]))
    cands.sort(key=lambda c: c[0])
    picks = [cands[int(i)] for i in np.linspace(0, len(cands) - 1, min(num_rois, len(cands)))]
    box_pooler = model.roi_heads.box_pooler
    mask_pooler = getattr(model.roi_heads, "mask_pooler", None)
    in_features = model.roi_heads.in_features if hasattr(model.roi_heads, "in_features") else \
        cfg.MODEL.ROI_HEADS.IN_FEATURES
    names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    rows = 3 if mask_pooler is not None else 2
    fig, axes = plt.subplots(rows, len(picks), figsize=(2.1 * len(picks), 2.2 * rows), squeeze=False)
    for j, (size, rec, box, cls) in enumerate(picks):
        image, inp = _inputs(cfg, rec)
        with torch.no_grad():
            images = model.preprocess_image([inp])
            feats = model.backbone(images.tensor)
            feats = [feats[f] for f in in_features]
            box_type = RotatedBoxes if len(box) == 5 else Boxes
            boxes = [box_type(torch.tensor([box], dtype=torch.float32))]
            crops = [box_pooler(feats, boxes)]
            if mask_pooler is not None:
                crops.append(mask_pooler(feats, boxes))
        level = box_pooler.min_level + int(roi_plugin.assign_boxes_to_levels(
            boxes[0].tensor, box_pooler.min_level, box_pooler.max_level,
            box_pooler.canonical_box_size, box_pooler.canonical_level)[0])
        axes[0, j].imshow(_crop(_rgb(cfg, image), box))
        axes[0, j].set_title(f"{names[cls]} {size:.0f}px -> P{level}", fontsize=8)
        for i, c in enumerate(crops, start=1):
            m = c[0].mean(dim=0).numpy()
            axes[i, j].imshow(m, cmap="viridis")
            axes[i, j].set_title(f"{m.shape[0]}x{m.shape[1]} mean over {c.shape[1]} ch", fontsize=7)
        for i in range(rows):
            axes[i, j].axis("off")
    fig.suptitle(f"ROI crops ({type(box_pooler).__name__}); the level rule puts sqrt(wh)="
                 f"{box_pooler.canonical_box_size:g}px at P{box_pooler.canonical_level}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_pictures(cfg, model, num_images: int = 4) -> List[str]:
    """Write predictions.png, loss_curves.png and roi_crops.png into cfg.OUTPUT_DIR.

    Args:
        model: the trained model (not DDP-wrapped); it is put in eval mode and restored.
    Returns:
        the paths written.
    """
    out = cfg.OUTPUT_DIR
    records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:num_images]
    was_training = model.training
    model.eval()
    paths = []
    try:
        p = os.path.join(out, "predictions.png")
        draw_predictions(cfg, model, records, p)
        paths.append(p)
        p = os.path.join(out, "roi_crops.png")
        draw_roi_crops(cfg, model, records, p)
        paths.append(p)
    finally:
        model.train(was_training)
    metrics = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics):
        p = os.path.join(out, "loss_curves.png")
        draw_loss_curves(metrics, p)
        paths.append(p)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="OUTPUT_DIR of a finished run (holds config.yaml)")
    parser.add_argument("--weights", default="", help="checkpoint; default <run>/model_final.pth")
    parser.add_argument("--num-images", type=int, default=4)
    args = parser.parse_args(argv)
    cfg_path = os.path.join(args.run, "config.yaml")
    weights = args.weights or os.path.join(args.run, "model_final.pth")
    for p in (cfg_path, weights):
        if not os.path.isfile(p):
            print(f"visualize.py: error: {p} not found (is {args.run} a finished run?)", file=sys.stderr)
            return 2
    cfg = get_cfg()
    roi_plugin.add_roi_plugin_config(cfg)
    cfg.merge_from_file(cfg_path)
    cfg.OUTPUT_DIR = args.run
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    for p in write_pictures(cfg, model, args.num_images):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
