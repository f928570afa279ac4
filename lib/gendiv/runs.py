"""Run folders, stage manifests, cache checks and atomic writes.

Layout of ``runs/<profile>/``::

    config.yaml            the resolved config of the latest stage run
    manifests/<stage>.json config hash, artifacts, package versions, wall time, device
    data/ ...              artifacts of each stage, in a folder named after it
    results/*.csv          the results contract (see the book's protocol page), read by the book
    figures/*.png, *.csv   figures and the tidy data behind each

A stage is finished when its manifest exists, its config hash matches and every artifact it
lists exists. Artifacts are written to a temporary name and renamed, so an interrupted run never
leaves a half-written file that looks complete; rerunning continues from the last finished stage.

Under a launcher (``accelerate launch``, torchrun: ``RANK`` and ``WORLD_SIZE`` in the environment)
every process runs the same stage, and only the main process writes: the writers below, model
checkpoints (:func:`gendiv.models.save_pretrained_atomic`, which then waits for every process)
and the manifest.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from html import escape
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gendiv import stages
from gendiv.config import Config, ConfigError, describe, differences, load_profile

def notebook_for(stage: str) -> str | None:
    """The notebook that runs ``stage`` (from the table of stages), or None for an unknown name."""
    try:
        return stages.stage(stage).notebook
    except KeyError:
        return None


VERSIONED_PACKAGES = ("gendiv", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                      "sentence-transformers", "numpy", "pandas")


class StageMissingError(RuntimeError):
    """A stage needs the artifacts of an earlier stage that has not been run."""


def project_root() -> Path:
    """The repository root: the nearest parent of the working directory holding ``notebooks/``
    and ``lib/gendiv`` (so notebooks run from ``notebooks/`` or ``book/notebooks/`` share runs/)."""
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "lib" / "gendiv").is_dir() and (p / "notebooks").is_dir():
            return p
    return here


def run_dir(cfg: Config) -> Path:
    """The run folder of ``cfg``: ``cfg.run_dir`` or ``<project root>/runs/<profile>``."""
    path = Path(cfg.run_dir) if cfg.run_dir else project_root() / "runs" / cfg.profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(cfg: Config) -> Path:
    path = run_dir(cfg) / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(cfg: Config) -> Path:
    path = run_dir(cfg) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ processes
def process_rank() -> int:
    """This process's global rank under a launcher (``RANK``, set by accelerate launch and
    torchrun), 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes of the launch (``WORLD_SIZE``), 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank() == 0


def per_process(batch_size: int, key: str) -> int:
    """A profile's batch size is global (the rows of one optimiser step, whatever the number of
    processes, as PPO's sizes); TRL's trainers take a per-device size: this is its share. A
    ConfigError names the fix when it does not divide."""
    n = world_size()
    if batch_size % n:
        raise ConfigError(f"{key} ({batch_size}) must divide by the {n} processes of this launch (the sizes are "
                          f"global); set it to a multiple of {n}.")
    return batch_size // n


def barrier() -> None:
    """Wait for every process of the launch (a no-op in one process, or before the process group
    exists: the trainers create it)."""
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


# ------------------------------------------------------------------ cores
RUNNING_PARTS = "GENDIV_RUNNING_PARTS"
"""Environment variable that ``gendiv run`` with several parts (:func:`gendiv.cli.run_parts`) sets
for them: a folder holding a file per part still running, so each part takes its share of the
cores (:func:`threads_for_next_notebook`, :func:`cores_now`)."""


