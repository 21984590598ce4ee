#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Export a whole Detectron2 R-CNN (backbone, RPN, ROI heads, post-processing) to ONNX.

Example (the shapes demo's trained model)::

    python tools/export_model.py --config-file configs/shapes/mask_rcnn_plugin.yaml \\
        --checkpoint output/shapes_mask_rcnn_plugin/model_final.pth --output-dir output/deploy \\
        --verify --compare-builtin --results results/deployment.md

writes ``model.onnx``: Detectron2's ``TracingAdapter`` around ``model.inference`` (what
Detectron2's ``tools/deploy/export_model.py --export-method tracing --format onnx`` does), opset
17, input ``image`` (3, H, W) float pixels 0..255 in ``INPUT.FORMAT`` order, H and W dynamic;
outputs ``pred_boxes`` (N, 4), ``pred_classes`` (N,), ``pred_masks`` (N, 1, M, M) ROI mask
probabilities (Mask R-CNN), ``scores`` (N,), ``image_size`` (2,), N dynamic. The plugin's
poolers take their deployment path inside the trace (ONNX ``RoiAlign`` per level, exact under
adaptive sampling). That graph takes one image (see ``roi_plugin/export/onnx_model.py`` for why); it also
writes ``model_batched.onnx``, the same graph as the body of an ONNX ``Loop`` over the batch
(``roi_plugin/export/onnx_batch.py``): inputs ``images`` (B, 3, H, W) float, the images padded to a
common size, and ``image_sizes`` (B, 2) int64; outputs ``pred_boxes`` (B, K, 4), ``pred_classes``
(B, K), ``pred_masks`` (B, K, 1, M, M), ``scores`` (B, K) with K = ``TEST.DETECTIONS_PER_IMAGE``,
and ``num_detections`` (B,): image i's detections are its first ``num_detections[i]`` rows.
B, H and W are dynamic.

``--verify`` runs onnxruntime (both graphs: the single-image one once per image, the batched one
once per batch) on batches of 1, 2 and 3 images of sizes the export did not use, plus a blank
image, and compares each image's detections with the eager model's (boxes and
scores within ``--box-tol``/``--score-tol``, same classes, mask IoU >= ``--mask-iou``); it exits
with status 1, printing the differences, when one is beyond. ``--compare-builtin`` does the same
for the same checkpoint in Detectron2's built-in heads (``StandardROIHeads``,
``FastRCNNConvFCHead``, ``ROIPooler``): the plugin's parameter names are the built-in ones.
``--results`` writes the comparison as markdown into one section of the results file (the
section of this ``--config-file``; the sections of other configs are kept). Trailing ``KEY VALUE``
pairs override the config.

``--torchscript`` also writes ``model.ts``: the same adapter traced by ``torch.jit.trace``
(``roi_plugin/export/torchscript_model.py``; load it after ``import roi_plugin``), verified
like the ONNX graphs.

