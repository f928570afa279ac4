import json

import pytest
from gendiv import data, runs
from gendiv.config import load_profile


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), runs.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    runs.write_text(target, "whole")
    assert target.read_text() == "whole"


def test_stage_is_cached_until_config_changes_or_forced(tmp_path):
    calls = []

    def body(root):
        calls.append(1)
        return {"thing": runs.write_text(root / "stage" / "thing.txt", "x")}

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    runs.run_stage(cfg, "data", body)
    runs.run_stage(cfg, "data", body)
    assert len(calls) == 1
    runs.run_stage(cfg, "data", body, force=True)
    assert len(calls) == 2
    other = load_profile("smoke", run_dir=str(tmp_path), **{"data.n_test": 3})
    runs.run_stage(other, "data", body)
    assert len(calls) == 3
    manifest = json.loads((tmp_path / "manifests" / "data.json").read_text())
    assert manifest["artifacts"] == {"thing": "stage/thing.txt"}
    assert {"config_hash", "wall_time_s", "versions", "device"} <= set(manifest)
    assert manifest["versions"]["gendiv"] != "not installed"


def test_missing_artifact_reruns_the_stage(tmp_path):
    calls = []

    def body(root):
        calls.append(1)
        return {"thing": runs.write_text(root / "thing.txt", "x")}

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    runs.run_stage(cfg, "data", body)
    (tmp_path / "thing.txt").unlink()
    runs.run_stage(cfg, "data", body)
    assert len(calls) == 2


def test_crashed_stage_leaves_no_manifest(tmp_path):
    def body(root):
        runs.write_text(root / "part.txt", "x")
        raise KeyboardInterrupt

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        runs.run_stage(cfg, "data", body)
    assert runs.load_manifest(cfg, "data") is None


def test_stage_run_before_its_inputs_names_what_to_run(tmp_path):
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    with pytest.raises(runs.StageMissingError,
                       match=r"Stage 'data' has not been run for profile 'smoke'.*01_data_splits.*--stages 01"):
        data.load_split(cfg, "id", "test")


def _running_parts(tmp_path, monkeypatch, n: int):
    """The folder of parts running under ``gendiv run`` (RUNNING_PARTS), with ``n`` parts in it."""
    running = tmp_path / "parts"
    running.mkdir()
    for i in range(n):
        (running / str(i)).touch()
    monkeypatch.setenv(runs.RUNNING_PARTS, str(running))
    return running


def _job(tag: str, out: str, fail: bool = False):
    """A side_by_side job: what process ran it, how many threads it had, and when (a file says it finished)."""
    import os
    import pathlib
    import time

    import torch
    start = time.time()
    pathlib.Path(out, f"{tag}.started").touch()
    print(f"job {tag} says hello")
    time.sleep(1.0)
    if fail:
        raise ValueError(f"job {tag} broke")
    pathlib.Path(out, tag).write_text("done")
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "start": start, "end": time.time()}


def test_side_by_side_runs_jobs_at_once_in_processes_of_their_own(tmp_path):
    import functools
    import os
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    jobs = {name: functools.partial(_job, name, str(tmp_path)) for name in ("b", "a", "c")}
    out = runs.side_by_side(cfg, jobs, threads=2)
    assert list(out) == ["b", "a", "c"]  # by name, in the jobs' order
    assert len({r["pid"] for r in out.values()} | {os.getpid()}) == 4  # each its own process
    assert {r["threads"] for r in out.values()} == {1}  # 3 jobs on 2 threads: all at once, one each
    assert max(r["start"] for r in out.values()) < min(r["end"] for r in out.values())  # all at once
    assert "job a says hello" in (runs.run_dir(cfg) / "logs" / "side_by_side" / "a.log").read_text()
    two = runs.side_by_side(cfg, {k: jobs[k] for k in ("a", "b")}, threads=4)
    assert {r["threads"] for r in two.values()} == {2}  # 4 threads, 2 jobs: two each
    many = runs.side_by_side(cfg, {str(i): functools.partial(_job, str(i), str(tmp_path)) for i in range(5)}, threads=2)
    assert len({r["pid"] for r in many.values()}) <= 4  # at most two jobs a thread at once


def _freeing_job(tag: str, out: str, part: str, others: str):
    """A side_by_side job that, once started, looks for five seconds whether any job of ``others``
    starts beside it (``alone``: none did), then marks another part of the book as finished
    (removes its file from the running parts' folder) and works until the jobs of ``others`` have
    started (or two minutes have passed)."""
    import pathlib
    import time

    def started(o):
        return pathlib.Path(out, f"{o}.started").exists()
    time.sleep(5.0)
    alone = not any(started(o) for o in others)
    freed = time.time()
    pathlib.Path(part).unlink()
    deadline = freed + 120
    while time.time() < deadline and not all(started(o) for o in others):
        time.sleep(0.1)
    return {**_job(tag, out), "freed": freed, "alone": alone}


