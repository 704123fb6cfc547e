"""Evaluation pieces that need no model: answer parsing, format checkers, unseen questions, reports."""

import json
import math
import re

import pytest

from speechllm import parsing, safety
from speechllm.data.instructions import all_training_instructions
from speechllm.eval import plane, report, retention, tasks

G = ("female", "male")
P = ("high", "low", "normal")
S = ("fast", "normal", "slow")


@pytest.mark.parametrize(
    "answer,classes,task,expected",
    [
        ("The speaker is a woman.", G, "gender", "female"),  # "woman" contains "man"
        ("female", G, "gender", "female"),  # "female" contains "male"
        ("It sounds like a man talking.", G, "gender", "male"),
        ("The voice is not male.", G, "gender", "female"),  # negation in a 2-class task
        ("The speaker isn't a man", G, "gender", "female"),
        ("Definitely a lady.", G, "gender", "female"),  # synonym
        ("A girl, I think.", G, "gender", "female"),
        ("The speaker is female, not male.", G, "gender", "female"),
        ("Male or female? I'd say male.", G, "gender", "male"),  # echoed options assert nothing
        ("Is it a man or a woman? Hard to say.", G, "gender", None),
        ("She speaks calmly.", G, "gender", "female"),  # pronoun only as weak evidence
        ("He says the woman left.", G, "gender", "female"),  # a class word beats a pronoun
        ("I cannot determine that.", G, "gender", None),
        ("", G, "gender", None),
        ("The pitch is neither high nor low.", P, "pitch", "normal"),  # negation leaves one class
        ("Not high.", P, "pitch", None),  # two classes left: no answer
        ("A high-pitched voice.", P, "pitch", "high"),  # hyphen is a boundary
        ("They speak slowly.", P, "pitch", None),  # "slowly" is not "low"
        ("A deep voice, lower than normal.", P, "pitch", "low"),  # first asserted mention wins
        ("Between high and low, I'd say low.", P, "pitch", "low"),
        ("How would you rate the pitch: high, low or normal?", P, "pitch", None),  # the question echoed
        ("It is low, normal, or high.", P, "pitch", None),
        ("male/female", G, "gender", None),  # a hedge, not an answer
        ("The speaker is female, and male speakers usually sound deeper.", G, "gender", "female"),
        ("The recording is a bit unclear but the speaker is clearly male.", G, "gender", "male"),
        ("The talker speaks at a quick and steady pace.", S, "speed", "fast"),  # a description, not a list
        ("It is fast, normal and slow.", S, "speed", None),  # three options: a list even without "or"
        (
            "The speaker sounds like a teenage girl.",
            ("child", "teen", "young", "adult", "senior"),
            "age",
            "teen",
        ),
        ("I can't tell if it's a man.", G, "gender", None),
        ("Hard to tell, but it sounds like a man.", G, "gender", "male"),  # the hedge is its own clause
        ("A deep, low voice.", P, "pitch", "low"),  # two words for one class are not a list
        ("The talker is quick.", S, "speed", "fast"),
        ("The pace is rapid.", S, "speed", "fast"),
        ("They had breakfast slowly.", S, "speed", "slow"),  # "breakfast" is not "fast"
        ("Average speed.", S, "speed", "normal"),
        ("The speaker has a Welsh accent.", ("scottish", "welsh"), "accent", "welsh"),  # unknown class
        (
            "An American, British, Caribbean or Scottish accent.",
            ("american", "british", "caribbean", "scottish"),
            "accent",
            None,
        ),  # fmt: skip
        (
            "The speaker speaks English with an American accent.",
            ("american", "british"),
            "accent",
            "american",
        ),
    ],
)
def test_parse_label(answer, classes, task, expected):
    assert parsing.parse_label(answer, task, classes) == expected


def test_several_labels_first_asserted_wins_even_if_counted_less():
    answer = "Fast. Although some parts are slow, and slow again, it is mostly fast."
    assert parsing.parse_label(answer, "speed", S) == "fast"
    assert parsing.parse_label("slow, then fast, fast, fast", "speed", S) == "slow"


