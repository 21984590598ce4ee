# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The benchmark's markdown, from measurement records: a header (machine, versions, the exact
command, how it measured), the targets against their measured ratios, and per condition a
pooler table and a table per whole model. Only generated text: what the figures mean is
docs/performance.md's.

Every ratio is ``timing.ratio`` (median of per-repetition ratios) against Detectron2's
``ROIPooler`` of the same repetitions (pooler) or the built-in heads (whole model); a memory
ratio is the implementation's peak extra memory over ``ROIPooler``'s for the same step."""
import os
import platform
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from timing import fmt_t, ratio

from .bounded import BOUNDED_IMPLS, BOUNDED_LIMIT, BoundedCase
from .cases import IMPL_NAMES, Case, image_size
from .conditions import Condition
from .models import ModelCase

# Targets of the plugin / ROIPooler, in every condition: the default pooler (gather; issue 13) and
# ROIPool against ROIPooler's (issue 29: no slower). (label, (case, mode), limit, implementation)
TARGETS = [
    ("training fwd+bwd, ratio 0", ("train_r0", "fwd+bwd"), 0.3, "gather"),
    ("training fwd+bwd, ratio 2", ("train_r2", "fwd+bwd"), 0.3, "gather"),
    ("inference", ("infer_r0", "infer"), 0.4, "gather"),
    ("mask 14x14 fwd+bwd", ("mask_r0", "fwd+bwd"), 0.4, "gather"),
    ("ROIPool training fwd+bwd (plugin `ROIPool` / ROIPooler `ROIPool`)", ("roi_pool_train", "fwd+bwd"), 1.0,
     "roi_pool"),
    ("ROIPool inference (plugin `ROIPool` / ROIPooler `ROIPool`)", ("roi_pool_infer", "infer"), 1.0, "roi_pool"),
]
MEMORY_TARGET = 1.1  # peak extra memory / ROIPooler's, forward-only and forward+backward
MEMORY_TARGET_STEPS = (("train_r0", "fwd"), ("train_r0", "fwd+bwd"), ("train_r2", "fwd"), ("train_r2", "fwd+bwd"),
                       ("infer_r0", "infer"), ("mask_r0", "fwd"), ("mask_r0", "fwd+bwd"))
COLD_TARGET = 1.05  # first training step's peak memory (a fresh process) / ROIPooler's, every run
MODEL_TARGET = ("shapes", 0.95)  # shapes R18-FPN training iteration, plugin / built-in heads, busy core
NO_GPU = ("No GPU was available to this run, so there is no GPU section; "
          "rerun with `--device cuda` on a machine with one.")
CPU_RUN = "This run measured the CPU (`--device cpu`); rerun with `--device cuda` for GPU figures."


class PoolerRecord(NamedTuple):
    """One (condition, case, mode): the implementations timed together."""
    condition: str  # Condition.name
    case: Case
    mode: str
    times: Dict[str, List[float]]  # implementation -> seconds per repetition ("detectron2": the reference)
    memory: Dict[str, Optional[float]]  # implementation -> peak extra MB (None: failed); empty: not measured


class ColdRecord(NamedTuple):
    """The first call's peak memory of one step, a fresh process per run and implementation."""
    condition: str
    case: Case
    mode: str
    memory: Dict[str, List[Optional[float]]]  # implementation -> MB of each run ("detectron2": the reference)


class BoundedRecord(NamedTuple):
    """A memory-bound case: each implementation's peak memory of one forward+backward."""
    condition: str
    case: BoundedCase
    memory: Dict[str, Tuple[Optional[float], Optional[float]]]  # implementation -> (cold MB, warm MB)


class ModelRecord(NamedTuple):
    """One (condition, whole model): each pass's variants timed together."""
    condition: str
    case: ModelCase
    image_hw: Tuple[int, int]
    reps: int
    passes: Dict[str, Dict[str, List[float]]]  # "train (...)" / "inference (...)" -> variant -> seconds


def pooler_ratios(rec: PoolerRecord, impl: str) -> Tuple[float, Optional[float]]:
    """(time ratio, memory ratio or None) of ``impl`` to ``ROIPooler`` in ``rec``."""
    m, m_ref = rec.memory.get(impl), rec.memory.get("detectron2")
    return ratio(rec.times[impl], rec.times["detectron2"]), (m / m_ref if m is not None and m_ref else None)


def cold_ratios(rec: ColdRecord, impl: str) -> List[float]:
    """Run-by-run ratios of ``impl``'s first-call memory to ``ROIPooler``'s (runs that failed
    left out)."""
    return [m / r for m, r in zip(rec.memory[impl], rec.memory["detectron2"]) if m is not None and r]


def bounded_ratio(rec: BoundedRecord, impl: str, index: int) -> Optional[float]:
    """``impl``'s memory over ``ROIPooler``'s on a memory-bound case, cold (0) or warm (1)."""
    m, ref = rec.memory[impl][index], rec.memory["detectron2"][index]
    return m / ref if m is not None and ref else None


