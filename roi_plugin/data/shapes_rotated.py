# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""A deterministic synthetic dataset of rotated boxes: elongated shapes at any angle.

The rotated sibling of :mod:`.shapes` (same backgrounds with clutter, hue bands, shading, noise
and cache): 256x256 images with 2 to 8 objects of four classes whose orientation is well
defined, each annotated with the rotated box ``(x_ctr, y_ctr, w, h, angle)`` of Detectron2's
``BoxMode.XYWHA_ABS`` (pixels; degrees, counter-clockwise on the screen, see
:class:`detectron2.structures.RotatedBoxes`):

* ``rectangle`` (aspect 1.5-3.5), ``ellipse`` (1.5-3), ``ship`` (a hull with a pointed bow at one
  end, 2.5-5) and ``capsule`` (a bar with round ends, 2-4.5); long sides log-uniform from 20 to
  180 px, short sides at least 7 px; angles uniform.
* **Ambiguous angles.** A square is the same at ``a`` and ``a + 90``, a circle at every angle:
  a detector trained on an arbitrary angle for them is penalised for boxes that are equally
  right. So there are no squares or circles: every object is at least 1.5 times as long as wide,
  and the box is the object's own frame, whose long side fixes the angle modulo 180 degrees
  (the ship's bow direction, modulo 360, is not encoded). Annotations use the long-side
  convention: ``w >= h`` and ``angle`` in ``[-90, 90)`` (what
  :class:`~roi_plugin.data.rotated_mapper.RotatedDatasetMapper` restores after flips).
* The box is tight: it is the minimum-area rectangle of the drawn object (each outline touches
  all four sides of its box), which tests/test_shapes_rotated_data.py checks with OpenCV's
  ``minAreaRect`` on the drawn masks.
* Objects lie wholly inside the image and do not touch (2 px apart at least), so every box is the
  whole object, as in aerial images; about a third of the images hold a row of 2-5 parallel
  objects of one class a few pixels apart (a harbour, a car park), where upright boxes would
  overlap heavily.

Registered as ``shapes_rotated_train`` (1000 images) and ``shapes_rotated_val`` (200 images) by
``import roi_plugin.data``; generated on first use (seconds) into
``$ROI_PLUGIN_DATASETS/shapes_rotated_v<version>/`` (:mod:`.cache`).
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .cache import GeneratedDataset, dataset_root, ensure_split, split_dir
from .shapes import _background, _class_color

__all__ = [
    "ROTATED_CLASSES",
    "SPLITS",
    "ensure_rotated_split",
    "generate_rotated_image",
    "register_shapes_rotated",
    "register_shapes_rotated_instances",
]

ROTATED_CLASSES = ("rectangle", "ellipse", "ship", "capsule")
# Bump when the generator's output changes: an older cache is then rebuilt, never reused.
GENERATOR_VERSION = 1
# split -> (number of images, base seed); seeds differ from each other and from the upright set.
SPLITS: Dict[str, Tuple[int, int]] = {"train": (1000, 11), "val": (200, 12)}
IMAGE_SIZE = 256
MIN_LONG, MAX_LONG = 20.0, 180.0
MIN_SHORT = 7.0
# Long side / short side of each class: never below 1.5, so that the angle is well defined.
ASPECT = {"rectangle": (1.5, 3.5), "ellipse": (1.5, 3.0), "ship": (2.5, 5.0), "capsule": (2.0, 4.5)}
GAP = 2.0  # the least distance in pixels between two objects
ROW_PROB = 0.35  # fraction of images that hold a row of parallel objects


def canonical_angle(angle):
    """An angle in degrees brought into ``[-90, 90)`` (the box is the same modulo 180)."""
    return (np.asarray(angle, dtype=np.float64) + 90.0) % 180.0 - 90.0


def _outline(rng: np.random.Generator, cls: str, long: float, short: float) -> np.ndarray:
    """(N, 2) vertices (u, v) of an object in its own frame: u along the long side, v along the
    short one, centred; its extent is exactly [-long/2, long/2] x [-short/2, short/2]."""
    a, b = long / 2.0, short / 2.0
    if cls == "rectangle":
        return np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    if cls == "ellipse":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)  # includes the four extreme points
        return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    if cls == "ship":
        bow = rng.uniform(0.2, 0.35) * long
        pts = np.array([[-a, -b], [a - bow, -b], [a, 0.0], [a - bow, b], [-a, b]])
        return pts * np.array([rng.choice([-1.0, 1.0]), 1.0])  # bow at either end
    if cls == "capsule":
        t = np.linspace(-math.pi / 2, math.pi / 2, 17)  # half circles of radius b, tips at t = 0
        right = np.stack([a - b + b * np.cos(t), b * np.sin(t)], axis=1)
        return np.concatenate([right, -right])
    raise ValueError(f"unknown rotated shape class {cls!r}; expected one of {ROTATED_CLASSES}")


