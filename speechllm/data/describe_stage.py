"""The describe stage: audiofolder rows -> described clips (attributes + one description each).

Runs on `speechllm.data.stage.run_stage`, so it skips itself when current, resumes after a kill, shards,
and writes rejects. The fingerprint holds the describe config and the full config of every attribute
that runs, so editing an attribute's YAML (a bin edge, a model source) re-describes the data; its `task`
block (how targets and the evaluation ask about it) decides nothing here and is left out.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechllm.attributes import use_user_attribute_dirs
from speechllm.audio import AudioError, file_stamp, load_audio
from speechllm.config import ConfigError, check_section
from speechllm.data.stage import StageResult, run_stage
from speechllm.describe import RENDERERS, Clip, describe_clips, import_extractor_modules, load_configs
from speechllm.describe.registry import ATTRIBUTES
from speechllm.describe.speaker import normalise_word
from speechllm.describe.transcript import WHISPER_MAX_SECONDS

# Bumped when the stage's code changes what it writes for the same config.
# 2: gold labels of described speaker attributes are written as the attribute's words (label_map applied).
# 3: a clip with no voiced speech says so in its description.
DESCRIBE_VERSION = 3

logger = logging.getLogger(__name__)


def label_vocabularies(configs: dict[str, dict]) -> dict[str, tuple[str, dict, tuple[str, ...]]]:
    """Per described attribute read from a gold label (`label` in its methods, a `label_map` in its YAML):
    its label column, lowercased label_map, and words."""
    out = {}
    for name, cfg in configs.items():
        if "label" in cfg.get("methods", []) and "label_map" in cfg and cfg.get("words"):
            label_map = {str(k).lower(): str(v) for k, v in (cfg["label_map"] or {}).items()}
            out[name] = (f"label_{cfg.get('label', name)}", label_map, tuple(cfg["words"]))
    return out


def normalise_labels(row: dict, vocabularies: dict, unknown: Counter) -> dict:
    """The row with each speaker label written as its attribute's word ("F" -> "female"), so label targets,
    verification and the evaluation read the same value the description uses. A value that maps to no word
    ("unknown", "x") is blanked (treated as unlabelled downstream) and counted in `unknown` by
    (column, value)."""
    row = dict(row)
    for column, label_map, words in vocabularies.values():
        raw = row.get(column)
        if raw is None or not str(raw).strip():
            continue
        word = normalise_word(raw, label_map)
        if word in words:
            row[column] = word
        else:
            unknown[(column, str(raw))] += 1
            row[column] = ""
    return row


@dataclass
class DescribeProcessor:
    """Describes one chunk of input rows (picklable, so `num_proc > 1` workers can run it).

    Attributes:
        attributes: the attributes the description mentions.
        configs: attribute configs of everything that runs (from `load_configs`).
        order: run order.
        renderer: renderer name.
        max_seconds: longer clips are rejected (at most 30 s when the transcript comes from Whisper).
        modules: the user's extractor modules (`describe.modules`), imported again in a worker process.
    """

    attributes: list[str]
    configs: dict[str, dict]
    order: list[str]
    renderer: str
    max_seconds: float | None
    modules: tuple[str, ...] = ()

    def _goes_to_asr(self, row: dict) -> bool:
        """Whether the transcript of this row will come from Whisper (no label method before it gives one)."""
        if "transcript" not in self.order:
            return False
        cfg = self.configs.get("transcript", {})
        for method in cfg.get("methods", []):
            if method == "asr":
                return True
            if method == "label" and str(row.get(f"label_{cfg.get('label', 'text')}") or "").strip():
                return False
        return False

    def __call__(self, rows: list[dict]) -> StageResult:
        """Load, check, describe.

        Args:
            rows: input rows (`clip_id`, `audio_path`, `split`, `label_*`).

        Returns:
            Kept rows (inputs + attribute columns + `description` + `conversions`) and rejects
            (`clip_id`, `file`, `reason`).
        """
        import_extractor_modules(self.modules)  # a spawned worker starts with the built-in extractors only
        clips, kept, rejects = [], [], []
        unknown: Counter = Counter()
        vocabularies = label_vocabularies(self.configs)
        rows = [normalise_labels(row, vocabularies, unknown) for row in rows]
        for (column, value), count in sorted(unknown.items()):
            logger.warning("%s: %d row(s) with %r, which is none of the attribute's words; read as unlabelled",
                           column, count, value)  # fmt: skip
        for row in rows:
            max_seconds = self.max_seconds
            if self._goes_to_asr(row):
                # Whisper reads at most 30 s; a longer clip is refused by name rather than stopping the stage.
                max_seconds = min(max_seconds or WHISPER_MAX_SECONDS, WHISPER_MAX_SECONDS)
            try:
                audio = load_audio(row["audio_path"], max_seconds=max_seconds)
            except AudioError as err:
                rejects.append({"clip_id": row["clip_id"], "file": row["audio_path"], "reason": err.reason})
                continue
            labels = {k[len("label_") :]: v for k, v in row.items() if k.startswith("label_")}
            clips.append(Clip(row["clip_id"], audio.array, audio.sr, labels=labels))
            kept.append({**row, "conversions": audio.conversions})
        if not clips:
            return StageResult([], rejects)
        descriptions = describe_clips(clips, self.attributes, self.configs, self.order, self.renderer)
        out = [
            {**row, **clip.values, "description": text}
            for row, clip, text in zip(kept, clips, descriptions, strict=True)
        ]
        return StageResult(out, rejects)


@dataclass
class DescribeConfig:
    """Schema of the `describe` group (conf/describe/default.yaml documents each key)."""

    attributes: list[str] = field(
        default_factory=lambda: [
            "transcript",
            "gender",
            "accent",
            "emotion",
            "age",
            "pitch",
            "speaking_rate",
            "volume",
            "snr",
            "duration",
        ]  # fmt: skip
    )
    renderer: str = "desta2"
    max_seconds: float | None = 30.0
    chunk_size: int = 64
    attributes_dir: str | None = None
    modules: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


def describe_config(node) -> DescribeConfig:
    """Check the `describe` group before anything runs: unknown keys, attributes, renderers and attribute-YAML
    keys (with `describe.overrides`) fail by name. Reads the user's attribute YAMLs and imports their
    extractor modules first (`describe.attributes_dir`, `attributes/` in a --config-dir, `describe.modules`).

    Raises:
        ConfigError: naming the key or value and what is known.
    """
    cfg = check_section(DescribeConfig, node, "describe.")
    if cfg.attributes_dir is not None and not Path(cfg.attributes_dir).is_dir():
        raise ConfigError(f"describe.attributes_dir={cfg.attributes_dir!r} is not a folder")
    use_user_attribute_dirs(cfg.attributes_dir)
    try:
        import_extractor_modules(cfg.modules)
    except ModuleNotFoundError as err:
        raise ConfigError(f"describe.modules: {err} (a module of yours is imported from an installed package or "
                          f"a folder on PYTHONPATH)") from None  # fmt: skip
    known = sorted(ATTRIBUTES)
    unknown = [a for a in [*cfg.attributes, *cfg.overrides] if a not in ATTRIBUTES]
    if unknown:
        raise ConfigError(f"describe: unknown attribute(s) {unknown}; registered: {known}")
    if cfg.renderer not in RENDERERS:
        raise ConfigError(f"describe.renderer={cfg.renderer!r}: choose one of {sorted(RENDERERS)}")
    if cfg.chunk_size < 1 or (cfg.max_seconds is not None and cfg.max_seconds <= 0):
        raise ConfigError("describe.chunk_size must be >= 1 and describe.max_seconds > 0 (or null)")
    try:  # every attribute YAML that will run, with its overrides: a key its extractor does not read fails
        load_configs(cfg.attributes, cfg.attributes_dir, cfg.overrides)
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise ConfigError(f"describe: {err.args[0] if err.args else err}") from None
    return cfg


def describe_processor(describe_cfg: dict) -> DescribeProcessor:
    """The processor a `describe` config asks for (its attribute configs, with those their attributes
    require, in `processor.configs`), for the stage and for describing an evaluation folder alike."""
    attributes = list(describe_cfg["attributes"])
    configs, order = load_configs(
        attributes, describe_cfg.get("attributes_dir"), describe_cfg.get("overrides")
    )
    return DescribeProcessor(attributes, configs, order, describe_cfg["renderer"], describe_cfg.get("max_seconds"),
                             tuple(describe_cfg.get("modules") or ()))  # fmt: skip


def describe_fingerprint(describe_cfg: dict, configs: dict[str, dict]) -> dict:
    """Everything that decides the described rows for given inputs."""
    return {
        "stage": "describe",
        "version": DESCRIBE_VERSION,
        "attributes": list(describe_cfg["attributes"]),
        "renderer": describe_cfg["renderer"],
        "max_seconds": describe_cfg.get("max_seconds"),
        "attribute_configs": {
            name: {k: v for k, v in c.items() if k != "task"} for name, c in configs.items()
        },
    }


def _file_stats_digest(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}\t{file_stamp(path)}\n".encode())  # a missing file is rejected by name later
    return digest.hexdigest()


def run_describe(
    inputs: list[dict],
    out_dir: str | Path,
    describe_cfg: dict,
    *,
    num_proc: int = 1,
    shard: str | tuple[int, int] = (0, 1),
):
    """Describe `inputs` into `out_dir` (skipping, resuming or sharding as `run_stage` does).

    Args:
        inputs: rows from `read_audiofolder` (`clip_id`, `audio_path`, `split`, `label_*`).
        out_dir: the stage folder (`{data_dir}/{data.name}/described`).
        describe_cfg: the `describe` config as a plain dict: `attributes`, `renderer`, `max_seconds`,
            `chunk_size`, `attributes_dir`, `modules`, `overrides`.
        num_proc: worker processes.
        shard: `(i, n)` or `"i/n"`.

    Returns:
        The described `datasets.Dataset`, or None when other shards are still running.
    """
    processor = describe_processor(describe_cfg)
    fingerprint = describe_fingerprint(describe_cfg, processor.configs)
    # run_stage hashes the input rows; an audio file replaced in place must invalidate them too.
    fingerprint["audio_files"] = _file_stats_digest(row["audio_path"] for row in inputs)
    return run_stage(
        out_dir,
        fingerprint,
        inputs,
        processor,
        chunk_size=describe_cfg.get("chunk_size", 64),
        shard=shard,
        desc="describe",
        num_proc=num_proc,
    )
