# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Register a user's COCO-format dataset from a ``NAME:ANNOTATIONS_JSON:IMAGE_DIR`` string,
after checking it, so that training never starts on input that would fail later.

The checks read the JSON once and stat every image (no decoding): the file exists and parses,
``images`` / ``annotations`` / ``categories`` are lists of objects with the keys Detectron2's
``load_coco_json`` reads, every listed image is a file under IMAGE_DIR, every annotation
points at a listed image and a listed category and has a ``bbox`` of 4 numbers
``[x, y, width, height]`` (upright) or of 5 numbers ``[x_ctr, y_ctr, width, height, angle]``
(rotated: Detectron2's ``BoxMode.XYWHA_ABS``, angle in degrees, counter-clockwise), the same
in every annotation of a file, with finite values and no negative side. Each problem is a
:class:`CocoDatasetError` whose message is one line naming the file and the entry.

Registration of upright boxes is Detectron2's ``register_coco_instances`` (boxes; masks when
the annotations have ``segmentation``); of rotated boxes the same with
:func:`load_rotated_coco_json` as the loader. Both set ``thing_classes`` up front from
``categories`` (sorted by id, as ``load_coco_json`` does), so the class count is known before
any data is loaded, and ``bbox_mode`` ("XYWH_ABS" or "XYWHA_ABS"), which the config checks match
against the model.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List

__all__ = ["CocoDatasetError", "CocoSummary", "parse_dataset_spec", "check_coco_json",
           "load_rotated_coco_json", "register_coco_dataset", "registered_coco_summary"]

SPEC_FORMAT = "NAME:ANNOTATIONS_JSON:IMAGE_DIR"
# bbox length -> what it holds, as the messages name it
_BOX_FORMS = {4: "[x, y, width, height]", 5: "[x_ctr, y_ctr, width, height, angle]"}


class CocoDatasetError(ValueError):
    """A bad --dataset argument or COCO file; the message is one line."""


@dataclass(frozen=True)
class CocoSummary:
    json_file: str
    image_root: str
    num_images: int
    num_annotations: int
    thing_classes: List[str]  # category names, sorted by category id
    has_segmentation: bool  # some annotation has a non-empty "segmentation"
    has_rle: bool  # some segmentation is RLE (needs INPUT.MASK_FORMAT bitmask)
    rotated: bool = False  # bboxes are [x_ctr, y_ctr, w, h, angle] (BoxMode.XYWHA_ABS)


# name -> summary of what --dataset registered in this process.
_REGISTERED: Dict[str, CocoSummary] = {}