def test_a_part_beside_another_starts_more_jobs_once_the_other_finishes(tmp_path, monkeypatch):
    """Two parts on two cores: this one has a thread, so its jobs start one at a time, in a worker
    process; once the other part finishes (during job a), the freed core starts the rest at once,
    before a has finished."""
    import functools
    import os
    running = _running_parts(tmp_path, monkeypatch, 2)
    monkeypatch.setattr(runs.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runs, "PART_POLL_S", 0.1)
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    jobs = {"a": functools.partial(_freeing_job, "a", str(tmp_path), str(running / "1"), "bc"),
            "b": functools.partial(_job, "b", str(tmp_path)), "c": functools.partial(_job, "c", str(tmp_path))}
    out = runs.side_by_side(cfg, jobs)
    assert os.getpid() not in {r["pid"] for r in out.values()}  # in worker processes, not in turn here
    assert out["a"]["alone"] and min(out["b"]["start"], out["c"]["start"]) >= out["a"]["freed"]  # one at a time
    assert max(out["b"]["start"], out["c"]["start"]) < out["a"]["end"] - 1  # then the rest at once
    assert {r["threads"] for r in out.values()} == {1}
    # not a part beside others: one thread runs the jobs here, in turn, as before
    monkeypatch.delenv(runs.RUNNING_PARTS)
    monkeypatch.setattr(runs, "cores_now", lambda cores=None: 1)
    alone = runs.side_by_side(cfg, {n: functools.partial(_job, n, str(tmp_path)) for n in "de"})
    assert {r["pid"] for r in alone.values()} == {os.getpid()}


def test_side_by_side_on_one_thread_runs_here_in_turn(tmp_path):
    import functools
    import os
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    out = runs.side_by_side(cfg, {n: functools.partial(_job, n, str(tmp_path)) for n in "ab"}, threads=1)
    assert {r["pid"] for r in out.values()} == {os.getpid()}
    assert out["a"]["end"] <= out["b"]["start"]


def test_a_job_that_fails_spares_the_others_and_is_named(tmp_path):
    import functools
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    jobs = {"good": functools.partial(_job, "good", str(tmp_path)),
            "bad": functools.partial(_job, "bad", str(tmp_path), fail=True)}
    with pytest.raises(RuntimeError, match=r"1 of 2 jobs.*\(bad\).*job bad broke.*bad\.log"):
        runs.side_by_side(cfg, jobs, threads=2)
    assert (tmp_path / "good").read_text() == "done"  # the other finished and kept its work


def test_side_by_side_starts_a_job_once_those_it_waits_for_finished(tmp_path):
    """c waits for a and b, d for c: a and b at once on a thread each; c alone after both, on both
    threads; d after c. Given out of order, they still run in an order the waits allow."""
    import functools
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    jobs = {n: functools.partial(_job, n, str(tmp_path)) for n in "dcab"}
    after = {"c": ("a", "b"), "d": ("c",), "a": ("not a job",)}
    out = runs.side_by_side(cfg, jobs, threads=2, after=after)
    assert list(out) == list("dcab")
    assert max(out["a"]["start"], out["b"]["start"]) < min(out["a"]["end"], out["b"]["end"])  # at once
    assert out["c"]["start"] >= max(out["a"]["end"], out["b"]["end"]) and out["d"]["start"] >= out["c"]["end"]
    assert (out["a"]["threads"], out["b"]["threads"], out["c"]["threads"]) == (1, 1, 2)
    here = runs.side_by_side(cfg, jobs, threads=1, after=after)  # in turn here, in an order the waits allow
    assert here["a"]["end"] <= here["c"]["start"] and here["b"]["end"] <= here["c"]["start"] <= here["d"]["start"]
    with pytest.raises(ValueError, match="wait for each other: d -> c -> d"):
        runs.side_by_side(cfg, jobs, threads=2, after={"c": ("d",), "d": ("c",)})


def _growing_job(out: str):
    """A side_by_side job that looks at the threads the scheduler gives it (as a stage's loops do at
    each batch) until it has two, or 20 seconds have passed; returns the threads it had."""
    import pathlib
    import time

    import torch

    from gendiv import runs
    seen = [torch.get_num_threads()]
    pathlib.Path(out, "grow.started").touch()
    deadline = time.time() + 20
    while time.time() < deadline and seen[-1] < 2:
        time.sleep(0.1)
        runs.take_cores_now()
        seen.append(torch.get_num_threads())
    return seen


def test_the_threads_of_a_job_that_finished_go_to_the_one_still_running(tmp_path):
    import functools
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    out = runs.side_by_side(cfg, {"short": functools.partial(_job, "short", str(tmp_path)),
                                  "long": functools.partial(_growing_job, str(tmp_path))}, threads=2)
    assert out["short"]["threads"] == 1 and out["long"][0] == 1 and out["long"][-1] == 2


