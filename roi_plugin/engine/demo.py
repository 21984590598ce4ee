# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Run a trained model on image files: one picture per image and one ``detections.json``.

The library half of tools/demo.py (Detectron2's demo/demo.py for images, which is not part of
a pip-installed detectron2): :func:`collect_images` expands files, folders and globs;
:func:`draw_instances` draws predictions with Detectron2's ``Visualizer`` (boxes, rotated
boxes, classes, scores, masks; tools/visualize.py draws with it too); :func:`instances_to_json`
turns one image's ``Instances`` into JSON (boxes: XYXY, or for a rotated model
``x_ctr, y_ctr, w, h, angle``; class ids and names, scores, COCO RLE masks);
:func:`run_demo` runs Detectron2's ``DefaultPredictor`` (resize to the test size, the model,
boxes back in input pixels) over the images, skipping unreadable ones with a warning.
"""
import glob
import json
import logging
import os
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "draw_instances", "instances_to_json", "run_demo"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Files, folders (their image files, sorted, not recursive) and globs, in the order given.
    A path that names nothing is kept, so that it is reported as unreadable."""
    paths = []
    for item in inputs:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
        elif glob.has_magic(item):
            paths += sorted(p for p in glob.glob(item) if os.path.isfile(p))
        else:
            paths.append(item)
    return list(dict.fromkeys(paths))  # drop repeats, keep order


def draw_instances(image_rgb: np.ndarray, instances, metadata) -> np.ndarray:
    """Detectron2's Visualizer on one image: boxes, class names, scores and masks. RGB uint8."""
    from detectron2.utils.visualizer import ColorMode, Visualizer

    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(instances.to("cpu")).get_image()


def instances_to_json(instances, class_names=None) -> Dict:
    """One image's predictions as plain JSON: ``boxes`` (input pixels: ``x1, y1, x2, y2``, or for
    a rotated model ``x_ctr, y_ctr, w, h, angle`` with the angle in degrees, counter-clockwise;
    ``run_demo`` records which as ``box_mode``), ``classes`` (contiguous ids), ``class_names``,
    ``scores`` and, for mask models, ``masks`` as COCO RLE (``{"size": [h, w], "counts": str}``,
    decode with ``pycocotools.mask.decode``)."""
    inst = instances.to("cpu")
    classes = inst.pred_classes.tolist()
    digits = [2, 2, 2, 2, 3][: inst.pred_boxes.tensor.shape[1]]  # px to 0.01, angles to 0.001 degree
    out = {
        "boxes": [[round(float(v), d) for v, d in zip(b, digits)] for b in inst.pred_boxes.tensor.tolist()],
        "classes": classes,
        "class_names": [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes],
        "scores": [round(float(s), 5) for s in inst.scores.tolist()],
    }
    if inst.has("pred_masks"):
        from pycocotools import mask as mask_util

        masks = np.asarray(inst.pred_masks.numpy(), dtype=np.uint8, order="F")
        rles = mask_util.encode(masks.transpose(1, 2, 0).copy(order="F")) if len(masks) else []
        out["masks"] = [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]
    return out


def _output_name(path: str, taken: set) -> str:
    """The input's file name (as Detectron2's demo), made unique, with an extension OpenCV writes."""
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower() if ext.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    name, k = stem + ext, 1
    while name in taken:
        name, k = f"{stem}_{k}{ext}", k + 1
    taken.add(name)
    return name


def run_demo(cfg, paths: Sequence[str], output_dir: str, progress: bool = True) -> Dict:
    """Predict, draw and record every image of ``paths``.

    Args:
        cfg: a frozen config whose MODEL.WEIGHTS is the checkpoint; the score threshold is
            MODEL.ROI_HEADS.SCORE_THRESH_TEST; class names come from DATASETS.TEST[0].
        output_dir: created if needed; gets one picture per readable image and detections.json.
    Returns:
        what was written to detections.json: ``images`` (one entry per readable image),
        ``skipped`` (``file`` and ``reason`` per unreadable one) and ``box_mode`` (how the boxes
        read, ``XYXY_ABS`` or, for a rotated model, ``XYWHA_ABS``).
    """
    import cv2
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from tqdm import tqdm

    from .train import is_rotated_model

    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    class_names = metadata.get("thing_classes")
    os.makedirs(output_dir, exist_ok=True)
    images, skipped, taken = [], [], set()
    for path in tqdm(paths, desc="demo", unit="image", disable=not progress):
        try:
            image = read_image(path, format="BGR")  # PIL + EXIF orientation, as Detectron2's demo
        except Exception as e:  # missing file, not an image, truncated file...
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            logger.warning(f"skipping {path}: cannot read it as an image ({reason})")
            skipped.append({"file": path, "reason": reason})
            continue
        instances = predictor(image)["instances"].to("cpu")
        picture = os.path.join(output_dir, _output_name(path, taken))
        drawn = draw_instances(image[:, :, ::-1], instances, metadata)
        if not cv2.imwrite(picture, np.ascontiguousarray(drawn[:, :, ::-1])):
            raise OSError(f"cannot write {picture}")
        images.append({"file": path, "picture": picture, "height": int(image.shape[0]),
                       "width": int(image.shape[1]), **instances_to_json(instances, class_names)})
    record = {
        "config_weights": cfg.MODEL.WEIGHTS,
        "score_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "thing_classes": list(class_names) if class_names else None,
        # how "boxes" read: Detectron2's BoxMode "XYXY_ABS" (x1, y1, x2, y2) or, for a rotated
        # model, "XYWHA_ABS" (x_ctr, y_ctr, w, h, angle in degrees, counter-clockwise)
        "box_mode": "XYWHA_ABS" if is_rotated_model(cfg) else "XYXY_ABS",
        "images": images,
        "skipped": skipped,
    }
    tmp = os.path.join(output_dir, "detections.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(output_dir, "detections.json"))
    return record
