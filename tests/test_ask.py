"""`python -m speechllm.ask`: answers for files x questions, one-line errors for bad audio."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechllm.ask import main
from speechllm.model import SpeechLM


@pytest.fixture(scope="module")
def checkpoint(tiny_whisper_source, tiny_llm_source, tmp_path_factory):
    torch.manual_seed(0)
    model = SpeechLM.from_config(
        {
            "encoder": {"source": tiny_whisper_source},
            "adapter": {
                "_target_": "speechllm.model.adapters.StackMLPAdapter",
                "stack": 4,
                "hidden_size": 32,
            },
            "llm": {"source": tiny_llm_source},
            "prompt": {"transcript": True},
        }
    )
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt")))


def wav(path, seconds=1.0, sr=16000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr)
    return str(path)


def test_one_file_one_question_prints_the_answer(checkpoint, tmp_path, capsys):
    rc = main(
        [
            checkpoint,
            wav(tmp_path / "a.wav"),
            "What can you hear?",
            "--no-transcript",
            "--max-new-tokens",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "==" not in out and len(out.splitlines()) <= 1


def test_files_times_questions_with_conversion_notes(checkpoint, tmp_path, capsys):
    a = wav(tmp_path / "a.wav")
    b = wav(tmp_path / "stereo8k.wav", sr=8000, channels=2)
    rc = main(
        [checkpoint, a, b, "-q", "Who speaks?", "-q", "How fast?", "--no-transcript", "--max-new-tokens", "3"]
    )
    captured = capsys.readouterr()
    assert rc == 0
    headers = [line for line in captured.out.splitlines() if line.startswith("== ")]
    assert headers == [
        f"== {a}: Who speaks?",
        f"== {a}: How fast?",
        f"== {b}: Who speaks?",
        f"== {b}: How fast?",
    ]
    assert "resampled 8000->16000" in captured.err and "downmixed" in captured.err


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: str(p / "missing.wav"), "missing"),
        (lambda p: wav(p / "silent.wav", seconds=0.0), "empty"),
        (
            lambda p: (
                sf.write(p / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT"),
                str(p / "nan.wav"),
            )[1],
            "non-finite",
        ),
        (lambda p: (p.joinpath("text.wav").write_text("not audio"), str(p / "text.wav"))[1], "unreadable"),
    ],
)
def test_bad_audio_is_a_one_line_error(checkpoint, tmp_path, capsys, make, reason):
    path = make(tmp_path)
    assert main([checkpoint, path, "What?"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and path in err and reason in err


def test_entry_point_runs_as_a_module(checkpoint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "speechllm.ask", checkpoint, str(tmp_path / "nope.wav"), "What?"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.wav'}: missing file"
    ]


def test_needs_a_question(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([checkpoint, wav(tmp_path / "a.wav")])
    assert "give at least one audio file and a question" in capsys.readouterr().err


def test_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    audio = wav(tmp_path / "a.wav")
    assert main([str(tmp_path / "empty-dir"), audio, "What?"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no config.json" in err


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda c: c["llm"].update(dtype="__class__"), "model.llm.dtype='__class__'"),
        (lambda c: c["adapter"].update(_target_="os.system"), "_target_='os.system' is not allowed"),
        (lambda c: c.update(format_version=99), "format_version=99; this speechllm reads"),
    ],
)
def test_a_tampered_checkpoint_config_is_one_line_naming_its_file(checkpoint, tmp_path, capsys, edit, says):
    import json
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    assert main([str(copy), wav(tmp_path / "a.wav"), "What?", "--no-transcript"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(copy / "config.json") in err and says in err, err


def test_an_empty_answer_is_said(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(SpeechLM, "generate", lambda self, rows, **kw: [""] * len(rows))
    assert main([checkpoint, wav(tmp_path / "a.wav"), "What?", "--no-transcript"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\n" and "the model ended its answer at once" in captured.err
