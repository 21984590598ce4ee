# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""tools/train_net.py: multi-process training (gloo), resume after an interruption, clear errors.

Everything runs a tiny model (R18-FPN at 128 pixels, a few iterations) on ``shapes_val``, so only
that split (200 images, a few seconds) is ever generated.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.engine import HookBase, launch
from detectron2.utils import comm

from helpers import REPO, SHAPES_CONFIG as CONFIG, SHAPES_TINY, load_tool

TRAIN_NET = REPO / "tools" / "train_net.py"
TINY = ["DATASETS.TRAIN", "('shapes_val',)", "DATASETS.TEST", "()", *SHAPES_TINY]


def _args(train_net, *opts):
    return train_net.get_parser().parse_args(["--config-file", str(CONFIG), *TINY, *opts])


# ------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------
def _ddp_worker(out_dir, max_iter):
    train_net = load_tool("train_net")
    torch.set_num_threads(1)
    args = _args(train_net, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", out_dir)
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    initial = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
    trainer.train()
    final = trainer.model.module.state_dict()
    torch.save({"initial": initial, "final": final}, os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(tmp_path):
    """2 processes on CPU (gloo, through Detectron2's launch): DDP averages the gradients, so
    both ranks end with the same weights, which differ from the initial ones. DDP raises on
    parameters that get no gradient, so finishing at all also checks that none is unused."""
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path), 3))
    r0 = torch.load(tmp_path / "rank0.pth")
    r1 = torch.load(tmp_path / "rank1.pth")
    assert r0["final"].keys() == r1["final"].keys()
    for k in r0["final"]:
        torch.testing.assert_close(r0["final"][k], r1["final"][k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(r0["initial"][k], r1["initial"][k], rtol=0, atol=0, msg=k)
    changed = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert any("roi_heads.box_head" in k for k in changed) and any("backbone" in k for k in changed)
    assert (tmp_path / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


class _SnapshotThenStop(HookBase):
    """Records the trainer state at ``snap_iter`` (when the checkpointer saves) and interrupts
    the run at ``stop_iter``, as a killed job would be."""

    def __init__(self, snap_iter, stop_iter):
        self.snap_iter, self.stop_iter, self.snapshot = snap_iter, stop_iter, None

    def after_step(self):
        it = self.trainer.iter
        if it == self.snap_iter:
            self.snapshot = {
                "model": copy.deepcopy(self.trainer.model.state_dict()),
                "optimizer": copy.deepcopy(self.trainer.optimizer.state_dict()),
                "scheduler": copy.deepcopy(self.trainer.scheduler.state_dict()),
            }
        if it == self.stop_iter:
            raise _Interrupted()


def _assert_same_state(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["WarmupCosineLR", "WarmupMultiStepLR"])
def test_resume_continues_from_last_checkpoint(tmp_path, scheduler):
    train_net = load_tool("train_net")
    # Checkpoints after iterations 2 and 5 (CHECKPOINT_PERIOD 3); the run dies during iteration 4.
    opts = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.STEPS", "(4,)",
            "SOLVER.LR_SCHEDULER_NAME", scheduler, "OUTPUT_DIR", str(tmp_path)]
    cfg = train_net.setup(_args(train_net, *opts))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    hook = _SnapshotThenStop(snap_iter=2, stop_iter=4)
    trainer.register_hooks([hook])
    with pytest.raises(_Interrupted):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000002.pth"

    # What `train_net.py --resume` does: a new trainer, then resume_or_load(resume=True).
    resumed = train_net.Trainer(train_net.setup(_args(train_net, *opts)))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3  # the iteration after the checkpointed one
    _assert_same_state(hook.snapshot["model"], resumed.model.state_dict())
    _assert_same_state(hook.snapshot["optimizer"], resumed.optimizer.state_dict())
    _assert_same_state(hook.snapshot["scheduler"], resumed.scheduler.state_dict())
    assert any(len(s) for s in resumed.optimizer.state_dict()["state"].values())  # momentum kept
    resumed.train()
    assert resumed.iter == cfg.SOLVER.MAX_ITER and (tmp_path / "model_final.pth").is_file()
    # The LR schedule continued where it was and ended where an uninterrupted run ends: the
    # cosine (the main job's schedule) at BASE_LR_END, the step schedule at BASE_LR * GAMMA after
    # step 4. A scheduler restarted at iteration 3 would stop short of either.
    end = cfg.SOLVER.BASE_LR_END if scheduler == "WarmupCosineLR" else cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(end, abs=1e-9)
    iters = [json.loads(line)["iteration"] for line in open(tmp_path / "metrics.json")]
    assert iters == sorted(iters)


# ------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------
def _cli_error(capsys, argv):
    train_net = load_tool("train_net")
    rc = train_net.cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("train_net.py: error: "), err
    return err


@pytest.mark.slow
def test_missing_config_file_exits_with_one_line():
    """End to end through the interpreter: non-zero exit, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", "configs/shapes/nope.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["train_net.py: error: config file not found: configs/shapes/nope.yaml"]


@pytest.mark.parametrize(
    "opts, expected",
    [
        (["MODEL.ROI_HEADS.NAME", "NoSuchHeads"],
         ["MODEL.ROI_HEADS.NAME 'NoSuchHeads' is not registered", "GridSampleROIHeads",
          "PluginROIHeads", "StandardROIHeads"]),
        (["MODEL.ROI_BOX_HEAD.NAME", "NoSuchBoxHead"],
         ["MODEL.ROI_BOX_HEAD.NAME 'NoSuchBoxHead' is not registered", "TwoMLPHead",
          "FastRCNNConvFCHead"]),
        (["DATASETS.TEST", "('shapes_tset',)"],
         ["dataset 'shapes_tset' is not registered", "shapes_train, shapes_val"]),
        (["MODEL.NO_SUCH_KEY", "1"], ["invalid config", "NO_SUCH_KEY"]),
    ],
)
def test_bad_config_exits_with_one_line(capsys, tmp_path, opts, expected):
    err = _cli_error(capsys, ["--config-file", str(CONFIG), "OUTPUT_DIR", str(tmp_path), *opts])
    for text in expected:
        assert text in err


def test_unwritable_output_dir_exits_with_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory cannot be created under a file, even as root
    err = _cli_error(capsys, ["--config-file", str(CONFIG), "OUTPUT_DIR", str(blocker / "out")])
    assert "OUTPUT_DIR" in err and "not writable" in err


def test_eval_only_without_weights_exits_with_one_line(capsys, tmp_path):
    err = _cli_error(capsys, ["--config-file", str(CONFIG), "--eval-only", "OUTPUT_DIR", str(tmp_path)])
    assert "MODEL.WEIGHTS" in err