def test_a_job_waiting_for_one_that_failed_does_not_run(tmp_path):
    import functools
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    jobs = {"bad": functools.partial(_job, "bad", str(tmp_path), fail=True),
            "next": functools.partial(_job, "next", str(tmp_path)),
            "other": functools.partial(_job, "other", str(tmp_path))}
    with pytest.raises(RuntimeError, match=r"2 of 3 jobs.*\(bad, next\)"):
        runs.side_by_side(cfg, jobs, threads=2, after={"next": ("bad",)})
    assert not (tmp_path / "next.started").exists() and (tmp_path / "other").read_text() == "done"


def test_a_stage_run_ahead_reads_only_what_it_waits_for(tmp_path):
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    runs.run_stage(cfg, "data", lambda root: {"x": runs.write_text(root / "x.txt", "x")})
    with runs.reading_only({"sft", "data"}):
        assert runs.artifact(cfg, "data", "x").read_text() == "x"
        with pytest.raises(RuntimeError, match="read stage 'base'.*only data, sft.*Stage.after"):
            runs.require_stage(cfg, "base")
    with pytest.raises(runs.StageMissingError):  # outside: the usual message
        runs.require_stage(cfg, "base")


def test_cores_now_is_the_part_share_of_the_cores(tmp_path, monkeypatch):
    running = _running_parts(tmp_path, monkeypatch, 2)
    assert runs.cores_now(cores=8) == 4
    (running / "1").unlink()
    assert runs.cores_now(cores=8) == 8  # the other part finished: every core


def test_a_stage_takes_the_cores_another_part_freed(tmp_path, monkeypatch):
    import torch
    running = _running_parts(tmp_path, monkeypatch, 2)
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"))
    before = torch.get_num_threads()
    seen = []

    def body(root):
        seen.append(torch.get_num_threads())
        return {}
    try:
        torch.set_num_threads(1)
        (running / "1").unlink()  # the other part finished while this one was in a notebook
        runs.run_stage(cfg, "data", body)
        assert seen == [runs.part_threads(1)]  # every core, from this stage on
    finally:
        torch.set_num_threads(before)


def test_a_loop_takes_freed_cores_at_most_every_poll(tmp_path, monkeypatch):
    """take_freed_cores (called at each batch of sampling, RM scoring and training steps): the part's
    share of the cores now, looked at no more often than every PART_POLL_S seconds."""
    import torch
    running = _running_parts(tmp_path, monkeypatch, 2)
    monkeypatch.setattr(runs.os, "cpu_count", lambda: 2)
    clock = [1000.0]
    monkeypatch.setattr(runs.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(runs, "_last_look", 0.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runs.take_freed_cores()
        assert torch.get_num_threads() == 1  # two parts on two cores: one each
        (running / "1").unlink()  # the other part finished
        clock[0] += runs.PART_POLL_S / 2
        runs.take_freed_cores()
        assert torch.get_num_threads() == 1  # not looked again yet
        clock[0] += runs.PART_POLL_S / 2
        runs.take_freed_cores()
        assert torch.get_num_threads() == 2  # every core, in the middle of the stage
    finally:
        torch.set_num_threads(before)


def _threads_job(out: str, tag: str, other: str):
    """A side_by_side job that does what each stage does first (take the part's cores now) while
    the job ``other`` runs beside it (each waits for the other to start, then to have looked)."""
    import pathlib
    import time

    import torch

    from gendiv import runs as r

    def wait_for(name):
        deadline = time.time() + 60
        while not pathlib.Path(out, name).exists() and time.time() < deadline:
            time.sleep(0.05)
    pathlib.Path(out, f"{tag}.started").touch()
    wait_for(f"{other}.started")
    r.take_cores_now()
    r.take_freed_cores()
    threads = torch.get_num_threads()
    pathlib.Path(out, f"{tag}.looked").touch()
    wait_for(f"{other}.looked")
    return threads


def test_a_job_beside_others_keeps_the_threads_it_was_given(tmp_path, monkeypatch):
    """Jobs run side by side keep the scheduler's threads even when their stage looks at the running
    parts: two jobs on a thread each must not each take every core the part has."""
    import os
    _running_parts(tmp_path, monkeypatch, 1)  # the last part running: its share is every core of the machine
    cfg = load_profile("smoke", run_dir=str(tmp_path / "run"), model={"device": "cpu"})
    import functools
    out = runs.side_by_side(cfg, {"a": functools.partial(_threads_job, str(tmp_path), "a", "b"),
                                  "b": functools.partial(_threads_job, str(tmp_path), "b", "a")}, threads=2)
    assert out == {"a": 1, "b": 1}, f"{os.cpu_count()} cores"


def test_the_elapsed_time_of_stages_that_overlapped_is_less_than_their_sum():
    import pandas as pd
    # a: 10:00:00-10:00:10; b, beside it from 10:00:05, to 10:00:15: 15 s elapsed, 20 s of stages
    times = pd.DataFrame({"wall_time_s": [10.0, 10.0],
                          "finished_at": ["2026-12-07 10:00:10", "2026-12-07 10:00:15"]})
    assert runs.elapsed_s(times) == 15.0 and times["wall_time_s"].sum() == 20.0
    assert runs.elapsed_s(times.iloc[:0]) == 0.0
