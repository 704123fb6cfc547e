"""The table over training seeds (`speechllm.eval.seeds`): mean, spread, heard tasks, and its command."""

import json

import pytest

from speechllm.eval import seeds


def _report(gender, accent, learned):
    return {
        "unseen": {
            "gender": {"balanced_accuracy": gender, "balanced_accuracy_ci": [gender - 0.1, gender + 0.05],
                       "n": 120, "chance_uniform": 0.5},
            "accent": {"balanced_accuracy": accent, "balanced_accuracy_ci": None, "n": 120, "chance_uniform": 0.25},
            "content": {"accuracy": 0.5, "n": 40, "chance_uniform": 0.0},
        },
        "summary": {"learned": learned, "retention": 0.7},
    }  # fmt: skip


def test_summary_gives_mean_spread_and_the_tasks_each_seed_hears():
    summary = seeds.summarize({"seed 0": _report(1.0, 0.30, 0.6), "seed 1": _report(0.5, 0.40, 0.4)})
    g = summary["tasks"]["gender"]
    assert g["mean"] == pytest.approx(0.75) and g["min"] == 0.5 and g["max"] == 1.0
    assert g["sd"] == pytest.approx(0.3536, abs=1e-3)
    # heard: at least 1/classes + 0.10 (accent 0.35 would be; 0.30 is not); content never counts
    assert summary["heard"] == {"seed 0": ["gender"], "seed 1": ["accent"]}
    assert summary["learned"]["mean"] == pytest.approx(0.5)
    md = seeds.render_markdown(summary)
    assert "| gender | 120 | 0.50 | 0.75 ± 0.35 | 0.50-1.00 | 1.00 [0.90, 1.05] | 0.50 [0.40, 0.55] |" in md
    assert "- seed 1: 1 (accent)" in md


def test_command_reads_evaluation_folders_and_names_a_missing_report(tmp_path, capsys):
    for name, g in (("a", 0.9), ("b", 0.8), ("c", 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(_report(g, 0.5, 0.6)))
    out = tmp_path / "table"
    seeds.main([str(tmp_path / n) for n in "abc"] + ["--out", str(out)])
    assert "0.80 ± 0.10" in capsys.readouterr().out
    assert (
        json.loads(out.with_suffix(".json").read_text())["tasks"]["gender"]["n"][str(tmp_path / "a")] == 120
    )
    with pytest.raises(SystemExit, match="no report.json"):
        seeds.main([str(tmp_path / "a"), str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="no evaluation reports"):
        seeds.summarize({})
