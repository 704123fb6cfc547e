"""Self-output targets and the label/paraphrase modes, on a tiny local LLM."""

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from speechllm.data.instructions import (
    INSTRUCTION_POOLS,
    all_training_instructions,
    asked_attributes,
    pick_instruction,
    pick_instructions,
    resolve_pool,
)
from speechllm.data.stage import load_stage, read_rejects
from speechllm.data.targets import (
    TargetWriter,
    build_targets,
    label_answer,
    run_targets,
    target_config,
    trim_to_sentence,
)
from speechllm.textllm import (
    DEFAULT_SYSTEM,
    GenerationConfig,
    chat_prompt,
    description_messages,
    generate_texts,
    stop_token_ids,
)


def make_talky_llm(tiny_llm_source: str, out_dir: Path) -> str:
    """The tiny LLM's config and tokenizer with weights that produce varied text and sometimes stop.

    The shared tiny model ties its embeddings, so greedy decoding just repeats the last prompt token
    (a newline, stripped to ""): useless for checking generated text. An untied random head gives
    varied tokens; a larger end-of-turn row makes some answers end before max_new_tokens.
    """
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return str(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_source)
    config = AutoConfig.from_pretrained(tiny_llm_source)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        model.lm_head.weight[tokenizer.eos_token_id] *= 2.0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def load(source: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)


@pytest.fixture(scope="module")
def talky(tiny_llm_source, tmp_path_factory):
    path = make_talky_llm(tiny_llm_source, tmp_path_factory.mktemp("talky"))
    model, tokenizer = load(path)
    return path, model, tokenizer


def described_rows(n: int = 12) -> list[dict]:
    voices = ["female", "male"]
    return [
        {
            "clip_id": f"clip{i:03d}",
            "audio_path": f"/corpus/clip{i:03d}.wav",
            "split": "test" if i % 5 == 4 else "train",
            "label_gender": voices[i % 2],
            "label_pitch": ["low", "normal", "high"][i % 3],
            "label_text": f"Sentence number {i}.",
            # Different lengths, so batches really pad.
            "description": f'A {voices[i % 2]} voice says "Sentence number {i}."' + " Quite loud." * (i % 4),
        }
        for i in range(n)
    ]


CFG = {"generation": {"max_new_tokens": 12, "batch_size": 4}, "on_truncated": "keep", "chunk_size": 3}


@pytest.fixture(scope="module")
def reference(talky, tmp_path_factory):
    """Self-output targets of described_rows() made in one uninterrupted, unsharded run."""
    _, model, tok = talky
    out = tmp_path_factory.mktemp("reference") / "t"
    return out, build_targets(described_rows(), out, target_config(CFG), model=model, tokenizer=tok)


def test_instruction_pools_and_training_set():
    assert INSTRUCTION_POOLS["desta2"] == ["What can you hear from the audio?"]
    assert len(set(INSTRUCTION_POOLS["desta25"])) == len(INSTRUCTION_POOLS["desta25"]) > 5
    trained = all_training_instructions()
    assert set(INSTRUCTION_POOLS["desta25"]) <= trained
    # Deterministic per clip and seed, and the pool is actually sampled.
    picks = [pick_instruction("desta25", f"c{i}", seed=3) for i in range(60)]
    assert picks == [pick_instruction("desta25", f"c{i}", seed=3) for i in range(60)]
    assert len(set(picks)) > 5
    assert picks != [pick_instruction("desta25", f"c{i}", seed=4) for i in range(60)]
    with pytest.raises(ValueError, match="unknown instruction pool"):
        pick_instruction("nope", "c0")


