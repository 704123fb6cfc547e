"""train.py and speechllm.train: presets, config errors, outputs, resume, policies, kd, multirun, torchrun.

Everything runs the smoke preset (tiny random Whisper + Llama, `tiny:` sources built once into the model cache, a dozen
espeak clips with label targets). The data is prepared once per session through the same
`prepare_missing` path a user's first smoke run takes; most tests then call `speechllm.train.train`
in-process, and two run the real command lines (Hydra multirun, torchrun with two gloo processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import TrainerCallback

from speechllm.config import ALLOWED_TARGETS, ConfigError, find_targets
from speechllm.data.prepared import check_prepared, prepare_command
from speechllm.train import train
from speechllm.train.config import validate_schema
from speechllm.train.mixture import build_mixture, replay_counts, speech_rows

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # With the hydra node, as in the app: the group choices go into the prepare command.
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory) -> dict[str, Path]:
    """Data and model-cache folders with the smoke preset's data prepared (once per session)."""
    root = tmp_path_factory.mktemp("smoke")
    dirs = {"data": root / "data", "cache": root / "cache"}
    cfg = compose_train(_paths(dirs, root / "prep-run"))
    _, _, mixture = validate_schema(cfg)
    check_prepared(cfg, list(mixture.sources()))  # prepare_missing=true in the preset: runs data_prep/prepare.py
    return dirs


def _paths(dirs: dict[str, Path], run_dir: Path) -> list[str]:
    return [
        "experiment=smoke",
        f"paths.data_dir={dirs['data']}",
        f"paths.cache_dir={dirs['cache']}",
        f"paths.output_dir={run_dir}",
    ]


def smoke_cfg(smoke_dirs, run_dir: Path, *overrides: str):
    return compose_train([*_paths(smoke_dirs, run_dir), "trainer.report_to=[]", *overrides])


def step_losses(metrics: dict) -> dict[int, float]:
    return {s["step"]: s["train/loss"] for s in metrics["steps"]}


