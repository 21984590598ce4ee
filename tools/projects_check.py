#!/usr/bin/env python
"""roi_plugin on Detectron2's own projects, built from their shipped configs; writes results/projects.md.

    python tools/projects_check.py --detectron2-src /work/d2src
    python tools/projects_check.py --detectron2-src DIR --only DensePose,ViTDet --out /tmp/p.md

``DIR`` is a checkout of Detectron2's public repository; only its ``projects/`` folder is used.
The models run on the *installed* detectron2 (pure Python): the projects' own folders
(DensePose, TridentNet, PointSup) go on ``sys.path``, never ``DIR`` itself; PointRend's code is
the installed ``detectron2.projects.point_rend`` (as its own ``train_net.py`` imports it),
compared file by file with ``DIR/projects/PointRend/point_rend`` in the header. DensePose needs
``av`` and ``scipy`` from the package index; ViTDet and MViTv2 need ``timm`` (Detectron2's
``ViT`` / ``MViT`` import its ``DropPath`` and ``Mlp``).

Each config is loaded as the project's ``train_net.py`` loads it (its ``add_*_config``), shrunk
for CPU (``checking.shrink(tiny=True)`` / ``checking.shrink_lazy``) and converted by the route a
user of that project has, no Python class written:

* YACS configs: ``MODEL.META_ARCHITECTURE: ROIPluginModel`` and nothing else (``gather``; the
  project's cfg never had ``add_roi_plugin_config``), plus ``MODEL.ROI_PLUGIN.SAMPLER`` for
  ``grid_sample`` (``checking.config_route``);
* LazyConfigs: ``model = L(convert_model)(model=model, sampler=...)``.

Then ``checking.check_conversion`` with both samplers: the built-in model's class and no
``ROIPooler`` / plain predictor left, parity (the built-in model's weights loaded strictly:
boxes within 1e-3 px, scores within 1e-4, the project's extra outputs, e.g. DensePose's
``pred_densepose`` tensors, within 1e-3 + 1e-3 relative), 2 SGD iterations on random annotated
images (with the annotations the project trains on: DensePose points and part masks,
PointSup's points) with finite losses, and inference after training.
"""
import argparse
import filecmp
import json
import os
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

import torch  # noqa: E402

import detectron2  # noqa: E402
from detectron2.config import LazyCall as L, LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import roi_plugin  # noqa: E402,F401  (registers ROIPluginModel)
from checking import (  # noqa: E402
    check_conversion, config_route, conversion_ok, lazy_batch, random_batch, shrink, shrink_lazy,
)
from roi_plugin import SAMPLERS, convert_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _densepose(cfg):
    from densepose import add_densepose_config

    add_densepose_config(cfg)


def _tridentnet(cfg):
    from tridentnet import add_tridentnet_config

    add_tridentnet_config(cfg)


def _pointrend(cfg):
    from detectron2.projects.point_rend import add_pointrend_config

    add_pointrend_config(cfg)


def _pointsup(cfg):
    from point_sup import add_point_sup_config

    _pointrend(cfg)
    add_point_sup_config(cfg)


# The decoder (DECODER_ON, the default) outputs DECODER_NUM_CLASSES channels where the head
# expects the pyramid's (32 after shrink).
_DENSEPOSE_TINY = ["MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM", 32, "MODEL.ROI_DENSEPOSE_HEAD.NUM_STACKED_CONVS", 2,
                   "MODEL.ROI_DENSEPOSE_HEAD.DECODER_CONV_DIMS", 32, "MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES", 32]
