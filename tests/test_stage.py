"""The resumable, fingerprinted, sharded stage machinery every data-prep stage runs on."""

import json
import multiprocessing

import pytest

from speechllm.data.stage import StageResult, is_current, load_stage, read_rejects, run_stage

INPUTS = [{"clip_id": f"c{i:03d}", "value": i} for i in range(23)]


def square_or_reject(chunk):
    """Keeps even values squared; rejects odd ones with a reason."""
    result = StageResult()
    for row in chunk:
        if row["value"] % 2:
            result.rejects.append({"clip_id": row["clip_id"], "file": None, "reason": "odd value"})
        else:
            result.rows.append({"clip_id": row["clip_id"], "square": row["value"] ** 2})
    return result


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, chunk):
        self.calls += 1
        return square_or_reject(chunk)


def test_rows_and_rejects_add_up(tmp_path):
    ds = run_stage(tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=5)
    assert sorted(ds["clip_id"]) == [r["clip_id"] for r in INPUTS if r["value"] % 2 == 0]
    rejects = read_rejects(tmp_path / "s")
    assert len(ds) + len(rejects) == len(INPUTS)
    assert all(r["reason"] == "odd value" for r in rejects)
    assert is_current(tmp_path / "s", {"v": 1})
    assert not is_current(tmp_path / "s", {"v": 2})


def test_rerun_is_a_noop_and_config_change_reruns(tmp_path):
    counting = Counting()
    run_stage(tmp_path / "s", {"v": 1}, INPUTS, counting, chunk_size=5)
    assert counting.calls == 5
    run_stage(tmp_path / "s", {"v": 1}, INPUTS, counting, chunk_size=5)
    assert counting.calls == 5
    run_stage(tmp_path / "s", {"v": 2}, INPUTS, counting, chunk_size=5)
    assert counting.calls == 10


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    calls = {"n": 0}

    def dies_on_third_chunk(chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside the loop
        return square_or_reject(chunk)

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "s", {"v": 1}, INPUTS, dies_on_third_chunk, chunk_size=5)
    counting = Counting()
    ds = run_stage(tmp_path / "s", {"v": 1}, INPUTS, counting, chunk_size=5)
    assert counting.calls == 3  # the two finished chunks were not redone
    assert sorted(ds["clip_id"]) == sorted(set(ds["clip_id"]))
    assert len(ds) + len(read_rejects(tmp_path / "s")) == len(INPUTS)


def test_shards_split_the_work_and_the_last_one_merges(tmp_path):
    first = run_stage(tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=4, shard="0/2")
    assert first is None  # shard 1 has not run yet
    merged = run_stage(tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=4, shard="1/2")
    assert sorted(merged["clip_id"]) == sorted(r["clip_id"] for r in INPUTS if r["value"] % 2 == 0)
    assert load_stage(tmp_path / "s")["clip_id"] == merged["clip_id"]
    stats = json.loads((tmp_path / "s" / "_complete.json").read_text())
    assert stats["rows"] == 12 and stats["rejects"] == 11


def test_parallel_workers(tmp_path):
    ds = run_stage(tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=6, num_proc=2)
    assert len(ds) == 12
    assert multiprocessing.active_children() == []


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="duplicate clip_id"):
        run_stage(tmp_path / "s", {}, INPUTS + INPUTS[:1], square_or_reject)
    with pytest.raises(ValueError, match="shard"):
        run_stage(tmp_path / "s", {}, INPUTS, square_or_reject, shard="2/2")
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        load_stage(tmp_path / "nothing")


def test_stage_that_keeps_nothing(tmp_path):
    ds = run_stage(tmp_path / "s", {}, INPUTS[1:2], square_or_reject)
    assert len(ds) == 0 and len(read_rejects(tmp_path / "s")) == 1


def test_a_changed_input_value_reruns_not_just_a_changed_key(tmp_path):
    counting = Counting()
    run_stage(tmp_path / "s", {"v": 1}, INPUTS, counting, chunk_size=5)
    moved = [{**r, "value": r["value"] + 1} for r in INPUTS]  # same clip ids, other contents
    ds = run_stage(tmp_path / "s", {"v": 1}, moved, counting, chunk_size=5)
    assert counting.calls == 10
    assert sorted(ds["clip_id"]) == [r["clip_id"] for r in moved if r["value"] % 2 == 0]


def test_a_part_written_twice_keeps_the_first_copy(tmp_path):
    # Two processes running the same unsharded stage both finish chunk 0.
    from speechllm.data.stage import _part_dir, _write_part

    (tmp_path / "s").mkdir()
    _write_part(tmp_path / "s", 0, square_or_reject(INPUTS[:4]))
    _write_part(tmp_path / "s", 0, square_or_reject(INPUTS[:4]))
    parts = list(_part_dir(tmp_path / "s", 0).parent.iterdir())
    assert [p.name for p in parts] == [_part_dir(tmp_path / "s", 0).name]  # no temporary folder left


def test_a_merge_cut_by_a_full_disk_leaves_no_temporary_folder_and_is_named_unfinished(tmp_path, monkeypatch):
    import errno

    import datasets

    from speechllm.data.stage import settings_differences

    real_save = datasets.Dataset.save_to_disk

    def disk_full(self, path, **kwargs):
        real_save(self, path, **kwargs)
        if "_final.tmp-" in str(path):  # the merged copy went out, then the disk filled
            raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_stage(tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=5)
    assert list((tmp_path / "s").glob("_final.tmp-*")) == []
    assert settings_differences(tmp_path / "s", {"v": 1}) == [
        "not finished (no _complete.json: interrupted, or still running)"
    ]
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real_save)
    ds = run_stage(
        tmp_path / "s", {"v": 1}, INPUTS, square_or_reject, chunk_size=5
    )  # room again: it finishes
    assert len(ds) == 12 and settings_differences(tmp_path / "s", {"v": 1}) == []