def test_extract_transcript_and_wer():
    assert parsing.extract_transcript('The speaker says: "Turn the lights off."') == "Turn the lights off."
    assert parsing.extract_transcript("The speaker said turn the lights off") == "turn the lights off"
    assert parsing.extract_transcript("turn the lights off") == "turn the lights off"
    assert parsing.word_error_rate(["Turn the lights off."], ["turn the lights off"]) == 0.0
    assert parsing.word_error_rate(["turn the lights off"], ["turn lights off"]) == pytest.approx(0.25)
    assert parsing.word_error_rate(["a b c d"], [""]) == pytest.approx(1.0)  # empty answer: all deleted


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9{} ]", " ", s.lower()).split())


def test_unseen_questions_disjoint_from_training_instructions():
    training = {_norm(s) for s in all_training_instructions()}
    assert training, "the training instruction set must not be empty"
    unseen = tasks.all_unseen_questions() | set(retention.FORMAT_REQUESTS)
    unseen |= {
        retention.format_prompt(r, c) for r in retention.FORMAT_REQUESTS for c in retention.FORMAT_CONSTRAINTS
    }
    clash = [q for q in unseen if _norm(q) in training]
    assert not clash, f"evaluation questions that training uses: {clash}"
    # Also with options filled in, as actually asked.
    for task, qs in tasks.unseen_questions().items():
        assert len(qs) >= 3, task
        for q in qs:
            assert _norm(q.replace("{options}", "a or b")) not in training

    # Nor a near-copy (one word swapped in a six-word sentence shares 5/7 of the words): "unseen" means a
    # new phrasing, not a reworded template. Today's closest pairs share 0.55 (word-set Jaccard).
    def words(text: str) -> set[str]:
        return set(_norm(text.replace("{options}", "")).split())

    for q in tasks.all_unseen_questions():
        for t in training:
            overlap = len(words(q) & words(t)) / len(words(q) | words(t))
            assert overlap <= 0.6, (q, t, overlap)


def test_select_tasks_and_build_items():
    rows = [
        {"clip_id": "a", "label_gender": "Female", "label_pitch": "high", "label_text": "hello there"},
        {"clip_id": "b", "label_gender": "male", "label_pitch": "high", "label_text": "good bye"},
        {"clip_id": "c", "label_gender": "male", "label_pitch": "high", "label_text": ""},
    ]
    ts, skipped = tasks.select_tasks(list(rows[0]))
    assert {t.name for t in ts} == {"gender", "pitch", "content"}
    assert skipped["accent"] == "no label_accent column" and "emotion" in skipped and "age" in skipped
    items, dropped = tasks.build_items(rows, ts, questions_per_task=2, seed=0)
    assert "pitch" in dropped and "1 distinct" in dropped["pitch"]  # a single class cannot be scored
    gender = [it for it in items if it.task == "gender"]
    assert len(gender) == 6 and {it.gold for it in gender} == {"female", "male"}
    assert all("{options}" not in it.question for it in items)
    assert len([it for it in items if it.task == "content"]) == 4  # the empty transcript is left out
    with pytest.raises(ValueError, match="unknown eval task"):
        tasks.select_tasks(["label_gender"], ["gendr"])


def test_chance_level():
    assert tasks.chance_level(["a", "a", "a", "b"], ("a", "b")) == (0.75, 0.5)


# ----- format checkers: each on a passing and a failing answer ----------------------------------