def model_train_ratio(rec: ModelRecord) -> float:
    """Plugin / built-in heads, the training pass."""
    t = next(t for name, t in rec.passes.items() if name.startswith("train"))
    return ratio(t["plugin"], t["builtin"])


def machine_info(device: str) -> List[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import detectron2
    import torchvision

    lines = [
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, detectron2 "
        f"{detectron2.__version__}, Python {platform.python_version()}",
        f"- device: {device}",
    ]
    if device.startswith("cuda"):
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    return lines


def header(command: str, quick: bool, device: str, reps: int, conditions: Sequence[Condition]) -> List[str]:
    height, width = image_size(quick)
    method = ("`torch.cuda.max_memory_allocated` minus the memory allocated before the step"
              if device.startswith("cuda") else "growth of the resident-set high-water mark, `/proc/self/status` VmHWM after `clear_refs`, "
              "with a fixed glibc mmap threshold so freed blocks leave the resident set")
    return [
        "# Benchmarks" if not quick else "# Benchmarks (--quick: smaller sizes, not the reference figures)",
        "",
        f"Generated by `{command}`; do not edit by hand.",
        "",
        *machine_info(device),
        "- conditions: " + "; ".join(
            f"**{c.title}** (`torch.set_num_threads({c.threads})`"
            + (", a `while True: pass` process started by the benchmark holds one core" if c.busy else "") + ")"
            for c in conditions),
        f"- pooler inputs: 2 images {height}x{width}, P2..P5 with 256 channels (float32), "
        "ROIAlignV2 unless a case names another pooler type, boxes with side lengths log-uniform in 16..800 px, "
        "uniform centres, clipped to the image",
        f"- timing: {reps} repetitions after warm-up, implementations interleaved; time = median (min-max) "
        "in ms; ratio = median over repetitions of (this / Detectron2 `ROIPooler`) of the same repetition",
        f"- memory: peak extra memory of one step after warm-up, each case in a process of its own ({method}); "
        "first call (cold): a fresh process builds the inputs and the pooler and measures its first "
        "forward+backward with the default allocator (code pages, lazily made state and what the allocator "
        "keeps included), one process per run and implementation",
        "- memory-bound cases: one level (or P2..P5), many samples per bin for a small output (tools/bench/bounded.py); "
        "cold and warm as above, forward+backward; the rotated case's `ROIPooler` pools the same box upright",
        "- the `grid_sample` sampler and the notebook design are measured in the idle condition only",
        "- `torch.compile` rows: default settings (inductor), compiled during the warm-up calls; the "
        "pooler compiled alone, the whole model with `model.roi_heads` compiled",
        "",
    ]


def pooler_table(records: Sequence[PoolerRecord]) -> List[str]:
    md = [
        "| case | mode | implementation | time ms | ratio | peak extra MB | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rec in records:
        for impl, ts in rec.times.items():
            r, m_ratio = pooler_ratios(rec, impl)
            m = rec.memory.get(impl)
            md.append(
                f"| {rec.case.description}, {rec.case.rois} ROIs/image | {rec.mode} | {IMPL_NAMES[impl]} | "
                f"{fmt_t(ts)} | {r:.2f}x | {'-' if m is None else f'{m:.0f}'} | "
                f"{'-' if m_ratio is None else f'{m_ratio:.2f}x'} |"
            )
    return md


def model_table(rec: ModelRecord) -> List[str]:
    mcase, (mh, mw) = rec.case, rec.image_hw
    md = [
        f"`{mcase.config}` (random init, no weights) with the plugin heads "
        f"(`PluginROIHeads`, `TwoMLPHead`, sampler `gather`) vs the same config with "
        f"`StandardROIHeads` + `FastRCNNConvFCHead`; identical weights, random {mh}x{mw} images with "
        f"8 boxes/masks each, {rec.reps} repetition(s) after one warm-up, interleaved.",
        "",
        "| pass | built-in heads ms | plugin heads ms | ratio plugin / built-in |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in rec.passes.items():
        md.append(f"| {name} | {fmt_t(t['builtin'])} | {fmt_t(t['plugin'])} | "
                  f"{ratio(t['plugin'], t['builtin']):.2f}x |")
        md.append(f"| {name}, plugin `torch.compile(model.roi_heads)` | {fmt_t(t['builtin'])} | "
                  f"{fmt_t(t['plugin_compiled'])} | {ratio(t['plugin_compiled'], t['builtin']):.2f}x |")
    return md


def targets_table(conditions: Sequence[Condition], records: Sequence) -> List[str]:
    """Each target against its measured ratio of the default ``gather`` sampler, per condition
    ("-" where the run did not measure it)."""
    pooler = {(r.condition, r.case.name, r.mode): r for r in records if isinstance(r, PoolerRecord)}
    models = {(r.condition, r.case.key): r for r in records if isinstance(r, ModelRecord)}
    cold = {r.condition: r for r in records if isinstance(r, ColdRecord)}
    bounded = {(r.condition, r.case.name): r for r in records if isinstance(r, BoundedRecord)}

    def cell(value: Optional[float], limit: float) -> str:
        return "-" if value is None else f"{value:.2f}x {'yes' if value <= limit else '**no**'}"

    def span_cell(values: List[float], limit: float) -> str:  # verdict on the worst
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return f"{lo:.2f}x-{hi:.2f}x {'yes' if hi <= limit else '**no**'}"

    def pooler_cell(cond, case, mode, index, limit, impl="gather"):
        rec = pooler.get((cond.name, case, mode))
        return cell(None if rec is None or impl not in rec.times else pooler_ratios(rec, impl)[index], limit)

    md = [
        "| target (plugin / `ROIPooler`; the default `gather` sampler unless named) | limit | "
        + " | ".join(c.title for c in conditions) + " |",
        "| --- | --- |" + " --- |" * len(conditions),
    ]
    for label, (case, mode), limit, impl in TARGETS:
        md.append(f"| time, {label} | {limit}x | "
                  + " | ".join(pooler_cell(c, case, mode, 0, limit, impl) for c in conditions) + " |")
    for case, mode in MEMORY_TARGET_STEPS:
        md.append(f"| peak extra memory, {case} {mode} | {MEMORY_TARGET}x | "
                  + " | ".join(pooler_cell(c, case, mode, 1, MEMORY_TARGET) for c in conditions) + " |")
    if cold:
        rec = next(iter(cold.values()))
        md.append(f"| peak memory of a first training step (cold, every run), {rec.case.name} {rec.mode} | "
                  f"{COLD_TARGET}x | " + " | ".join(span_cell(cold_ratios(cold[c.name], "gather"), COLD_TARGET)
                                                     if c.name in cold else "-" for c in conditions) + " |")
    for (cond_name, name), rec in bounded.items():
        for impl in BOUNDED_IMPLS[1:]:
            values = [v for v in (bounded_ratio(rec, impl, 0), bounded_ratio(rec, impl, 1)) if v is not None]
            md.append(f"| memory-bound case {name}, `{impl}` (cold and warm) | {BOUNDED_LIMIT}x | "
                      + " | ".join(span_cell(values, BOUNDED_LIMIT) if c.name == cond_name else "-"
                                   for c in conditions) + " |")
    key, limit = MODEL_TARGET
    md.append(f"| shapes R18-FPN training iteration, plugin / built-in heads | {limit}x (busy core) | "
              + " | ".join(cell(model_train_ratio(models[(c.name, key)]) if (c.name, key) in models else None, limit)
                           for c in conditions) + " |")
    return md


def cold_table(rec: ColdRecord) -> List[str]:
    runs = len(rec.memory["detectron2"])
    md = [f"Peak memory of the first call, {rec.case.description}, {rec.case.rois} ROIs/image, {rec.mode}, "
          f"a fresh process per run and implementation ({runs} runs):", "",
          "| implementation | peak MB, each run | ratio to `ROIPooler`, each run |", "| --- | --- | --- |"]
    for impl, mb in rec.memory.items():
        md.append(f"| {IMPL_NAMES[impl]} | {', '.join('-' if m is None else f'{m:.0f}' for m in mb)} | "
                  f"{', '.join(f'{r:.3f}x' for r in cold_ratios(rec, impl))} |")
    return md


def bounded_table(records: Sequence[BoundedRecord]) -> List[str]:
    md = ["| case | implementation | cold MB | cold ratio | warm MB | warm ratio |",
          "| --- | --- | --- | --- | --- | --- |"]
    for rec in records:
        for impl in BOUNDED_IMPLS:
            cold, warm = rec.memory[impl]
            ratios = [bounded_ratio(rec, impl, i) for i in (0, 1)]
            md.append(f"| {rec.case.name}: {rec.case.description} | {IMPL_NAMES[impl]} | "
                      + " | ".join(f"{'-' if m is None else f'{m:.1f}'} | {'-' if r is None else f'{r:.2f}x'}"
                                   for m, r in zip((cold, warm), ratios)) + " |")
    return md


def gpu_section(device: str) -> List[str]:
    if device.startswith("cuda"):
        return []
    return ["", "## GPU", "", CPU_RUN if torch.cuda.is_available() else NO_GPU]


def render(command: str, quick: bool, device: str, reps: int, conditions: Sequence[Condition],
           records: Sequence) -> str:
    """The whole file: header, targets, then per condition its pooler table and model tables."""
    md = header(command, quick, device, reps, conditions) + ["## Targets", ""] + targets_table(conditions, records)
    for cond in conditions:
        mine = [r for r in records if r.condition == cond.name]
        md += ["", f"## {cond.title}", "", "### Pooler", ""]
        md += pooler_table([r for r in mine if isinstance(r, PoolerRecord)])
        for rec in mine:
            if isinstance(rec, ColdRecord):
                md += ["", "### Memory of a first training step (cold)", ""] + cold_table(rec)
        mine_bounded = [r for r in mine if isinstance(r, BoundedRecord)]
        if mine_bounded:
            md += ["", "### Memory-bound cases (forward+backward)", ""] + bounded_table(mine_bounded)
        for rec in mine:
            if isinstance(rec, ModelRecord):
                md += ["", f"### Whole model: {rec.case.title}", ""] + model_table(rec)
    return "\n".join(md + gpu_section(device) + [""])
