"""evaluate.py end to end on tiny models: report keys, bad checkpoints, partially labelled audiofolders."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from speechllm.config import ConfigError
from speechllm.data.described import DescribedDataError
from speechllm.eval import plane
from speechllm.eval.data import EvalDataError
from speechllm.eval.runner import CheckpointError, evaluate

ROOT = Path(__file__).resolve().parents[1]

CLIPS = [  # clip_id, split, gender, pitch, text, tone Hz
    ("c0", "test", "female", "high", "turn the lights off", 220.0),
    ("c1", "test", "male", "low", "open the door", 110.0),
    ("c2", "test", "female", "normal", "good morning", 180.0),
    ("c3", "train", "male", "low", "see you soon", 120.0),
]


def _tone(path: Path, hz: float, seconds: float = 0.6) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000)
    return str(path)


def _model_cfg(llm: str, whisper: str, finetune: str = "frozen") -> dict:
    return {
        "encoder": {"source": whisper, "num_taps": 2},
        "adapter": {
            "_target_": "speechllm.model.adapters.QFormerAdapter",
            "num_queries": 4,
            "num_layers": 1,
            "hidden_size": 32,
            "num_heads": 2,
            "ffn_mult": 2,
            "dropout": 0.0,
        },
        "llm": {
            "source": llm,
            "finetune": finetune,
            "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        },
        # No transcript in the prompt: a random tiny Whisper would babble for its whole length limit.
        "prompt": {"transcript": False},
    }


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory, tiny_llm_source, tiny_whisper_source) -> str:
    """A frozen-LLM SpeechLM checkpoint on tiny random models."""
    import torch

    from speechllm.model import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM.from_config(_model_cfg(tiny_llm_source, tiny_whisper_source))
    with torch.no_grad():  # a "trained" adapter: differs from the initialisation the baseline uses
        for p in model.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "smoke"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A described dataset (demo/described) with three test clips and one train clip."""
    import datasets

    root = tmp_path_factory.mktemp("data")
    wav_dir = root / "wavs"
    wav_dir.mkdir()
    rows = []
    for clip_id, split, gender, pitch, text, hz in CLIPS:
        rows.append(
            {
                "clip_id": clip_id,
                "audio_path": _tone(wav_dir / f"{clip_id}.wav", hz),
                "split": split,
                "label_gender": gender,
                "label_pitch": pitch,
                "label_text": text,
                "transcript": text,
                "description": f'"{text}" (Gender: {gender.title()}, Pitch: {pitch})',
            }
        )
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "demo" / "described"))
    return str(root)


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                "eval.max_new_tokens=6",
                "eval.retention.max_new_tokens=6",
                "eval.retention.max_clips=1",
                "eval.retention.drift_max_new_tokens=6",
                "eval.samples=3",
                *overrides,
            ],
        )


