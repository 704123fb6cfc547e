"""The describe stage and data_prep/prepare.py on an audiofolder full of bad files."""

import csv
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

from speechllm.config import ConfigError
from speechllm.corpus import read_audiofolder
from speechllm.data import describe_stage
from speechllm.data.describe_stage import DescribeProcessor, run_describe
from speechllm.data.stage import read_rejects
from speechllm.describe import ATTRIBUTES_DIR

REPO = Path(__file__).resolve().parents[1]
SR = 16000
ATTRS = ["gender", "pitch", "volume", "snr", "duration"]


def _tone(seconds=1.0, sr=SR, hz=180.0):
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * hz * t)
    wave[: sr // 10] = 0  # a pause, as speech has
    return wave.astype(np.float32)


@pytest.fixture
def bad_folder(tmp_path):
    """An audiofolder with two good clips and every kind of bad file; returns (folder, expectations)."""
    root = tmp_path / "bad"
    root.mkdir()
    rejected = {  # name -> reason prefix
        "empty": "unreadable",
        "zeros": "silent",
        "nan": "non-finite",
        "truncated": "unreadable",
        "notaudio": "unreadable",
        "missing": "missing file",
        "long": "too long",
    }
    converted = {  # name -> conversion recorded
        "stereo": "downmixed 2->1 channels",
        "rate8k": "resampled 8000->16000",
        "pcm24": "converted PCM_24->float32",
    }
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "zeros.wav", np.zeros(SR, np.float32), SR)
    nan = _tone()
    nan[500:600] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(root / "truncated.wav", _tone(), SR)
    (root / "truncated.wav").write_bytes((root / "truncated.wav").read_bytes()[:40])
    (root / "notaudio.wav").write_text("not audio at all\n" * 50)
    sf.write(root / "long.wav", _tone(45.0, sr=8000), 8000)
    sf.write(root / "stereo.wav", np.stack([_tone(), _tone(hz=200)], axis=1), SR)
    sf.write(root / "rate8k.wav", _tone(sr=8000), 8000)
    sf.write(root / "pcm24.wav", _tone(), SR, subtype="PCM_24")
    for i in range(2):
        sf.write(root / f"good{i}.wav", _tone(hz=120 + 100 * i), SR)
    names = [*rejected, *converted, "good0", "good1"]
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "split", "gender", "text"])
        for i, name in enumerate(names):
            writer.writerow(
                [f"{name}.wav", "test" if i % 2 else "train", "male" if name == "good0" else "female", "hi"]
            )
    return root, rejected, converted


def _describe_cfg(**kw):
    return {
        "attributes": ATTRS,
        "renderer": "natural",
        "max_seconds": 30,
        "chunk_size": 3,
        "attributes_dir": None,
        "overrides": {},
        **kw,
    }


def test_bad_files_are_rejected_with_reasons_or_converted(bad_folder, tmp_path):
    root, rejected, converted = bad_folder
    inputs = read_audiofolder(root)
    out = tmp_path / "described"
    ds = run_describe(inputs, out, _describe_cfg())
    rejects = {r["clip_id"]: r for r in read_rejects(out)}
    assert len(ds) + len(rejects) == len(inputs)
    assert set(rejects) == set(rejected)
    for name, reason in rejected.items():
        assert rejects[name]["reason"].startswith(reason), rejects[name]
        assert rejects[name]["file"] == str(root / f"{name}.wav")
    rows = {r["clip_id"]: r for r in ds}
    for name, conversion in converted.items():
        assert conversion in rows[name]["conversions"]
    assert rows["good0"]["conversions"] == []
    assert rows["good0"]["label_gender"] == "male" and rows["good0"]["gender"] == "male"
    assert rows["good0"]["audio_path"] == str(root / "good0.wav")
    assert {r["split"] for r in ds} == {"train", "test"}
    assert rows["good1"]["pitch_hz"] == pytest.approx(220, rel=0.03)
    assert rows["good1"]["description"].startswith("A woman speaks, in a medium-pitched voice")


def test_clips_over_whisper_length_are_refused_by_name_when_the_transcript_is_asr(bad_folder):
    root, _, _ = bad_folder
    asr = DescribeProcessor(
        ["transcript"], {"transcript": {"methods": ["asr"]}}, ["transcript"], "natural", None
    )
    result = asr([{"clip_id": "long", "audio_path": str(root / "long.wav"), "split": "train"}])
    assert result.rows == []
    assert result.rejects == [
        {"clip_id": "long", "file": str(root / "long.wav"), "reason": "too long: 45.0 s > 30 s"}
    ]
    # With its text label read first, the clip never reaches Whisper and is kept.
    label_first = {"transcript": {"methods": ["label", "asr"], "label": "text"}}
    labelled = DescribeProcessor(["transcript"], label_first, ["transcript"], "natural", None)
    row = {"clip_id": "long", "audio_path": str(root / "long.wav"), "split": "train", "label_text": "hi"}
    result = labelled([row])
    assert result.rejects == [] and result.rows[0]["transcript"] == "hi"