Rotated models (``RRPN`` + ``PluginRROIHeads``, e.g. ``configs/rotated/rrcnn_R_18_FPN_plugin.yaml``)
go through the same command: the rotated pooler takes its ONNX ``GridSample`` path and
Detectron2's rotated NMS (RRPN's proposals, the ROI heads' detections) becomes ONNX operators
(``roi_plugin/export/rotated_nms.py``). ``pred_boxes`` are (N, 5) ``x_ctr, y_ctr, w, h, angle``:
``--verify`` compares the first four in pixels (``--box-tol``) and the angle in degrees
(``--angle-tol``), and also runs the rotated NMS alone (``nms_rotated.onnx``) on every NMS call
the eager model makes on the verification images, whose kept indices must equal eager's.
``--compare-builtin`` and ``--compile-check`` are for upright models.
"""
import argparse
import os
import re
import sys
import time
import traceback

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from roi_plugin import add_roi_plugin_config
from roi_plugin.export import graph_nodes
from roi_plugin.export.onnx_batch import export_batched_onnx, run_onnx_batched
from roi_plugin.export.onnx_model import compare, example_image, export_model_onnx, run_eager, run_onnx
from roi_plugin.export.rotated_nms import export_nms_rotated
from roi_plugin.export.torchscript_model import export_torchscript, run_torchscript
from timing import time_call

# (height, width) of the verification batches: none is the export's size.
VERIFY_BATCHES = [[(224, 288)], [(256, 320), (192, 256)], [(288, 224), (160, 352), (256, 256)]]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--checkpoint", default="", help="weights; empty = the config's MODEL.WEIGHTS")
    p.add_argument("--output-dir", default="output/deploy")
    p.add_argument("--height", type=int, default=240, help="height of the example image traced")
    p.add_argument("--width", type=int, default=272)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with eager PyTorch")
    p.add_argument("--compare-builtin", action="store_true",
                   help="also export and verify the same checkpoint in Detectron2's built-in heads")
    p.add_argument("--results", default="", help="write the comparison table (markdown) here")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per latency figure (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init (no checkpoint)")
    p.add_argument("--compile-check", action="store_true",
                   help="also run torch.compile(model.roi_heads) on the verification images")
    p.add_argument("--sizes", default=";".join(",".join(f"{h}x{w}" for h, w in b) for b in VERIFY_BATCHES),
                   help="verification batches: HxW images separated by ',', batches by ';' "
                   "(a blank image is added as a last batch of 1)")
    p.add_argument("--box-tol", type=float, default=1e-3, help="max |box difference| in pixels")
    p.add_argument("--score-tol", type=float, default=1e-3)
    p.add_argument("--angle-tol", type=float, default=1e-3, help="rotated boxes: max |angle difference| in degrees")
    p.add_argument("--mask-iou", type=float, default=0.99, help="min IoU of the pasted masks")
    p.add_argument("--val-images", type=int, default=0,
                   help="also compare every graph with eager on the first N images of DATASETS.TEST[0] at their "
                   "own size (and, for a rotated model, the NMS graph on all their NMS calls)")
    p.add_argument("--torchscript", action="store_true",
                   help="also write model.ts (torch.jit.trace of the same adapter) and verify it like the ONNX graphs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p


def setup_cfg(config_file, opts, builtin=False):
    cfg = get_cfg()
    add_roi_plugin_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if builtin:
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def is_rotated(cfg) -> bool:
    """Rotated boxes (``RRPN`` proposals or an ``ROIAlignRotated`` box pooler)."""
    return cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RRPN" or cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignRotated"


def parse_sizes(text):
    try:
        return [[tuple(int(v) for v in im.split("x")) for im in batch.split(",")] for batch in text.split(";")]
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: expected HxW[,HxW...][;HxW...], e.g. 224x288;256x320,192x256")


def verification_images(cfg, batches_hw=VERIFY_BATCHES, seed=0):
    """Images for the verification batches: the first images of ``DATASETS.TEST[0]`` resized to
    the sizes of :data:`VERIFY_BATCHES` when that dataset loads, random images otherwise; and a
    blank (uniform grey) image last."""
    import cv2

    sizes = [hw for batch in batches_hw for hw in batch]
    sources = []
    try:
        import roi_plugin.data  # noqa: F401  (registers the shapes datasets)
        from detectron2.data import DatasetCatalog
        from detectron2.data.detection_utils import read_image

        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        sources = [read_image(d["file_name"], format=cfg.INPUT.FORMAT) for d in dicts[: len(sizes)]]
    except Exception as e:  # no dataset: random images
        print(f"note: no test images ({type(e).__name__}: {e}); verifying on random images")
    g = torch.Generator().manual_seed(seed)
    images = []
    for k, (h, w) in enumerate(sizes):
        if k < len(sources):
            im = cv2.resize(sources[k], (w, h), interpolation=cv2.INTER_LINEAR)
            images.append(torch.as_tensor(np.ascontiguousarray(im.transpose(2, 0, 1)), dtype=torch.float32))
        else:
            images.append(torch.rand(3, h, w, generator=g) * 255)
    batches, k = [], 0
    for batch in batches_hw:
        batches.append(images[k:k + len(batch)])
        k += len(batch)
    batches.append([torch.full((3, 208, 240), 127.0)])  # blank
    return batches


def dataset_images(cfg, count):
    """The first ``count`` images of ``DATASETS.TEST[0]`` at their own size, (3, H, W) float in
    ``INPUT.FORMAT`` order, with their file names; exits when that dataset does not load."""
    try:
        import roi_plugin.data  # noqa: F401  (registers the plugin's datasets)
        from detectron2.data import DatasetCatalog
        from detectron2.data.detection_utils import read_image

        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:count]
    except Exception as e:
        raise SystemExit(f"--val-images: DATASETS.TEST[0] does not load ({type(e).__name__}: {e})")
    return [(os.path.basename(d["file_name"]),
             torch.as_tensor(np.ascontiguousarray(read_image(d["file_name"], format=cfg.INPUT.FORMAT).transpose(2, 0, 1)),
                             dtype=torch.float32)) for d in dicts]


def verify_dataset(model, cfg, args, sess, names, traced, nms_sess, label):
    """--val-images: every graph against eager on each of the first N test images at its own
    size (one summary per graph), and for rotated models the NMS graph on all their NMS calls."""
    val = dataset_images(cfg, args.val_images)
    images = [im for _, im in val]
    eager = run_eager(model, images)
    graphs = [("per image", lambda ims: run_onnx(sess, names, ims))]
    if traced is not None:
        graphs.append(("TorchScript", lambda ims: run_torchscript(traced, names, ims)))
    out = {"dataset": cfg.DATASETS.TEST[0], "images": len(images), "graphs": []}
    for kind, run in graphs:
        rows = [compare(e, o, tuple(im.shape[1:]), args.score_tol) for im, e, o in zip(images, eager, run(images))]
        for r in rows:
            r["ok"] = _row_ok(r, args)
        agg = {"graph": kind, "detections": int(sum(r["detections"] for r in rows)),
               "unmatched": int(sum(r["unmatched"] for r in rows)), "ok": all(r["ok"] for r in rows),
               "bad_images": [val[k][0] for k, r in enumerate(rows) if not r["ok"]]}
        for key in ("box_diff", "angle_diff", "score_diff", "mask_prob_diff"):
            agg[key] = max((r.get(key, 0.0) for r in rows), default=0.0)
        agg["mask_iou_min"] = min((r.get("mask_iou_min", 1.0) for r in rows), default=1.0)
        out["graphs"].append(agg)
        print(f"[{label}] {kind} graph on {len(images)} images of {out['dataset']}: {agg['detections']} detections, "
              f"{agg['unmatched']} unmatched, box {agg['box_diff']:.2e} px, angle {agg['angle_diff']:.1e} deg, "
              f"score {agg['score_diff']:.1e} -> {'ok' if agg['ok'] else 'DIFFERS on ' + ', '.join(agg['bad_images'])}")
    if nms_sess is not None:
        out["nms"] = verify_nms(nms_sess, nms_calls(model, images))
        print(f"[{label}] rotated NMS graph alone on {len(out['nms'])} NMS calls of the eager model on those images: "
              f"kept indices equal in {sum(c['equal'] for c in out['nms'])}")
    out["ok"] = all(g["ok"] for g in out["graphs"]) and all(c["equal"] for c in out.get("nms", []))
    return out


def nms_calls(model, images):
    """Every ``detectron2::nms_rotated`` call of the eager model on each image alone: the image's
    index, the caller (RRPN's proposals or the ROI heads' detections), the inputs and the kept
    indices. Recorded by a ``TorchDispatchMode`` (the operator is dispatched like any other)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func).startswith("detectron2.nms_rotated"):
                files = [f.filename for f in traceback.extract_stack()]
                where = "RRPN" if any(f.endswith("rrpn.py") for f in files) else "ROI heads"
                calls.append({"image": k, "where": where, "boxes": args[0].clone(), "scores": args[1].clone(),
                              "threshold": float(args[2]), "keep": out.clone()})
            return out

    for k, im in enumerate(images):
        with torch.no_grad(), Recorder():
            model.inference([{"image": im}], do_postprocess=False)
    return calls


