"""The learning-vs-forgetting study: its variants are the designed ones, its verdicts follow the numbers,
and it writes one report, plane and results file."""

import json

import pytest
from hydra import compose, initialize_config_dir

from speechllm import study
from speechllm.config import CONF_DIR
from speechllm.steps import prepare_command_for
from speechllm.train.config import validate_schema


def _variant(name: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=demo", f"study={name}"], return_hydra_config=True)


def test_every_variant_is_a_config_and_every_config_a_variant():
    assert set(study.VARIANTS) == {p.stem for p in (CONF_DIR / "study").glob("*.yaml")}
    named = {c.higher for c in study.CLAIMS} | {c.lower for c in study.CLAIMS}
    assert named <= set(study.VARIANTS)


def test_each_variant_changes_what_it_says_and_nothing_else():
    ref = _variant("verified")
    validate_schema(ref)
    assert (
        ref.trainer.num_train_epochs == 1 and ref.target.verify.enabled and ref.model.llm.finetune == "lora"
    )
    changes = {
        "self_output": lambda c: not c.target.verify.enabled and c.target.folder == "self_output_raw",
        "label": lambda c: c.target.mode == "label" and not c.target.verify.enabled,
        "paraphrase": lambda c: c.target.mode == "paraphrase" and c.target.verify.fallback == "drop",
        "label_filtered": lambda c: c.target.mode == "label" and c.target.token_filter.enabled,
        # the adapter is then all that trains: its learning rate (and alignment) are the run's again
        "frozen": lambda c: c.model.llm.finetune == "frozen" and c.trainer.adapter_learning_rate is None,
        "no_replay": lambda c: c.replay.ratio == 0.0,
        "long": lambda c: c.trainer.num_train_epochs == 3,
    }
    for name, changed in changes.items():
        cfg = _variant(name)
        validate_schema(cfg)
        assert changed(cfg) and not changed(ref), name
        # The rest is the reference's: same instructions, seed, adapter, learning rate.
        assert cfg.target.instructions == ref.target.instructions and cfg.seed == ref.seed, name
        assert cfg.trainer.learning_rate == ref.trainer.learning_rate, name


def test_variants_with_their_own_targets_prepare_them_in_their_own_folder():
    label = prepare_command_for("/tmp/d", ["study=label_filtered"])
    assert "target=label" in label and "target.folder=label_filtered" in label
    assert "target.token_filter.enabled=true" in label
    raw = prepare_command_for("/tmp/d", ["study=self_output"])
    assert "target.folder=self_output_raw" in raw and "target.verify.enabled=true" not in raw


def test_a_deleted_data_key_reaches_the_data_preparation():
    command = prepare_command_for("/tmp/d", ["data.augment.share=0.25", "~data.augment.kinds.noise"])
    assert "data.augment.share=0.25" in command and "~data.augment.kinds.noise" in command


def _result(learned: float, kept: float, se: float = 0.01, seeds=(0, 1, 2)) -> dict:
    return {"learned": learned, "kept": kept, "learned_se": se, "kept_se": se, "seeds": list(seeds)}


def test_verdicts_weigh_the_difference_against_its_standard_error():
    claim = study.Claim("x", "kept", "a", "b")
    # Two numbers each with se 0.01: the difference's se is 0.0141.
    cases = {
        0.05: "settled for",
        0.02: "leans for",
        0.01: "not separated",
        -0.02: "leans against",
        -0.05: "settled against",
    }
    for diff, word in cases.items():
        v = study.verdict(claim, {"a": _result(0.5, 0.9 + diff), "b": _result(0.5, 0.9)})
        assert v["verdict"] == word and v["se"] == pytest.approx(0.01 * 2**0.5), diff
    # Beyond 2 se is not settled while one side has fewer than three seeds.
    one_seed = study.verdict(claim, {"a": _result(0.5, 0.95, seeds=[0]), "b": _result(0.5, 0.9)})
    assert one_seed["verdict"] == "for, unsettled" and one_seed["seeds"] == 1
    assert study.verdict(claim, {"a": _result(0.5, 0.9)})["verdict"] == "not run"


def test_seeds_are_combined_with_the_larger_of_their_spread_and_their_own_noise():
    # Three seeds that disagree more than each run's counts say: the spread decides the standard error.
    runs = {s: {"learned": v, "learned_se": 0.01, "kept": 0.8, "kept_se": 0.02, "tasks": {"gender": {"balanced": v}},
                "task_kl": None} for s, v in zip((0, 1, 2), (0.5, 0.6, 0.7), strict=True)}  # fmt: skip
    row = study.combine_seeds(runs)
    assert row["learned"] == pytest.approx(0.6) and row["learned_sd"] == pytest.approx(0.1)
    assert row["learned_se"] == pytest.approx(0.1 / 3**0.5)
    # Seeds that agree exactly: the runs' own measurement noise remains.
    assert (
        row["kept"] == pytest.approx(0.8)
        and row["kept_sd"] == pytest.approx(0, abs=1e-12)
        and row["kept_se"] == pytest.approx(0.02 / 3**0.5)
    )
    assert row["tasks"]["gender"]["balanced"] == pytest.approx(0.6) and row["seeds"] == [0, 1, 2]
    assert row["task_kl"] is None and row["per_seed"]["1"]["learned"] == 0.6


def test_standard_errors_come_from_the_counts():
    tasks = {"gender": {"balanced": 0.5, "n": 100}, "accent": {"balanced": 0.5, "n": 100}}
    se = study.standard_errors(tasks, {"speech": 0.5, "text": 0.5, "n": 100}, {"agreement": 0.9, "n_tokens": 400},
                               {"format": 1.0, "agreement": 0.9})  # fmt: skip
    assert se["learned_se"] == pytest.approx((2 * 0.25 / 100) ** 0.5 / 2)
    assert se["kept_se"] == pytest.approx((0.25 / 100 / 0.25 + 0.09 / 400) ** 0.5 / 2)
    frozen = study.standard_errors(tasks, {"speech": 0.5, "text": 0.5, "n": 100}, None, {"agreement": 1.0})
    assert frozen["kept_se"] == 0.0  # the base LLM itself: agreement is exact


def _report(balanced: float, agreement: float | None) -> dict:
    drift = (
        {"skipped": "frozen"}
        if agreement is None
        else {"kl": 0.2, "ppl_tuned": 2.1, "ppl_base": 2.0, "agreement": agreement, "n_tokens": 500,
              "base": {"refusal_harmful": 0.0, "json_valid": 0.5}, "tuned": {"refusal_harmful": 0.0, "json_valid": 0.5}}
    )  # fmt: skip
    task = {
        "accuracy": balanced,
        "balanced_accuracy": balanced,
        "n": 40,
        "chance": 0.5,
        "chance_uniform": 0.5,
    }
    return {
        "unseen": {"gender": task, "content": {"accuracy": 0.5, "wer": 0.5, "n": 40}},
        "ceiling": {"gender": {**task, "balanced_accuracy": 0.65}},
        "retention": {"format": {"speech": 0.6, "text": 0.7, "n": 120}, "drift": drift},
        "summary": {"learned": balanced, "retention": 0.9, "retention_parts": {"format": 0.86},
                    "baseline_learned": 0.45, "baseline_retention": 0.5},
    }  # fmt: skip


def test_the_study_writes_its_report_plane_and_results(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    (train_dir / "train_metrics.json").write_text(json.dumps({"steps": [{"step": 58, "train/loss": 0.9}]}))
    results = {
        "verified": study.variant_result(_report(0.7, 0.95), train_dir),
        "frozen": study.variant_result(_report(0.6, None), tmp_path / "nowhere"),
    }
    assert results["verified"]["steps"] == 58 and results["verified"]["drift"]["agreement"] == 0.95
    assert results["frozen"]["drift"] is None and results["frozen"]["steps"] is None
    assert results["verified"]["anchors"]["base_llm"]["learned"] == pytest.approx(0.65)
    assert list(results["verified"]["tasks"]) == ["gender"]  # content is not an attribute task

    doc = study.write_study(results, tmp_path / "study", {"minutes": 3.0})
    saved = json.loads((tmp_path / "study" / "results.json").read_text())
    assert saved["variants"].keys() == {"verified", "frozen"}
    by_claim = {c["claim"]: c for c in doc["claims"]}
    lora = by_claim["Tuning the LLM (LoRA) learns more than a frozen LLM"]
    # 0.7 vs 0.6 on one task of 40 answers each is within the measurement's noise.
    assert lora["difference"] == pytest.approx(0.1) and lora["verdict"] == "not separated"
    assert lora["se"] == pytest.approx(
        (results["verified"]["learned_se"] ** 2 + results["frozen"]["learned_se"] ** 2) ** 0.5
    )
    assert by_claim["Token filtering forgets less"]["verdict"] == "not run"
    md = (tmp_path / "study" / "report.md").read_text()
    assert "| verified |" in md and "| frozen |" in md and f"**{lora['verdict']}**" in md
    assert (tmp_path / "study" / "plane.png").stat().st_size > 1000


def test_an_unknown_variant_fails_by_name():
    with pytest.raises(SystemExit, match="no_such"):
        study.main(["--variants", "verified,no_such"])


def test_a_rerun_skips_the_variants_already_done(tmp_path, monkeypatch):
    """A killed study picks up where it stopped: finished training and evaluation steps are reused."""
    ran: list[str] = []

    def fake_recorded(name, argv, log_dir, record_path, record):
        ran.append(name)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("train-"):
            (record_path.parent / "config.json").write_text("{}")
        else:
            (record_path.parent / "report.json").write_text(json.dumps(_report(0.6, 0.9)))
        record_path.write_text(json.dumps(record))
        return 0.0

    monkeypatch.setattr(study, "run_step", lambda *a, **k: 0.0)  # the data stages skip themselves anyway
    monkeypatch.setattr(study, "run_recorded", fake_recorded)
    args = [
        "--out",
        str(tmp_path / "study"),
        "--data-dir",
        str(tmp_path / "data"),
        "--variants",
        "verified,frozen",
    ]
    study.main(args)
    assert ran == ["train-verified", "evaluate-verified", "train-frozen", "evaluate-frozen"]
    ran.clear()
    (tmp_path / "study" / "frozen" / "evaluate" / "report.json").unlink()  # killed during frozen's evaluation
    study.main(args)
    assert ran == ["evaluate-frozen"]
    assert json.loads((tmp_path / "study" / "results.json").read_text())["variants"].keys() == {
        "verified",
        "frozen",
    }


def test_seeds_run_per_variant_and_combine_in_the_results(tmp_path, monkeypatch):
    commands: dict[str, list[str]] = {}

    def fake_recorded(name, argv, log_dir, record_path, record):
        commands[name] = argv
        record_path.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("train-"):
            (record_path.parent / "config.json").write_text("{}")
        else:
            learned = 0.6 if "seed-1" not in name else 0.8
            (record_path.parent / "report.json").write_text(json.dumps(_report(learned, 0.9)))
        record_path.write_text(json.dumps(record))
        return 1.0

    monkeypatch.setattr(study, "run_step", lambda *a, **k: 0.0)
    monkeypatch.setattr(study, "run_recorded", fake_recorded)
    out = tmp_path / "study"
    study.main(
        [
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            "--variants",
            "verified",
            "--seeds",
            "0",
            "1",
        ]
    )
    assert list(commands) == [
        "train-verified",
        "evaluate-verified",
        "train-verified-seed-1",
        "evaluate-verified-seed-1",
    ]
    assert "seed=1" in commands["train-verified-seed-1"] and not any(
        a.startswith("seed=") for a in commands["train-verified"]
    )
    assert (out / "verified" / "seed-1" / "evaluate" / "report.json").is_file()
    row = json.loads((out / "results.json").read_text())["variants"]["verified"]
    assert (
        row["seeds"] == [0, 1]
        and row["learned"] == pytest.approx(0.7)
        and row["learned_sd"] == pytest.approx(0.1414, abs=1e-3)
    )
    assert "(sd 0.14)" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        study.main(["--variants", "verified", "--seeds", "1", "1"])