def test_an_audio_file_replaced_in_place_is_described_again(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0), SR)
    inputs = [{"clip_id": "a", "audio_path": str(tmp_path / "a.wav"), "split": "train"}]
    cfg = _describe_cfg(attributes=["duration"])
    assert run_describe(inputs, tmp_path / "described", cfg)["duration"] == [pytest.approx(1.0)]
    sf.write(tmp_path / "a.wav", _tone(3.0), SR)
    assert run_describe(inputs, tmp_path / "described", cfg)["duration"] == [pytest.approx(3.0)]


def test_rerun_is_a_noop_and_an_attribute_yaml_change_invalidates(bad_folder, tmp_path, monkeypatch):
    root, _, _ = bad_folder
    inputs = read_audiofolder(root)
    attrs_dir = tmp_path / "attributes"
    shutil.copytree(ATTRIBUTES_DIR, attrs_dir)
    out = tmp_path / "described"
    first = run_describe(inputs, out, _describe_cfg(attributes_dir=str(attrs_dir)))

    calls = []
    original = DescribeProcessor.__call__
    monkeypatch.setattr(
        DescribeProcessor, "__call__", lambda self, rows: calls.append(rows) or original(self, rows)
    )
    again = run_describe(inputs, out, _describe_cfg(attributes_dir=str(attrs_dir)))
    assert calls == [] and again["description"] == first["description"]

    # Move the female pitch bins so 220 Hz is "low": the stage must notice and redo the work.
    pitch_yaml = attrs_dir / "pitch.yaml"
    pitch_yaml.write_text(pitch_yaml.read_text().replace("female: [186, 236]", "female: [250, 300]"))
    changed = run_describe(inputs, out, _describe_cfg(attributes_dir=str(attrs_dir)))
    assert calls, "a changed attribute config must re-run the stage"
    assert {r["clip_id"]: r["pitch"] for r in changed}["good1"] == "low"


def test_resume_after_kill_loses_and_duplicates_nothing(bad_folder, tmp_path, monkeypatch):
    root, _, _ = bad_folder
    inputs = read_audiofolder(root)
    out = tmp_path / "described"
    original = DescribeProcessor.__call__
    calls = []

    def dies_on_third_chunk(self, rows):
        calls.append([r["clip_id"] for r in rows])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, rows)

    monkeypatch.setattr(DescribeProcessor, "__call__", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_describe(inputs, out, _describe_cfg())
    done_before = [c for c in calls[:2]]

    calls.clear()
    ds = run_describe(inputs, out, _describe_cfg())
    redone = [clip for chunk in calls for clip in chunk]
    assert not set(redone) & {clip for chunk in done_before for clip in chunk}, "finished chunks were redone"
    ids = list(ds["clip_id"]) + [r["clip_id"] for r in read_rejects(out)]
    assert sorted(ids) == sorted(r["clip_id"] for r in inputs)  # none lost, none twice


def test_processor_pickles_for_worker_processes():
    from speechllm.describe import load_configs

    configs, order = load_configs(ATTRS)
    processor = DescribeProcessor(ATTRS, configs, order, "desta2", 30)
    assert pickle.loads(pickle.dumps(processor)) == processor
    assert describe_stage.DESCRIBE_VERSION >= 1


def test_entry_point_on_an_audiofolder(bad_folder, tmp_path):
    root, rejected, _ = bad_folder
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "data_prep/prepare.py"),
        "data=audiofolder",
        f"data.path={root}",
        "data.name=bad",
        f"paths.data_dir={out}",
        "describe.attributes=[pitch,gender,volume]",
        "describe.renderer=desta2",
        "stages=[corpus,describe]",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ds = datasets.load_from_disk(str(out / "bad" / "described"))
    assert len(ds) == 5
    assert ds[0]["description"].startswith("[00:00-00:01] (Pitch: ")
    lines = [json.loads(x) for x in (out / "bad" / "rejects.jsonl").read_text().splitlines()]
    assert {x["clip_id"] for x in lines} == set(rejected)
    assert all(x["stage"] == "described" and x["reason"] for x in lines)
    # The log says how many of each split were listed, and why each file was rejected, by reason.
    log = result.stderr + result.stdout
    assert "(split test 6, train 6)" in log
    assert f"describe: 1 rejected, missing file: {root / 'missing.wav'}" in log
    assert f"every reject is listed in {out / 'bad' / 'described' / 'rejects.jsonl'}" in log


