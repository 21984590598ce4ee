# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""A deterministic synthetic instance-segmentation dataset: coloured shapes on cluttered backgrounds.

Every image holds a few objects of four classes (circle, square, triangle, star) whose sizes
are log-uniform from about 16 to 224 pixels, plus now and then one larger than the image, so
that on 256-pixel images the FPN level rule (``sqrt(wh)`` of 224 px at P4) sends ground-truth
boxes to P2 (< 112 px), P3 (112..224 px) and P4 (>= 224 px). P5 takes boxes of 448 px and more,
which a 256-pixel image cannot hold. Objects overlap and occlude each other (the later one drawn is
on top); the ground-truth masks are the *visible* parts, as COCO polygons. Each class has its own hue
band (see :func:`_class_color`). The background is a noisy colour gradient with clutter
(lines, dots, rings) of any colour that is not annotated.

The images and COCO json are generated on first use into a cache directory
(``$ROI_PLUGIN_DATASETS``, default ``datasets/`` under the working directory: the repository's
git-ignored ``datasets/`` for ``./run.sh``, which runs from the repository root) and never
committed. Generation is
deterministic (one seeded RNG per image), takes seconds, and is atomic: a split is written
into a temporary directory, a ``MANIFEST.json`` with the SHA-256 of every file is written
last, and the directory is renamed into place. On load the manifest is checked against the
files; a cache that is incomplete, corrupt or of another generator version is rebuilt (the
cache is :mod:`roi_plugin.data.cache`, shared with the rotated shapes of :mod:`.shapes_rotated`).
"""
import colorsys
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import contourpy
import numpy as np
from PIL import Image, ImageDraw

from .cache import ENV_VAR  # noqa: F401  (shapes.ENV_VAR still names the variable)
from .cache import GeneratedDataset, dataset_root, ensure_split, split_dir, verify_split

__all__ = [
    "SHAPES_CLASSES",
    "SPLITS",
    "shapes_root",
    "ensure_shapes_split",
    "verify_shapes_split",
    "generate_shapes_image",
    "register_shapes",
    "register_shapes_instances",
]

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ("circle", "square", "triangle", "star")
# Bump when the generator's output changes: an older cache is then rebuilt, never reused.
GENERATOR_VERSION = 5
# split -> (number of images, base seed). Seeds differ so val never repeats a train image.
SPLITS: Dict[str, Tuple[int, int]] = {"train": (1000, 1), "val": (200, 2)}
IMAGE_SIZE = 256
MIN_OBJECT_SIZE, MAX_OBJECT_SIZE = 16.0, 224.0
# Fraction of images whose first (bottom-most) object is about as large as the image.
LARGE_OBJECT_PROB = 0.15
# An object stays annotated only while at least this fraction of it is visible.
MIN_VISIBLE_FRACTION = 0.6


def shapes_root() -> Path:
    """The cache directory: ``$ROI_PLUGIN_DATASETS``, or ``datasets/`` under the current working
    directory, as an absolute path (:func:`roi_plugin.data.cache.dataset_root`)."""
    return dataset_root()


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def _shape_polygon(rng: np.random.Generator, cls: str, cx: float, cy: float, size: float) -> np.ndarray:
    """(N, 2) vertices (x, y) of one object whose bounding extent is about ``size`` pixels."""
    r = size / 2.0
    angle = rng.uniform(0, 2 * math.pi)
    if cls == "circle":
        # An ellipse with mild eccentricity; enough vertices that the polygon is round.
        n = 48
        ry = r * rng.uniform(0.75, 1.0)
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        pts = np.stack([r * np.cos(t), ry * np.sin(t)], axis=1)
    elif cls == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        aspect = rng.uniform(0.8, 1.0)
        pts = np.stack([r * np.cos(t), aspect * r * np.sin(t)], axis=1)
    elif cls == "triangle":
        t = np.array([0.5, 0.5 + 2 / 3, 0.5 + 4 / 3]) * math.pi + rng.uniform(-0.15, 0.15, 3)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    elif cls == "star":
        t = np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
        pts = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown shape class {cls!r}; expected one of {SHAPES_CLASSES}")
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def _rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of a polygon given in image coordinates (pixel i spans [i, i+1])."""
    img = Image.new("1", (w, h), 0)
    # PIL fills pixel (x, y) when its centre (x + 0.5, y + 0.5) is inside; shift to its convention.
    ImageDraw.Draw(img).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in poly], fill=1)
    return np.asarray(img, dtype=bool)


