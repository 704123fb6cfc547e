"""What makes the speech model hear: the alignment loss and warm-up, the listening probe, verified targets,
and the report's balanced accuracy."""

import json
import re

import pytest
import torch
from test_train import smoke_cfg, smoke_dirs, step_losses  # noqa: F401  (the session fixture)

from speechllm.data.instructions import INSTRUCTION_POOLS, asked_attributes
from speechllm.data.targets import TargetWriter, target_config
from speechllm.data.verify import correctness, label_classes, verify_answer
from speechllm.eval.scoring import one_answer_questions, score
from speechllm.eval.tasks import Item, balanced_accuracy
from speechllm.model.alignment import AlignmentTargets, alignment_loss
from speechllm.textllm import Generation
from speechllm.train.run import train


class _Tok:
    """A whitespace tokenizer: enough for the alignment targets."""

    vocab = {"\n": 0, "a": 1, "man": 2, "speaks": 3, "woman": 4}

    def __call__(self, text, add_special_tokens=False):
        ids = [self.vocab["\n"]] if text == "\n" else [self.vocab[w] for w in text.split()]
        return type("Enc", (), {"input_ids": ids})()


def test_alignment_targets_fill_slots_and_loss_is_zero_on_the_text_itself():
    targets = AlignmentTargets(_Tok())
    ids = targets(["a man speaks", None, "a woman speaks"], [5, 4, 2])
    assert ids.tolist() == [[1, 2, 3, 0, 0], [-100] * 5, [1, 4, -100, -100, -100]]

    table = torch.randn(5, 8)
    mean_square = float(table.pow(2).mean())
    mask = torch.tensor([[True] * 5, [True] * 5, [True, True, False, False, False]])
    exact = torch.zeros(3, 5, 8)
    for i, row in enumerate(ids.tolist()):
        for j, t in enumerate(row):
            if t >= 0:
                exact[i, j] = table[t]
    assert float(alignment_loss(exact, mask, ids, table, mean_square)) == pytest.approx(0.0, abs=1e-7)
    noisy = exact + 0.5 * torch.randn_like(exact)
    assert float(alignment_loss(noisy, mask, ids, table, mean_square)) > 0.01
    nothing = torch.full((3, 5), -100)
    assert float(alignment_loss(noisy, mask, nothing, table, mean_square)) == 0.0