def test_gold_labels_are_the_attribute_words_everywhere_and_unknown_ones_are_named(tmp_path):
    # "F", "Female", "m" map through gender's label_map; "unknown" and "x" are no word of it: named in the
    # log, read as unlabelled (so the description falls back to the pitch estimate), never a target.
    root = tmp_path / "labels"
    root.mkdir()
    values = ["F", "Female", "m", "unknown", "x"]
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "split", "gender", "text"])
        for i, value in enumerate(values):
            sf.write(root / f"c{i}.wav", _tone(hz=220 if i < 2 else 110), SR)
            writer.writerow([f"c{i}.wav", "train", value, "hello there"])
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "data_prep/prepare.py"), "data=audiofolder", f"data.path={root}",
           "data.name=labels", f"paths.data_dir={out}", "describe.attributes=[gender,duration]",
           "stages=[corpus,describe,targets]", "target=label",
           "target.instructions=[Is the speaker a man or a woman?]", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    described = {r["clip_id"]: r for r in datasets.load_from_disk(str(out / "labels" / "described"))}
    assert [described[f"c{i}"]["label_gender"] for i in range(5)] == ["female", "female", "male", "", ""]
    assert [described[f"c{i}"]["gender"] for i in range(5)] == ["female", "female", "male", "male", "male"]
    for value in ("'unknown'", "'x'"):
        assert f"label_gender: 1 row(s) with {value}, which is none of the attribute's words" in result.stdout
    targets = datasets.load_from_disk(str(next((out / "labels" / "targets").iterdir())))
    answers = {r["clip_id"]: r["target"] for r in targets}
    assert answers == {
        "c0": "The speaker is female.",
        "c1": "The speaker is female.",
        "c2": "The speaker is male.",
    }


@pytest.mark.parametrize(
    "override, says",
    [
        ("+data.sise=3", "unknown config key 'data.sise'"),
        ("target.instructions=nope", "unknown instruction pool"),
        ("+describe.renderr=natural", "unknown config key 'describe.renderr'"),
        ("describe.attributes=[gendr]", "unknown attribute(s) ['gendr']"),
        (
            "+describe.overrides.gender.pitch_treshold_hz=140",
            "unknown key(s) ['pitch_treshold_hz'] for attribute 'gender'",
        ),
        ("+target.generation.max_new_token=3", "unknown config key 'target.generation.max_new_token'"),
        ("shard=3/2", "shard=3/2 is out of range"),
        ("shard=half", "shard must look like 'i/n'"),
        ("num_proc=0", "num_proc=0"),
    ],
)
def test_a_config_mistake_is_named_before_any_stage(tmp_path, override, says):
    from hydra import compose, initialize_config_dir

    from speechllm.data.prepare import prepare

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prepare", overrides=[f"paths.data_dir={tmp_path}", override])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert says in str(err.value)
    assert not (tmp_path / "demo").exists()  # no stage started