CASES = {
    "json_keys": ('```json\n{"gender": "female", "summary": "hi"}\n```', '{"gender": "female"}'),
    "lowercase": ("a woman says hello.", "A woman says hello."),
    "uppercase": ("A WOMAN SAYS HELLO.", "A WOMAN says hello."),
    "max_words": ("A woman says hello.", " ".join(["word"] * 13)),
    "starts_with": ('"In this clip, a man speaks."', "A man speaks in this clip."),
    "ends_with": ("A man speaks. That is all.", "That is all. A man speaks."),
    "bullets": ("- a\n- b\n* c", "- a\n- b"),
    "no_commas": ("A man speaks slowly.", "A man, slowly, speaks."),
    "include_word": ("Her voice is soft.", "She speaks with voices."),
    "quoted": ('"A man speaks."', 'A man "speaks".'),
    "one_sentence": ("A man speaks slowly.", "A man speaks. He is slow."),
    "starts_with_speaker": ("The speaker is a man.", "A man is the speaker."),
    "starts_with_yes": ("Yes, a man speaks.", "A man speaks, yes."),
}


def test_at_least_eight_constraint_types():
    names = [c.name for c in retention.FORMAT_CONSTRAINTS]
    assert len(set(names)) >= 8 and len(names) == len(set(names))
    assert set(names) == set(CASES)


@pytest.mark.parametrize("constraint", retention.FORMAT_CONSTRAINTS, ids=lambda c: c.name)
def test_format_checker(constraint):
    good, bad = CASES[constraint.name]
    assert constraint.check(good), good
    assert not constraint.check(bad), bad
    assert not constraint.check(""), "an empty answer never passes"


def test_format_rate_and_delta():
    c = {x.name: x for x in retention.FORMAT_CONSTRAINTS}
    r = retention.format_rate(["abc", "ABC"], [c["lowercase"], c["lowercase"]])
    assert r == {"rate": 0.5, "n": 2, "by_constraint": {"lowercase": 0.5}}
    assert retention.forgetting_delta(0.45, 0.9, 20) == pytest.approx(-0.5)
    assert retention.forgetting_delta(0.0, 0.0, 20) == 0.0
    assert retention.forgetting_delta(0.1, 0.0, 20) == pytest.approx(2.0)  # finite: against 1 success


def test_the_evaluation_scores_refusals_with_the_matcher_safety_replay_keeps_them_by():
    assert retention.is_refusal is safety.is_refusal
    assert retention.is_refusal("I'm sorry, but I can't help with that.")
    assert retention.is_refusal("I cannot provide instructions for this.")
    assert not retention.is_refusal("Use `kill -9 PID` to stop the process.")


def _fake_report(target: float, speech: float) -> dict:
    r = {
        "checkpoint": "ckpt",
        "meta": {"data": "demo", "n_clips": 4},
        "unseen": {
            "gender": {"accuracy": target, "chance": 0.5, "chance_uniform": 0.5, "n": 4},
            "content": {"accuracy": 0.8, "wer": 0.2, "chance": 0.0, "chance_uniform": 0.0, "n": 4},
        },
        "ceiling": {"gender": {"accuracy": 1.0, "n": 4}, "content": {"accuracy": 0.9, "n": 4}},
        "agreement": {"gender": 0.75, "content": 0.7},
        "baseline": {"gender": {"accuracy": 0.5, "n": 4}, "content": {"accuracy": 0.0, "n": 4}},
        "retention": {
            "format": {
                "speech": speech,
                "text": 0.8,
                "delta": speech / 0.8 - 1,
                "baseline": 0.1,
                "n": 10,
                "by_constraint_speech": {"lowercase": speech},
                "by_constraint_text": {"lowercase": 0.8},
            }
        },
        "summary": {
            "target_score": target,
            "learned": target,
            "retention": speech / 0.8,
            "baseline_learned": 0.5,
            "baseline_retention": 0.125,
        },
        "skipped": {"accent": "no label_accent column"},
        "samples": [
            {
                "task": "gender",
                "question": "Q?",
                "gold": "female",
                "speech": "A | woman",
                "text": "female",
                "baseline": "?",
            }
        ],
    }
    return r