def test_smoke_run_with_alignment_warmup_and_probe_writes_a_learning_curve(smoke_dirs, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    metrics = train(smoke_cfg(smoke_dirs, run, "align.weight=1.0", "align.pretrain_steps=30",
                              "align.pretrain_learning_rate=3e-3", "probe.every=2", "probe.max_clips=null"))  # fmt: skip
    warmup = metrics["align_warmup"]
    assert warmup and warmup[-1]["align_loss"] < warmup[0]["align_loss"]
    assert all("train/align_loss" in s for s in metrics["steps"])
    assert [s["step"] for s in metrics["steps"]] == [1, 2, 3, 4]  # the probe's log does not eat a step's loss
    curve = json.loads((run / "learning_curve.json").read_text())
    assert [h["step"] for h in curve["history"]] == [0, 2, 4]
    assert set(curve["chance"]) >= {"gender", "accent"} and (run / "learning_curve.png").is_file()
    for entry in curve["history"]:
        assert all(0.0 <= entry[t] <= 1.0 for t in curve["chance"])


def test_alignment_warmup_is_stored_and_reused_exactly(smoke_dirs, tmp_path, caplog):  # noqa: F811
    settings = ["align.weight=1.0", "align.pretrain_steps=12", "align.pretrain_learning_rate=2.5e-3",
                f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2"]  # fmt: skip
    first = train(smoke_cfg(smoke_dirs, tmp_path / "a", *settings))
    assert len(list((tmp_path / "cache" / "align-warmup").glob("*.safetensors"))) == 1
    with caplog.at_level("INFO", logger="speechllm.train.align"):
        again = train(smoke_cfg(smoke_dirs, tmp_path / "b", *settings))
    assert "alignment warm-up: reused" in caplog.text
    # Loaded, the warm-up gives what taking its steps gave: the same history and the same training losses.
    assert again["align_warmup"] == first["align_warmup"]
    assert step_losses(again) == step_losses(first)
    # Anything the warm-up depends on (here its learning rate) makes a new one.
    caplog.clear()
    with caplog.at_level("INFO", logger="speechllm.train.align"):
        train(smoke_cfg(smoke_dirs, tmp_path / "c", *settings[:-1], "align.pretrain_learning_rate=1e-3"))
    assert "reused" not in caplog.text
    assert len(list((tmp_path / "cache" / "align-warmup").glob("*.safetensors"))) == 2


def test_alignment_warmup_can_take_every_described_clip(smoke_dirs, tmp_path, caplog):  # noqa: F811
    # Rows capped to a few clips' targets; the warm-up still takes every described training clip (the smoke
    # corpus has 10), encoded into the feature cache like the rest.
    settings = ["align.weight=1.0", "align.pretrain_steps=2", "max_train_rows=4", "trainer.max_steps=1"]
    with caplog.at_level("INFO", logger="speechllm.train.align"):
        train(smoke_cfg(smoke_dirs, tmp_path / "a", *settings))
    assert int(re.search(r"2 steps on (\d+) clips", caplog.text).group(1)) <= 4
    caplog.clear()
    with caplog.at_level("INFO", logger="speechllm.train.align"):
        metrics = train(smoke_cfg(smoke_dirs, tmp_path / "b", *settings, "align.pretrain_clips=described"))
    assert "2 steps on 10 clips" in caplog.text
    assert metrics["encoder_feature_cache"]["clips"] >= 10


def test_alignment_config_errors_name_the_problem(smoke_dirs, tmp_path):  # noqa: F811
    from speechllm.config import ConfigError

    with pytest.raises(ConfigError, match="align.weight"):
        train(smoke_cfg(smoke_dirs, tmp_path / "a", "align.weight=-1"))
    with pytest.raises(ConfigError, match="unknown attribute 'timbre'"):
        train(smoke_cfg(smoke_dirs, tmp_path / "b", "align.weight=1", "align.attributes=[gender,timbre]"))
    with pytest.raises(ConfigError, match="unknown config key 'align.wieght'"):
        train(smoke_cfg(smoke_dirs, tmp_path / "c", "+align.wieght=1"))
    with pytest.raises(ConfigError, match="align.pretrain_clips='all'"):
        train(smoke_cfg(smoke_dirs, tmp_path / "d", "align.pretrain_clips=all"))


# ---- the probe and the report ----


def test_balanced_accuracy_scores_one_class_for_every_clip_at_chance():
    golds = ["male"] * 8 + ["female"] * 2
    assert balanced_accuracy(golds, ["male"] * 10, ("female", "male")) == 0.5
    assert balanced_accuracy(golds, golds, ("female", "male")) == 1.0
    assert balanced_accuracy(golds, [None] * 10, ("female", "male")) == 0.0


def test_report_flags_questions_answered_alike_for_every_clip():
    classes = ("female", "male")
    items = [
        Item(i, "gender", "Q1" if i < 4 else "Q2", "male" if i % 2 else "female", classes) for i in range(8)
    ]
    parsed = ["female"] * 4 + ["female", "male", "female", "male"]
    out = score(items, parsed)["gender"]
    assert out["accuracy"] == pytest.approx(0.75) and out["balanced_accuracy"] == pytest.approx(0.75)
    assert out["one_answer_questions"] == [{"question": "Q1", "answer": "female", "clips": 4}]
    assert one_answer_questions([(items[0], None), (items[1], None), (items[2], None)]) == [
        {"question": "Q1", "answer": None, "clips": 3}
    ]


# ---- verified self-output ----

ROW = {"clip_id": "c1", "label_gender": "male", "label_accent": "scottish", "label_pitch": "low"}
ROWS = [ROW, {"clip_id": "c2", "label_gender": "female", "label_accent": "british", "label_pitch": "high"}]


def test_every_pool_instruction_that_names_an_attribute_is_recognised():
    assert asked_attributes("Is the speaker a man or a woman?") == ["gender"]
    assert asked_attributes("How high or low is the speaker's voice?") == ["pitch"]
    assert asked_attributes("What does the speaker say?") == []
    assert set(asked_attributes(INSTRUCTION_POOLS["speaker"][0])) == {
        "gender",
        "accent",
        "pitch",
        "speed",
        "volume",
    }


def test_verify_answer_judges_asked_attributes_and_unambiguous_contradictions():
    classes = label_classes(ROWS)
    assert classes == {
        "accent": ("british", "scottish"),
        "gender": ("female", "male"),
        "pitch": ("high", "low"),
    }
    ok = verify_answer("The speaker is a man.", ROW, "Is the speaker a man or a woman?", classes)
    assert ok.verdict == "correct" and ok.checked == {"gender": ["male", "male"]}
    wrong = verify_answer("It is a woman.", ROW, "Is the speaker a man or a woman?", classes)
    assert wrong.verdict == "wrong" and wrong.failed == ["gender"]
    silent = verify_answer("The voice is clear.", ROW, "What is the gender of the person speaking?", classes)
    assert silent.verdict == "wrong" and silent.checked == {"gender": ["male", None]}
    # Not asked: a wrong accent still fails (its words are its own); an unasked pitch word is not judged.
    aside = verify_answer("A woman says hello in a high voice.", ROW, "What does the speaker say?", classes)
    assert aside.failed == ["gender"] and "pitch" not in aside.checked
    assert verify_answer("anything", {"clip_id": "x"}, "Is it a man?", classes).verdict == "unverified"
    assert correctness([{"checked": ok.checked}, {"checked": wrong.checked}]) == {
        "gender": {"right": 1, "judged": 2, "rate": 0.5}
    }


def _writer(fallback: str, script: list[list[str]]):
    cfg = target_config(
        {"mode": "self_output", "verify": {"enabled": True, "tries": 2, "fallback": fallback}}
    )
    writer = TargetWriter(cfg, classes=label_classes(ROWS))
    calls = []

    def fake_run(messages, gen, salt):
        answers = script[len(calls)]
        calls.append((len(messages), gen.do_sample, salt))
        return [f"prompt {i}" for i in range(len(messages))], [Generation(a, 3, False) for a in answers]

    writer._run_llm = fake_run
    return writer, calls


def test_wrong_targets_are_resampled_then_dropped_or_kept_with_their_verdict():
    chunk = [
        {**ROW, "target_id": "c1/0", "audio_path": "c1.wav", "description": "d", "instruction": "Is it a man or a woman?"},
        {**ROWS[1], "target_id": "c2/0", "audio_path": "c2.wav", "description": "d",
         "instruction": "Is it a man or a woman?"},
    ]  # fmt: skip
    # Greedy: c1 wrong, c2 right. Retry 1 (c1 only): still wrong. Retry 2: right.
    writer, calls = _writer("drop", [["A woman.", "A woman."], ["She is a girl."], ["A man, clearly."]])
    result = writer(chunk)
    assert [(n, sampled) for n, sampled, _ in calls] == [(2, False), (1, True), (1, True)]
    assert [r["target"] for r in result.rows] == ["A man, clearly.", "A woman."]
    v = json.loads(result.rows[0]["target_verification"])
    assert v["verdict"] == "correct" and v["tries"] == 2 and v["first"] == {"gender": ["male", "female"]}
    assert json.loads(result.rows[1]["target_verification"])["tries"] == 0

    writer, _ = _writer("drop", [["A woman.", "A woman."], ["A woman."], ["Female."]])
    result = writer(chunk)
    assert [r["clip_id"] for r in result.rows] == ["c2"]
    assert (
        result.rejects[0]["clip_id"] == "c1"
        and "gender wrong or unstated in 3 answers" in result.rejects[0]["reason"]
    )

    writer, _ = _writer("keep", [["A woman.", "A woman."], ["A woman."], ["Female."]])
    result = writer(chunk)
    assert json.loads(result.rows[0]["target_verification"])["verdict"] == "wrong"

    # paraphrase: the LLM rewrites the gold template for c1 ("The speaker is male."); kept when it passes.
    writer, calls = _writer(
        "paraphrase", [["A woman.", "A woman."], ["A woman."], ["Female."], ["It is a man."]]
    )
    result = writer(chunk)
    assert calls[-1][0] == 1 and calls[-1][2].endswith("/paraphrase")
    assert [r["target"] for r in result.rows] == ["It is a man.", "A woman."]
    v = json.loads(result.rows[0]["target_verification"])
    assert v["fallback"] == "paraphrase" and v["verdict"] == "correct"
    # ... and dropped when the rewrite fails too.
    writer, _ = _writer("paraphrase", [["A woman.", "A woman."], ["A woman."], ["Female."], ["A lady."]])
    assert [r["clip_id"] for r in writer(chunk).rows] == ["c2"]


def test_a_hedge_that_asserts_two_classes_fails_verification():
    classes = {"volume": ("loud", "normal", "quiet")}
    row = {"label_volume": "quiet"}
    assert verify_answer("The voice is quiet.", row, "How loud is the voice?", classes).verdict == "correct"
    hedge = verify_answer("The voice is quiet, normal.", row, "How loud is the voice?", classes)
    assert hedge.verdict == "wrong" and hedge.failed == ["volume"]
    echoed = verify_answer("Loud, normal or quiet? It is quiet.", row, "How loud is the voice?", classes)
    assert echoed.verdict == "correct"  # the options echoed back assert nothing


def test_verify_config_is_checked():
    with pytest.raises(ValueError, match="fallback"):
        target_config({"verify": {"enabled": True, "fallback": "guess"}})
    with pytest.raises(ValueError, match="label targets"):
        target_config({"mode": "label", "verify": {"enabled": True}})


def test_labelled_logits_only_gives_the_full_loss_and_gradients(tiny_llm_source, tiny_whisper_source):
    from omegaconf import OmegaConf

    from speechllm.model import SpeechLM

    torch.manual_seed(0)
    cfg = OmegaConf.create({
        "encoder": {"source": tiny_whisper_source, "num_taps": 2},
        "adapter": {"_target_": "speechllm.model.adapters.QFormerAdapter", "num_queries": 3, "num_layers": 1,
                    "hidden_size": 16, "num_heads": 2, "output_norm": True},
        "llm": {"source": tiny_llm_source, "finetune": "lora", "lora": {"dropout": 0.0}},
    })  # fmt: skip
    model = SpeechLM.from_config(cfg).train()
    rows = [
        {
            "audio": 0.1 * torch.randn(8000).numpy(),
            "transcript": "hi",
            "instruction": "Who?",
            "target": "A man.",
        },
        {
            "audio": 0.1 * torch.randn(12000).numpy(),
            "instruction": "Who is it?",
            "target": "A woman, I think.",
        },
        {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]},
    ]
    batch = model.collator()(rows)
    grads = []
    for only in (False, True):
        model.zero_grad()
        out = model(**batch, labelled_logits_only=only)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if only:
            fast = out
        else:
            full = out
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert set(grads[0]) == set(grads[1]) and any(n.startswith("adapter.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
    # Per-row log-probabilities add up to the mean loss times the labelled tokens.
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert float(-fast["label_logprob"].sum() / n_labelled) == pytest.approx(float(full.loss), rel=1e-5)