def _to_image(local: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Box-frame points to image points, Detectron2's RotatedBoxes convention: the width vector
    (1, 0) becomes (cos a, -sin a) (counter-clockwise on the screen, y pointing down)."""
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    u, v = local[:, 0], local[:, 1]
    return np.stack([cx + c * u + s * v, cy - s * u + c * v], axis=1)


def _fill_convex(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of the pixels whose centre (x + 0.5, y + 0.5) lies inside a convex
    polygon given in image coordinates (pixel i spans [i, i + 1]): exact, unlike PIL's
    ``ImageDraw.polygon``, which moves the vertices to whole pixels."""
    mask = np.zeros((h, w), dtype=bool)
    x0, y0 = np.floor(poly.min(axis=0)).astype(int).clip(0, (w, h))
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int).clip(0, (w, h))
    if x1 <= x0 or y1 <= y0:
        return mask
    px = np.arange(x0, x1) + 0.5
    py = (np.arange(y0, y1) + 0.5)[:, None]
    area2 = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    inside = np.ones((y1 - y0, x1 - x0), dtype=bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        # The centre is on the inner side of every edge (the side of the polygon's orientation).
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        inside &= cross * np.sign(area2) >= 0
    mask[y0:y1, x0:x1] = inside
    return mask


def _draw_size(rng: np.random.Generator, cls: str) -> Tuple[float, float]:
    long = float(np.exp(rng.uniform(math.log(MIN_LONG), math.log(MAX_LONG))))
    short = max(long / rng.uniform(*ASPECT[cls]), MIN_SHORT)
    return long, short


def generate_rotated_image(seed_seq, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE,
                           return_masks: bool = False):
    """Draw one image and its rotated boxes, deterministically from ``seed_seq``.

    Args:
        seed_seq: anything ``np.random.default_rng`` accepts, e.g. ``[base_seed, index]``.
        return_masks: also return each object's drawn (h, w) boolean mask.
    Returns:
        image: (H, W, 3) uint8 RGB.
        annos: list of dicts with ``category_id`` (0-based index into ROTATED_CLASSES),
            ``bbox`` ``[x_ctr, y_ctr, w, h, angle]`` (XYWHA_ABS, ``w >= h``, angle in
            ``[-90, 90)``), ``area`` (drawn pixels) and ``iscrowd`` 0.
        masks (only with ``return_masks``): list of (H, W) bool arrays, one per annotation.
    """
    rng = np.random.default_rng(seed_seq)
    h, w = height, width
    canvas = _background(rng, h, w)
    occupied = np.zeros((h, w), dtype=bool)
    objects: List[Tuple[int, List[float], np.ndarray]] = []  # class, box, mask

    def try_place(cls: int, box: List[float]) -> bool:
        cx, cy, long, short, angle = box
        name = ROTATED_CLASSES[cls]
        corners = _to_image(_outline(rng, "rectangle", long, short), cx, cy, angle)
        if corners.min() < 1.0 or corners[:, 0].max() > w - 1.0 or corners[:, 1].max() > h - 1.0:
            return False
        grown = _outline(rng, "rectangle", long + 2 * GAP, short + 2 * GAP)
        keep_out = _fill_convex(_to_image(grown, cx, cy, angle), h, w)
        if (keep_out & occupied).any():
            return False
        mask = _fill_convex(_to_image(_outline(rng, name, long, short), cx, cy, angle), h, w)
        if not mask.any():
            return False
        occupied[mask] = True
        objects.append((cls, box, mask))
        return True

    n_objects = int(rng.integers(2, 9))
    if rng.uniform() < ROW_PROB:
        # A row of parallel objects of one class, side by side along their short axis.
        cls = int(rng.integers(0, len(ROTATED_CLASSES)))
        long, short = _draw_size(rng, ROTATED_CLASSES[cls])
        long, short = min(long, 110.0), min(short, 40.0)
        angle = float(canonical_angle(rng.uniform(-90, 90)))
        k = int(rng.integers(2, 6))
        step = short + 2 * GAP + rng.uniform(0.5, 4.0)
        x0, y0 = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        t = math.radians(angle)
        # The short axis (0, 1) of the box frame, in the image: (sin a, cos a).
        for j in range(k):
            off = (j - (k - 1) / 2) * step
            scale = rng.uniform(0.92, 1.0)  # members differ a little, as parked cars do
            centre = [x0 + off * math.sin(t), y0 + off * math.cos(t)]
            try_place(cls, [*centre, long * scale, short * scale, angle])
        n_objects -= min(k, n_objects - 1)
    for _ in range(n_objects):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(ROTATED_CLASSES)))
            long, short = _draw_size(rng, ROTATED_CLASSES[cls])
            angle = float(canonical_angle(rng.uniform(-90, 90)))
            # The centre such that the box's upright extent fits in the image.
            t = math.radians(angle)
            ex = (abs(math.cos(t)) * long + abs(math.sin(t)) * short) / 2 + 1.0
            ey = (abs(math.sin(t)) * long + abs(math.cos(t)) * short) / 2 + 1.0
            if 2 * ex >= w or 2 * ey >= h:
                continue
            if try_place(cls, [rng.uniform(ex, w - ex), rng.uniform(ey, h - ey), long, short, angle]):
                break
    for cls, _, mask in objects:
        color = _class_color(rng, cls, canvas[mask].mean(axis=0))
        # Mild shading inside each object so that fills are not perfectly flat.
        canvas[mask] = color * rng.uniform(0.85, 1.0)
    # Uniform pixel noise (std ~8), as the upright shapes.
    canvas += rng.integers(-14, 15, canvas.shape, dtype=np.int16)
    image = canvas.clip(0, 255).astype(np.uint8)
    annos = [
        {
            "category_id": cls,
            "bbox": [round(float(v), 3) for v in box],
            "area": float(mask.sum()),
            "iscrowd": 0,
        }
        for cls, box, mask in objects
    ]
    if return_masks:
        return image, annos, [mask for _, _, mask in objects]
    return image, annos