def test_several_instructions_per_clip_are_distinct_and_stable():
    pool = resolve_pool("attributes")
    picks = pick_instructions("attributes", "c7", seed=1, count=4)
    assert len(set(picks)) == 4 and set(picks) <= set(pool)
    assert picks == pick_instructions("attributes", "c7", seed=1, count=4)
    # The first is the single-instruction choice, so count=1 keeps the old assignment.
    assert picks[0] == pick_instruction("attributes", "c7", seed=1)
    assert pick_instructions("attributes", "c7", seed=1, count=len(pool)) != pick_instructions(
        "attributes", "c8", seed=1, count=len(pool)
    )
    with pytest.raises(ValueError, match="distinct instructions"):
        pick_instructions("desta2", "c0", count=2)
    with pytest.raises(ValueError, match="instructions_per_clip"):
        target_config({"instructions": "desta25", "instructions_per_clip": 0})


def test_each_instruction_of_a_clip_gets_its_own_target(talky, tmp_path):
    _, model, tok = talky
    rows = described_rows(6)
    cfg = target_config({**CFG, "instructions": "attributes", "instructions_per_clip": 3, "split": None})
    ds = build_targets(rows, tmp_path / "multi", cfg, model=model, tokenizer=tok)
    rejected = [r["target_id"] for r in read_rejects(tmp_path / "multi")]
    # Every (clip, instruction) pair is kept or rejected with a reason: nothing is lost.
    assert sorted(list(ds["target_id"]) + rejected) == sorted(
        f"{r['clip_id']}/{i}" for r in rows for i in range(3)
    )
    # The clips have gender and pitch labels only: the pool's questions about accent, speed... are left out.
    answerable = [q for q in resolve_pool("attributes") if set(asked_attributes(q)) <= {"gender", "pitch"}]
    assert {a for r in ds for a in asked_attributes(r["instruction"])} == {"gender", "pitch"}
    for clip in {r["clip_id"] for r in ds}:
        mine = [r for r in ds if r["clip_id"] == clip]
        assert len({r["instruction"] for r in mine}) == len(mine)
        expected = pick_instructions(answerable, clip, 0, 3)
        assert all(r["instruction"] == expected[int(r["target_id"].split("/")[1])] for r in mine)