def part_threads(n_parts: int, cores: int | None = None) -> int:
    """Torch threads for each of ``n_parts`` parts run side by side: the cores shared out, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, n_parts))


def threads_for_next_notebook(cores: int | None = None) -> int | None:
    """Under ``gendiv run`` with several parts, this part's threads now: the cores shared among the
    parts still running (so the last part running gets every core); None when not run as a part."""
    folder = os.environ.get(RUNNING_PARTS)
    if not folder or not Path(folder).is_dir():
        return None
    return part_threads(max(1, len(list(Path(folder).iterdir()))), cores)


def cores_now(cores: int | None = None) -> int:
    """The CPU threads this process may use now: its part's share of the cores when parts run side
    by side, else torch's own thread count (``OMP_NUM_THREADS``, or the machine's cores)."""
    shared = threads_for_next_notebook(cores)
    return shared if shared is not None else torch.get_num_threads()


JOB_THREADS = "GENDIV_JOB_THREADS"
"""Environment variable of a job of :func:`side_by_side` in its worker: a file holding the threads
the scheduler gives the job now (more when the jobs beside it finish)."""


def _job_threads() -> int | None:
    """The threads :func:`side_by_side` gives this job now; None outside its jobs."""
    path = os.environ.get(JOB_THREADS)
    if not path:
        return None
    try:
        return max(1, int(Path(path).read_text()))
    except (OSError, ValueError):  # being replaced: look again next time
        return None


def take_cores_now() -> None:
    """When parts run side by side, set torch's threads to this part's share of the cores now
    (:func:`threads_for_next_notebook`): each stage that runs calls it first, so a part takes the
    cores another part freed at its next stage, not only at its next notebook. In a job of
    :func:`side_by_side`, the threads the scheduler gives it now (:data:`JOB_THREADS`)."""
    shared = _job_threads() if os.environ.get(JOB_THREADS) else threads_for_next_notebook()
    if shared is not None and shared != torch.get_num_threads():
        torch.set_num_threads(shared)


_last_look = 0.0


def take_freed_cores() -> None:
    """:func:`take_cores_now` at most every ``PART_POLL_S`` seconds: long loops (sampling, RM
    scoring, training steps) call it at each batch, so a part takes the cores another part freed in
    the middle of a stage (in the book of 14c09cb the summarisation part's diversity stage, about six
    minutes, could start on one thread just before the instruction part finished). Inside a job of
    :func:`side_by_side`, the job takes the threads the jobs beside it freed."""
    global _last_look
    now = time.monotonic()
    if now - _last_look >= PART_POLL_S:
        _last_look = now
        take_cores_now()


def _side_job(job: Callable[[], Any], log: str, threads: int, threads_file: str) -> tuple[Any, float]:
    """One job of :func:`side_by_side` in its worker process: ``threads`` torch threads to start
    with, then what ``threads_file`` says (:data:`JOB_THREADS`), its output into ``log``; returns
    (what the job returned, its seconds). The job does not look at the running parts: two jobs on a
    thread each would otherwise take the whole part's share each once the other part has finished,
    twice the cores there are; the scheduler shares the part's threads out among its jobs."""
    os.environ.pop(RUNNING_PARTS, None)
    os.environ[JOB_THREADS] = threads_file
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with open(log, "w", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        result = job()
    return result, time.perf_counter() - start


def in_processes(cfg: Config, threads: int | None = None, growing: bool | None = None) -> bool:
    """Whether :func:`side_by_side` runs its jobs in processes of their own now (``threads``: the
    threads it is given; default this part's): on a CPU, not under a launcher, with two threads
    or more, or with one in a part run beside others (``growing``: it gets more when they finish;
    found out here if not given)."""
    gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
    if growing is None:
        growing = threads is None and threads_for_next_notebook() is not None
    return not gpu and world_size() == 1 and ((threads or cores_now()) > 1 or growing)


_reads: frozenset[str] | None = None


@contextlib.contextmanager
def reading_only(names) -> Iterator[None]:
    """Within it, :func:`require_stage` (every read of a stage's artifacts) refuses stages other
    than ``names``: a stage run ahead of its notebook reads only what it waits for."""
    global _reads
    before, _reads = _reads, frozenset(names)
    try:
        yield
    finally:
        _reads = before


def stage_job(job: Callable[[], Any], reads, seed: int) -> Any:
    """A stage run ahead of its notebook (a picklable job for :func:`side_by_side`): every random
    generator seeded with ``seed`` first, as each notebook does when it starts (and ``gendiv
    stage``), then ``job()`` within :func:`reading_only` (``reads``). Seeded, it draws what it
    draws in its notebook: SFT's LoRA adapters start from the generator the notebook seeded."""
    seed_everything(seed)
    with reading_only(reads):
        return job()


PART_POLL_S = 10.0
"""How often :func:`side_by_side`, in a part run beside others, looks whether a part finished (its
share of the cores then grows, and it starts more of its jobs at once)."""


def side_by_side(cfg: Config, jobs: dict[str, Callable[[], Any]], threads: int | None = None,
                 after: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Run independent jobs (picklable callables: a stage's builder with its arguments, as
    ``functools.partial(build_ppo, cfg, kl_coef=0.0)``) side by side on a CPU, each in a process of
    its own, the threads this part has (``threads``; default :func:`cores_now`) shared out among
    them (one each when there are more jobs than threads, up to two jobs a thread at once; a job
    that starts alone gets them all, and those still running share out the threads of a job that
    finished, from their next batch: :func:`take_freed_cores`); what each returned comes back by
    name. ``after``: the jobs each job waits for ({name: names}; others are ignored); a job starts
    once they have finished, and does not run if one failed.

    Why: the miniature's models use a second thread poorly (SFT on ``tiny``: 148 s on two threads,
    199 s on one), so trainings on a thread each finish before the same trainings on two threads
    one after the other (the three extra PPO runs of ``tiny-instruct``'s KL sweep, 2 cores: 305 s
    side by side, about 360 s in turn, chapter 4's run taking 132 s). The jobs run here, one after
    the other (in an order ``after`` allows), when there is one thread or one job, on a GPU
    (``model.device`` cuda, or auto with one visible) and under a launcher. In a part run beside
    others (``gendiv run`` with several profiles) with one thread of its share, they run one at a
    time in a worker process instead, and every ``PART_POLL_S`` seconds the part looks again: when
    another part has finished, the cores it freed start more jobs at once (in the book of 14c09cb
    the summarisation part's last two KL-sweep runs went on in turn on one core for nine minutes
    after the other part had finished). Each worker's output (progress bars, stage lines) goes to
    ``logs/side_by_side/<name>.log``; a line here says when each job finishes. A job that fails
    raises here after the others have finished, so their work is kept (each job is a cached stage);
    rerunning redoes only what failed.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    waits = {name: tuple(d for d in (after or {}).get(name, ()) if d in jobs) for name in jobs}
    order = in_order(waits)
    growing = threads is None and threads_for_next_notebook() is not None  # beside other parts
    if len(jobs) <= 1 or not in_processes(cfg, threads, growing):
        done = {name: jobs[name]() for name in order}
        return {name: done[name] for name in jobs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = threads or cores_now()

    def at_once(threads: int) -> int:
        # more jobs than threads: all at once on a thread each (the system shares the cores among
        # single-threaded processes well: three trainings on two cores end sooner than two, then one
        # on a single thread), up to two a thread
        return 1 if threads <= 1 else min(len(jobs), 2 * threads)

    logs = run_dir(cfg) / "logs" / "side_by_side"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{len(jobs)} jobs side by side, {at_once(threads)} at a time"
          f"{' for now (more when another part finishes)' if growing else ''}"
          f"{', each once those it waits for have finished,' if any(waits.values()) else ''} on "
          f"{threads} thread(s) shared among those running (their output in logs/side_by_side/ of the run "
          f"folder): {', '.join(order)}", flush=True)
    results, errors, pending, running = {}, {}, list(order), {}
    most = at_once(max(threads, os.cpu_count() or 1) if growing else threads)  # worker processes at most
    with tempfile.TemporaryDirectory(prefix=".threads-", dir=logs) as folder, \
            ProcessPoolExecutor(most, mp_context=multiprocessing.get_context("spawn")) as pool:
        shares = Path(folder)  # each running job's threads now (JOB_THREADS)
        while pending or running:
            if growing:
                threads = max(threads, cores_now())
            for name in [n for n in pending if any(d in errors for d in waits[n])]:
                pending.remove(name)
                failed = ", ".join(d for d in waits[name] if d in errors)
                errors[name] = RuntimeError(f"not run: it waits for {failed}, which failed")
                print(f"  {name} NOT RUN: it waits for {failed}, which failed", flush=True)
            ready = [n for n in pending if all(d in results for d in waits[n])]
            while ready and len(running) < at_once(threads):
                name = ready.pop(0)
                pending.remove(name)
                each = max(1, threads // min(len(running) + len(ready) + 1, at_once(threads)))
                write_text(shares / name, str(each))
                running[pool.submit(_side_job, jobs[name], str(logs / f"{name}.log"), each,
                                    str(shares / name))] = name
            if not running:
                break
            for name in running.values():  # the threads shared out among the jobs running now
                share = str(max(1, threads // len(running)))
                if (shares / name).read_text() != share:
                    write_text(shares / name, share)
            done, _ = wait(running, timeout=PART_POLL_S if growing else None, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name], seconds = future.result()
                    print(f"  {name} done in {seconds:.1f}s", flush=True)
                except Exception as exc:  # the others go on; their work is kept
                    errors[name] = exc
                    print(f"  {name} FAILED ({type(exc).__name__}: {exc}); its output: {logs / f'{name}.log'}",
                          flush=True)
    if errors:
        name, exc = next(iter(errors.items()))
        raise RuntimeError(f"{len(errors)} of {len(jobs)} jobs run side by side failed ({', '.join(errors)}); "
                           f"the first, {name}: {type(exc).__name__}: {exc}. Its output is in "
                           f"{logs / f'{name}.log'}; rerunning redoes only the failed ones.") from exc
    return {name: results[name] for name in jobs}


def in_order(waits: dict[str, tuple[str, ...]]) -> list[str]:
    """The jobs in their given order, each moved after the jobs it waits for; a ValueError naming
    the jobs of a cycle."""
    order: list[str] = []
    placing: list[str] = []

    def place(name: str) -> None:
        if name in order:
            return
        if name in placing:
            cycle = placing[placing.index(name):] + [name]
            raise ValueError(f"Jobs that wait for each other: {' -> '.join(cycle)}.")
        placing.append(name)
        for d in waits[name]:
            place(d)
        placing.pop()
        order.append(name)

    for name in waits:
        place(name)
    return order


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds
    and this is the main process (the others' copies are dropped: see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if is_main_process():
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_csv(path: str | Path, frame) -> Path:
    """Write a pandas DataFrame to CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def merge_csv(path: str | Path, frame, column: str, owned, missing: str | None = None) -> Path:
    """Write ``frame`` into the CSV at ``path``, replacing the rows whose ``column`` is in ``owned``
    and keeping the others (two stages that fill one table, each with its own methods). Rows kept
    come first, in their order; a missing file is written as ``frame``; the result has ``frame``'s
    columns. Rows of an older file without ``column`` take the value ``missing`` (None: they are
    dropped, as rows nobody owns)."""
    path, owned = Path(path), set(owned)
    if path.exists() and path.stat().st_size > 0:
        try:
            old = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            old = None
        if old is not None and column not in old and missing is not None:
            old = old.assign(**{column: missing})
        if old is not None and column in old:
            kept = old[~old[column].isin(owned)]
            if len(kept):
                frame = pd.concat([kept, frame], ignore_index=True)[list(frame.columns)]
    return write_csv(path, frame)


def read_methods(path: str | Path, methods) -> pd.DataFrame:
    """The rows of a results table whose ``method`` is one of ``methods`` (a chapter's own, when
    later chapters add theirs to the same table: :func:`merge_csv`)."""
    frame = pd.read_csv(path)
    return frame[frame["method"].isin(list(methods))].reset_index(drop=True)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def versions_line() -> str:
    """The package versions as one line ("python 3.11.7, gendiv 0.1.0, torch ...")."""
    return ", ".join(f"{k} {v}" for k, v in package_versions().items())


def device_name() -> str:
    """'cuda:<name>' when a GPU is visible, else 'cpu (<n> cores)'."""
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"


def seed_everything(seed: int) -> None:
    """The one place where randomness is seeded: Python, NumPy and torch."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment_report(cfg: Config) -> str:
    """Seed, device and package versions, printed at the top of every notebook."""
    versions = versions_line()
    return (f"profile: {cfg.profile} | seed: {cfg.seed} | device: {device_name()} | "
            f"run folder: {run_dir(cfg)}\nversions: {versions}")


def elapsed_s(times: pd.DataFrame) -> float:
    """Seconds from the start of the first stage of :func:`stage_times` to the end of the last:
    less than the sum of their wall times where stages ran side by side."""
    if not len(times):
        return 0.0
    end = pd.to_datetime(times["finished_at"])
    start = end - pd.to_timedelta(times["wall_time_s"], unit="s")
    return float((end.max() - start.min()).total_seconds())


def run_info_html(cfg: Config) -> str:
    """Which profile, seed, device and package versions produced this copy of the book, and the
    total wall time of its stages (from the manifests): the intro page shows it."""
    times = stage_times(cfg)
    total = f"{times['wall_time_s'].sum() / 60:.1f} minutes of stage wall time" if len(times) else "no finished stage"
    versions = versions_line()
    return (f"<p>This copy was produced by the <b>{escape(cfg.profile)}</b> profile, seed {cfg.seed}, on "
            f"{escape(device_name())} ({escape(total)}).<br><small>Versions: {escape(versions)}</small></p>")


@dataclass(frozen=True)
class Manifest:
    stage: str
    config_hash: str
    artifacts: dict[str, str]
    wall_time_s: float
    finished_at: str
    device: str
    versions: dict[str, str]


def manifest_path(cfg: Config, stage: str) -> Path:
    return run_dir(cfg) / "manifests" / f"{stage}.json"


def load_manifest(cfg: Config, stage: str) -> Manifest | None:
    path = manifest_path(cfg, stage)
    if not path.exists():
        return None
    return Manifest(**json.loads(path.read_text()))


def stage_is_done(cfg: Config, stage: str, config_hash: str) -> bool:
    """True when ``stage`` finished with the same config hash and all its artifacts exist."""
    m = load_manifest(cfg, stage)
    if m is None or m.config_hash != config_hash:
        return False
    return all((run_dir(cfg) / rel).exists() for rel in m.artifacts.values())


def require_stage(cfg: Config, stage: str) -> Manifest:
    """The manifest of a finished earlier stage, or a StageMissingError saying what to run.
    Within :func:`reading_only`, a stage it does not name is a RuntimeError: the table of stages
    (``Stage.after``) misses a prerequisite."""
    if _reads is not None and stage not in _reads:
        raise RuntimeError(f"A stage run ahead of its notebook read stage {stage!r}, which it does not wait for "
                           f"(it may read only {', '.join(sorted(_reads))}): add {stage!r} to its "
                           "prerequisites (Stage.after in gendiv/stages.py).")
    m = load_manifest(cfg, stage)
    missing = [] if m is None else [rel for rel in m.artifacts.values() if not (run_dir(cfg) / rel).exists()]
    if m is None or missing:
        nb = notebook_for(stage) or stage
        what = f"its artifacts {missing} are missing" if m else f"{manifest_path(cfg, stage)} does not exist"
        raise StageMissingError(
            f"Stage {stage!r} has not been run for profile {cfg.profile!r} ({what}). "
            f"Run notebook {nb} first, e.g. `gendiv run --profile {cfg.profile} --stages {nb[:2]}` "
            f"(or the stage alone: `gendiv stage {stage} --profile {cfg.profile}`).")
    return m


def artifact(cfg: Config, stage: str, name: str) -> Path:
    """Absolute path of artifact ``name`` of a finished ``stage`` (raises if the stage is missing)."""
    m = require_stage(cfg, stage)
    if name not in m.artifacts:
        raise KeyError(f"Stage {stage!r} has no artifact {name!r}; it has {sorted(m.artifacts)}.")
    return run_dir(cfg) / m.artifacts[name]


def stage_hash(cfg: Config, stage: str) -> str:
    """The hash of the config sections ``stage`` depends on (table of stages), less the keys it ignores."""
    row = stages.stage(stage)
    return cfg.section_hash(*row.sections, ignore=row.ignore)


def stage_to_run(cfg: Config, stage: str, force: bool = False) -> bool:
    """Whether :func:`run_stage` would run ``stage`` now: forced, or not finished with the config
    it depends on (so callers that run several stages side by side start only those)."""
    return force or not stage_is_done(cfg, stage, stage_hash(cfg, stage))


def run_stage(cfg: Config, stage: str, body: Callable[[Path], dict[str, Path]], *,
              force: bool = False) -> dict[str, Path]:
    """Run ``body(run_dir)`` unless ``stage`` already finished with the same config (the sections
    the table of stages lists for it, less the keys it ignores).

    ``body`` writes its artifacts (atomically) and returns {name: path}. On success the manifest
    is written last, so a crash leaves no manifest and the stage reruns next time. Under parts side
    by side, the stage first takes this part's share of the cores now (:func:`take_cores_now`).
    """
    root = run_dir(cfg)
    config_hash = stage_hash(cfg, stage)
    if not stage_to_run(cfg, stage, force):
        m = load_manifest(cfg, stage)
        print(f"[{stage}] cached: finished {m.finished_at} in {m.wall_time_s:.1f}s "
              f"(config {config_hash}); pass force=True to redo it.")
        return {k: root / v for k, v in m.artifacts.items()}
    print(f"[{stage}] running (config {config_hash}) ...", flush=True)
    take_cores_now()
    start = time.perf_counter()
    paths = body(root)
    wall = time.perf_counter() - start
    write_text(root / "config.yaml", describe(cfg))
    manifest = Manifest(stage, config_hash, {k: str(Path(p).resolve().relative_to(root.resolve()))
                                             for k, p in paths.items()},
                        round(wall, 2), time.strftime("%Y-%m-%d %H:%M:%S"), device_name(),
                        package_versions())
    write_json(manifest_path(cfg, stage), manifest.__dict__)
    barrier()  # under a launcher, no process goes on before the main one has written the manifest
    print(f"[{stage}] done in {wall:.1f}s", flush=True)
    return paths


def config_html(cfg: Config) -> str:
    """The run's configuration for the book: one line of provenance, then a collapsed block with
    the settings that differ from the defaults and, collapsed inside it, the full config."""
    changed = differences(cfg)
    versions = versions_line()
    return (f"<details><summary><small>Run configuration: profile <b>{escape(cfg.profile)}</b>, seed {cfg.seed}, "
            f"{escape(device_name())}; {len(changed)} settings differ from the defaults (click to show)."
            f"</small></summary><small><p>Run folder: <code>{escape(str(run_dir(cfg)))}</code><br>"
            f"Versions: {escape(versions)}</p><pre>{escape(chr(10).join(changed))}</pre>"
            f"<details><summary>The full configuration</summary><pre>{escape(describe(cfg))}</pre></details>"
            f"</small></details>")


def print_config(cfg: Config) -> None:
    """In a notebook, :func:`config_html` (collapsed); elsewhere the full config as text."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        in_kernel = get_ipython() is not None and hasattr(get_ipython(), "kernel")
    except ImportError:
        in_kernel = False
    if in_kernel:
        display(HTML(config_html(cfg)))
        return
    print(describe(cfg))
    print(environment_report(cfg))
    sys.stdout.flush()


def start(profile: str, seed: int | None = None, run_dir: str = "") -> Config:
    """What every notebook does after its parameters cell: resolve the typed config, seed
    everything from it, and print the config, device and package versions."""
    cfg = load_profile(profile, seed=seed, run_dir=run_dir or None)
    seed_everything(cfg.seed)
    print_config(cfg)
    return cfg


def stage_times(cfg: Config) -> pd.DataFrame:
    """Wall time of every finished stage of the run, with the notebook that runs it (from the
    manifests), for the book's timing table."""
    rows = []
    for path in sorted((run_dir(cfg) / "manifests").glob("*.json")):
        m = json.loads(path.read_text())
        stage = m["stage"]
        rows.append({"notebook": notebook_for(stage) or "?",
                     "stage": stage, "wall_time_s": m["wall_time_s"], "device": m["device"],
                     "finished_at": m["finished_at"]})
    return pd.DataFrame(rows, columns=["notebook", "stage", "wall_time_s", "device", "finished_at"]) \
        .sort_values(["notebook", "finished_at"]).reset_index(drop=True)