# ---------------------------------------------------------------------------------------------
# Cache and Detectron2 registration
# ---------------------------------------------------------------------------------------------
def _dataset() -> GeneratedDataset:
    """This generator as the cache sees it, read at call time (tests shrink ``SPLITS``)."""
    return GeneratedDataset("shapes_rotated", GENERATOR_VERSION, SPLITS, generate_rotated_image,
                            ROTATED_CLASSES)


def ensure_rotated_split(split: str, root: Optional[Path] = None) -> Path:
    """The directory of a verified split (``images/``, ``annotations.json`` with 5-number
    ``bbox`` es), generated or rebuilt if needed; ``root`` defaults to ``$ROI_PLUGIN_DATASETS``."""
    return ensure_split(_dataset(), split, root)


def register_shapes_rotated_instances(name: str, split: str, root: Optional[Path] = None) -> None:
    """Register one split as a Detectron2 dataset ``name`` (lazy: generated on first ``get``),
    with annotations in ``BoxMode.XYWHA_ABS``; ``root`` is fixed at registration."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .coco import load_rotated_coco_json

    root = Path(root) if root is not None else dataset_root()

    def load():
        directory = ensure_rotated_split(split, root)
        return load_rotated_coco_json(str(directory / "annotations.json"), str(directory / "images"), name)

    DatasetCatalog.register(name, load)
    directory = split_dir(_dataset(), root, split)
    MetadataCatalog.get(name).set(
        # Known in advance; the file exists once the dataset has been loaded (the test loader is
        # always built before the evaluator reads it).
        json_file=str(directory / "annotations.json"),
        image_root=str(directory / "images"),
        evaluator_type="coco",
        thing_classes=list(ROTATED_CLASSES),
        bbox_mode="XYWHA_ABS",  # roi_plugin: what the config checks match against the model
    )


def register_shapes_rotated() -> None:
    """Register ``shapes_rotated_train`` and ``shapes_rotated_val`` (idempotent)."""
    from detectron2.data import DatasetCatalog

    for split in SPLITS:
        name = f"shapes_rotated_{split}"
        if name not in DatasetCatalog.list():
            register_shapes_rotated_instances(name, split)
