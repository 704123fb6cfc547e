"""The misuse catalogue: user mistakes and hostile inputs, each run through a real entry point.

Every case runs `data_prep/prepare.py`, `train.py`, `evaluate.py` or `python -m speechllm.ask` as a new process
on tiny random models (the `experiment=smoke` recipe) and small audio folders, and is judged by what a user
would see:

  refused     the run stopped with a short error (no traceback) that names the key, file or value at fault
  ok          the run went through, and its result was checked (a label, a path, a loss, a file left intact)

and every other outcome is a failure, counted by kind:

  traceback   a Python traceback for a user's mistake
  hang        no answer within the time limit
  accepted    a mistake that ran to the end (exit 0) where it should have been refused
  unclear     refused, but the message does not name what is wrong
  wrong       ran, but the result is wrong (a label not normalised, a file lost, another loss on resume)
  refused!    a valid input refused

Not part of `make test` (14 minutes on two CPU cores; the tests cover the same behaviours one by one):

    python tests/misuse.py                 # every case; exit 1 if any fails
    python tests/misuse.py -k audiofolder  # the cases whose name or area contains a word
    python tests/misuse.py --list

Cases that need a second mount (a full or read-only disk) mount a small tmpfs and are skipped, counted,
when that is not allowed (not root).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SR = 16000
TIMEOUT_S = 240
PREPARE = [str(REPO / "data_prep/prepare.py")]
TRAIN = [str(REPO / "train.py")]
EVALUATE = [str(REPO / "evaluate.py")]
ASK = ["-m", "speechllm.ask"]
SMOKE = ["experiment=smoke"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Case:
    """One misuse: `argv(ws)` after the Python executable; `expect` is "refused" or "ok"."""

    name: str
    area: str
    argv: Callable[[Workspace], list[str]]
    expect: str
    says: tuple[str, ...] = ()  # refused: every one of these in stderr
    check: Callable[[Workspace, Result], str | None] | None = None  # what is wrong with the result, or None
    needs_mount: bool = False


@dataclass
class Workspace:
    """Shared inputs built once: a trained smoke checkpoint, audio files, audio folders."""

    root: Path
    _made: dict = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def run_dir(self, case: str) -> str:
        return f"hydra.run.dir={self.path('runs', case)}"

    def data(self) -> str:
        return f"paths.data_dir={self.path('data')}"

    def cache(self) -> str:
        return f"paths.cache_dir={self.path('cache')}"

    def once(self, key: str, make: Callable[[], object]):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    # ---- audio
    def tone(self, name: str, hz: float = 180.0, seconds: float = 1.0, sr: int = SR) -> Path:
        path = self.path("audio", name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(int(seconds * sr)) / sr
            wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
            wave[: sr // 10] = 0
            sf.write(path, wave, sr)
        return path

    def voice(self, name: str, variant: str = "m3", text: str = "The weather is lovely this morning.") -> Path:
        path = self.path("audio", name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["espeak-ng", "-v", f"en-us+{variant}", "-w", str(path), text], check=True)
        return path

    def noise(self, name: str, kind: str) -> Path:
        path = self.path("audio", name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            t = np.arange(2 * SR) / SR
            if kind == "white":
                wave = 0.1 * rng.standard_normal(t.size)
            else:  # mains hum at 50 Hz
                wave = 0.3 * np.sin(2 * np.pi * 50 * t)
            sf.write(path, wave.astype(np.float32), SR)
        return path

    def folder(self, name: str, rows: list[dict], files: dict[str, Callable[[Path], None]] | None = None,
               header: list[str] | None = None) -> Path:  # fmt: skip
        """An audiofolder: `files` name -> writer(path); `rows` become metadata.csv (header from the keys)."""
        root = self.path("folders", name)
        if root.exists():
            return root
        root.mkdir(parents=True)
        for file_name, write in (files or {}).items():
            write(root / file_name)
        columns = header if header is not None else list(dict.fromkeys(k for row in rows for k in row))
        with open(root / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return root

    # ---- a trained checkpoint
    def smoke_run(self) -> Path:
        def make() -> Path:
            out = self.path("runs", "smoke-fixture")
            cmd = [sys.executable, *TRAIN, *SMOKE, self.data(), self.cache(), f"hydra.run.dir={out}",
                   "trainer.max_steps=4", "trainer.save_steps=2"]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, env=_env(), timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"the smoke fixture did not train:\n{done.stderr[-3000:]}")
            return out

        return self.once("smoke", make)

    def checkpoint(self) -> Path:
        return self.smoke_run() / "checkpoints" / "final"

    def tampered(self, name: str, edit: Callable[[Path], None], source: str = "final") -> Path:
        """A copy of a smoke checkpoint changed by `edit(folder)`."""
        copy = self.path("tampered", name)
        if not copy.exists():
            shutil.copytree(self.smoke_run() / "checkpoints" / source, copy)
            edit(copy)
        return copy

    def tampered_run(self, name: str, edit: Callable[[Path], None]) -> Path:
        """A copy of the smoke run's folder (its step checkpoints) with its newest step checkpoint edited."""
        copy = self.path("tampered-runs", name)
        if not copy.exists():
            shutil.copytree(self.smoke_run(), copy)
            steps = sorted((copy / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            edit(steps[-1])
        return copy


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error", "HYDRA_FULL_ERROR": "0"}  # fmt: skip


def _edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def _pickle_file(name: str) -> Callable[[Path], None]:
    """Replace a checkpoint file with a pickle that would run code when unpickled."""

    def edit(folder: Path) -> None:
        import pickle

        class Boom:
            def __reduce__(self):
                return (os.system, ("touch /tmp/misuse-pwned",))

        (folder / name).write_bytes(pickle.dumps({"state": Boom()}))

    return edit


# ------------------------------------------------------------------------------------------------ checks
def _not_pwned(ws: Workspace, result: Result) -> str | None:
    if Path("/tmp/misuse-pwned").exists():
        return "a pickle in the checkpoint ran code"
    return None


def _described(ws: Workspace, name: str) -> list[dict]:
    import datasets

    return list(datasets.load_from_disk(str(ws.path("data", name, "described"))))


def _labels_normalised(ws: Workspace, result: Result) -> str | None:
    import datasets

    targets = datasets.load_from_disk(str(ws.path("data", "labels", "targets", "label")))
    answers = sorted({row["target"] for row in targets})
    if answers != ["The speaker is female.", "The speaker is male."]:
        return f"label targets {answers}"
    if "'unknown', which is none of the attribute's words" not in result.output:
        return "the unknown value is not named"
    return None


def _no_speaker_for_noise(ws: Workspace, result: Result) -> str | None:
    rows = {row["clip_id"]: row for row in _described(ws, "noise")}
    wrong = []
    for clip in ("white", "hum"):
        row = rows[clip]
        made_up = [a for a in ("gender", "pitch", "speaking_rate") if row.get(a)]
        if made_up:
            wrong.append(f"{clip}: {made_up} in {row['description']!r}")
        elif "no voice" not in row["description"].lower():
            wrong.append(f"{clip}: the description does not say there is no voice: {row['description']!r}")
    if not rows["speech"].get("gender"):
        wrong.append("the speech clip lost its gender")
    return "; ".join(wrong) or None


def _corpus_intact(ws: Workspace, result: Result) -> str | None:
    corpus = ws.path("data", "smoke", "corpus")
    wavs = list(corpus.rglob("*.wav"))
    if not (corpus / "metadata.csv").exists() or len(wavs) < 12:
        return f"the finished corpus lost files ({len(wavs)} wavs left)"
    return None




def _checkpoint_config(key_path: str, want) -> Callable[[Workspace, Result], str | None]:
    def check(ws: Workspace, result: Result) -> str | None:
        run = Path(result.run_dir)  # type: ignore[attr-defined]
        config = json.loads((run / "checkpoints" / "final" / "config.json").read_text())
        value = config
        for key in key_path.split("."):
            value = value[key]
        return None if value == want else f"{key_path} recorded as {value!r}, not {want!r}"

    return check


def _keeps(count: int) -> Callable[[Workspace, Result], str | None]:
    def check(ws: Workspace, result: Result) -> str | None:
        steps = list((Path(result.run_dir) / "checkpoints").glob("step-*"))  # type: ignore[attr-defined]
        return None if len(steps) == count else f"{len(steps)} step checkpoints kept, not {count}"

    return check


def _losses(run: Path) -> dict[int, float]:
    metrics = json.loads((run / "train_metrics.json").read_text())
    return {row["step"]: row["train/loss"] for row in metrics["steps"] if "train/loss" in row}


def _resume_exact(ws: Workspace, result: Result) -> str | None:
    straight = _losses(ws.path("runs", "resume-straight"))
    resumed = _losses(Path(result.run_dir))  # type: ignore[attr-defined]
    later = {step: loss for step, loss in resumed.items() if step > 7}
    if not later:
        return "the resumed run logged no loss after step 7"
    differ = {step: (straight.get(step), loss) for step, loss in later.items() if straight.get(step) != loss}
    return f"losses differ from the uninterrupted run: {differ}" if differ else None


def _rejected(reason: str, name: str) -> Callable[[Workspace, Result], str | None]:
    def check(ws: Workspace, result: Result) -> str | None:
        said = [line for line in result.output.splitlines() if "1 rejected" in line and reason in line]
        return None if said and name in said[0] else f"the log does not say that {name} was rejected ({reason})"

    return check


def _answered(ws: Workspace, result: Result) -> str | None:
    # The smoke recipe's tiny random LLM may end its answer at once: then ask must say so.
    return None if result.stdout.strip() or "an empty answer" in result.stderr else "no answer, and nothing said"


def _fallback_named(ws: Workspace, result: Result) -> str | None:
    return None if "step-2" in result.output else "the fallback to the earlier checkpoint is not said"


# ------------------------------------------------------------------------------------------------ cases
def _prepare_folder(name: str, folder: Callable[[Workspace], Path], *extra: str) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        return [*PREPARE, "data=audiofolder", f"data.path={folder(ws)}", f"data.name={name}", ws.data(), ws.cache(),
                "describe.attributes=[gender,pitch,duration]", "stages=[corpus,describe]", ws.run_dir(name), *extra]  # fmt: skip

    return argv


def _train(case: str, *extra: str) -> Callable[[Workspace], list[str]]:
    """train.py on the smoke recipe; `extra` may name its own run folder (a tampered run's)."""

    def argv(ws: Workspace) -> list[str]:
        own = [] if any(e.startswith("hydra.run.dir=") for e in extra) else [ws.run_dir(case)]
        return [*TRAIN, *SMOKE, ws.data(), ws.cache(), *own, *extra]

    return argv


def _prepare(case: str, *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: [*PREPARE, ws.data(), ws.cache(), ws.run_dir(case), *extra]


def _smoke_prepare(case: str, *extra: str) -> Callable[[Workspace], list[str]]:
    """prepare.py with the smoke recipe's data settings (the corpus the smoke fixture trained on)."""
    return _prepare(case, "data.name=smoke", "target=label", "replay=none", "data.size=12",
                    "describe.attributes=[transcript,gender,accent,duration]",
                    "+describe.overrides.transcript.methods=[label]", *extra)  # fmt: skip


def _evaluate(case: str, checkpoint: Callable[[Workspace], Path], *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: [*EVALUATE, f"checkpoint={checkpoint(ws)}", ws.data(), ws.cache(), ws.run_dir(case),
                       "eval.data=smoke", *extra]  # fmt: skip


def _ask(checkpoint: Callable[[Workspace], Path], *extra: str, audio: Callable[[Workspace], Path] | None = None,
         question: tuple[str, ...] = ("-q", "Is the speaker a man or a woman?")) -> Callable[[Workspace], list[str]]:  # fmt: skip
    def argv(ws: Workspace) -> list[str]:
        clip = audio(ws) if audio else ws.voice("v-m3.wav", "m3")
        return [*ASK, str(checkpoint(ws)), str(clip), *question, "--device", "cpu", *extra]

    return argv


def _fifo(ws: Workspace, name: str) -> Path:
    path = ws.path("audio", name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
    return path


def _with_subfolder(folder: Path) -> Path:
    (folder / "sub.wav").mkdir(exist_ok=True)  # a folder where metadata.csv names a clip
    return folder


def _latin1(folder: Path) -> Path:
    (folder / "metadata.csv").write_bytes(b"file_name,text\na.wav,caf\xe9\n")  # a spreadsheet saved as Latin-1
    return folder




def _copy_of(make: Callable[[], Path]) -> Callable[[Path], None]:
    return lambda p: shutil.copy(make(), p)


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(*args, **kwargs):
        cases.append(Case(*args, **kwargs))

    # ---------------------------------------------------------------- audio folders
    def bad_metadata(name: str, metadata: str, files: tuple[str, ...] = ("a.wav",)):
        def folder(ws: Workspace) -> Path:
            root = ws.path("folders", name)
            if not root.exists():
                root.mkdir(parents=True)
                for file in files:
                    shutil.copy(ws.tone("t180.wav"), root / file)
                if metadata is not None:
                    (root / "metadata.csv").write_text(metadata)
            return root

        return folder

    add("audiofolder-no-metadata", "audiofolder", _prepare_folder("f1", bad_metadata("f1", None)), "refused",
        ("metadata.csv",))
    add("audiofolder-empty-metadata", "audiofolder", _prepare_folder("f2", bad_metadata("f2", "")), "refused",
        ("metadata.csv",))
    add("audiofolder-header-only", "audiofolder", _prepare_folder("f3", bad_metadata("f3", "file_name,gender\n")),
        "refused", ("metadata.csv",))
    add("audiofolder-no-file-name-column", "audiofolder",
        _prepare_folder("f4", bad_metadata("f4", "path,gender\na.wav,male\n")), "refused", ("file_name",))
    add("audiofolder-duplicate-rows", "audiofolder",
        _prepare_folder("f5", bad_metadata("f5", "file_name\na.wav\na.wav\n")), "refused", ("a.wav", "twice"))
    add("audiofolder-path-escapes-with-dotdot", "audiofolder",
        _prepare_folder("outside", bad_metadata("outside", "file_name\ninside.wav\n../f5/a.wav\n", ("inside.wav",))),
        "refused", ("../f5/a.wav",))
    add("audiofolder-absolute-path", "audiofolder",
        _prepare_folder("f7", lambda ws: bad_metadata("f7", f"file_name\na.wav\n{ws.tone('t180.wav')}\n")(ws)),
        "refused", ("outside",))
    add("audiofolder-missing-file", "audiofolder",
        _prepare_folder("f8", bad_metadata("f8", "file_name\na.wav\nnot-there.wav\n")), "ok",
        check=_rejected("missing file", "not-there.wav"))

    def fifo_folder(ws: Workspace) -> Path:
        root = bad_metadata("f9", "file_name\na.wav\npipe.wav\n")(ws)
        if not (root / "pipe.wav").exists():
            os.mkfifo(root / "pipe.wav")
        return root

    add("audiofolder-fifo", "audiofolder", _prepare_folder("f9", fifo_folder), "ok",
        check=_rejected("not a regular file", "pipe.wav"))
    add("audiofolder-directory-as-file", "audiofolder",
        _prepare_folder("f10", lambda ws: _with_subfolder(bad_metadata("f10", "file_name\na.wav\nsub.wav\n")(ws))),
        "ok",
        check=_rejected("a directory", "sub.wav"))  # fmt: skip
    add("audiofolder-not-utf8-metadata", "audiofolder",
        _prepare_folder("f11", lambda ws: _latin1(bad_metadata("f11", "")(ws))), "refused", ("metadata.csv", "UTF-8"))
    add("audiofolder-wav-and-flac-of-one-name", "audiofolder",
        _prepare_folder("f12", lambda ws: ws.folder("f12", [{"file_name": "clip.wav"}, {"file_name": "clip.flac"}],
            {"clip.wav": _copy_of(lambda: ws.tone("t180.wav")),
             "clip.flac": lambda p: sf.write(p, sf.read(ws.tone("t180.wav"))[0], SR)})), "ok",
        check=lambda ws, r: None if len(_described(ws, "f12")) == 2 else "not both clips described")  # fmt: skip
    add("audiofolder-unknown-split", "audiofolder",
        _prepare_folder("f13", bad_metadata("f13", "file_name,split\na.wav,validation-ish\n")), "ok",
        check=lambda ws, r: None if "split validation-ish 1" in r.output else "the unusual split is not said")
    add("audiofolder-path-is-a-file", "audiofolder",
        _prepare_folder("f14", lambda ws: ws.tone("t180.wav")), "refused", ("t180.wav",))
    add("audiofolder-path-missing", "audiofolder",
        _prepare_folder("f15", lambda ws: ws.path("folders", "nowhere")), "refused", ("nowhere",))

    def labels(ws: Workspace) -> Path:
        values = ["F", "Female", "m", "MALE", "unknown"]
        return ws.folder("labels", [{"file_name": f"c{i}.wav", "split": "train", "gender": v, "text": "hello there"}
                                    for i, v in enumerate(values)],
                         {f"c{i}.wav": _copy_of(lambda: ws.tone("t180.wav")) for i in range(len(values))})  # fmt: skip

    add("labels-written-many-ways", "silent",
        lambda ws: [*PREPARE, "data=audiofolder", f"data.path={labels(ws)}", "data.name=labels", ws.data(), ws.cache(),
                    "describe.attributes=[gender,duration]", "stages=[corpus,describe,targets]", "target=label",
                    "target.instructions=[Is the speaker a man or a woman?]", ws.run_dir("labels")],
        "ok", check=_labels_normalised)  # fmt: skip

    def noise(ws: Workspace) -> Path:
        return ws.folder("noise", [{"file_name": f"{n}.wav", "text": "The weather is lovely this morning."}
                                   for n in ("white", "hum", "speech")],
                         {"white.wav": _copy_of(lambda: ws.noise("white.wav", "white")),
                          "hum.wav": _copy_of(lambda: ws.noise("hum.wav", "hum")),
                          "speech.wav": _copy_of(lambda: ws.voice("v-m3.wav", "m3"))})  # fmt: skip

    add("noise-described-as-a-speaker", "silent",
        lambda ws: [*PREPARE, "data=audiofolder", f"data.path={noise(ws)}", "data.name=noise", ws.data(), ws.cache(),
                    "describe.attributes=[transcript,gender,pitch,speaking_rate,volume,duration]",
                    "stages=[corpus,describe]", "+describe.overrides.transcript.methods=[label]", ws.run_dir("noise")],
        "ok", check=_no_speaker_for_noise)  # fmt: skip

    # ---------------------------------------------------------------- prepare settings
    add("prepare-smoke-data", "prepare", _smoke_prepare("smoke-prepare"), "ok")  # the corpus later cases guard
    add("prepare-size-zero-keeps-the-corpus", "lost", _smoke_prepare("size0", "data.size=0"), "refused",
        ("data.size",), check=_corpus_intact)
    add("prepare-size-negative", "lost", _smoke_prepare("size-neg", "data.size=-3"), "refused", ("data.size",),
        check=_corpus_intact)
    add("prepare-test-fraction-one", "lost", _smoke_prepare("tf1", "data.test_fraction=1.0"), "refused",
        ("test_fraction",), check=_corpus_intact)
    add("prepare-unknown-voice-variant", "lost", _smoke_prepare("variant", "data.test_variants=[zz9]"), "refused",
        ("zz9",), check=_corpus_intact)
    add("prepare-replay-ratio-over-one", "prepare", _prepare("ratio", "replay.ratio=1.5"), "refused",
        ("replay.ratio",))
    add("prepare-replay-ratio-negative", "prepare", _prepare("ratio-neg", "replay.ratio=-0.1"), "refused",
        ("replay.ratio",))
    add("prepare-unknown-attribute", "prepare", _prepare("attr", "describe.attributes=[gendr]"), "refused",
        ("gendr",))
    add("prepare-chunk-size-zero", "prepare", _smoke_prepare("chunk0", "describe.chunk_size=0"), "refused",
        ("chunk_size",))
    add("prepare-num-proc-zero", "prepare", _smoke_prepare("nproc0", "num_proc=0"), "refused", ("num_proc",))
    add("prepare-shard-out-of-range", "prepare", _smoke_prepare("shard", "shard=3/2"), "refused", ("shard",))
    add("prepare-shard-not-a-fraction", "prepare", _smoke_prepare("shard-abc", "shard=abc"), "refused", ("shard",))
    add("prepare-unknown-stage", "prepare", _smoke_prepare("stage", "stages=[corpus,describ]"), "refused",
        ("describ",))
    add("prepare-unknown-data-preset", "prepare", _prepare("nodata", "data=nope"), "refused", ("nope",))
    add("prepare-unknown-key", "prepare", _prepare("key", "+data.sise=3"), "refused", ("data.sise",))
    add("prepare-unknown-target-mode", "prepare", _prepare("mode", "target.mode=labl"), "refused", ("labl",))
    add("prepare-data-dir-is-a-file", "prepare",
        lambda ws: [*PREPARE, f"paths.data_dir={ws.tone('t180.wav')}", ws.run_dir("datafile")], "refused",
        ("t180.wav",))

    def holder(ws: Workspace) -> list[str]:
        # A live process with other settings holds the folder (a sleeping child of this script).
        sleeper = ws.once("sleeper", lambda: subprocess.Popen(["sleep", "600"]))
        data = ws.path("held")
        data.mkdir(exist_ok=True)
        (data / ".prepare-holders.json").write_text(json.dumps(
            [{"pid": sleeper.pid, "host": socket.gethostname(), "settings": "other", "command": "prepare.py OTHER"}]))
        return _smoke_prepare("held", f"paths.data_dir={data}")(ws)  # fmt: skip

    add("prepare-folder-held-by-other-settings", "lost", holder, "refused", ("prepare.py OTHER", "other settings"))

    # ---------------------------------------------------------------- train settings (before any model loads)
    for key, value, says in [
        ("trainer.learning_rate", "-1", "learning_rate"),
        ("trainer.lr_scheduler_type", "nope", "lr_scheduler_type"),
        ("trainer.weight_decay", "-5", "weight_decay"),
        ("trainer.per_device_train_batch_size", "0", "per_device_train_batch_size"),
        ("trainer.gradient_accumulation_steps", "0", "gradient_accumulation_steps"),
        ("trainer.max_steps", "0", "max_steps"),
        ("trainer.num_train_epochs", "0 trainer.max_steps=-1", "num_train_epochs"),
        ("trainer.adapter_learning_rate", "-1", "adapter_learning_rate"),
        ("trainer.save_steps", "-2", "save_steps"),
        ("trainer.precision", "fp8", "precision"),
        ("trainer.max_grad_norm", "-1", "max_grad_norm"),
        ("trainer.warmup_steps", "-3", "warmup_steps"),
        ("trainer.resume", "/nowhere/step-3", "/nowhere/step-3"),
        ("model.encoder.layers", "[50]", "layers"),
        ("model.encoder.num_taps", "0", "num_taps"),
        ("model.llm.dtype", "bogus", "bogus"),
        ("model.encoder.dtype", "__class__", "__class__"),
        ("+model.adapter.num_querys", "4", "num_querys"),
        ("model.adapter.num_heads", "3", "num_heads"),
        ("model.adapter._target_", "os.system", "os.system"),
        ("model.llm.finetune", "everything", "finetune"),
        ("model.llm.source", "/nowhere/llm", "/nowhere/llm"),
        ("model.llm.source", "packaged:nope", "packaged:nope"),
        ("model.llm.source", "tiny:nope", "tiny:nope"),
        ("replay.ratio", "1.5", "replay.ratio"),
        ("loss", "klx", "klx"),
        ("align.pretrain_clips", "some", "pretrain_clips"),
        ("torch_threads", "-2", "torch_threads"),
        ("max_train_rows", "0", "max_train_rows"),
        ("train_split", "validation", "validation"),
        ("+trainer.extra_args.output_dir", "/tmp/elsewhere", "output_dir"),
    ]:
        name = f"train-{key.lstrip('+').replace('.', '-')}-{value.split()[0].strip('/[]').replace('/', '-')}"
        add(name, "train", _train(name, *f"{key}={value}".split()), "refused", (says,))

    add("train-num-taps-above-depth-recorded-as-used", "train",
        _train("taps99", "model.encoder.num_taps=99", "trainer.max_steps=1"), "ok",
        check=_checkpoint_config("encoder.num_taps", 2))
    add("train-save-total-limit-one", "train",
        _train("limit1", "trainer.save_total_limit=1", "trainer.save_steps=1", "trainer.max_steps=3"), "ok",
        check=_keeps(1))
    add("train-save-total-limit-zero", "train", _train("limit0", "trainer.save_total_limit=0"), "refused",
        ("save_total_limit",))
    add("train-resume-straight", "resume",
        _train("resume-straight", "trainer.max_steps=12", "trainer.save_steps=1", "trainer.save_total_limit=null",
               "trainer.warmup_steps=0"), "ok")  # fmt: skip
    add("train-resume-inside-epoch-3-is-exact", "resume",
        lambda ws: _train("resume-epoch3", "trainer.max_steps=12", "trainer.save_steps=1", "trainer.warmup_steps=0",
                          f"trainer.resume={ws.path('runs', 'resume-straight', 'checkpoints', 'step-7')}")(ws),
        "ok", check=_resume_exact)  # fmt: skip
    add("train-resume-pickled-optimizer", "resume",
        lambda ws: _train("pickled-opt", "trainer.resume=last", "trainer.max_steps=6",
                          f"hydra.run.dir={ws.tampered_run('pickled-opt', _pickle_file('optimizer.pt'))}")(ws),
        "refused", ("optimizer.pt",), check=_not_pwned)  # fmt: skip
    add("train-resume-pickled-rng", "resume",
        lambda ws: _train("pickled-rng", "trainer.resume=last", "trainer.max_steps=6",
                          f"hydra.run.dir={ws.tampered_run('pickled-rng', _pickle_file('rng_state.pth'))}")(ws),
        "refused", ("rng_state.pth",), check=_not_pwned)  # fmt: skip
    add("train-resume-stray-scaler", "resume",
        lambda ws: _train("stray-scaler", "trainer.resume=last", "trainer.max_steps=6",
                          f"hydra.run.dir={ws.tampered_run('stray-scaler', _pickle_file('scaler.pt'))}")(ws),
        "refused", ("scaler.pt",), check=_not_pwned)  # fmt: skip
    add("train-resume-cut-trainer-state", "resume",
        lambda ws: _train("cut-state", "trainer.resume=last", "trainer.max_steps=6",
                          f"hydra.run.dir={ws.tampered_run('cut-state', _cut_trainer_state)}")(ws),
        "ok", check=_fallback_named)  # fmt: skip

    # ---------------------------------------------------------------- disks
    def mounted(ws: Workspace, name: str, size: str, read_only: bool) -> Path:
        point = ws.path("mounts", name)
        if not point.is_mount():
            point.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
            if read_only:
                shutil.copytree(ws.path("data"), point / "data")  # a finished data folder, then made read-only
                subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    add("disk-full-while-preparing", "disk",
        lambda ws: _smoke_prepare("full", f"paths.data_dir={mounted(ws, 'full', '300k', False)}")(ws), "refused",
        ("No space left",), needs_mount=True)  # fmt: skip
    add("disk-full-while-training", "disk",
        lambda ws: _train("full-train", f"hydra.run.dir={mounted(ws, 'full2', '64k', False)}/run")(ws), "refused",
        ("No space left",), needs_mount=True)  # fmt: skip
    add("read-only-data-folder-training", "disk",
        lambda ws: _train("ro", f"paths.data_dir={mounted(ws, 'ro', '50m', True)}/data", "trainer.max_steps=1",
                          "trainer.cache_encoder_features=false")(ws), "ok", needs_mount=True)  # fmt: skip
    add("read-only-run-folder", "disk",
        lambda ws: _train("ro-run", f"hydra.run.dir={mounted(ws, 'ro', '50m', True)}/run")(ws), "refused",
        ("read-only",), needs_mount=True)  # fmt: skip

    # ---------------------------------------------------------------- tampered checkpoints (evaluate and ask)
    tampers = [
        ("target-os-system", _edit_json("config.json", lambda c: c["adapter"].update(_target_="os.system")),
         ("os.system",)),
        ("target-behind-interpolation",
         _edit_json("config.json", lambda c: c["prompt"].update(system="os.system") or c["adapter"].update(
             _target_="${prompt.system}")),
         ("_target_",)),
        ("dtype-dunder", _edit_json("config.json", lambda c: c["llm"].update(dtype="__class__")), ("__class__",)),
        ("llm-source-elsewhere", _edit_json("config.json", lambda c: c["llm"].update(source="/nowhere")),
         ("/nowhere",)),
        ("config-not-json", lambda f: (f / "config.json").write_text("{not json"), ("config.json",)),
        ("config-missing", lambda f: (f / "config.json").unlink(), ("config.json",)),
        ("format-version-future", _edit_json("config.json", lambda c: c.update(format_version=99)),
         ("format_version",)),
        ("weights-missing", lambda f: (f / "model.safetensors").unlink(), ("model.safetensors",)),
        ("weights-truncated",
         lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:200]),
         ("model.safetensors",)),
        ("weights-are-a-pickle", lambda f: ((f / "model.safetensors").unlink(), _pickle_file("pytorch_model.bin")(f)),
         ("model.safetensors is missing",)),  # the pickle is never opened
        ("weights-wrong-shape", lambda f: _reshape_tensor(f), ("adapter",)),
        ("prompt-unknown-key",
         _edit_json("config.json", lambda c: c["prompt"].update(
             chat_template="{{ ''.__class__.__mro__[1].__subclasses__() }}")), ("chat_template",)),
    ]  # fmt: skip
    for name, edit, says in tampers:
        add(f"ask-tampered-{name}", "tampered",
            lambda ws, n=name, e=edit: _ask(lambda w: ws.tampered(n, e))(ws), "refused", says, check=_not_pwned)
        add(f"evaluate-tampered-{name}", "tampered",
            lambda ws, n=name, e=edit: _evaluate(f"eval-{n}", lambda w: ws.tampered(n, e))(ws), "refused", says,
            check=_not_pwned)  # fmt: skip

    # ---------------------------------------------------------------- ask
    add("ask-works", "ask", _ask(lambda ws: ws.checkpoint()), "ok", check=_answered)
    add("ask-empty-question", "ask", _ask(lambda ws: ws.checkpoint(), question=("-q", "  ")), "refused",
        ("question",))
    add("ask-no-question", "ask", _ask(lambda ws: ws.checkpoint(), question=()), "refused", ("question",))
    add("ask-max-new-tokens-zero", "ask", _ask(lambda ws: ws.checkpoint(), "--max-new-tokens", "0"), "refused",
        ("max-new-tokens",))
    add("ask-max-new-tokens-negative", "ask", _ask(lambda ws: ws.checkpoint(), "--max-new-tokens", "-4"),
        "refused", ("max-new-tokens",))
    add("ask-device-cuda-without-gpu", "ask", _ask(lambda ws: ws.checkpoint(), "--device", "cuda"), "refused",
        ("cuda",))
    add("ask-device-bogus", "ask", _ask(lambda ws: ws.checkpoint(), "--device", "tpu9"), "refused", ("tpu9",))
    add("ask-audio-missing", "ask", _ask(lambda ws: ws.checkpoint(), audio=lambda ws: ws.path("nope.wav")),
        "refused", ("nope.wav",))
    add("ask-audio-is-text", "ask", _ask(lambda ws: ws.checkpoint(), audio=lambda ws: _text_wav(ws)), "refused",
        ("notaudio.wav",))
    add("ask-audio-is-a-fifo", "ask", _ask(lambda ws: ws.checkpoint(), audio=lambda ws: _fifo(ws, "pipe.wav")),
        "refused", ("pipe.wav",))
    add("ask-audio-is-a-folder", "ask", _ask(lambda ws: ws.checkpoint(), audio=lambda ws: ws.path("audio")),
        "refused", ("audio",))
    add("ask-audio-silent", "ask", _ask(lambda ws: ws.checkpoint(), audio=lambda ws: _silent_wav(ws)), "refused",
        ("silent.wav",))
    add("ask-checkpoint-missing", "ask", _ask(lambda ws: ws.path("no-checkpoint")), "refused", ("no-checkpoint",))
    add("ask-checkpoint-is-a-run-folder", "ask", _ask(lambda ws: ws.smoke_run()), "refused", ("checkpoint",))

    # ---------------------------------------------------------------- evaluate
    add("evaluate-no-checkpoint", "evaluate", lambda ws: [*EVALUATE, ws.data(), ws.run_dir("e1")], "refused",
        ("checkpoint",))
    add("evaluate-checkpoint-missing", "evaluate", _evaluate("e2", lambda ws: ws.path("nowhere")), "refused",
        ("nowhere",))
    add("evaluate-unknown-data", "evaluate", _evaluate("e3", lambda ws: ws.checkpoint(), "eval.data=nope"), "refused",
        ("nope",))
    add("evaluate-audiofolder-without-metadata", "evaluate",
        _evaluate("e4", lambda ws: ws.checkpoint(), f"+eval.audiofolder={REPO / 'docs'}"), "refused",
        ("metadata.csv",))  # fmt: skip
    add("evaluate-unknown-task", "evaluate", _evaluate("e5", lambda ws: ws.checkpoint(), "eval.tasks=[gendr]"),
        "refused", ("gendr",))
    add("evaluate-unknown-key", "evaluate", _evaluate("e6", lambda ws: ws.checkpoint(), "+eval.sise=3"), "refused",
        ("eval.sise",))
    return cases


def _reshape_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if n.startswith("adapter"))
    tensors[name] = tensors[name].flatten()[:-1].clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _cut_trainer_state(folder: Path) -> None:
    text = (folder / "trainer_state.json").read_text()
    (folder / "trainer_state.json").write_text(text[: len(text) // 2])


def _text_wav(ws: Workspace) -> Path:
    path = ws.path("audio", "notaudio.wav")
    path.write_text("not audio\n" * 40)
    return path


def _silent_wav(ws: Workspace) -> Path:
    path = ws.path("audio", "silent.wav")
    sf.write(path, np.zeros(SR, np.float32), SR)
    return path


# ------------------------------------------------------------------------------------------------ running
def judge(case: Case, ws: Workspace) -> tuple[str, str]:
    """(outcome, detail): outcome is "refused"/"ok" when the case passed, else the failure's kind."""
    try:
        argv = case.argv(ws)
    except subprocess.CalledProcessError as err:
        if case.needs_mount:
            return "skipped", f"cannot mount here: {err}"
        raise
    run_dir = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("hydra.run.dir=")), None)
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ws.root, env=_env(),
                              timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
        result = Result(done.returncode, done.stdout, done.stderr, time.monotonic() - start)
    except subprocess.TimeoutExpired as err:
        return "hang", f"no answer in {TIMEOUT_S} s ({(err.stderr or b'')[-200:]!r})"
    result.run_dir = run_dir  # type: ignore[attr-defined]
    if "Traceback (most recent call last)" in result.output:
        lines = [line for line in result.output.strip().splitlines() if line.strip() and not line.startswith(" ")]
        return "traceback", " | ".join(lines[-3:])[:400]
    try:
        problem = case.check(ws, result) if case.check else None
    except Exception as err:  # the result to check is not there
        problem = f"the result could not be checked: {type(err).__name__}: {err}"
    if case.expect == "refused":
        if result.returncode == 0:
            return "accepted", (problem or "exit 0")[:300]
        missing = [s for s in case.says if s not in result.stderr]
        if problem:
            return "wrong", problem[:300]
        if missing:
            return "unclear", f"{result.last_line[:240]} (does not name {missing})"
        return "refused", result.last_line[:300]
    if result.returncode != 0:
        return "refused!", result.last_line[:300]
    if problem:
        return "wrong", problem[:300]
    return "ok", f"{result.seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="keyword", help="only the cases whose name or area contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    parser.add_argument("--keep", help="build the workspace here and keep it (default: a temporary folder)")
    parser.add_argument("--json", help="write every case's outcome to this file")
    args = parser.parse_args(argv)
    cases = [c for c in _cases() if not args.keyword or args.keyword in c.name or args.keyword == c.area]
    if args.list:
        for case in cases:
            print(f"{case.area:12} {case.expect:8} {case.name}")
        return 0
    root = Path(args.keep or tempfile.mkdtemp(prefix="misuse-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    Path("/tmp/misuse-pwned").unlink(missing_ok=True)
    outcomes = []
    try:
        for i, case in enumerate(cases, 1):
            outcome, detail = judge(case, ws)
            passed = outcome in ("ok", "refused", "skipped")
            print(f"[{i:3}/{len(cases)}] {'pass' if passed else 'FAIL'} {outcome:9} {case.name}: {detail}", flush=True)
            outcomes.append({"case": case.name, "area": case.area, "expect": case.expect, "outcome": outcome,
                             "detail": detail})  # fmt: skip
    finally:
        for point in sorted(ws.path("mounts").glob("*")) if ws.path("mounts").exists() else []:
            subprocess.run(["umount", str(point)], capture_output=True)
        sleeper = ws._made.get("sleeper")
        if sleeper:
            sleeper.kill()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    counts = Counter(o["outcome"] for o in outcomes)
    failed = sum(n for outcome, n in counts.items() if outcome not in ("ok", "refused", "skipped"))
    print(f"\n{len(outcomes)} cases: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.most_common()))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": outcomes}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