def parse_dataset_spec(spec: str):
    """``"NAME:ANNOTATIONS_JSON:IMAGE_DIR"`` -> (name, json_file, image_root). IMAGE_DIR may
    contain ':'; NAME and ANNOTATIONS_JSON may not."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise CocoDatasetError(f"--dataset {spec!r}: expected {SPEC_FORMAT}")
    return parts[0].strip(), parts[1], parts[2]


def _entry(section: str, i: int, item) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{section}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


def check_coco_json(json_file: str, image_root: str) -> CocoSummary:
    """Check a COCO instances file and its images; raise :class:`CocoDatasetError` on the
    first problem, else return what the file holds."""
    if not os.path.isfile(json_file):
        raise CocoDatasetError(f"annotations file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise CocoDatasetError(f"image directory not found: {image_root} (for {json_file})")
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoDatasetError(f"{json_file}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CocoDatasetError(f"{json_file}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise CocoDatasetError(f"{json_file}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            what = "missing" if key not in data else f"not a list ({type(data[key]).__name__})"
            raise CocoDatasetError(f"{json_file}: '{key}' is {what}; a COCO instances file has a list of {key}")

    def need(section, i, item, keys):
        if not isinstance(item, dict):
            raise CocoDatasetError(f"{json_file}: {section}[{i}] is not an object")
        missing = [k for k in keys if k not in item]
        if missing:
            raise CocoDatasetError(f"{json_file}: {_entry(section, i, item)} has no {', '.join(missing)}")

    cat_names = {}
    for i, c in enumerate(data["categories"]):
        need("categories", i, c, ("id", "name"))
        if not isinstance(c["id"], int):
            raise CocoDatasetError(f"{json_file}: {_entry('categories', i, c)} id is not an integer")
        if c["id"] in cat_names:
            raise CocoDatasetError(f"{json_file}: {_entry('categories', i, c)} repeats a category id")
        cat_names[c["id"]] = str(c["name"])
    if not cat_names:
        raise CocoDatasetError(f"{json_file}: 'categories' is empty")
    image_ids = set()
    for i, im in enumerate(data["images"]):
        need("images", i, im, ("id", "file_name", "height", "width"))
        path = os.path.join(image_root, im["file_name"])
        if not os.path.isfile(path):
            raise CocoDatasetError(f"{json_file}: {_entry('images', i, im)} file_name {im['file_name']!r} "
                                   f"not found in {image_root}")
        image_ids.add(im["id"])
    has_segm = has_rle = False
    box_len = first_box = None
    for i, a in enumerate(data["annotations"]):
        need("annotations", i, a, ("image_id", "category_id", "bbox"))
        if a["category_id"] not in cat_names:
            ids = sorted(cat_names, key=str)
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            raise CocoDatasetError(f"{json_file}: {_entry('annotations', i, a)} has category_id "
                                   f"{a['category_id']!r}, not in categories (ids {shown})")
        if a["image_id"] not in image_ids:
            raise CocoDatasetError(f"{json_file}: {_entry('annotations', i, a)} has image_id "
                                   f"{a['image_id']!r}, not in images")
        b = a["bbox"]
        numbers = isinstance(b, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        if box_len is None and numbers and len(b) in _BOX_FORMS:
            box_len, first_box = len(b), i  # the first box says whether the file is rotated
        if not numbers or len(b) != (box_len or 4):
            if numbers and len(b) in _BOX_FORMS:
                raise CocoDatasetError(
                    f"{json_file}: {_entry('annotations', i, a)} bbox {b!r} has {len(b)} numbers but "
                    f"annotations[{first_box}] has {box_len}: a file holds upright ({_BOX_FORMS[4]}) or "
                    f"rotated ({_BOX_FORMS[5]}) boxes, not both")
            forms = " or ".join(_BOX_FORMS.values()) if box_len is None else _BOX_FORMS[box_len]
            raise CocoDatasetError(f"{json_file}: {_entry('annotations', i, a)} bbox {b!r} is not {forms}")
        if not all(math.isfinite(v) for v in b) or b[2] < 0 or b[3] < 0:
            raise CocoDatasetError(f"{json_file}: {_entry('annotations', i, a)} bbox {b!r} has a non-finite "
                                   f"value or a negative width or height")
        segm = a.get("segmentation")
        if segm:
            has_segm = True
            has_rle = has_rle or isinstance(segm, dict)
    return CocoSummary(
        json_file=json_file, image_root=image_root, num_images=len(data["images"]),
        num_annotations=len(data["annotations"]),
        thing_classes=[cat_names[k] for k in sorted(cat_names)],
        has_segmentation=has_segm, has_rle=has_rle, rotated=box_len == 5,
    )


def load_rotated_coco_json(json_file: str, image_root: str, dataset_name=None):
    """Detectron2's ``load_coco_json`` for a file of rotated boxes: it marks every box
    ``BoxMode.XYWH_ABS``, so the 5-number ones are re-marked ``BoxMode.XYWHA_ABS``
    ([x_ctr, y_ctr, w, h, angle]); everything else is Detectron2's."""
    from detectron2.data.datasets import load_coco_json
    from detectron2.structures import BoxMode

    dicts = load_coco_json(json_file, image_root, dataset_name)
    for record in dicts:
        for obj in record.get("annotations", ()):
            if len(obj.get("bbox", ())) == 5:
                obj["bbox_mode"] = BoxMode.XYWHA_ABS
    return dicts


def register_coco_dataset(spec: str) -> CocoSummary:
    """Check and register one ``NAME:ANNOTATIONS_JSON:IMAGE_DIR`` dataset (idempotent for the
    same triple in one process: Detectron2's ``launch`` runs the trainer in the process that
    already checked the config)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    name, json_file, image_root = parse_dataset_spec(spec)
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    done = _REGISTERED.get(name)
    if done is not None and (done.json_file, done.image_root) == (json_file, image_root):
        return done
    if name in DatasetCatalog.list():
        raise CocoDatasetError(f"--dataset {spec!r}: the name {name!r} is already registered; choose another NAME")
    summary = check_coco_json(json_file, image_root)
    if summary.rotated:
        DatasetCatalog.register(name, lambda: load_rotated_coco_json(json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
    else:
        register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(thing_classes=list(summary.thing_classes),
                                  bbox_mode="XYWHA_ABS" if summary.rotated else "XYWH_ABS")
    _REGISTERED[name] = summary
    return summary


def registered_coco_summary(name: str):
    """The summary of a dataset registered by :func:`register_coco_dataset`, or None."""
    return _REGISTERED.get(name)