def test_write_report_and_plane(tmp_path, capsys):
    runs = []
    for i, (t, s) in enumerate([(0.6, 0.7), (0.9, 0.4)]):
        d = tmp_path / f"run{i}"
        out = report.write_report(_fake_report(t, s), str(d))
        assert json.loads((d / "report.json").read_text())["unseen"]["gender"]["accuracy"] == t
        md = (d / "report.md").read_text()
        assert "| gender | 4 |" in md and "accent" in md and "A \\| woman" in md
        assert all(p.endswith(".png") and (d / p.split("/")[-1]).stat().st_size > 1000 for p in out["plots"])
        runs.append(str(d))
    assert plane.plane_points(_fake_report(0.6, 0.7))["y"] == pytest.approx(0.875)
    png = tmp_path / "plane.png"
    assert plane.main(runs + ["-o", str(png)]) == 0 and png.stat().st_size > 1000
    assert "retention=0.875" in capsys.readouterr().out
    assert plane.main([str(tmp_path / "missing")]) == 2
    assert "no report.json" in capsys.readouterr().err
    assert not math.isnan(plane.plane_points({})["x"])


def test_subsample_is_seeded_spread_and_ordered():
    from speechllm.data.described import subsample

    rows = [{"clip_id": f"{i:03d}"} for i in range(100)]
    a, b = subsample(rows, 10, seed=0), subsample(rows, 10, seed=0)
    assert a == b and len(a) == 10 and a == sorted(a, key=lambda r: r["clip_id"])
    assert a != rows[:10]  # not the first N (corpora are often ordered by voice)
    assert subsample(rows, None) == rows and subsample(rows[:3], 10) == rows[:3]


def test_agreement_gives_no_credit_for_missing_answers():
    from speechllm.eval.scoring import agreement

    items = [tasks.Item(i, "content", "What was said?", "open the door", ()) for i in range(2)]
    items += [tasks.Item(i, "gender", "Man or woman?", "male", G) for i in range(2)]
    speech = ["open the door", "banana", "male", None]
    # The ceiling gave no transcript for the second clip and no label for the second gender item.
    ceiling = ["open the door", "", "male", None]
    assert agreement(items, speech, ceiling) == {"content": 0.5, "gender": 0.5}


def test_target_score_averages_the_attribute_tasks_only():
    from speechllm.eval.scoring import target_score

    scores = {
        "gender": {"accuracy": 0.0},
        "pitch": {"accuracy": 0.5},
        "content": {"accuracy": 1.0, "wer": 0.0},
    }
    assert target_score(scores) == 0.25
    assert target_score({"content": {"accuracy": 0.8, "wer": 0.2}}) == 0.8


def test_clip_interval_resamples_clips_and_narrows_with_more_of_them():
    # 3 questions per clip; a model right on 80% of the clips, for all of a clip's questions at once.
    def answers(n_clips):
        golds = [G[c % 2] for c in range(n_clips) for _ in range(3)]
        preds = [g if (i // 3) % 5 else G[1 - G.index(g)] for i, g in enumerate(golds)]
        return golds, preds, [i // 3 for i in range(len(golds))]

    golds, preds, clips = answers(40)
    small = tasks.clip_interval(golds, preds, G, clips)
    lo, hi = small["balanced_accuracy_ci"]
    assert lo < tasks.balanced_accuracy(golds, preds, G) < hi and 0.6 < lo and hi < 0.95
    assert small == tasks.clip_interval(golds, preds, G, clips)  # seeded: the same interval every time
    # Counted as 120 independent answers, the interval would be narrower than resampling 40 clips gives.
    flat = tasks.clip_interval(golds, preds, G, list(range(len(golds))))
    assert flat["accuracy_ci"][1] - flat["accuracy_ci"][0] < hi - lo
    big = tasks.clip_interval(*answers(400)[:2], G, answers(400)[2])
    assert big["accuracy_ci"][1] - big["accuracy_ci"][0] < (hi - lo) / 2
    # One class for every answer: balanced accuracy is exactly chance in every resample.
    assert tasks.clip_interval(golds, ["male"] * len(golds), G, clips)["balanced_accuracy_ci"] == [0.5, 0.5]
