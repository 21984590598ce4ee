#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""A picture of a registered dataset's first images with their annotations, as the model is
given them: Detectron2's ``Visualizer.draw_dataset_dict`` (upright boxes and masks, or rotated
boxes ``x_ctr, y_ctr, w, h, angle``; the dashed side is the box's left one), one panel per image.

    python tools/draw_dataset.py                      # shapes_rotated_train -> docs/shapes_rotated.png
    python tools/draw_dataset.py --dataset shapes_train --output /tmp/shapes.png --num-images 8

The built-in datasets are generated on first use into $ROI_PLUGIN_DATASETS (or datasets/).
"""
import argparse
import io
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

import roi_plugin.data  # noqa: E402,F401  registers the shapes datasets

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "shapes_rotated.png")


def draw(dataset: str, num_images: int, columns: int, scale: float):
    """The figure of the first ``num_images`` records of ``dataset``."""
    records = DatasetCatalog.get(dataset)[:num_images]
    meta = MetadataCatalog.get(dataset)
    rows = (len(records) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, records):
        image = read_image(rec["file_name"], format="RGB")
        ax.imshow(Visualizer(image, meta, scale=scale).draw_dataset_dict(rec).get_image())
        n = len(rec.get("annotations", []))
        ax.set_title(f"{os.path.basename(rec['file_name'])}: {n} objects", fontsize=8)
    fig.suptitle(f"{dataset}: the first {len(records)} images and their annotations", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes_rotated_train", help="a registered dataset")
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--scale", type=float, default=2.0,
                        help="Visualizer scale (sharper lines on small images)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.dataset not in DatasetCatalog.list():
        print(f"draw_dataset.py: error: dataset {args.dataset!r} is not registered", file=sys.stderr)
        return 2
    fig = draw(args.dataset, args.num_images, args.columns, args.scale)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    # 256 colours: the images' pixel noise makes a full-colour PNG of this picture about 1 MB
    Image.open(buf).convert("RGB").quantize(colors=256).save(args.output, optimize=True)
    print(f"wrote {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
