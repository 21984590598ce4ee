# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Runs the benchmark: in each condition, every pooler case (its implementations interleaved,
then each one's peak memory in a process of its own) and the whole models, and returns the
measurement records ``report.render`` writes. Progress goes to stderr."""
import gc
import sys
from typing import List, Optional, Sequence

from timing import interleaved

from .bounded import BOUNDED_CASES, BOUNDED_IMPLS
from .cases import IDLE_ONLY, find_case, make_step, pooler_cases
from .conditions import Condition, in_condition
from .memory import measure_memory
from .models import MODEL_CASES, model_bench
from .report import BoundedRecord, ColdRecord, ModelRecord, PoolerRecord

MEMORY_IN_QUICK = ("train_r0", "fwd+bwd")  # --quick measures the memory of this step only (a process each)
COLD_STEP = ("train_r0", "fwd+bwd")  # the first training step, as a new user meets it
COLD_IMPLS = ("detectron2", "gather")


def default_reps(quick: bool) -> int:
    """Pooler repetitions unless --reps."""
    return 3 if quick else 7


def pooler_records(cond: Condition, *, quick: bool, device: str, reps: int, cases: Optional[Sequence[str]] = None,
                   memory: bool = True) -> List[PoolerRecord]:
    """The pooler cases (all, or those named in ``cases``) in ``cond``, which the caller has set up.
    Warm-up: 2 calls of each implementation (--quick: 1)."""
    out = []
    for case in pooler_cases(quick):
        if cases and case.name not in cases:
            continue
        impls = [i for i in case.impls if cond.name == "idle" or i not in IDLE_ONLY]
        if len(impls) < 2:
            continue
        for mode in case.modes:
            print(f"[{cond.name}] pooler {case.name} {mode}", file=sys.stderr, flush=True)
            steps = {impl: make_step(impl, case, mode, quick, device) for impl in impls}
            times = interleaved(steps, reps, 1 if quick else 2, device)
            del steps
            gc.collect()
            mem = {}
            if memory and (not quick or (case.name, mode) == MEMORY_IN_QUICK):
                for impl in impls:
                    mem[impl] = measure_memory(impl, case, mode, quick, device, cond.threads)
            out.append(PoolerRecord(cond.name, case, mode, times, mem))
    return out


def cold_records(cond: Condition, *, quick: bool, device: str, runs: int) -> List[ColdRecord]:
    """The first training step's peak memory (``COLD_STEP``, a fresh process per run and
    implementation, the default allocator), ``runs`` times, the implementations alternating."""
    case_name, mode = COLD_STEP
    case = find_case(case_name, quick)
    print(f"[{cond.name}] first-call memory {case_name} {mode} x{runs}", file=sys.stderr, flush=True)
    mem = {impl: [] for impl in COLD_IMPLS}
    for _ in range(runs):
        for impl in COLD_IMPLS:
            mem[impl].append(measure_memory(impl, case, mode, quick, device, cond.threads, cold=True))
    return [ColdRecord(cond.name, case, mode, mem)]


def bounded_records(cond: Condition, *, device: str, cases: Optional[Sequence[str]] = None) -> List[BoundedRecord]:
    """The memory-bound cases (all, or those named), forward+backward, each implementation cold
    (first call, default allocator) and warm (fixed mmap threshold), a process each."""
    out = []
    for case in BOUNDED_CASES:
        if cases and case.name not in cases:
            continue
        print(f"[{cond.name}] memory-bound case {case.name}", file=sys.stderr, flush=True)
        mem = {impl: tuple(measure_memory(impl, case, "fwd+bwd", False, device, cond.threads, cold=cold)
                           for cold in (True, False)) for impl in BOUNDED_IMPLS}
        out.append(BoundedRecord(cond.name, case, mem))
    return out


def model_records(cond: Condition, *, quick: bool, device: str, model_reps: int = 0,
                  models: Optional[Sequence[str]] = None) -> List[ModelRecord]:
    """The whole models (all, or those whose key is in ``models``) in ``cond``; ``model_reps``
    0 takes each case's own count (--quick: 1)."""
    out = []
    for mcase in MODEL_CASES:
        if models and mcase.key not in models:
            continue
        if mcase.idle_only and cond.name != "idle":
            continue
        print(f"[{cond.name}] model {mcase.title}", file=sys.stderr, flush=True)
        reps = model_reps or (1 if quick else mcase.reps)
        passes = model_bench(mcase, quick, device, reps)
        out.append(ModelRecord(cond.name, mcase, tuple(mcase.quick_hw if quick else mcase.image_hw), reps, passes))
    return out


def run_conditions(conditions: Sequence[Condition], *, quick: bool, device: str, reps: int,
                   cases: Optional[Sequence[str]] = None, memory: bool = True, model: bool = True,
                   model_reps: int = 0, models: Optional[Sequence[str]] = None, cold_runs: int = 0,
                   bounded: Optional[Sequence[str]] = None) -> list:
    """Every condition in turn: its thread count and busy core set up for the pooler cases, the
    first-call memory (``cold_runs`` runs) and the whole models measured in it; the memory-bound
    cases (``bounded``: names, empty for none, None for all) in the idle condition (or the first
    one measured)."""
    records: list = []
    bounded_in = next((c.name for c in conditions if c.name == "idle"), conditions[0].name if conditions else None)
    for cond in conditions:
        with in_condition(cond):
            records += pooler_records(cond, quick=quick, device=device, reps=reps, cases=cases, memory=memory)
            if cold_runs and not device.startswith("cuda"):
                records += cold_records(cond, quick=quick, device=device, runs=cold_runs)
            if cond.name == bounded_in and (bounded is None or bounded) and not device.startswith("cuda"):
                records += bounded_records(cond, device=device, cases=bounded)
            if model:
                records += model_records(cond, quick=quick, device=device, model_reps=model_reps, models=models)
    return records
