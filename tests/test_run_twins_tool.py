# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""tools/run_twins.py without training: the rotated set refuses to start without a compiled
Detectron2, and collects finished runs (boxes only) into its results file with the gap verdict."""
import json

from helpers import load_tool


def _run(out_dir, ap, s_per_iter):
    out_dir.mkdir(parents=True)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    (out_dir / "final_metrics.json").write_text(json.dumps(
        {"wall_time_s": 600.0, "results": {"bbox": {k: ap + i for i, k in enumerate(keys)}}}))
    rows = [{"iteration": 19, "total_loss": 1.0, "time": s_per_iter},
            {"iteration": 39, "total_loss": 0.5, "time": s_per_iter}, {"iteration": 39}]
    (out_dir / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_rotated_set_needs_a_compiled_detectron2(capsys, tmp_path):
    run_twins = load_tool("run_twins")
    assert run_twins.main(["--set", "rotated"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--detectron2-src DIR" in err and "build_ext --inplace" in err
    assert run_twins.main(["--set", "rotated", "--detectron2-src", str(tmp_path)]) == 2
    assert "has no _C" in capsys.readouterr().err


def test_rotated_set_collects_finished_runs(tmp_path, monkeypatch):
    run_twins = load_tool("run_twins")
    monkeypatch.setattr(run_twins, "REPO", tmp_path)
    monkeypatch.setattr(run_twins, "_detectron2_of", lambda src: f"detectron2 from {src or 'this Python'}")
    _run(tmp_path / "out" / "plugin", 55.0, 1.0)
    _run(tmp_path / "out" / "builtin", 56.5, 1.25)
    # each config's OUTPUT_DIR: the plugin's from the override, the builtin's from its YAML
    (tmp_path / "configs" / "rotated").mkdir(parents=True)
    for leaf, out in (("rrcnn_R_18_FPN_plugin.yaml", "out/plugin"),
                      ("rrcnn_R_18_FPN_builtin.yaml", "out/builtin")):
        (tmp_path / "configs" / "rotated" / leaf).write_text(f'OUTPUT_DIR: "{out}"\n')
    assert run_twins.main(["--set", "rotated", "--skip-training"]) == 0
    text = (tmp_path / "results" / "rotated_twins.md").read_text()
    assert text.startswith("# Rotated twins: PluginRROIHeads vs Detectron2's RROIHeads")
    assert "RotatedCOCOEvaluator" in text and "segm" not in text
    assert "- plugin: detectron2 from this Python" in text
    assert "| plugin, rrcnn_R_18_FPN_plugin.yaml | bbox | -1.5 | -1.5 |" in text
    assert "| 0.80x |" in text  # 1.0 / 1.25 s per iteration
    assert "AP gap to the built-in heads bbox 1.5 points: within the 2-point bar." in text
    record = json.loads((tmp_path / "results" / "rotated_twins.json").read_text())
    assert [r["iterations"] for r in record["runs"].values()] == [40, 40]