def _mask_to_polygons(mask: np.ndarray) -> Optional[List[List[float]]]:
    """COCO polygons of the connected parts of a boolean mask, or None if the mask has a hole
    (COCO polygons cannot express holes). Coordinates are image coordinates."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    y0, x0 = ys.min(), xs.min()
    # Work on the mask's bounding crop (padded by 1 so that contours close): much faster.
    z = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1].astype(np.float64), 1)
    points, offsets = contourpy.contour_generator(z=z, fill_type="OuterOffset").filled(0.5, 1.5)
    polys = []
    for pts, offs in zip(points, offsets):
        if len(offs) > 2:  # outer ring plus at least one hole
            return None
        # Contours pass between pixel centres; +0.5 maps index space to pixel-edge coordinates,
        # -1 undoes the padding, + (x0, y0) undoes the crop.
        ring = pts[offs[0] : offs[1]] + (x0 + 0.5 - 1.0, y0 + 0.5 - 1.0)
        if len(ring) >= 3 and _poly_area(ring) >= 2.0:
            polys.append(np.round(ring.reshape(-1), 2).tolist())
    return polys


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _class_color(rng: np.random.Generator, cls: int, avoid: np.ndarray) -> np.ndarray:
    """A colour in the class's hue band (random saturation and brightness), at least some
    distance from ``avoid`` (the local background) so that the object shows.

    Each class owns a quarter of the hue circle (circle red-orange, square yellow-green, triangle
    cyan-blue, star violet-magenta), as colour and shape both identify the class: a randomly
    initialised ResNet-18 learns colour within the CPU budget, shape alone it does not (with
    random colours, fg classification was near chance after 600 iterations). Clutter and
    backgrounds take any colour, so colour alone does not make an object.
    """
    c = 255 - avoid
    for _ in range(20):
        hue = (cls / len(SHAPES_CLASSES) + rng.uniform(-0.08, 0.08)) % 1.0
        c = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))) * 255
        if np.abs(c - avoid).sum() > 120:
            return c
    return c


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Noisy colour gradient plus un-annotated clutter (lines, dots, rings). float32 (h, w, 3)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    direction = rng.uniform(0, 2 * math.pi)
    t = (np.arange(w, dtype=np.float32)[None, :] * math.cos(direction)
         + np.arange(h, dtype=np.float32)[:, None] * math.sin(direction))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.integers(0, 3)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:
            x2, y2 = x + rng.uniform(-80, 80), y + rng.uniform(-80, 80)
            draw.line([(x, y), (x2, y2)], fill=color, width=int(rng.integers(1, 4)))
        elif kind == 1:
            r = rng.uniform(1, 4)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            r = rng.uniform(6, 20)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=2)
    return np.asarray(img, dtype=np.float32)


def generate_shapes_image(seed_seq, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE):
    """Draw one image and its annotations, deterministically from ``seed_seq``.

    Args:
        seed_seq: anything ``np.random.default_rng`` accepts, e.g. ``[base_seed, index]``.
    Returns:
        image: (H, W, 3) uint8 RGB.
        annos: list of dicts with ``category_id`` (0-based index into SHAPES_CLASSES),
            ``bbox`` (XYWH_ABS, of the visible part), ``segmentation`` (COCO polygons of the
            visible part) and ``area`` (visible pixels).
    """
    rng = np.random.default_rng(seed_seq)
    h, w = height, width
    canvas = _background(rng, h, w)
    n_objects = int(rng.integers(1, 6))
    # Larger objects first: small ones then sit on top of big ones (occluding, never hidden).
    sizes = sorted(np.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_SIZE), n_objects)),
                   reverse=True)
    if rng.uniform() < LARGE_OBJECT_PROB:
        # One object larger than the image, cut by its border: with the FPN level rule
        # (sqrt(wh) = 224 px at P4) only boxes of about the whole image reach P5.
        sizes[0] = rng.uniform(1.3, 1.8) * MAX_OBJECT_SIZE
    # Placed objects: class id, full mask, colour; visible masks are recomputed as we go.
    classes: List[int] = []
    full_masks: List[np.ndarray] = []
    colors: List[np.ndarray] = []
    visible: List[np.ndarray] = []
    polys: List[Optional[List[List[float]]]] = []
    for size in sizes:
        for _attempt in range(20):
            cls = int(rng.integers(0, len(SHAPES_CLASSES)))
            # Centres may sit near the border, so objects are sometimes cut by it (truncation).
            margin = min(size * 0.3, w * 0.45)
            cx = rng.uniform(margin, w - margin)
            margin = min(size * 0.3, h * 0.45)
            cy = rng.uniform(margin, h - margin)
            poly = _shape_polygon(rng, SHAPES_CLASSES[cls], cx, cy, size)
            mask = _rasterize(poly, h, w)
            if mask.sum() < 0.6 * MIN_OBJECT_SIZE**2 * 0.4:
                continue
            # The new object goes on top: check every earlier object stays recognisable.
            new_visible = [v & ~mask for v in visible]
            ok = True
            new_polys = list(polys)
            for i, (v_old, v_new) in enumerate(zip(visible, new_visible)):
                if not (v_old & mask).any():
                    continue
                if v_new.sum() < MIN_VISIBLE_FRACTION * full_masks[i].sum():
                    ok = False
                    break
                p = _mask_to_polygons(v_new)
                if not p:  # a hole (fully enclosed object) or nothing left: try elsewhere
                    ok = False
                    break
                new_polys[i] = p
            if not ok:
                continue
            # Unoccluded objects keep their exact polygon (clipped to the image by the mask test).
            inside = (poly[:, 0].min() >= 0 and poly[:, 1].min() >= 0
                      and poly[:, 0].max() <= w and poly[:, 1].max() <= h)
            own = [np.round(poly.reshape(-1), 2).tolist()] if inside else _mask_to_polygons(mask)
            if not own:
                continue
            visible = new_visible + [mask]
            polys = new_polys + [own]
            classes.append(cls)
            full_masks.append(mask)
            bg_here = canvas[mask].mean(axis=0)
            colors.append(_class_color(rng, cls, bg_here))
            break
    for m, c in zip(full_masks, colors):
        # Mild shading inside each object so that fills are not perfectly flat.
        canvas[m] = c * rng.uniform(0.85, 1.0)
    # Uniform pixel noise (std ~8); integer draws are several times cheaper than normal ones.
    canvas += rng.integers(-14, 15, canvas.shape, dtype=np.int16)
    image = canvas.clip(0, 255).astype(np.uint8)

    annos = []
    for cls, v, p in zip(classes, visible, polys):
        # The box of the polygons (not of the pixel mask): specks of one or two pixels that
        # occlusion can leave are not in the polygons, so they must not stretch the box.
        pts = np.concatenate([np.asarray(q).reshape(-1, 2) for q in p])
        x0, y0 = np.maximum(pts.min(axis=0), 0.0)
        x1, y1 = np.minimum(pts.max(axis=0), (w, h))
        annos.append(
            {
                "category_id": cls,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "segmentation": p,
                "area": float(v.sum()),
                "iscrowd": 0,
            }
        )
    return image, annos


# ---------------------------------------------------------------------------------------------
# Cache: generate, verify, rebuild (roi_plugin.data.cache)
# ---------------------------------------------------------------------------------------------
def _dataset() -> GeneratedDataset:
    """This generator as the cache sees it, read at call time (tests shrink ``SPLITS``)."""
    return GeneratedDataset("shapes", GENERATOR_VERSION, SPLITS, generate_shapes_image, SHAPES_CLASSES)


def _split_dir(root: Path, split: str) -> Path:
    return split_dir(_dataset(), root, split)


def verify_shapes_split(split_dir: Path, split: str) -> Optional[str]:
    """Why the cached split is unusable (a short reason), or None if it is complete and intact."""
    return verify_split(_dataset(), split_dir, split)


def ensure_shapes_split(split: str, root: Optional[Path] = None) -> Path:
    """Return the directory of a verified split, generating (or rebuilding) it if needed.

    Args:
        split: "train" or "val".
        root: cache directory; default :func:`shapes_root`.
    Returns:
        the split directory, holding ``images/`` and ``annotations.json``.
    """
    return ensure_split(_dataset(), split, root)


# ---------------------------------------------------------------------------------------------
# Detectron2 registration
# ---------------------------------------------------------------------------------------------
def _load(name: str, split: str, root: Path):
    from detectron2.data.datasets import load_coco_json

    split_dir = ensure_shapes_split(split, root)
    return load_coco_json(str(split_dir / "annotations.json"), str(split_dir / "images"), name)


def register_shapes_instances(name: str, split: str, root: Optional[Path] = None) -> None:
    """Register one split as a Detectron2 dataset ``name`` (lazy: generated on first ``get``).

    Args:
        root: cache directory, fixed at registration; default :func:`shapes_root`.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root) if root is not None else shapes_root()
    DatasetCatalog.register(name, lambda: _load(name, split, root))
    split_dir = _split_dir(root, split)
    MetadataCatalog.get(name).set(
        # Known in advance; the file exists once the dataset has been loaded (the test loader
        # is always built before COCOEvaluator reads it).
        json_file=str(split_dir / "annotations.json"),
        image_root=str(split_dir / "images"),
        evaluator_type="coco",
        bbox_mode="XYWH_ABS",  # roi_plugin: what the config checks match against the model
        thing_classes=list(SHAPES_CLASSES),
    )


def register_shapes() -> None:
    """Register ``shapes_train`` and ``shapes_val`` (idempotent)."""
    from detectron2.data import DatasetCatalog

    for split in SPLITS:
        name = f"shapes_{split}"
        if name not in DatasetCatalog.list():
            register_shapes_instances(name, split)