# project, config under projects/<project>/, the train_net.py's config set-up, shrink opts
YACS = [
    ("DensePose", "configs/densepose_rcnn_R_50_FPN_s1x.yaml", _densepose,
     _DENSEPOSE_TINY),
    ("DensePose", "configs/densepose_rcnn_R_50_FPN_DL_s1x.yaml", _densepose,
     _DENSEPOSE_TINY),
    ("TridentNet", "configs/tridentnet_fast_R_50_C4_1x.yaml", _tridentnet, []),
    ("PointRend", "configs/InstanceSegmentation/pointrend_rcnn_R_50_FPN_1x_coco.yaml", _pointrend,
     ["MODEL.ROI_MASK_HEAD.FC_DIM", 32, "MODEL.POINT_HEAD.FC_DIM", 16, "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
      "MODEL.POINT_HEAD.SUBDIVISION_STEPS", 2, "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 196]),
    ("PointRend", "configs/InstanceSegmentation/implicit_pointrend_R_50_FPN_1x_coco.yaml", _pointrend,
     ["MODEL.ROI_MASK_HEAD.FC_DIM", 32, "MODEL.POINT_HEAD.FC_DIM", 16, "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
      "MODEL.POINT_HEAD.SUBDIVISION_STEPS", 2, "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 196]),
    ("PointSup", "configs/mask_rcnn_R_50_FPN_3x_point_sup_coco.yaml", _pointsup, []),
    ("PointSup", "configs/implicit_pointrend_R_50_FPN_3x_point_sup_point_aug_coco.yaml", _pointsup,
     ["MODEL.ROI_MASK_HEAD.FC_DIM", 32, "MODEL.POINT_HEAD.FC_DIM", 16, "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
      "MODEL.POINT_HEAD.SUBDIVISION_STEPS", 2, "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 196]),
]
LAZY = [
    ("ViTDet", "configs/COCO/mask_rcnn_vitdet_b_100ep.py"),
    ("ViTDet", "configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py"),
    ("MViTv2", "configs/mask_rcnn_mvitv2_t_3x.py"),
    ("MViTv2", "configs/cascade_mask_rcnn_mvitv2_t_3x.py"),
]
SYS_PATH = ("DensePose", "TridentNet", "PointSup")  # projects imported by their own folder


def densepose_annotations(inst, g):
    """Random DensePose ground truth for each box of ``inst`` (points with part index and UV,
    a 14-part body mask), as DensePose's dataset mapper attaches it."""
    from densepose.structures import DensePoseDataRelative, DensePoseList

    datas = []
    for _ in range(len(inst)):
        n = 20
        segm = torch.zeros(256, 256)
        segm[64:192, 64:192] = torch.randint(1, 15, (1,), generator=g).float()
        datas.append(DensePoseDataRelative({
            "dp_x": (64 + 128 * torch.rand(n, generator=g)).tolist(),
            "dp_y": (64 + 128 * torch.rand(n, generator=g)).tolist(),
            "dp_I": torch.randint(1, 25, (n,), generator=g).float().tolist(),
            "dp_U": torch.rand(n, generator=g).tolist(), "dp_V": torch.rand(n, generator=g).tolist(),
            "dp_masks": segm,
        }))
    inst.gt_densepose = DensePoseList(datas, inst.gt_boxes.tensor, inst.image_size)


def point_annotations(inst, g, points: int = 10):
    """PointSup's ground truth: points in image coordinates inside each box, labels 0/1."""
    boxes = inst.gt_boxes.tensor
    t = torch.rand(len(inst), points, 2, generator=g)
    inst.gt_point_coords = boxes[:, None, :2] + t * (boxes[:, None, 2:] - boxes[:, None, :2])
    inst.gt_point_labels = torch.randint(0, 2, (len(inst), points), generator=g).float()


def yacs_batch(cfg, project):
    def batch(seed, train=True):
        out = random_batch(cfg, seed, train=train)
        g = torch.Generator().manual_seed(seed + 1000)
        for d in out if train else []:
            if project == "DensePose":
                densepose_annotations(d["instances"], g)
            elif project == "PointSup":
                point_annotations(d["instances"], g)
        return out
    return batch


def run_yacs(src, project, config, setup, opts, samplers):
    cfg = get_cfg()
    setup(cfg)
    cfg.merge_from_file(os.path.join(src, "projects", project, config))
    cfg = shrink(cfg, tiny=True)
    cfg.merge_from_list(opts)
    return check_conversion(lambda: build_model(cfg), lambda s: build_model(config_route(cfg, s)),
                            yacs_batch(cfg, project), samplers=samplers)


def run_lazy(src, project, config, samplers):
    cfg = LazyConfig.load(os.path.join(src, "projects", project, config))
    model = shrink_lazy(cfg.model)

    def converted(sampler):  # the config's last line, `model = L(convert_model)(model=model, ...)`
        return instantiate(L(convert_model)(model=model, sampler=sampler))

    return check_conversion(lambda: instantiate(model), converted, lazy_batch(model), samplers=samplers)


def cell(res):
    if "error" in res:
        return "**" + res["error"].replace("|", "/") + "**"
    return " / ".join(res.get(k, "-") if res.get(k) == "ok" else f"**{res.get(k, '-')}**"
                      for k in ("build", "parity", "train", "infer"))


def header(args, src):
    try:
        commit = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    from detectron2.projects import point_rend
    installed = os.path.dirname(point_rend.__file__)
    theirs = os.path.join(src, "projects", "PointRend", "point_rend")
    names = sorted(f for f in os.listdir(theirs) if f.endswith(".py"))
    same = os.path.isdir(theirs) and filecmp.cmpfiles(installed, theirs, names, shallow=False)[0] == names
    try:
        from detectron2 import _C  # noqa: F401
        compiled = "with its compiled `_C`"
    except ImportError:
        compiled = "pure Python, no compiled `_C`"
    command = "python tools/projects_check.py --detectron2-src " + args.detectron2_src
    if args.only:
        command += f" --only {args.only}"
    return [
        "# Detectron2's own projects with roi_plugin: no new class, one config line",
        "",
        f"Generated by `{command}` (CPU). Projects' code and configs from "
        f"Detectron2's repository at `{commit}` (`projects/` only: DensePose, TridentNet and PointSup "
        f"from their folders on `sys.path`); run on the installed detectron2 "
        f"{detectron2.__version__} ({compiled}). PointRend's code is the installed "
        f"`detectron2.projects.point_rend`, which its `train_net.py` imports: "
        + ("identical to the repository's `projects/PointRend/point_rend`." if same else
           "**differs from the repository's `projects/PointRend/point_rend`**.")
        + " Extra packages: `av`, `scipy` (DensePose), `timm` (ViTDet, MViTv2).",
        "",
        "Route: YACS configs `MODEL.META_ARCHITECTURE: ROIPluginModel` (nothing else for `gather`; "
        "`grid_sample` also sets `MODEL.ROI_PLUGIN.SAMPLER`); LazyConfigs end with "
        "`model = L(convert_model)(model=model, sampler=...)`. Models shrunk for CPU "
        "(`checking.shrink(tiny=True)` / `checking.shrink_lazy`: R50 narrowed to 16 channels per group, "
        "ViT-B to 2 blocks of 48 channels on 256 px, MViTv2 to 4 blocks of 16+ channels, 32-channel "
        "pyramids), 2 random images of 160-192 px. Each sampler's cell: build (the built-in "
        "model's class, no `ROIPooler` or plain predictor left) / parity (built-in weights loaded "
        "strictly; boxes within 1e-3 px, scores within 1e-4, extra outputs such as `pred_densepose` "
        "within 1e-3) / train (2 SGD iterations with the project's annotations, finite losses) / infer.",
        "",
    ]


def write_md(rows, path, args, src, samplers):
    lines = header(args, src)
    ok = sum(1 for r in rows if "error" not in r and conversion_ok(r, samplers))
    lines += [f"**{ok} of {len(rows)} configs pass every check with both samplers.**", "",
              "| project | config | route | poolers swapped | predictors swapped | outputs compared | "
              + " | ".join(samplers) + " | seconds |",
              "| --- | --- | --- | ---: | ---: | --- | " + " | ".join("---" for _ in samplers) + " | ---: |"]
    for r in rows:
        if "error" in r:
            cells = [f"**{r['error']}**"] * len(samplers)
            lines.append(f"| {r['project']} | {r['config']} | {r['route']} | - | - | - | " + " | ".join(cells)
                         + f" | {r['seconds']:.0f} |")
            continue
        swapped = {r[s].get("swapped") for s in samplers} - {None}
        pooled = f"{r['poolers']}" + ("" if swapped == {f"{r['poolers']} / {r['predictors']}"} else
                                       f" (converted: {', '.join(sorted(swapped)) or '-'})")
        outputs = ", ".join(f"`{f}`" for f in r["outputs"])
        lines.append(f"| {r['project']} | {r['config']} | {r['route']} | {pooled} | {r['predictors']} | {outputs} | "
                     + " | ".join(cell(r[s]) for s in samplers) + f" | {r['seconds']:.0f} |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectron2-src", required=True, help="a checkout of Detectron2's repository")
    parser.add_argument("--only", default="", help="comma-separated project names")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "projects.md"))
    args = parser.parse_args(argv)
    src = os.path.abspath(args.detectron2_src)
    if not os.path.isdir(os.path.join(src, "projects")):
        parser.error(f"{src} has no projects/ folder; give a checkout of Detectron2's repository")
    for name in SYS_PATH:
        sys.path.insert(0, os.path.join(src, "projects", name))
    only = set(filter(None, args.only.split(",")))
    samplers = SAMPLERS
    rows = []
    jobs = [(p, c, "yacs", (setup, opts)) for p, c, setup, opts in YACS] + [(p, c, "lazy", None) for p, c in LAZY]
    for project, config, kind, extra in jobs:
        if only and project not in only:
            continue
        t0 = time.perf_counter()
        route = "META_ARCHITECTURE" if kind == "yacs" else "L(convert_model)"
        row = {"project": project, "config": config, "route": route}
        try:
            res = run_yacs(src, project, config, *extra, samplers) if kind == "yacs" else \
                run_lazy(src, project, config, samplers)
            row.update(res)
        except Exception as e:  # the built-in model does not build or run: a failed row
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".replace("|", "/")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        write_md(rows, args.out, args, src, samplers)
    ok = all("error" not in r and conversion_ok(r, samplers) for r in rows)
    print(f"wrote {args.out}: {sum('error' not in r and conversion_ok(r, samplers) for r in rows)} of {len(rows)} pass")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