class Capture(TrainerCallback):
    """Keeps the model and copies of its frozen weights at the start, and the model at the end."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}


class KillAfterSave(TrainerCallback):
    """Stands in for a kill right after the checkpoint at `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


# ---- presets and config checks (no training) ----


def test_every_preset_composes_with_allowed_targets():
    assert {"smoke", "demo", "desta2", "desta25", "ultravox"} <= set(PRESETS)
    for name in PRESETS:
        cfg = compose_train([f"experiment={name}", "paths.output_dir=/unused"])
        validate_schema(cfg)
        targets = find_targets({k: cfg[k] for k in cfg if k != "hydra"})  # hydra's node configures Hydra
        assert targets, name
        for key, target in targets:
            assert target in ALLOWED_TARGETS, (name, key, target)
    d2 = compose_train(["experiment=desta2", "paths.output_dir=/unused"])
    assert d2.model.encoder.source == "openai/whisper-small" and d2.model.encoder.num_taps == 4
    assert (d2.model.adapter.num_queries, d2.model.adapter.num_layers) == (64, 4)
    assert "Llama-3-8B-Instruct" in d2.model.llm.source and d2.model.llm.finetune == "frozen"
    assert (d2.trainer.learning_rate, d2.trainer.lr_scheduler_type, d2.trainer.precision) == (
        1e-4,
        "cosine",
        "bf16",
    )
    assert d2.trainer.warmup_steps > 0 and d2.target.llm == d2.model.llm.source
    d25 = compose_train(["experiment=desta25", "paths.output_dir=/unused"])
    assert d25.model.encoder.source == "openai/whisper-large-v3" and d25.model.adapter.num_layers == 6
    assert "Llama-3.1-8B-Instruct" in d25.model.llm.source
    uv = compose_train(["experiment=ultravox", "paths.output_dir=/unused"])
    assert uv.model.adapter._target_.endswith("StackMLPAdapter") and uv.loss == "kd"


@pytest.mark.parametrize(
    "override, names",
    [
        ("+trainer.lerning_rate=0.1", "trainer.lerning_rate"),
        ("+lerning_rate=0.1", "lerning_rate"),
        ("replay.ratio=1.5", "replay.ratio"),
        ("replay.ratio=-0.1", "replay.ratio"),
        ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size"),
        ("+trainer.extra_args.not_an_arg=1", "trainer.extra_args.not_an_arg"),
        ("loss=mse", "loss"),
        ("+replay.ration=0.1", "ration"),
        ("+model.adapter.evil._target_=os.system", "os.system"),
        ("+model.finetune=lora", "model.finetune"),  # belongs under model.llm
        ("+model.llm.lora.rr=4", "rr"),
        ("+paths.dta_dir=/x", "paths.dta_dir"),
        ("+data.sise=10", "data.sise"),
        ("trainer.learning_rate=-1", "trainer.learning_rate"),
        ("trainer.weight_decay=-5", "trainer.weight_decay"),
        ("trainer.save_total_limit=0", "trainer.save_total_limit"),
        ("trainer.lr_scheduler_type=nope", "trainer.lr_scheduler_type"),
        ("model.llm.dtype=bogus", "model.llm.dtype='bogus'"),
        ("model.encoder.dtype=__class__", "model.encoder.dtype"),
        ("+model.adapter.num_querys=4", "model.adapter.num_querys"),
        ("model.adapter.num_heads=3", "model.adapter.num_heads=3 must divide model.adapter.hidden_size=32"),
        ("trainer.max_grad_norm=-1", "trainer.max_grad_norm"),
        ("model.encoder.num_taps=0", "model.encoder.num_taps must be >= 1"),
    ],
)
def test_config_errors_name_the_key_before_any_model_loads(tmp_path, monkeypatch, override, names):
    from speechllm.model import SpeechLM

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(SpeechLM, "from_config", no_model)
    cfg = compose_train(
        ["experiment=smoke", f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}", override]
    )
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert names in str(err.value)


def test_encoder_layers_beyond_the_encoder_fail_before_any_model_loads(smoke_dirs, tmp_path, monkeypatch):
    from speechllm.model import SpeechLM

    monkeypatch.setattr(SpeechLM, "from_config", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=r"model.encoder.layers=\[1, 50\]: .* has 2 encoder layers"):
        train(smoke_cfg(smoke_dirs, tmp_path, "model.encoder.layers=[1,50]"))


def test_folders_that_cannot_be_written_fail_before_any_model_loads(smoke_dirs, tmp_path, monkeypatch):
    from speechllm.model import SpeechLM

    monkeypatch.setattr(SpeechLM, "from_config", lambda *a, **k: pytest.fail("model loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        ConfigError, match=r"the run folder .*a-file/run cannot be written \(Not a directory\)"
    ):
        train(smoke_cfg(smoke_dirs, blocker / "run"))
    with pytest.raises(ConfigError, match=r"encoder-feature cache .*a-file/features cannot be written"):
        train(smoke_cfg(smoke_dirs, tmp_path / "run", f"trainer.feature_cache_dir={blocker / 'features'}"))


def test_unknown_group_option_fails_at_composition():
    with pytest.raises(Exception, match="trainer"):
        compose_train(["trainer=does_not_exist"])


def test_missing_data_names_the_prepare_command(tmp_path, monkeypatch):
    from speechllm.model import SpeechLM

    monkeypatch.setattr(SpeechLM, "from_config", lambda *a, **k: pytest.fail("model loaded"))
    cfg = compose_train(
        ["target=label", f"paths.data_dir={tmp_path / 'nodata'}", f"paths.output_dir={tmp_path}",
         "replay.ratio=0.1", "replay.weights.magpie=2"]
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert str(tmp_path / "nodata" / "demo" / "targets" / "label") in msg
    assert str(tmp_path / "nodata" / "replay" / "magpie") in msg
    command = prepare_command(cfg, list(validate_schema(cfg)[2].sources()))
    assert "python data_prep/prepare.py" in msg and "target=label" in command
    assert "replay.build=[magpie,safety]" in command


def test_targets_made_with_other_settings_are_refused_or_remade(smoke_dirs, tmp_path):
    from speechllm.data.stage import load_stage

    data = tmp_path / "data"
    shutil.copytree(smoke_dirs["data"], data)
    dirs = {**smoke_dirs, "data": data}
    cfg = compose_train([*_paths(dirs, tmp_path / "run"), "target.limit=3", "prepare_missing=false"])
    with pytest.raises(ConfigError, match=r"made with other settings \(target\.limit: None != 3\)") as err:
        check_prepared(cfg, list(validate_schema(cfg)[2].sources()))
    assert "target.limit=3" in str(err.value)  # the printed command makes matching targets
    cfg = compose_train([*_paths(dirs, tmp_path / "run"), "target.limit=3"])  # the preset: prepare_missing
    check_prepared(cfg, list(validate_schema(cfg)[2].sources()))
    assert len(load_stage(data / "smoke" / "targets" / "label")) == 3


# ---- the mixture ----


def test_replay_counts_and_mixture_are_exact_and_seeded():
    assert replay_counts(95, 0.05, {"magpie": 3.0, "safety": 1.0}) == {"magpie": 4, "safety": 1}
    assert replay_counts(100, 0.0, {"magpie": 1.0}) == {}
    assert sum(replay_counts(1000, 0.2, {"a": 1.0, "b": 1.0, "c": 1.0}).values()) == 250
    speech = [
        {"kind": "speech", "source": "label", "clip_id": f"c{i}", "audio_path": f"/a/{i}.wav", "transcript": None,
         "description": "d", "instruction": "q", "target": "t", "keep_mask": None, "messages": []}
        for i in range(30)
    ]  # fmt: skip
    chats = [
        [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(4)
    ]
    replay = {"magpie": datasets.Dataset.from_list([{"messages": m} for m in chats])}
    a = build_mixture(speech, replay, ratio=0.25, weights={"magpie": 1.0}, seed=0)
    b = build_mixture(speech, replay, ratio=0.25, weights={"magpie": 1.0}, seed=0)
    c = build_mixture(speech, replay, ratio=0.25, weights={"magpie": 1.0}, seed=1)
    assert a.composition["replay"] == 10 and a.composition["replay_share"] == 0.25
    assert a.composition["replay_passes"] == {"magpie": 3}  # 10 rows from 4 chats: repeated, and said so
    assert a.dataset.to_list() == b.dataset.to_list()
    assert a.dataset["clip_id"] != c.dataset["clip_id"]


# ---- training runs ----


def test_smoke_frozen_policy_reload_and_feature_cache(smoke_dirs, tmp_path):
    from speechllm.model import SpeechLM

    cap = Capture()
    run = tmp_path / "run"
    metrics = train(smoke_cfg(smoke_dirs, run, "trainer.report_to=[tensorboard]"), callbacks=[cap])
    for f in ("train_metrics.json", "loss_curve.png", "mixture.json", "checkpoints/final/config.json",
              "checkpoints/step-2/optimizer.pt", "checkpoints/step-4/trainer_state.json"):  # fmt: skip
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(step_losses(metrics)) == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in step_losses(metrics).values())
    assert "train/learning_rate" in metrics["steps"][0] and "train/runtime" in metrics["summary"]

    model = cap.model
    end = model.state_dict()
    frozen = [k for k in end if k.startswith(("encoder.", "llm."))]
    assert frozen and all(torch.equal(cap.start[k], end[k]) for k in frozen)
    assert any(not torch.equal(cap.start[k], end[k]) for k in end if k.startswith("adapter."))

    # The final checkpoint reloads to the same logits as the in-memory model.
    rows = [r for r in datasets.load_from_disk(str(smoke_dirs["data"] / "smoke/targets/label"))][:2]
    reloaded = SpeechLM.from_pretrained(run / "checkpoints" / "final")
    model.eval()
    with torch.no_grad():
        a = model(**model.collator()(rows)).logits
        b = reloaded(**reloaded.collator()(rows)).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    # Every clip was encoded into the feature cache once; a run without the cache trains the same.
    cache_dirs = list((smoke_dirs["data"] / "smoke" / "features").iterdir())
    assert len(cache_dirs) == 1 and len(list(cache_dirs[0].glob("*.safetensors"))) == len(
        datasets.load_from_disk(str(smoke_dirs["data"] / "smoke/targets/label"))
    )
    uncached = train(smoke_cfg(smoke_dirs, tmp_path / "nocache", "trainer.cache_encoder_features=false",
                               "trainer.max_steps=2", "trainer.save_steps=0"))  # fmt: skip
    assert step_losses(uncached)[1] == pytest.approx(step_losses(metrics)[1], rel=1e-5)


# Each shipped encoder and LLM preset's tiny stand-in: its family's input shape (mel bins) or chat layout.
TINY_OF_PRESET = {
    "model/encoder": {"whisper_tiny_en": "whisper-tiny.en", "whisper_small": "whisper-tiny.en",
                      "whisper_large_v3": "whisper-large-v3"},
    "model/llm": {"smollm2_135m": "llm", "qwen2_5_coder_0_5b": "qwen2.5", "qwen2_5_7b_instruct": "qwen2.5",
                  "llama3_8b_instruct": "llama3"},
}  # fmt: skip
# Every experiment preset, and the LLM presets no experiment uses (on the demo's experiment).
PRESET_RUNS = [(name, None) for name in PRESETS] + [
    ("demo", "qwen2_5_coder_0_5b"),
    ("demo", "qwen2_5_7b_instruct"),
]


def test_every_shipped_model_preset_has_a_tiny_stand_in():
    for group, tiny in TINY_OF_PRESET.items():
        assert sorted(tiny) == sorted(p.stem for p in (CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize("experiment, llm_preset", PRESET_RUNS)
def test_each_preset_trains_a_step_at_tiny_width(smoke_dirs, tmp_path, experiment, llm_preset):
    """The preset's model (its adapter, prompt and fine-tuning policy, with tiny models of its encoder and LLM
    families and a narrow adapter), its loss and precision, one step on the smoke clips' label targets; the
    checkpoint reloads and trains on each answer and the token that closes its turn."""
    from omegaconf import OmegaConf

    from speechllm.model import SpeechLM

    preset = compose_train([f"experiment={experiment}", *([f"model/llm={llm_preset}"] if llm_preset else []),
                            "paths.output_dir=/unused"])  # fmt: skip
    choices = preset.hydra.runtime.choices
    encoder = TINY_OF_PRESET["model/encoder"][choices["model/encoder"]]
    llm = TINY_OF_PRESET["model/llm"][choices["model/llm"]]
    narrow = {"qformer": {"num_queries": 4, "hidden_size": 32, "num_heads": 2},
              "qformer_desta2": {"num_queries": 4, "hidden_size": 32, "num_heads": 2},
              "stack_mlp": {"hidden_size": 32}, "conv": {"channels": 32}}[choices["model/adapter"]]  # fmt: skip
    cfg = smoke_cfg(
        smoke_dirs, tmp_path, "trainer.max_steps=1", "trainer.save_steps=0", "align.pretrain_steps=0"
    )
    OmegaConf.update(cfg, "model", preset.model, merge=False)
    OmegaConf.update(cfg, "model.encoder.source", f"tiny:{encoder}")
    OmegaConf.update(cfg, "model.llm.source", f"tiny:{llm}")
    OmegaConf.update(cfg, "model.adapter", narrow, merge=True)
    for key in ("loss", "kd", "trainer.precision"):
        OmegaConf.update(cfg, key, OmegaConf.select(preset, key), merge=False)
    metrics = train(cfg)
    assert sorted(step_losses(metrics)) == [1] and math.isfinite(step_losses(metrics)[1])

    reloaded = SpeechLM.from_pretrained(tmp_path / "checkpoints" / "final")
    assert reloaded.model_config["adapter"]["_target_"] == preset.model.adapter._target_
    assert reloaded.finetune == preset.model.llm.finetune
    assert reloaded.encoder.feature_extractor.feature_size == (128 if encoder == "whisper-large-v3" else 80)
    rows = [r for r in datasets.load_from_disk(str(smoke_dirs["data"] / "smoke/targets/label"))][:2]
    batch = reloaded.collator()(rows)
    end_of_turn = reloaded.tokenizer.convert_tokens_to_ids("<|eot_id|>" if llm == "llama3" else "<|im_end|>")
    assert ((batch["labels"] == end_of_turn).sum(1) == 1).all()  # each answer ends with its turn's end
    assert ((batch["labels"] != -100).sum(1) > 1).all()
    with torch.no_grad():
        assert torch.isfinite(reloaded(**batch).logits.float()).all()


def test_resume_continues_the_same_data_and_optimizer_state(smoke_dirs, tmp_path):
    fast = ("trainer.learning_rate=0.02", "trainer.lr_scheduler_type=constant")
    straight = step_losses(train(smoke_cfg(smoke_dirs, tmp_path / "a", *fast)))
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(smoke_cfg(smoke_dirs, run, *fast), callbacks=[KillAfterSave(2)])
    assert (run / "checkpoints/step-2/trainer_state.json").is_file()
    assert not (run / "checkpoints/step-4").exists()
    resumed_metrics = train(smoke_cfg(smoke_dirs, run, *fast, "trainer.resume=last"))
    resumed = step_losses(resumed_metrics)
    # The losses move enough that a reset optimizer or another data order would show.
    assert abs(straight[4] - straight[1]) > 1e-3
    for step in (3, 4):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6)

    # Resuming a finished run trains nothing more: no step 5, the same final weights and metrics.
    final = (run / "checkpoints/final/model.safetensors").read_bytes()
    again = train(smoke_cfg(smoke_dirs, run, *fast, "trainer.resume=last"))
    assert step_losses(again) == resumed
    assert again["summary"] == resumed_metrics["summary"] and again["summary"]["train/global_step"] == 4
    assert not (run / "checkpoints/step-5").exists()
    assert (run / "checkpoints/final/model.safetensors").read_bytes() == final
    # A checkpoint trained under another model config is refused, with the keys that differ.
    with pytest.raises(ConfigError, match=r"model.prompt.transcript: True -> False"):
        train(smoke_cfg(smoke_dirs, run, *fast, "trainer.resume=last", "trainer.max_steps=6",
                        "model.prompt.transcript=false"))  # fmt: skip
    # Asking for more steps than the checkpoint holds continues the run.
    longer = train(smoke_cfg(smoke_dirs, run, *fast, "trainer.resume=last", "trainer.max_steps=6"))
    assert sorted(step_losses(longer)) == [1, 2, 3, 4, 5, 6]


def test_resume_inside_a_later_epoch_keeps_the_data_order(smoke_dirs, tmp_path):
    # 10 rows in batches of 4: steps 1-3 are epoch 1, 4-6 epoch 2, 7 epoch 3. Killed after the checkpoint
    # at step 4, the run resumes one batch into epoch 2 and must meet the same batches as the straight run.
    fast = ("trainer.learning_rate=0.02", "trainer.lr_scheduler_type=constant", "trainer.max_steps=7")
    straight = step_losses(train(smoke_cfg(smoke_dirs, tmp_path / "a", *fast)))
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(smoke_cfg(smoke_dirs, run, *fast), callbacks=[KillAfterSave(4)])
    resumed = step_losses(train(smoke_cfg(smoke_dirs, run, *fast, "trainer.resume=last")))
    for step in (5, 6, 7):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6), step


def test_resume_passes_over_a_cut_checkpoint_and_refuses_a_pickled_one(smoke_dirs, tmp_path, caplog):
    import datetime

    from speechllm.model import CheckpointError

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(smoke_cfg(smoke_dirs, run, "trainer.max_steps=6"), callbacks=[KillAfterSave(4)])
    checkpoints = run / "checkpoints"
    (checkpoints / "step-4" / "trainer_state.json").write_text('{"global_st')  # cut short by a full disk
    torch.save(
        {"state": datetime.datetime.now()}, checkpoints / "step-2" / "optimizer.pt"
    )  # not plain tensors
    with pytest.raises(CheckpointError, match=r"step-2/optimizer.pt: a pickle that could run code"):
        train(smoke_cfg(smoke_dirs, run, "trainer.max_steps=6", "trainer.resume=last"))
    assert "passing over" in caplog.text and "step-4: trainer_state.json is unreadable" in caplog.text
    # A gradient scaler's state in an fp32 run (Trainer would load it into no scaler and crash): named.
    torch.save({}, checkpoints / "step-2" / "optimizer.pt")
    torch.save({"scale": torch.tensor(1.0)}, checkpoints / "step-2" / "scaler.pt")
    with pytest.raises(CheckpointError, match=r"step-2/scaler.pt: a gradient scaler's state, but this run has no"):
        train(smoke_cfg(smoke_dirs, run, "trainer.max_steps=6", "trainer.resume=last"))


def test_lora_policy_saves_and_reloads_the_peft_adapter(smoke_dirs, tmp_path):
    from speechllm.model import SpeechLM

    cap = Capture()
    run = tmp_path / "lora"
    train(smoke_cfg(smoke_dirs, run, "model.llm.finetune=lora", "trainer.max_steps=2", "trainer.save_steps=0"),
          callbacks=[cap])  # fmt: skip
    assert (run / "checkpoints/final/lora/adapter_model.safetensors").is_file()
    lora_b = [k for k in cap.model.state_dict() if "lora_B" in k]
    assert lora_b and any(cap.model.state_dict()[k].abs().sum() > 0 for k in lora_b)  # LoRA B starts at zero
    base = [k for k in cap.start if k.startswith("llm.") and "lora_" not in k]
    assert all(torch.equal(cap.start[k], cap.model.state_dict()[k]) for k in base)
    rows = [r for r in datasets.load_from_disk(str(smoke_dirs["data"] / "smoke/targets/label"))][:2]
    reloaded = SpeechLM.from_pretrained(run / "checkpoints" / "final")
    cap.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            cap.model(**cap.model.collator()(rows)).logits, reloaded(**reloaded.collator()(rows)).logits,
            rtol=0, atol=1e-5,
        )  # fmt: skip


class CaptureOptimizer(TrainerCallback):
    """Keeps the trainer's optimiser's learning rates per parameter at the first step."""

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 0:
            self.lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
            self.model = model


def test_adapter_learning_rate_is_its_own_and_zero_freezes_it(smoke_dirs, tmp_path):
    lora = [
        "model.llm.finetune=lora",
        "trainer.max_steps=2",
        "trainer.save_steps=0",
        "trainer.warmup_steps=0",
    ]
    opt = CaptureOptimizer()
    train(
        smoke_cfg(smoke_dirs, tmp_path / "own", *lora, "trainer.adapter_learning_rate=1e-5"), callbacks=[opt]
    )
    adapter = {id(p) for p in opt.model.adapter.parameters()}
    rates = {("adapter" if i in adapter else "llm"): lr for i, lr in opt.lr.items()}
    assert set(rates) == {"adapter", "llm"} and rates["adapter"] == pytest.approx(1e-5)
    assert all(lr == pytest.approx(1e-3) for i, lr in opt.lr.items() if i not in adapter)  # the preset's

    cap = Capture()
    train(
        smoke_cfg(smoke_dirs, tmp_path / "frozen", *lora, "trainer.adapter_learning_rate=0"), callbacks=[cap]
    )
    now = cap.model.state_dict()
    assert all(torch.equal(cap.start[k], now[k]) for k in cap.start if k.startswith("adapter."))
    assert any(
        not torch.equal(cap.start[k], now[k]) for k in cap.start if "lora_B" in k
    )  # the reader trained
    with pytest.raises(ConfigError, match="nothing left to train"):
        train(
            smoke_cfg(smoke_dirs, tmp_path / "none", "trainer.max_steps=1", "trainer.adapter_learning_rate=0")
        )
    with pytest.raises(ConfigError, match="trainer.adapter_learning_rate"):
        train(smoke_cfg(smoke_dirs, tmp_path / "bad", "trainer.adapter_learning_rate=-1"))


def test_replay_mixture_and_kd_loss_train(smoke_dirs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "smoke").symlink_to(smoke_dirs["data"] / "smoke", target_is_directory=True)
    chats = [[{"role": "user", "content": f"What is {i} plus one?"}, {"role": "assistant", "content": f"{i + 1}."}]
             for i in range(5)]  # fmt: skip
    out = data / "replay" / "magpie"
    datasets.Dataset.from_list([{"messages": m, "replay_source": "magpie"} for m in chats]).save_to_disk(
        str(out)
    )
    (out / "_complete.json").write_text("{}")
    run = tmp_path / "kd"
    metrics = train(smoke_cfg(
        {"data": data, "cache": smoke_dirs["cache"]}, run, "loss=kd", "replay.ratio=0.2", "replay.build=[magpie]",
        "replay.weights={magpie: 1.0}", "trainer.max_steps=2", "trainer.save_steps=0",
    ))  # fmt: skip
    mix = json.loads((run / "mixture.json").read_text())
    assert mix["parts"] == {"speech": 10, "replay/magpie": 2} and metrics["loss_type"] == "kd"
    assert all(math.isfinite(v) and v >= 0 for v in step_losses(metrics).values())


def test_kd_loss_is_zero_for_a_perfect_student_and_checks_alignment():
    from speechllm.train.losses import kd_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100]])
    t_logits = torch.cat([torch.randn(1, 2, 11), logits[:, 1:]], dim=1)  # teacher has one more prompt token
    t_labels = torch.tensor([[-100, -100, -100, 3, 4, 5, -100]])
    loss, parts = kd_loss(logits, labels, torch.tensor([0]), t_logits, t_labels)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.0, abs=1e-6)
    other, _ = kd_loss(torch.randn(1, 6, 11), labels, torch.tensor([0]), t_logits, t_labels)
    assert other.item() > 0.01
    with pytest.raises(ValueError, match="labels 3 tokens"):
        kd_loss(logits, labels, torch.tensor([0]), t_logits, torch.tensor([[-100] * 5 + [4, 5]]))


# ---- the command lines ----


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def test_resume_last_without_a_named_run_folder_is_refused(smoke_dirs, tmp_path):
    # Each launch gets a new time-stamped folder, so "last" could never find the earlier checkpoints.
    cmd = [sys.executable, str(REPO / "train.py"), "experiment=smoke", f"paths.data_dir={smoke_dirs['data']}",
           f"paths.cache_dir={smoke_dirs['cache']}", "trainer.resume=last"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "add hydra.run.dir=<the run's folder>" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hydra_multirun_of_two_smoke_runs(smoke_dirs, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "experiment=smoke", "seed=0,1",
           f"paths.data_dir={smoke_dirs['data']}", f"paths.cache_dir={smoke_dirs['cache']}",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = []
    for job in ("0", "1"):
        run = sweep / job
        for f in ("checkpoints/final/model.safetensors", "train_metrics.json", "loss_curve.png"):
            assert (run / f).is_file(), (job, f)
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        losses.append(step_losses(json.loads((run / "train_metrics.json").read_text()))[1])
    assert losses[0] != losses[1]  # the seed reached the model


def test_torchrun_two_gloo_processes_share_one_run_dir(smoke_dirs, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           "experiment=smoke", f"paths.data_dir={smoke_dirs['data']}", f"paths.cache_dir={smoke_dirs['cache']}",
           "trainer.save_steps=0", "trainer.report_to=[]", f"trainer.feature_cache_dir={tmp_path / 'features'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("10 clips, 5 encoded now") == 2, log[-3000:]  # the ranks split the encoder-feature cache
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs  # not one folder per rank
    assert (runs[0] / "checkpoints/final/model.safetensors").is_file()
    assert not list((runs[0] / "checkpoints").glob("step-*"))
    metrics = json.loads((runs[0] / "train_metrics.json").read_text())
    assert sorted(step_losses(metrics)) == [1, 2, 3, 4]
    # Each rank read half the rows: 5 rows per rank, batch 4 -> 2 steps an epoch, so 4 steps are 2 epochs
    # (a rank training alone on all 10 rows would be at 1.33).
    assert metrics["summary"]["train/epoch"] == 2.0
    assert log.count("starting fresh") == 1  # only rank 0 writes the run folder
    assert "parallelism: DDP over 2 processes" in log


# Two ranks with 2 rows each take the steps one process takes with 2 rows and 2 accumulation steps: each
# rank's loss is a mean over its own rows, as each micro-batch's is, and the data order is the same.
SHARDED_RUN = ["experiment=smoke", "model.llm.finetune=lora", "model.llm.lora.dropout=0", "trainer.max_steps=2",
               "trainer.per_device_train_batch_size=2", "trainer.learning_rate=0.01",
               "trainer.lr_scheduler_type=constant", "trainer.save_steps=0", "trainer.report_to=[]",
               # Length grouping sorts within groups sized by the global batch per process (4 rows in one
               # process with 2 accumulation steps, 2 per rank): the same rows would reach other steps.
               "trainer.group_by_length=false"]  # fmt: skip
# Each engine through its shipped accelerate config, on two CPU processes.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file"]
ENGINES = {
    # FSDP2 (`fully_shard`): frozen LLM weights and trainable LoRA and Q-Former weights in the same shard
    # units. accelerate keeps CPU processes on DDP, hence the launcher that allows FSDP there.
    "fsdp": ([*LAUNCH, str(REPO / "launch/accelerate/fsdp.yaml"), str(REPO / "tests/fsdp_cpu_train.py")],
             "parallelism: FSDP2 over 2"),
    # DeepSpeed ZeRO-3 (weights, gradients and optimiser state partitioned) on its CPU accelerator.
    "zero3": ([*LAUNCH, str(REPO / "launch/accelerate/deepspeed_zero3.yaml"), str(REPO / "train.py")],
              "parallelism: DeepSpeed ZeRO-3 over 2"),
}  # fmt: skip


def test_launch_configs_load_and_name_existing_deepspeed_files():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((REPO / "launch" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = config.distributed_type.value
        assert config.num_processes == 8, path.name
        if config.deepspeed_config:
            ds = json.loads((REPO / config.deepspeed_config["deepspeed_config_file"]).read_text())
            assert path.stem.endswith(f"zero{ds['zero_optimization']['stage']}"), path.name
            assert ds["bf16"]["enabled"] == "auto"  # trainer.precision decides
        else:
            assert config.mixed_precision == "no", path.name  # trainer.precision decides
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED",
                     "deepspeed_zero3": "DEEPSPEED"}  # fmt: skip


@pytest.fixture(scope="module")
def one_process_logits(smoke_dirs, tmp_path_factory):
    """Logits of the one-process reference run's final checkpoint on four smoke rows."""
    from speechllm.model import SpeechLM

    run = tmp_path_factory.mktemp("one-process")
    cmd = [sys.executable, str(REPO / "train.py"), *SHARDED_RUN, *_dirs(smoke_dirs, run),
           "trainer.gradient_accumulation_steps=2", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=run, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = SpeechLM.from_pretrained(run / "checkpoints" / "final")
    with torch.no_grad():
        return model(**model.collator()(_four_rows(smoke_dirs))).logits


def _dirs(smoke_dirs, run: Path) -> list[str]:
    return [f"paths.data_dir={smoke_dirs['data']}", f"paths.cache_dir={smoke_dirs['cache']}",
            f"trainer.feature_cache_dir={run / 'features'}"]  # fmt: skip


def _four_rows(smoke_dirs) -> list[dict]:
    return [r for r in datasets.load_from_disk(str(smoke_dirs["data"] / "smoke/targets/label"))][:4]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_sharded_two_gloo_processes_match_one_process_and_reload_strictly(
    smoke_dirs, tmp_path, one_process_logits, engine
):
    from speechllm.model import SpeechLM

    launch, marker = ENGINES[engine]
    cmd = [*launch, *SHARDED_RUN, *_dirs(smoke_dirs, tmp_path), f"hydra.run.dir={tmp_path / 'run'}"]
    # From the repository root, as documented: the DeepSpeed config names its JSON file relative to it.
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker in proc.stdout + proc.stderr  # the engine really ran
    model = SpeechLM.from_pretrained(tmp_path / "run" / "checkpoints" / "final")  # a strict load
    rows = _four_rows(smoke_dirs)
    with torch.no_grad():
        logits = model(**model.collator()(rows)).logits
        with model.llm.disable_adapter():
            without_lora = model(**model.collator()(rows)).logits
    torch.testing.assert_close(logits, one_process_logits, rtol=1e-4, atol=1e-4)
    assert (logits - without_lora).abs().max() > 1e-3  # the LoRA weights were gathered and saved, not zeros


def test_ranks_share_the_run_folder_train_yaml_names():
    """The folder rank 0 publishes to the other ranks is train.yaml's own pattern, not a second copy of it."""
    import datetime

    from speechllm.train.launch import configured_dir

    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    assert configured_dir("run", now) == "outputs/train/2026-01-02_03-04-05"
    assert configured_dir("sweep", now) == "multirun/train/2026-01-02_03-04-05"


def test_a_train_split_the_targets_lack_names_the_splits_they_have():
    targets = datasets.Dataset.from_list(
        [{"clip_id": "a", "audio_path": "a.wav", "instruction": "Who?", "target": "A man.", "split": "train"}]
    )
    with pytest.raises(ConfigError, match=r"train_split='validation': .* \(they have \['train'\]\)"):
        speech_rows(targets, split="validation", use_keep_mask=False, max_rows=None, seed=0)


def test_a_run_folder_that_cannot_be_written_is_one_line_before_hydra_makes_it(tmp_path, monkeypatch, capsys):
    import os

    from speechllm.cli import _refuse_an_unwritable_run_dir

    monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path))  # tmp_path: read-only
    with pytest.raises(SystemExit) as stop:
        _refuse_an_unwritable_run_dir(["train.py", f"hydra.run.dir={tmp_path}/runs/a"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write the run folder {tmp_path}/runs/a (hydra.run.dir): {tmp_path} is read-only or not ours"
    )
    _refuse_an_unwritable_run_dir(["train.py", f"hydra.run.dir={tmp_path.parent}/b"])  # a writable one passes


def test_a_required_key_left_unset_is_one_line():
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from speechllm.errors import one_line

    with pytest.raises(MissingMandatoryValue) as err:
        str(OmegaConf.create({"checkpoint": "???"}).checkpoint)
    assert one_line(err.value) == "config error: checkpoint has no value; set it on the command line (checkpoint=...)"