def verify_nms(session, calls):
    """The rotated NMS graph (``nms_rotated.onnx`` in onnxruntime) on each recorded call's inputs:
    adds ``got`` (its kept indices) and ``equal`` (the same indices in the same order as eager)."""
    for c in calls:
        (got,) = session.run(None, {"boxes": c["boxes"].float().numpy(), "scores": c["scores"].float().numpy(),
                                    "iou_threshold": np.array(c["threshold"], np.float32)})
        c["got"] = got
        c["equal"] = bool(np.array_equal(got, c["keep"].numpy()))
    return calls


def compile_check(model, batches):
    """torch.compile of ``model.roi_heads`` on each verification image: Dynamo's frames, graph
    breaks (with reasons) and the max difference from eager."""
    from checking import torch_export_roi_heads
    from timing import compile_counts

    class RoiHeadsOnly(torch.nn.Module):  # compile only the heads, eager backbone + RPN outside
        def __init__(self, m):
            super().__init__()
            self.heads = m.roi_heads

        def forward(self, images, features, proposals):
            inst, _ = self.heads(images, features, proposals, None)
            return inst[0].pred_boxes.tensor, inst[0].scores, inst[0].pred_masks

    calls = []
    with torch.no_grad():
        for im in [im for b in batches for im in b]:
            images = model.preprocess_image([{"image": im}])
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
            calls.append((images, features, proposals))
    counts = compile_counts(RoiHeadsOnly(model), calls)
    counts["torch_export"] = torch_export_roi_heads(model, batches[0][0])
    return counts


def _row_ok(r, args):
    # Masks: IoU >= --mask-iou, or probabilities within 1e-4 (then pixels flip only where a
    # probability is within 1e-4 of the 0.5 threshold: near-0.5 masks of a blank image).
    mask_ok = r.get("mask_iou_min", 1.0) >= args.mask_iou or r.get("mask_prob_diff", 0.0) <= 1e-4
    return not (r["unmatched"] or r["box_diff"] > args.box_tol or r["score_diff"] > args.score_tol
                or r.get("angle_diff", 0.0) > args.angle_tol or not mask_ok)