def test_report_keys_are_numbers(smoke_ckpt, data_dir, tmp_path):
    out = tmp_path / "out"
    rep = evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}"), out_dir=str(out))
    saved = json.loads((out / "report.json").read_text())
    assert saved["unseen"].keys() == rep["unseen"].keys() == {"gender", "pitch", "content"}
    num = (int, float)
    for task in ("gender", "pitch", "content"):
        for key in ("accuracy", "chance", "n"):
            assert isinstance(saved["unseen"][task][key], num), (task, key)
        assert isinstance(saved["ceiling"][task]["accuracy"], num)
        assert isinstance(saved["agreement"][task], num)
        assert isinstance(saved["baseline"][task]["accuracy"], num)
        assert isinstance(saved["baseline_agreement"][task], num)
        assert 0.0 <= saved["unseen"][task]["accuracy"] <= 1.0
    # Only the three test clips are evaluated, one question per clip and task.
    assert saved["unseen"]["gender"]["n"] == 3 and saved["meta"]["n_clips"] == 3
    assert saved["unseen"]["gender"]["chance"] == pytest.approx(2 / 3)  # majority rate: 2 female of 3
    for key in ("speech", "text", "delta"):
        assert isinstance(saved["retention"]["format"][key], num)
    # One clip, each of the five default constraints on each of the three requests.
    assert saved["retention"]["format"]["n"] == 15
    summ = saved["summary"]
    assert summ["retention_parts"]["agreement"] == 1.0  # frozen: the base LLM itself
    assert 0.0 <= summ["retention"] <= 1.0 and 0.0 <= summ["learned"] <= 1.0
    assert "unchanged" in saved["retention"]["drift"]["skipped"]  # frozen LLM: no drift run
    assert {"accent", "emotion", "age", "speed", "volume"} <= set(saved["skipped"])
    md = (out / "report.md").read_text()
    assert "## Unseen instructions" in md and "Sample questions" in md and "| gender |" in md
    assert (out / "tasks.png").stat().st_size > 1000 and (out / "retention.png").stat().st_size > 1000
    # Every question's answers are kept, and the accuracy can be recomputed from them.
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == saved["meta"]["n_questions"]
    gender = [x for x in lines if x["task"] == "gender"]
    assert {"speech", "speech_parsed", "text", "baseline_parsed", "clip_id", "gold"} <= set(gender[0])
    recomputed = sum(x["speech_parsed"] == x["gold"] for x in gender) / len(gender)
    assert recomputed == saved["unseen"]["gender"]["accuracy"]


def test_more_questions_per_clip_with_yardsticks_on_the_first_and_intervals(smoke_ckpt, data_dir, tmp_path):
    out = tmp_path / "out"
    rep = evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", "eval.questions_per_task=3",
                        "eval.reference_questions_per_task=1", "eval.retention.format=false"), out_dir=str(out))  # fmt: skip
    gender = rep["unseen"]["gender"]
    assert gender["n"] == 9 and gender["clips"] == 3  # three clips, three phrasings each
    assert rep["ceiling"]["gender"]["n"] == rep["baseline"]["gender"]["n"] == 3  # the first phrasing of each
    for key in ("accuracy", "balanced_accuracy"):
        lo, hi = gender[f"{key}_ci"]
        assert 0.0 <= lo <= gender[key] <= hi <= 1.0
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    asked = [x for x in lines if x["task"] == "gender"]
    assert len(asked) == 9 and sum(x["text"] is not None for x in asked) == 3
    assert {x["clip_id"] for x in asked if x["text"] is not None} == {x["clip_id"] for x in asked}
    # The yardsticks' questions are the ones a one-question evaluation asks.
    one = evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", "eval.retention.format=false"),
                   out_dir=str(tmp_path / "one"))  # fmt: skip
    assert one["ceiling"] == rep["ceiling"] and one["baseline"] == rep["baseline"]
    md = (out / "report.md").read_text()
    meta = rep["meta"]
    assert meta["reference_questions"] * 3 == meta["n_questions"]
    assert f"answer {meta['reference_questions']} of the {meta['n_questions']} questions" in md
    with pytest.raises(ConfigError, match="reference_questions_per_task"):
        evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", "eval.reference_questions_per_task=0"),
                 out_dir=str(tmp_path / "bad"))  # fmt: skip


def test_ceiling_and_baseline_answers_are_reused_and_keyed_by_what_they_depend_on(
    smoke_ckpt, data_dir, tmp_path
):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    first = evaluate(
        _cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", cache), out_dir=str(tmp_path / "a")
    )
    assert not any("reused" in n for n in first["notes"])
    again = evaluate(
        _cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", cache), out_dir=str(tmp_path / "b")
    )
    note = next(n for n in again["notes"] if "reused" in n)
    assert all(k in note for k in ("ceiling", "baseline", "format-text", "format-baseline"))
    for part in ("unseen", "ceiling", "baseline", "agreement"):
        assert again[part] == first[part]
    # Other generation settings are another key: nothing is reused.
    other = evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={data_dir}", cache, "eval.max_new_tokens=5"),
                     out_dir=str(tmp_path / "c"))  # fmt: skip
    assert not any("ceiling" in n and "reused" in n for n in other["notes"])