def test_description_messages():
    msgs = description_messages("A man says hi.", "What can you hear from the audio?")
    assert msgs[0] == {"role": "system", "content": DEFAULT_SYSTEM}
    assert "A man says hi." in msgs[1]["content"] and "What can you hear" in msgs[1]["content"]
    assert [m["role"] for m in description_messages("d", "i", system="")] == ["user"]
    with pytest.raises(ValueError, match="description is empty"):
        description_messages("  ", "i")


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(ValueError, match="max_new_token"):
        target_config({"generation": {"max_new_token": 5}})
    with pytest.raises(ValueError, match="mode"):
        target_config({"mode": "selfoutput"})
    assert target_config(None).instructions == ["What can you hear from the audio?"]
    for bad, message in [
        ({"limit": -1}, "target.limit=-1"),
        ({"limit": 0}, "target.limit=0"),
        ({"token_filter": {"threshold": 4.0}}, "threshold=4.0"),
        ({"generation": {"temperature": -1.0}}, "target.generation: temperature=-1.0"),
        ({"generation": {"top_p": 7.0}}, "top_p=7.0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            target_config(bad)


def test_batched_generation_matches_one_at_a_time(talky):
    _, model, tok = talky
    prompts = [
        chat_prompt(tok, description_messages(r["description"], "Describe it.")) for r in described_rows(6)
    ]
    gen = GenerationConfig(max_new_tokens=10, batch_size=6)
    batched = generate_texts(model, tok, prompts, gen)
    single = [generate_texts(model, tok, [p], gen)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert any(g.text for g in batched)
    # Seeded sampling: same seed, same text; different seed, different text.
    sgen = GenerationConfig(max_new_tokens=10, batch_size=3, do_sample=True, temperature=1.0, seed=7)
    a = generate_texts(model, tok, prompts, sgen)
    assert a == generate_texts(model, tok, prompts, sgen)
    assert a != generate_texts(model, tok, prompts, GenerationConfig(**{**sgen.__dict__, "seed": 8}))


def test_shared_prefixes_are_grouped_only_where_they_save_work():
    from speechllm.textllm import shared_prefix_groups

    system = list(range(100, 110))
    clip_a, clip_b = [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 9, 9, 9, 9]
    prompts = [
        system + clip_a + [50, 51],  # 0
        system + clip_b + [50, 51],  # 1
        system + clip_a + [60],  # 2
        system + clip_b + [70, 71, 72],  # 3
        system + clip_a + [70, 71, 72],  # 4
        [5, 5, 5],  # 5: shares nothing
    ]
    groups = shared_prefix_groups(prompts, max_rows=16)
    assert sorted(sorted(g.rows) for g in groups) == [[0, 2, 4], [1, 3], [5]]
    assert {tuple(sorted(g.rows)): g.shared for g in groups}[(0, 2, 4)] == 18  # system + clip
    assert {tuple(sorted(g.rows)): g.shared for g in groups}[(5,)] == 2  # all but its last token
    # A group never exceeds a batch, and every member keeps a token of its own.
    assert max(len(g.rows) for g in shared_prefix_groups(prompts, max_rows=2)) == 2
    assert shared_prefix_groups([[1, 2], [1, 2], [1, 2]], max_rows=8)[0].shared == 1


def three_questions_each(tok, clips: int) -> list[str]:
    """Prompts asking three questions about each of `clips` described rows: each clip's three share a prefix."""
    questions = ["Describe it.", "Who is speaking here?", "Is the voice high or low?"]
    return [
        chat_prompt(tok, description_messages(r["description"], q))
        for r in described_rows(clips)
        for q in questions
    ]


def test_shared_prefix_generation_matches_unshared(talky):
    _, model, tok = talky
    prompts = three_questions_each(tok, 5)
    gen = GenerationConfig(max_new_tokens=10, batch_size=7)  # groups of three, two groups a batch
    shared = generate_texts(model, tok, prompts, gen)
    plain = generate_texts(model, tok, prompts, gen, share_prefix=False)
    assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
    assert len({g.text for g in shared}) > 3
    # One prompt sampled several times (Magpie's requests): reproducible, and not all alike.
    sgen = GenerationConfig(max_new_tokens=10, batch_size=4, do_sample=True, seed=3)
    a = generate_texts(model, tok, prompts[:1] * 6, sgen)
    assert a == generate_texts(model, tok, prompts[:1] * 6, sgen)
    assert len({g.text for g in a}) > 1


def test_own_greedy_decoding_matches_transformers_generate(talky, monkeypatch):
    # Greedy answers leave the batch when they stop and big batches are prefilled in parts merged into
    # one cache; the tokens must be those of `transformers`' `generate`, row for row.
    import speechllm.textllm as textllm

    _, model, tok = talky
    prompts = three_questions_each(tok, 8)
    monkeypatch.setattr(textllm, "PREFILL_TOKENS", 200)  # several prefill parts per batch
    gen = GenerationConfig(max_new_tokens=12, batch_size=24)
    for share_prefix in (True, False):
        ours = generate_texts(model, tok, prompts, gen, share_prefix=share_prefix)
        reference = generate_texts(model, tok, prompts, gen, share_prefix=share_prefix, hf_generate=True)
        assert [g.token_ids for g in ours] == [g.token_ids for g in reference]
    lengths = {g.num_tokens for g in ours}
    assert any(g.truncated for g in ours) and any(not g.truncated for g in ours) and len(lengths) > 2
    # Sampling and repetition penalties stay with `generate`.
    assert textllm._own_greedy_fits(model, gen)
    assert not textllm._own_greedy_fits(model, GenerationConfig(do_sample=True))
    assert not textllm._own_greedy_fits(model, GenerationConfig(repetition_penalty=1.2))


def test_greedy_ids_are_the_argmax_of_their_own_scores(talky):
    # The drift check scores the base model's greedy answer under both models; generation and scoring
    # must agree on which positions hold the answer.
    from speechllm.textllm import answer_logprobs, generate_chat, greedy_chat

    _, model, tok = talky
    convs = [description_messages(r["description"], "Describe it.") for r in described_rows(4)]
    ids = [g.token_ids for g in greedy_chat(model, tok, convs, max_new_tokens=12, batch_size=4)]
    assert generate_chat(model, tok, convs, max_new_tokens=12, batch_size=4) == [
        tok.decode(a, skip_special_tokens=True).strip() for a in ids
    ]
    stops = set(stop_token_ids(tok))
    for answer, (logp, scored) in zip(ids, answer_logprobs(model, tok, convs, ids), strict=True):
        assert scored.tolist() == answer
        assert logp.argmax(-1).tolist() == answer
        assert len(answer) == 12 or (answer[-1] in stops and not stops & set(answer[:-1]))
    assert any(len(a) < 12 for a in ids)  # some answers end at a stop token


def test_self_output_targets_are_the_llms_greedy_answers(talky, reference):
    _, model, tok = talky
    rows = described_rows()
    out, ds = reference
    train_ids = sorted(r["clip_id"] for r in rows if r["split"] == "train")
    rejected = [r["clip_id"] for r in read_rejects(out)]
    assert sorted(list(ds["clip_id"]) + rejected) == train_ids
    assert len(ds) >= len(train_ids) - 2
    by_id = {r["clip_id"]: r for r in rows}
    for row in ds:
        assert row["target_mode"] == "self_output" and row["target_llm"]
        assert json.loads(row["target_generation"])["max_new_tokens"] == 12
        # The prompt is the chat-templated description + instruction ...
        assert by_id[row["clip_id"]]["description"] in row["target_prompt"]
        assert row["instruction"] in row["target_prompt"]
        assert row["target_prompt"] == chat_prompt(
            tok, description_messages(by_id[row["clip_id"]]["description"], row["instruction"])
        )
        # ... and the target is exactly what the LLM greedily generates for it, alone.
        ids = tok(row["target_prompt"], add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id)
        assert row["target"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        # The described columns travel along.
        assert row["label_gender"] == by_id[row["clip_id"]]["label_gender"]


def test_shards_together_give_each_row_once(talky, reference, tmp_path):
    _, model, tok = talky
    rows, cfg = described_rows(), target_config(CFG)
    full = reference[1]
    assert build_targets(rows, tmp_path / "sh", cfg, shard="0/2", model=model, tokenizer=tok) is None
    merged = build_targets(rows, tmp_path / "sh", cfg, shard="1/2", model=model, tokenizer=tok)
    assert sorted(merged["clip_id"]) == sorted(full["clip_id"])
    assert len(set(merged["clip_id"])) == len(merged)
    assert dict(zip(merged["clip_id"], merged["target"], strict=True)) == dict(
        zip(full["clip_id"], full["target"], strict=True)
    )


def test_kill_and_rerun_gives_the_same_rows(talky, reference, tmp_path):
    _, model, tok = talky
    rows, cfg = described_rows(), target_config(CFG)

    class Killed(Exception):
        pass

    calls = {"n": 0}
    real_call = TargetWriter.__call__

    def dying(self, chunk):
        calls["n"] += 1
        if calls["n"] == 3:  # die while the third chunk is in flight
            raise Killed
        return real_call(self, chunk)

    TargetWriter.__call__ = dying
    try:
        with pytest.raises(Killed):
            build_targets(rows, tmp_path / "k", cfg, model=model, tokenizer=tok)
    finally:
        TargetWriter.__call__ = real_call
    assert len(list((tmp_path / "k" / "_parts").iterdir())) == 2
    resumed = build_targets(rows, tmp_path / "k", cfg, model=model, tokenizer=tok)
    assert resumed.to_list() == reference[1].to_list()


def test_label_and_paraphrase_modes_share_columns(talky, tmp_path):
    _, model, tok = talky
    rows = described_rows(8)
    label = build_targets(rows, tmp_path / "label", target_config({**CFG, "mode": "label"}))
    row = label[0]
    assert (
        row["target"]
        == label_answer(rows[0])
        == ('Someone says: "Sentence number 0." The speaker is female. The pitch of the voice is low.')
    )
    assert row["target_prompt"] == "" and row["target_mode"] == "label"
    para = build_targets(
        rows, tmp_path / "para", target_config({**CFG, "mode": "paraphrase"}), model=model, tokenizer=tok
    )
    assert set(label.column_names) == set(para.column_names)
    for r in para:
        assert label_answer(next(x for x in rows if x["clip_id"] == r["clip_id"])) in r["target_prompt"]
    # No labels: label mode rejects the row with a reason instead of inventing an answer.
    bare = [{k: v for k, v in rows[0].items() if not k.startswith("label_")}]
    assert len(build_targets(bare, tmp_path / "bare", target_config({**CFG, "mode": "label"}))) == 0
    assert "no label_" in read_rejects(tmp_path / "bare")[0]["reason"]


def test_label_answers_say_what_the_instruction_asks():
    row = {
        "label_text": "Hello there.",
        "label_gender": "female",
        "label_pitch": "low",
        "label_speed": "fast",
    }
    assert label_answer(row, "Is the speaker a man or a woman?") == "The speaker is female."
    assert label_answer(row, "How fast does the speaker talk?") == "They speak at a fast pace."
    assert label_answer(row, "What words are spoken in this clip?") == 'Someone says: "Hello there."'
    # An open request gets every clause; a question about a label the row lacks gets nothing to train on.
    assert label_answer(row, "Describe the audio clip.") == label_answer(row)
    assert label_answer(row, "What accent does the speaker have?") is None
    # Every question of the `attributes` pool is answered by exactly the clause(s) it asks about.
    full = {**row, "label_accent": "irish", "label_volume": "loud"}
    for question in resolve_pool("attributes"):
        answer = label_answer(full, question)
        assert answer and answer != label_answer(full), question


def test_targets_are_redone_when_a_copied_column_changes(tmp_path):
    # Target rows carry the described audio path and split; a moved corpus or a clip moved to the test
    # split must not leave the old values behind (test audio would leak into training).
    rows = described_rows(4)
    cfg = target_config({**CFG, "mode": "label", "split": None})
    build_targets(rows, tmp_path / "t", cfg)
    rows[0] = {**rows[0], "audio_path": "/moved/clip000.wav", "split": "test"}
    again = build_targets(rows, tmp_path / "t", cfg)
    first = next(r for r in again if r["clip_id"] == "clip000")
    assert (first["audio_path"], first["split"]) == ("/moved/clip000.wav", "test")


def test_trim_to_sentence():
    assert trim_to_sentence('She says "hi." Then she') == 'She says "hi."'
    assert trim_to_sentence("no end here") == ""
    assert trim_to_sentence("Version 2.5 is out. And") == "Version 2.5 is out."


def test_run_targets_from_config(talky, tmp_path):
    """The prepare entry reads described/, writes targets/<mode>/ with stats, and skips when current."""
    from speechllm.data.stage import run_stage

    path, _, _ = talky
    data_dir = tmp_path / "data"
    rows = described_rows(8)
    run_stage(data_dir / "demo" / "described", {"t": 1}, rows, lambda c: __import__(
        "speechllm.data.stage", fromlist=["StageResult"]).StageResult(rows=c))  # fmt: skip
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(data_dir)},
            "data": {"name": "demo"},
            "seed": 0,
            "shard": "0/1",
            "target": {**CFG, "llm": path, "instructions": "desta25", "token_filter": {"enabled": True}},
        }
    )
    ds = run_targets(cfg)
    out = data_dir / "demo" / "targets" / "self_output"
    assert load_stage(out).to_list() == ds.to_list()
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["rows"] == len(ds) and 0.0 <= stats["masked_fraction"] <= 1.0
    assert all(len(r["keep_mask"]) == len(r["target_token_ids"]) for r in ds)
    assert set(ds["instruction"]) <= set(INSTRUCTION_POOLS["desta25"])


def test_vllm_backend_without_vllm_fails_clearly(tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    cfg = target_config({**CFG, "backend": "vllm"})
    with pytest.raises(RuntimeError, match="target.backend=vllm needs the `vllm` package"):
        build_targets(described_rows(2), tmp_path / "v", cfg)