def export_and_verify(cfg, checkpoint, out_dir, args, label, state_dict=None):
    """Export one model; with --verify return its rows of the comparison."""
    import onnx
    import onnxruntime as ort

    rotated = is_rotated(cfg)
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    if state_dict is not None:  # the built-in heads with the plugin model's weights (same names)
        incompatible = model.load_state_dict(state_dict, strict=False)
        if incompatible.missing_keys or incompatible.unexpected_keys:
            raise SystemExit(f"[{label}] the weights do not carry over: {incompatible}")
    else:
        DetectionCheckpointer(model).load(checkpoint or cfg.MODEL.WEIGHTS)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    # a random image, drawn again where torch.onnx.export would mistrace it (export/onnx_model.py)
    example = example_image(model, args.height, args.width)
    t0 = time.perf_counter()
    try:
        names = export_model_onnx(model, example, path, args.opset)
    except Exception as e:  # e.g. keypoint R-CNN: Detectron2's heatmaps_to_keypoints does not export
        where = re.findall(r"(detectron2/\S+\.py:\d+)", str(e))
        raise SystemExit(f"[{label}] ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                         + (f" (at {where[-1]})" if where else ""))
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    ops = sorted(_op_types(graph.graph))
    print(f"[{label}] wrote {path} in {time.perf_counter() - t0:.0f} s; outputs {names}; "
          f"{len(graph.graph.node)} nodes; RoiAlign {'RoiAlign' in ops}, GridSample {'GridSample' in ops}"
          + (f", Loop {'Loop' in ops} (rotated NMS)" if rotated else ""))
    batched_path = os.path.join(out_dir, "model_batched.onnx")
    max_det = model.roi_heads.box_predictor.test_topk_per_image
    batched = export_batched_onnx(path, batched_path, max_det, box_dim=5 if rotated else 4)
    print(f"[{label}] wrote {batched_path}: Loop over the batch, outputs "
          f"{[o.name for o in batched.graph.output]} padded to {max_det} detections; check_model(full_check) ok")
    summary = {"label": label, "path": path, "ops": ops, "rows": [], "ok": True, "model": model,
               "batched_path": batched_path, "max_detections": max_det, "rotated": rotated,
               "graphs_diff": dict.fromkeys(("unmatched", "box_diff", "score_diff", "mask_prob_diff", "angle_diff"), 0.0)}
    if rotated:
        nms_path = os.path.join(out_dir, "nms_rotated.onnx")
        export_nms_rotated(nms_path, args.opset)
        print(f"[{label}] wrote {nms_path}: the rotated NMS alone (boxes, scores, iou_threshold -> keep)")
    traced = None
    if args.torchscript:
        ts_path = os.path.join(out_dir, "model.ts")
        t0 = time.perf_counter()
        export_torchscript(model, example, ts_path)
        traced = torch.jit.load(ts_path)
        print(f"[{label}] wrote {ts_path} (torch.jit.trace) in {time.perf_counter() - t0:.0f} s")
    if not args.verify:
        return summary
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    sess_b = ort.InferenceSession(batched_path, providers=["CPUExecutionProvider"])
    batches = verification_images(cfg, parse_sizes(args.sizes))
    for batch in batches:
        eager = run_eager(model, batch)
        runs = [("per image", run_onnx(sess, names, batch)), ("batched", run_onnx_batched(sess_b, batch))]
        for im, a, b in zip(batch, runs[0][1], runs[1][1]):  # the two graphs against each other
            d = compare(a, b, tuple(im.shape[1:]), args.score_tol)
            for key in summary["graphs_diff"]:
                summary["graphs_diff"][key] = max(summary["graphs_diff"][key], d.get(key, 0.0))
        if traced is not None:
            runs.append(("TorchScript", run_torchscript(traced, names, batch)))
        for graph_kind, got in runs:
            for im, e, o in zip(batch, eager, got):
                r = compare(e, o, tuple(im.shape[1:]), args.score_tol)
                r.update(batch=len(batch), size=f"{im.shape[1]}x{im.shape[2]}", graph=graph_kind)
                r["ok"] = _row_ok(r, args)
                summary["ok"] &= r["ok"]
                summary["rows"].append(r)
                what = (f"angle {r['angle_diff']:.1e} deg" if rotated else
                        f"mask prob {r.get('mask_prob_diff', 0.0):.1e}, mask IoU min {r.get('mask_iou_min', float('nan')):.4f}")
                print(f"[{label}] {graph_kind}, batch {len(batch)} image {r['size']}: {int(r['detections'])} detections, "
                      f"box {r['box_diff']:.2e} px, score {r['score_diff']:.2e}, class mismatches "
                      f"{int(r['class_mismatch'])}, in order {bool(r['in_order'])}, {what} "
                      f"-> {'ok' if r['ok'] else 'DIFFERS'}")
    if rotated:  # the NMS graph alone on every NMS call of the eager model on these images
        images = [im for b in batches for im in b]
        nms_sess = ort.InferenceSession(os.path.join(out_dir, "nms_rotated.onnx"), providers=["CPUExecutionProvider"])
        summary["nms"] = verify_nms(nms_sess, nms_calls(model, images))
        summary["nms_images"] = [f"{im.shape[1]}x{im.shape[2]}" for im in images]
        bad = [c for c in summary["nms"] if not c["equal"]]
        summary["ok"] &= not bad
        print(f"[{label}] rotated NMS graph alone on the eager model's {len(summary['nms'])} NMS calls "
              f"({sum(len(c['boxes']) for c in summary['nms'])} boxes): kept indices equal in "
              f"{len(summary['nms']) - len(bad)}" + (f"; DIFFER in {len(bad)}" if bad else ""))
    if args.val_images:
        nms_sess = (ort.InferenceSession(os.path.join(out_dir, "nms_rotated.onnx"), providers=["CPUExecutionProvider"])
                    if rotated else None)
        summary["val"] = verify_dataset(model, cfg, args, sess, names, traced, nms_sess, label)
        summary["ok"] &= summary["val"]["ok"]
    im = batches[0][0]
    summary["eager_s"] = time_call(lambda: run_eager(model, [im]), args.repeats)
    summary["onnx_s"] = time_call(lambda: run_onnx(sess, names, [im]), args.repeats)
    if traced is not None:
        summary["torchscript_s"] = time_call(lambda: run_torchscript(traced, names, [im]), args.repeats)
    big = max(batches, key=len)  # per image: the largest batch in one batched call vs one call each
    summary["latency_batch"] = len(big)
    summary["onnx_calls_s"] = time_call(lambda: run_onnx(sess, names, big), args.repeats) / len(big)
    summary["onnx_batched_s"] = time_call(lambda: run_onnx_batched(sess_b, big), args.repeats) / len(big)
    print(f"[{label}] onnxruntime s/image, batch of {len(big)}: one call per image "
          f"{summary['onnx_calls_s']:.3f}, one batched call {summary['onnx_batched_s']:.3f}")
    # What a batched eager call gives (Detectron2 pads a batch to a common size): for the record.
    batch = max(batches, key=len)
    padded = run_eager(model, batch, batched=True)
    alone = run_eager(model, batch)
    summary["batched_vs_alone"] = [compare(a, p, tuple(i.shape[1:])) for a, p, i in zip(alone, padded, batch)]
    if args.compile_check:
        summary["compile"] = compile_check(model, batches)
        c = summary["compile"]
        print(f"[{label}] torch.compile(roi_heads): {c['frames']} frames {c['frames_per_call']}, "
              f"{c['graph_breaks']} graph breaks, max diff {c['max_diff']:.1e}")
        print(f"[{label}] torch.export(roi_heads): {c['torch_export']['result']} {c['torch_export']['where']}")
    return summary


def _op_types(graph) -> set:
    """The operator types of ``graph`` and of its subgraphs (``If`` branches, ``Loop`` bodies)."""
    return {node.op_type for node in graph_nodes(graph)}


def write_results(path, summaries, args, cfg):
    """Write this run's section of the results file (see :func:`merge_section`)."""
    lines = (_rotated_lines if summaries[0]["rotated"] else _upright_lines)(summaries, args, cfg)
    merge_section(path, lines, args.config_file)
    print(f"wrote {path}")


def merge_section(path, lines, config_file):
    """Write ``lines`` (a section: a ``# `` heading, then a 'Generated by ... --config-file X'
    line) into the results file at ``path``, in place of the section generated for the same
    ``config_file``, or after the others: one file holds the runs of several configs (the upright
    model and the rotated one), and rerunning one leaves the others as they were."""
    sections = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f.read().rstrip("\n").split("\n"):
                if line.startswith("# ") or not sections:
                    sections.append([])
                sections[-1].append(line)

    def key(section):
        m = re.search(r"--config-file\s+(\S+)", "\n".join(section[:4]))
        return m.group(1) if m else None

    for k, section in enumerate(sections):
        if key(section) == config_file:
            sections[k] = list(lines)
            break
    else:
        sections.append(list(lines))
    with open(path, "w") as f:
        f.write("\n\n".join("\n".join(sec).rstrip("\n") for sec in sections) + "\n")


def _upright_lines(summaries, args, cfg):
    lines = [
        "# Whole-model deployment: ONNX export of the plugin heads vs Detectron2's built-in heads",
        "",
        "Generated by `tools/export_model.py " + " ".join(args.argv) + "`.",
        "",
        f"Model: `{args.config_file}` (ROI heads swapped for the built-in row, same checkpoint "
        f"`{args.checkpoint or cfg.MODEL.WEIGHTS or '(random init)'}`); box pooler sampling ratio "
        f"{cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO}, mask pooler "
        f"{cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO} (0 = adaptive). Export: Detectron2's "
        f"`TracingAdapter` + `torch.onnx.export` (opset {args.opset}, `dynamo=False`) on one "
        f"{args.height}x{args.width} image; dynamic axes: image height and width, number of "
        "detections. That graph takes one image (the trace freezes Detectron2's per-image Python "
        "loops). `model_batched.onnx` wraps it in an ONNX `Loop` over the batch "
        "(`roi_plugin/export/onnx_batch.py`): inputs `images` (B, 3, H, W) padded and `image_sizes` "
        "(B, 2); outputs padded to K = `TEST.DETECTIONS_PER_IMAGE` = "
        f"{summaries[0].get('max_detections')} rows plus `num_detections` (B,); dynamic axes: batch, "
        "height, width, detections up to K.",
        "",
        "Each row: onnxruntime (CPU), the single-image graph ('per image': one call per image) or "
        "the batched graph (one call for the whole batch, padded), vs the eager model run on the "
        "same image alone. Detections are "
        "paired (same class, score within the tolerance, nearest box; 'in order' says whether the "
        "pairing is the identity); boxes and scores as max |difference| (tolerances "
        f"{args.box_tol:g} px, {args.score_tol:g}); masks as the max |difference| of the ROI mask "
        f"probabilities and the minimum IoU of the pasted masks at 0.5 (>= {args.mask_iou:g}, or "
        "probabilities within 1e-4: then pixels flip only where a probability is within 1e-4 of 0.5).",
        "",
        "| heads | graph | batch | image | detections | unmatched | in order | max box diff (px) | max score diff | max mask prob diff | min mask IoU | within tolerance |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        for r in s["rows"]:
            lines.append(
                f"| {s['label']} | {r['graph']} | {r['batch']} | {r['size']} | {int(r['detections'])}"
                f" | {int(r['unmatched'])} | {'yes' if r['in_order'] else 'no'} | {r['box_diff']:.1e} | "
                f"{r['score_diff']:.1e} | {r.get('mask_prob_diff', 0.0):.1e} | {r.get('mask_iou_min', float('nan')):.4f} | "
                f"{'yes' if r['ok'] else 'NO'} |"
            )
    for s in summaries:
        lines += _val_lines(s)
    nb = summaries[0]["latency_batch"]
    lines += ["", "| heads | graph op types (with subgraphs) | RoiAlign | GridSample | eager s/image | onnxruntime s/image | "
              f"batch of {nb}: onnxruntime s/image, {nb} single-image calls | one batched call |",
              "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        lines.append(f"| {s['label']} | {len(s['ops'])} kinds | {'RoiAlign' in s['ops']} | "
                     f"{'GridSample' in s['ops']} | {s['eager_s']:.3f} | {s['onnx_s']:.3f} | "
                     f"{s['onnx_calls_s']:.3f} | {s['onnx_batched_s']:.3f} |")
    hw = parse_sizes(args.sizes)[0][0]
    big = max(parse_sizes(args.sizes), key=len)
    lines += ["", f"Latency: median of {args.repeats} calls after a warm-up, one {hw[0]}x{hw[1]} image (eager, onnxruntime), "
              f"and the batch {', '.join(f'{h}x{w}' for h, w in big)} (per image: {nb} calls of the single-image "
              f"graph, or one call of the batched graph on the batch padded to a common size, divided by {nb}); "
              f"CPU, {torch.get_num_threads()} torch threads, "
              "onnxruntime defaults, on a shared machine (indicative only)."
              + "".join(f" TorchScript ({s['label']}): {s['torchscript_s']:.3f} s/image." for s in summaries
                        if "torchscript_s" in s), "",
              "Batched graph vs single-image graph, same images (onnxruntime optimises a `Loop` body "
              "apart from a main graph, so float rounding may differ; with "
              "`GraphOptimizationLevel.ORT_DISABLE_ALL` both give the same bits on the test model):"]
    for s in summaries:
        d = s["graphs_diff"]
        lines.append(f"- {s['label']}: {int(d['unmatched'])} unmatched, max box diff {d['box_diff']:.1e} px, "
                     f"max score diff {d['score_diff']:.1e}, max mask prob diff {d['mask_prob_diff']:.1e}")
    lines += ["", "Eager batch vs eager image alone (Detectron2 pads a batch to a common size, which moves "
              "border features): why the single-image graph is compared with single-image eager runs."]
    for s in summaries:
        for r in s["batched_vs_alone"]:
            lines.append(f"- {s['label']}: {int(r['detections'])} detections alone, "
                         f"{int(r['unmatched'])} unmatched, max score diff over pairs {r['score_diff']:.1e}")
    if not (args.checkpoint or cfg.MODEL.WEIGHTS):
        lines += ["", f"Note: no checkpoint, so both rows share one random init (seed {args.seed}). A random "
                  "model's scores are nearly uniform (100 detections per image, ties to float precision, "
                  "hence 'in order: no' where tied detections left NMS in the other order) and its mask "
                  "probabilities sit near 0.5 (hence the low IoU on the blank image, with probabilities "
                  "within 1e-6). Rerun with --checkpoint of a trained model for a deployment figure."]
    if any("compile" in s for s in summaries):
        lines += ["", "`torch.compile(model.roi_heads)` (default settings) on the verification images, one "
                  "call each (eager backbone and RPN outside):", "",
                  "| heads | frames compiled (per call) | graph breaks | max diff vs eager |", "| --- | --- | ---: | ---: |"]
        for s in summaries:
            c = s.get("compile")
            if c:
                lines.append(f"| {s['label']} | {c['frames']} ({c['frames_per_call']}) | {c['graph_breaks']} | "
                             f"{c['max_diff']:.1e} |")
        reasons = {}
        for s in summaries:
            for k, v in (s.get("compile") or {}).get("break_reasons", {}).items():
                reasons[k.splitlines()[0][:140]] = reasons.get(k.splitlines()[0][:140], 0) + v
        lines += ["", "Graph-break reasons (both rows):"] + [f"- {v}x {k}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]
        lines += ["", "`torch.export.export(ROIHeadsTensors(model.roi_heads), strict=False)` (features, "
                  "proposal boxes and image in, boxes/scores/classes/masks out; proposals dynamic) on the "
                  "first verification image:", ""]
        for s in summaries:
            if s.get("compile"):
                e = s["compile"]["torch_export"]
                lines.append(f"- {s['label']}: {e['result']}" + (f" at `{e['where']}`" if e["where"] else ""))
    return lines


def _val_lines(s):
    """The --val-images summary of one model: a row per graph, and the NMS calls (rotated)."""
    v = s.get("val")
    if not v:
        return []
    rot = s["rotated"]
    lines = ["", f"{s['label']} on the first {v['images']} images of `{v['dataset']}`, each at its own size, "
             "against eager on the same image:", "",
             "| graph | images | detections | unmatched | max box diff (px) | "
             + ("max angle diff (deg) | " if rot else "max mask prob diff | min mask IoU | ") + "max score diff | within tolerance |",
             "| --- | ---: | ---: | ---: | ---: | " + ("---: | " if rot else "---: | ---: | ") + "---: | --- |"]
    for g in v["graphs"]:
        extra = f"{g['angle_diff']:.1e} | " if rot else f"{g['mask_prob_diff']:.1e} | {g['mask_iou_min']:.4f} | "
        lines.append(f"| {g['graph']} | {v['images']} | {g['detections']} | {g['unmatched']} | {g['box_diff']:.1e} | "
                     f"{extra}{g['score_diff']:.1e} | {'yes' if g['ok'] else 'NO: ' + ', '.join(g['bad_images'])} |")
    if "nms" in v:
        calls = v["nms"]
        by = {}
        for c in calls:
            b = by.setdefault(c["where"], [0, 0, 0, 0])
            b[0] += 1
            b[1] += c["equal"]
            b[2] += len(c["boxes"])
            b[3] += len(c["keep"])
        lines += ["", "The rotated NMS graph alone on every NMS call the eager model makes on these images:", "",
                  "| caller | calls | kept indices equal (same order) | boxes in | kept |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {b[0]} | {b[1]} | {b[2]} | {b[3]} |" for k, b in sorted(by.items(), reverse=True)]
    return lines


def _rotated_lines(summaries, args, cfg):
    """The rotated model's section: rows of rotated boxes (pixels and degrees), the rotated NMS
    graph's kept indices on every NMS call, latency."""
    s = summaries[0]
    tol = f"{args.box_tol:g} px, {args.angle_tol:g} degree, {args.score_tol:g}"
    lines = [
        f"# Whole-model deployment of a rotated model: RRPN + {s['label']}, ONNX"
        + (" and TorchScript" if args.torchscript else ""),
        "",
        "Generated by `tools/export_model.py " + " ".join(args.argv) + "`.",
        "",
        f"Model: `{args.config_file}`, checkpoint `{args.checkpoint or cfg.MODEL.WEIGHTS or '(random init)'}`; "
        f"box pooler `ROIAlignRotated`, sampling ratio {cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO} (0 = adaptive), "
        f"sampler `{cfg.MODEL.ROI_PLUGIN.SAMPLER}`; RRPN NMS threshold {cfg.MODEL.RPN.NMS_THRESH} over up to "
        f"{cfg.MODEL.RPN.PRE_NMS_TOPK_TEST} boxes per level, ROI heads NMS threshold {cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST}, "
        f"score threshold {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST}. Export: Detectron2's `TracingAdapter` + "
        f"`torch.onnx.export` (opset {args.opset}, `dynamo=False`) on one {args.height}x{args.width} image; "
        "the rotated pooler as ONNX `GridSample` on the rotated geometry's samples (exact under adaptive "
        "sampling), Detectron2's two rotated NMS calls as ONNX operators (`roi_plugin/export/rotated_nms.py`: "
        "candidate pairs, exact float64 intersections, a greedy `Loop`), standard operators only. "
        "`model_batched.onnx`: that graph in an ONNX `Loop` over a padded batch, as for upright models."
        + (" `model.ts`: the same adapter by `torch.jit.trace` (load it after `import roi_plugin`)." if args.torchscript else ""),
        "",
        "Each row: the graph ('per image': onnxruntime, one call per image; 'batched': onnxruntime, one call "
        "for the batch; 'TorchScript': the traced module) vs the eager model on the same image alone. "
        "Detections are paired (same class, score within the tolerance, nearest box); `pred_boxes` are "
        "`x_ctr, y_ctr, w, h` (max |difference| in pixels) and the angle (max |difference| in degrees, "
        f"modulo 360); tolerances {tol} (score).",
        "",
        "| heads | graph | batch | image | detections | unmatched | in order | max box diff (px) | max angle diff (deg) | max score diff | within tolerance |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {s['label']} | {r['graph']} | {r['batch']} | {r['size']} | {int(r['detections'])} | "
            f"{int(r['unmatched'])} | {'yes' if r['in_order'] else 'no'} | {r['box_diff']:.1e} | "
            f"{r['angle_diff']:.1e} | {r['score_diff']:.1e} | {'yes' if r['ok'] else 'NO'} |")
    rows = s["rows"]
    lines += ["", f"Over {len({(r['batch'], r['size']) for r in rows})} images and {len(rows)} rows: max box diff "
              f"{max(r['box_diff'] for r in rows):.1e} px, max angle diff {max(r['angle_diff'] for r in rows):.1e} "
              f"degree, max score diff {max(r['score_diff'] for r in rows):.1e}, "
              f"{int(sum(r['unmatched'] for r in rows))} unmatched detections (classes agree on every pair)."]
    lines += _val_lines(s)
    calls = s["nms"]
    lines += ["", "Rotated NMS: `nms_rotated.onnx` (the same ONNX operators, alone) in onnxruntime on the inputs of "
              f"every `detectron2::nms_rotated` call the eager model makes on these {len(s['nms_images'])} images "
              "(each alone), against the kept indices of that call:", "",
              "| image | caller | IoU threshold | boxes | kept (eager) | kept (ONNX) | same indices, same order |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for c in calls:
        lines.append(f"| {s['nms_images'][c['image']]} | {c['where']} | {c['threshold']:g} | {len(c['boxes'])} | "
                     f"{len(c['keep'])} | {len(c['got'])} | {'yes' if c['equal'] else 'NO'} |")
    lines += ["", f"{sum(c['equal'] for c in calls)} of {len(calls)} calls equal "
              f"({sum(len(c['boxes']) for c in calls)} boxes in, {sum(len(c['keep']) for c in calls)} kept)."]
    nb = s["latency_batch"]
    ts = f" | {s['torchscript_s']:.3f}" if "torchscript_s" in s else ""
    lines += ["", "| heads | graph op types (with subgraphs) | GridSample | Loop | eager s/image | onnxruntime s/image"
              + (" | TorchScript s/image" if ts else "") + f" | batch of {nb}: {nb} single-image calls | one batched call |",
              "| --- | ---: | --- | --- | ---: | ---: |" + (" ---: |" if ts else "") + " ---: | ---: |",
              f"| {s['label']} | {len(s['ops'])} | {'GridSample' in s['ops']} | {'Loop' in s['ops']} | {s['eager_s']:.3f} | "
              f"{s['onnx_s']:.3f}{ts} | {s['onnx_calls_s']:.3f} | {s['onnx_batched_s']:.3f} |"]
    hw = parse_sizes(args.sizes)[0][0]
    d = s["graphs_diff"]
    lines += ["", f"Latency: median of {args.repeats} calls after a warm-up, one {hw[0]}x{hw[1]} image; CPU, "
              f"{torch.get_num_threads()} torch threads, onnxruntime defaults, on a shared machine (indicative only).",
              "", f"Batched graph vs single-image graph, same images: {int(d['unmatched'])} unmatched, max box diff "
              f"{d['box_diff']:.1e} px, max angle diff {d['angle_diff']:.1e} degree, max score diff {d['score_diff']:.1e}."]
    if not (args.checkpoint or cfg.MODEL.WEIGHTS):
        lines += ["", f"Note: no checkpoint, a random init (seed {args.seed}): rerun with --checkpoint of a trained model."]
    return lines


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    cfg = setup_cfg(args.config_file, args.opts)
    if is_rotated(cfg) and (args.compare_builtin or args.compile_check):
        raise SystemExit("--compare-builtin and --compile-check are for upright models (StandardROIHeads as the "
                         "built-in twin, ROIHeadsTensors' upright boxes); a rotated model exports without them")
    summaries = [export_and_verify(cfg, args.checkpoint, args.output_dir, args, cfg.MODEL.ROI_HEADS.NAME)]
    if args.compare_builtin:
        bcfg = setup_cfg(args.config_file, args.opts, builtin=True)
        summaries.append(export_and_verify(bcfg, args.checkpoint, os.path.join(args.output_dir, "builtin"),
                                           args, "StandardROIHeads (built-in)",
                                           state_dict=summaries[0]["model"].state_dict()))
    if args.results and args.verify:
        write_results(args.results, summaries, args, cfg)
    failed = [s["label"] for s in summaries if not s["ok"]]
    if failed:
        raise SystemExit(f"--verify failed: onnxruntime differs from eager beyond the tolerances for {failed}")
    return summaries


if __name__ == "__main__":
    main()