def test_lora_checkpoint_measures_drift(tiny_llm_source, tiny_whisper_source, data_dir, tmp_path):
    import torch

    from speechllm.model import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM.from_config(_model_cfg(tiny_llm_source, tiny_whisper_source, finetune="lora"))
    with torch.no_grad():  # LoRA B starts at zero; move it so the LLM really changed
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.add_(0.5 * torch.randn_like(p))
    ckpt = model.save_pretrained(tmp_path / "lora")
    rep = evaluate(
        _cfg(
            f"checkpoint={ckpt}",
            f"paths.data_dir={data_dir}",
            "eval.tasks=[gender]",
            "eval.baseline=false",
            "eval.ceiling=false",
            "eval.retention.format=false",
        ),
        out_dir=str(tmp_path / "out"),
    )
    drift = rep["retention"]["drift"]
    assert drift["kl"] > 0 and drift["n_tokens"] > 0 and drift["ppl_tuned"] > 0
    for who in ("base", "tuned"):
        assert set(drift[who]) >= {"json_valid", "refusal_harmful", "refusal_safe"}


def test_missing_checkpoint_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(_cfg(f"checkpoint={tmp_path / 'nope'}", f"paths.data_dir={data_dir}"), out_dir=str(tmp_path))


def test_mismatched_checkpoint_is_a_clear_error(smoke_ckpt, data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(smoke_ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["adapter"]["hidden_size"] = 48  # weights were saved for 32
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        evaluate(_cfg(f"checkpoint={bad}", f"paths.data_dir={data_dir}"), out_dir=str(tmp_path))


def test_missing_data_is_a_clear_error(smoke_ckpt, tmp_path):
    with pytest.raises(DescribedDataError, match="no described dataset"):
        evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"paths.data_dir={tmp_path}"), out_dir=str(tmp_path))


def test_partially_labelled_audiofolder_runs_only_its_tasks(smoke_ckpt, tmp_path, caplog):
    """An audiofolder with only gender labels: gender is evaluated, the rest named as skipped."""
    folder = tmp_path / "af"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "gender", "split"])  # plain label columns, as the corpus stage writes
        for clip_id, split, gender, _, _, hz in CLIPS:
            _tone(folder / f"{clip_id}.wav", hz)
            w.writerow([f"{clip_id}.wav", gender, split])
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="speechllm.eval")
    rep = evaluate(
        _cfg(
            f"checkpoint={smoke_ckpt}",
            f"eval.audiofolder={folder}",
            "eval.baseline=false",
            "describe.attributes=[gender,pitch,duration]",
        ),
        out_dir=str(out),
    )
    assert set(rep["unseen"]) == {"gender"}
    assert rep["unseen"]["gender"]["n"] == 3  # the train row is not evaluated
    assert set(rep["skipped"]) == {"accent", "pitch", "speed", "volume", "emotion", "age", "content"}
    assert "skipping task accent: no label_accent column" in caplog.text
    assert "Skipped tasks" in (out / "report.md").read_text()
    # No baseline ran: nothing pretends it scored 0.
    assert rep["summary"]["baseline_target_score"] is None
    assert plane.plane_points(rep)["x_base"] is None
    # The ceiling read descriptions made by the describe pipeline from the audio.
    assert any("describe pipeline" in n for n in rep["notes"])


def test_audiofolder_rows_without_a_split_are_not_held_out_unless_no_row_has_one(tmp_path):
    # Data preparation trains on rows without a split value, so evaluation must not score them.
    from speechllm.eval.data import load_audiofolder

    folder = tmp_path / "af"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "gender", "split"])
        for clip_id, split, gender, _, _, hz in CLIPS:
            _tone(folder / f"{clip_id}.wav", hz)
            w.writerow([f"{clip_id}.wav", gender, "" if clip_id == "c0" else split])
    data = load_audiofolder(str(folder), "test")
    assert sorted(r["clip_id"] for r in data.rows) == ["c1", "c2"]
    (folder / "metadata.csv").write_text("file_name,gender,split\nc0.wav,female,\nc1.wav,male,train\n")
    with pytest.raises(EvalDataError, match="count as 'train'"):
        load_audiofolder(str(folder), "test")
    # A folder without any split (a benchmark): never trained on, so every row is evaluated.
    (folder / "metadata.csv").write_text("file_name,gender\nc0.wav,female\nc1.wav,male\n")
    data = load_audiofolder(str(folder), "test")
    assert sorted(r["clip_id"] for r in data.rows) == ["c0", "c1"]
    assert any("every one of its 2 rows" in n for n in data.notes)