def test_entry_point_reports_a_config_mistake_in_one_line(tmp_path):
    cmd = [sys.executable, str(REPO / "data_prep/prepare.py"), f"paths.data_dir={tmp_path}", "shard=3/2",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "config error: shard=3/2 is out of range: need 0 <= i < n"


def test_a_bad_audiofolder_is_one_line_naming_the_file(tmp_path):
    # The other audiofolder errors (tests/test_corpus.py) take the same path: AudioFolderError, one line.
    root = tmp_path / "folder"
    root.mkdir()
    (root / "metadata.csv").write_text("file_name\na.wav\na.wav\n")
    cmd = [sys.executable, str(REPO / "data_prep/prepare.py"), "data=audiofolder", f"data.path={root}",
           f"paths.data_dir={tmp_path / 'out'}", "stages=[corpus,describe]", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(root) in last and "the same file 'a.wav' twice" in last


def test_a_data_folder_in_use_with_other_settings_is_refused_naming_the_holder(bad_folder, tmp_path):
    """A live run (this test's process) holds the folder with other settings: prepare refuses, names it and
    writes nothing; a holder that is gone is dropped, and the folder is free again after a run."""
    import json
    import os
    import socket

    from speechllm.data.lock import HOLDERS

    data = tmp_path / "data"
    data.mkdir()
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "settings": "other",
        "command": "prepare.py X",
    }
    (data / HOLDERS).write_text(json.dumps([holder]))
    cmd = [sys.executable, str(REPO / "data_prep/prepare.py"), "data=audiofolder", f"data.path={bad_folder[0]}",
           "data.name=bad", f"paths.data_dir={data}", "stages=[corpus,describe]", "describe.attributes=[duration]",
           f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"being prepared with other settings by pid {os.getpid()}" in refused.stderr
    assert "prepare.py X" in refused.stderr and not (data / "bad").exists()
    # The same holder, gone (no such process): its entry is dropped and the run goes ahead.
    (data / HOLDERS).write_text(json.dumps([{**holder, "pid": 2**22 + 12345}]))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (data / "bad" / "described").is_dir() and json.loads((data / HOLDERS).read_text()) == []


def _wav_bytes(seconds: float, hz: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, _tone(seconds, hz=hz), SR, format="WAV")
    return buffer.getvalue()


def test_hf_dataset_is_a_corpus_with_mapped_columns(tmp_path):
    """data=hf: an Audio column (decoded without torchcodec), a split column, a transcript and labels,
    through describe to (label) targets."""
    source = datasets.Dataset.from_dict(
        {
            "audio": [{"bytes": _wav_bytes(1.0, 150), "path": None}, {"bytes": _wav_bytes(0.8, 220), "path": None},
                      {"bytes": b"not a wav file", "path": None}],
            "utt": ["u1", "u2", "u3"],
            "sex": ["male", "female", "male"],
            "sentence": ["hello there", "good morning", "broken"],
            "part": ["train", "test", "train"],
        }
    ).cast_column("audio", datasets.Audio())  # fmt: skip
    source.save_to_disk(str(tmp_path / "src"))
    out = tmp_path / "data"
    cmd = [
        sys.executable, str(REPO / "data_prep/prepare.py"), "data=hf", "data.name=mine",
        f"data.path={tmp_path / 'src'}", "data.columns.clip_id=utt", "data.columns.split=part",
        "data.columns.text=sentence", "+data.labels.gender=sex", f"paths.data_dir={out}",
        "describe.attributes=[transcript,duration]", "+describe.overrides.transcript.methods=[label]",
        "target=label", "stages=[corpus,describe,targets]", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = datasets.load_from_disk(str(out / "mine" / "targets" / "label"))
    assert [r["target"] for r in targets] == ['Someone says: "hello there" The speaker is male.']
    described = datasets.load_from_disk(str(out / "mine" / "described"))
    rows = {r["clip_id"]: r for r in described}
    assert set(rows) == {"u1", "u2"}
    assert rows["u1"]["split"] == "train" and rows["u2"]["split"] == "test"
    assert rows["u2"]["label_gender"] == "female" and rows["u1"]["transcript"] == "hello there"
    assert abs(rows["u2"]["duration"] - 0.8) < 0.05
    rejects = [json.loads(x) for x in (out / "mine" / "corpus" / "hf_rejects.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in rejects] == ["u3"] and "not readable" in rejects[0]["reason"]

    # A column the dataset lacks is named before anything is written.
    bad = [c if not c.startswith("+data.labels.gender") else "+data.labels.gender=gender" for c in cmd]
    result = subprocess.run([*bad[:-1], f"hydra.run.dir={tmp_path / 'h2'}", "data.name=other"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "no column(s) 'gender' (for label gender)" in result.stderr


def test_hf_dataset_of_arrays_and_paths(tmp_path):
    from speechllm.corpus.hf import write_hf_corpus

    (tmp_path / "src").mkdir()
    sf.write(tmp_path / "src" / "a.wav", _tone(0.5), SR)  # a relative path: beside the dataset's files
    arrays = [{"array": _tone(0.3).tolist(), "sampling_rate": SR}]
    datasets.Dataset.from_dict({"wav": ["a.wav"], "arr": arrays}).to_parquet(
        str(tmp_path / "src" / "part.parquet")
    )
    by_path = write_hf_corpus(tmp_path / "c1", {"path": str(tmp_path / "src"), "source_split": "train",
                                                "columns": {"audio": "wav"}})  # fmt: skip
    by_array = write_hf_corpus(tmp_path / "c2", {"path": str(tmp_path / "src"), "source_split": "train",
                                                 "columns": {"audio": "arr"}})  # fmt: skip
    assert sf.info(str(by_path / "audio" / "000000.wav")).duration == pytest.approx(0.5)
    assert sf.info(str(by_array / "audio" / "000000.wav")).duration == pytest.approx(0.3)
    assert [r["split"] for r in read_audiofolder(by_path)] == ["train"]


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    from speechllm.data.lock import preparing

    (tmp_path / "data").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"), preparing(tmp_path / "data", "x"):
        pass


def test_runs_of_one_configuration_share_a_data_folder_whatever_their_run_folders():
    # Two shards started a second apart get two time-stamped Hydra run folders; they must not refuse
    # each other, while any setting that decides what the stages write keeps them apart.
    from hydra import compose, initialize_config_dir

    from speechllm.data.prepare import preparation_settings

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):

        def settings(*overrides):
            return preparation_settings(compose("prepare", list(overrides)))

        first = settings("shard=0/2", "paths.output_dir=/runs/a", "num_proc=2")
        assert first == settings("shard=1/2", "paths.output_dir=/runs/b", "stages=[describe]")
        assert first != settings("data.size=3")
