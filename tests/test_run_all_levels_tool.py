# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""tools/run_all_levels.py without training: it collects the finished runs it is asked for
(--runs) into results/all_levels.md with the differences to the main job, and names a run that
has not finished."""
import json
import sys

from helpers import load_tool


def _tool(monkeypatch, root):
    tool = load_tool("run_all_levels")
    monkeypatch.setattr(tool, "REPO", root)
    monkeypatch.setattr(sys.modules["run_twins"], "REPO", root)  # its reading of a config's OUTPUT_DIR
    return tool


def _run(out_dir, box_ap, mask_ap, s_per_iter):
    out_dir.mkdir(parents=True)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    (out_dir / "final_metrics.json").write_text(json.dumps(
        {"wall_time_s": 600.0, "results": {"bbox": {k: box_ap + i for i, k in enumerate(keys)},
                                            "segm": {k: mask_ap + i for i, k in enumerate(keys)}}}))
    rows = [{"iteration": 19, "total_loss": 1.0, "time": s_per_iter},
            {"iteration": 39, "total_loss": 0.5, "time": s_per_iter}]
    (out_dir / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _configs(root):
    (root / "configs" / "shapes").mkdir(parents=True)
    for leaf, out in (("mask_rcnn_plugin.yaml", "out/off"), ("mask_rcnn_plugin_all_levels_sum.yaml", "out/sum"),
                      ("mask_rcnn_plugin_all_levels_conv.yaml", "out/conv")):
        (root / "configs" / "shapes" / leaf).write_text(f'OUTPUT_DIR: "{out}"\n')


def test_collects_the_chosen_runs(tmp_path, monkeypatch):
    tool = _tool(monkeypatch, tmp_path)
    monkeypatch.setattr(tool, "_git_commit", lambda: "abc1234")
    _configs(tmp_path)
    _run(tmp_path / "out" / "off", 55.0, 52.0, 1.0)
    _run(tmp_path / "out" / "sum", 54.0, 52.5, 1.2)
    assert tool.main(["--skip-training", "--runs", "off", "sum"]) == 0
    text = (tmp_path / "results" / "all_levels.md").read_text()
    assert text.startswith("# All-level pooling (GRoIE) on the shapes job")
    assert "--runs off sum" in text and "commit abc1234" in text
    assert "| ALL_LEVELS \"sum\" | bbox | -1.0 |" in text and "| ALL_LEVELS \"sum\" | segm | +0.5 |" in text
    assert "| 1.20x |" in text
    assert "- ALL_LEVELS \"sum\": box AP -1.0 (lower), mask AP +0.5 (higher) than the main job, one run each." in text
    assert "conv" not in text.split("\n| run |")[1]  # only the runs asked for
    record = json.loads((tmp_path / "results" / "all_levels.json").read_text())
    assert len(record["runs"]) == 2


def test_names_a_run_that_has_not_finished(tmp_path, monkeypatch, capsys):
    tool = _tool(monkeypatch, tmp_path)
    _configs(tmp_path)
    _run(tmp_path / "out" / "off", 55.0, 52.0, 1.0)
    assert tool.main(["--skip-training"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out/sum/final_metrics.json not found" in err