def test_external_instruction_set_is_scored_against_its_references(smoke_ckpt, tmp_path):
    """Rows of (audio, instruction, reference): choices are parsed as labels, the rest exact-matched."""
    folder = tmp_path / "bench"
    folder.mkdir()
    rows = [
        ("q0.wav", "Is there speech in this clip? Answer yes or no.", "yes", "speech_present", "yes|no"),
        ("q1.wav", "Is there speech in this clip? Answer yes or no.", "no", "speech_present", "yes|no"),
        ("q2.wav", "Is there speech in this clip? Answer yes or no.", "yes", "speech_present", "yes|no"),
        ("q3.wav", "Name the instrument you hear.", "A sine tone.", "instrument", ""),
        ("q4.wav", "Name the instrument you hear.", "sine tone", "instrument", ""),
    ]
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "instruction", "answer", "task", "choices"])
        for i, row in enumerate(rows):
            _tone(folder / row[0], 150 + 40 * i)
            w.writerow(row)
    out = tmp_path / "run"
    rep = evaluate(
        _cfg(f"checkpoint={smoke_ckpt}", f"eval.instruction_set={folder}", "eval.baseline=false",
             "eval.ceiling=false", "eval.retention.format=false", "eval.max_clips=null", "eval.describe_audiofolder=false"),
        out_dir=str(out),
    )  # fmt: skip
    yes_no, instrument = rep["unseen"]["speech_present"], rep["unseen"]["instrument"]
    assert yes_no["n"] == 3 and yes_no["chance"] == pytest.approx(2 / 3)
    assert instrument["n"] == 2 and instrument["metric"] == "exact match"
    assert instrument["chance"] == 1.0  # both references normalise to "sine tone"
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["gold"] for a in answers if a["task"] == "instrument"] == ["sine tone", "sine tone"]
    assert "instrument (exact match)" in (out / "report.md").read_text()
    # The same set as a `datasets` dataset (an `audio` column of wav bytes) is read the same way.
    as_dataset = datasets.Dataset.from_dict(
        {"audio": [{"bytes": (folder / r[0]).read_bytes(), "path": None} for r in rows],
         **{c: [r[i + 1] for r in rows] for i, c in enumerate(["instruction", "answer", "task", "choices"])}}
    ).cast_column("audio", datasets.Audio())  # fmt: skip
    as_dataset.save_to_disk(str(tmp_path / "bench_ds"))
    again = evaluate(
        _cfg(f"checkpoint={smoke_ckpt}", f"eval.instruction_set={tmp_path / 'bench_ds'}", "eval.baseline=false",
             "eval.ceiling=false", "eval.retention.format=false", "eval.max_clips=null", "eval.describe_audiofolder=false",
             f"paths.cache_dir={tmp_path / 'cache'}"),
        out_dir=str(tmp_path / "run2"),
    )  # fmt: skip
    assert {t: u["n"] for t, u in again["unseen"].items()} == {"speech_present": 3, "instrument": 2}
    (folder / "metadata.csv").write_text("file_name,question\nq0.wav,what?\n")
    with pytest.raises(EvalDataError, match="needs the column"):
        evaluate(_cfg(f"checkpoint={smoke_ckpt}", f"eval.instruction_set={folder}"), out_dir=str(out))


def test_entry_point_exits_cleanly_on_a_missing_checkpoint(tmp_path):
    """evaluate.py with a checkpoint that does not exist: exit code 2 and one clear line, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            f"checkpoint={tmp_path / 'missing'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not exist" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
