"""The ``gendiv`` command: execute the notebooks with papermill, then build the HTML book.

    gendiv run --profile tiny [--stages 01 02] [--force]   executed notebooks -> the task's part of the book
                                                           (book/notebooks/, or book/instruction/ for
                                                           instruction following)
    gendiv run --profile tiny tiny-instruct [--jobs N]     both parts side by side, the cores shared out
    gendiv book                                            strict Jupyter Book 1.x build of the parts
                                                           executed -> book/_build/html
    gendiv profiles                                        list the shipped profiles
    gendiv pretrain --profile tiny [--out DIR]             pre-train the tiny base model (the shipped one
                                                           by default: lib/gendiv/pretrained/<model.base>)
    gendiv stage NAME --profile tiny [--run-dir DIR]       run one stage (the entry for launchers:
                                                           accelerate launch -m gendiv stage sft ...)
    gendiv seeds --profile tiny --seeds 0 1 2              every stage per seed, then per-seed and
                                                           pooled verdicts (runs/<profile>/seeds/)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

from gendiv import artifacts, claims, pretraining, runs, stages
from gendiv.config import ALIGN_METHODS, ConfigError, available_profiles, load_profile, task_name


class RunFailed(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


def notebooks_dir(root: Path | None = None) -> Path:
    return (root or runs.project_root()) / "notebooks"


def list_notebooks(root: Path | None = None) -> list[Path]:
    """The ordered notebooks: notebooks/NN_name.ipynb."""
    return sorted(p for p in notebooks_dir(root).glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(stages: list[str] | None, root: Path | None = None) -> list[Path]:
    """Notebooks matching ``stages`` (a number like ``01`` or ``1``, or a name like ``data_splits``)."""
    notebooks = list_notebooks(root)
    if not stages:
        return notebooks
    chosen = []
    for stage in stages:
        key = stage.zfill(2) if stage.isdigit() else stage
        hits = [nb for nb in notebooks if nb.stem[:2] == key or nb.stem == key or nb.stem[3:] == key]
        if not hits:
            names = ", ".join(nb.stem for nb in notebooks)
            raise SystemExit(f"gendiv run: unknown stage {stage!r}. Stages: {names} "
                             "(give the number, e.g. 01, or the name).")
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen)


def execute_notebook(nb: Path, out_dir: Path, profile: str, force: bool, log_output: bool = False,
                     run_dir: str = "") -> float:
    """Execute one notebook with papermill into ``out_dir``; return its wall time in seconds.

    ``run_dir`` (empty: runs/<profile>) is passed to the notebook's parameters cell.
    """
    import papermill as pm  # heavy, and only `gendiv run` needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": profile, "force": force, "run_dir": run_dir}
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=parameters,
                            kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                            log_output=log_output)
    except pm.PapermillExecutionError as err:
        raise RunFailed(f"Notebook {nb.stem} failed in cell {err.exec_count} (cell index {err.cell_index}): "
                        f"{err.ename}: {err.evalue}\nThe partly executed notebook is {out_dir / nb.name}.") from None
    hide_parameter_cells(out_dir / nb.name)
    return time.perf_counter() - start


HIDDEN_IN_THE_BOOK = ("parameters", "injected-parameters")
"""Cells of the executed notebooks the book leaves out: the notebook's parameters and papermill's
injected ones (the run's profile and config open every chapter as a collapsed block instead)."""
SETUP_CALL = "runs.start("
"""The call of a chapter's setup cell (imports, then the config): the book folds its code away
behind a "show" toggle and keeps its output, the one-line collapsed config."""


def hide_parameter_cells(path: Path) -> None:
    """Tag the parameter cells of an executed notebook ``remove-cell`` (Jupyter Book drops them)
    and its setup cell ``hide-input`` (the code behind a toggle, the config line shown)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if any(t in tags for t in HIDDEN_IN_THE_BOOK) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        elif cell.cell_type == "code" and SETUP_CALL in cell.source and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, str(path))


PARTS = {"summarisation": "notebooks", "instruction following": "instruction"}
"""The book's part for each of the paper's tasks: the folder under book/ that ``gendiv run``
writes the task's executed notebooks to (the same notebooks, on a profile of that task)."""
PAGES_PART = "summarisation"
"""The part the book's own pages (intro, world, scorecard) read: no book is built without it."""
PART_FILE = "part.json"
"""Written beside a part's executed notebooks: the profile, task and run folder they ran on."""
BUILT_TOC = "_toc.yml"
"""The table of contents ``gendiv book`` builds with, in book/_build/: book/_toc.yml less the
parts not executed."""
TASKS_SCORECARD = Path("generated") / "scorecard_tasks.md"
"""The per-task scorecard (book/_build/...), included by the scorecard page."""


def part_dir(task: str, root: Path | None = None) -> Path:
    """Where the executed notebooks of ``task``'s part of the book go."""
    return (root or runs.project_root()) / "book" / PARTS[task]


AHEAD_THROUGH = "08_kl_sweep"
"""The last notebook whose stages ``gendiv run`` starts ahead of the notebooks (:func:`run_ahead`);
chapter 9's trainings run side by side in their own notebook, and chapter 10 reads the others."""


def plan_ahead(cfg, notebooks: list[Path]) -> tuple[dict[str, object], dict[str, tuple[str, ...]]]:
    """The stages of ``notebooks`` (through :data:`AHEAD_THROUGH`) still to run, with the KL sweep's
    PPO runs, each with the stages it waits for (``Stage.after``; the sweep's measurement after its
    runs): ({name: job}, {name: prerequisites}). Each job is the stage's builder on ``cfg``, seeded
    as in its notebook and allowed to read only its prerequisites and what they read
    (:func:`gendiv.runs.stage_job`). A stage waiting for one that is neither done nor planned (a
    notebook not selected) is left to its notebook, which says what to run first."""
    chosen = {nb.stem for nb in notebooks if nb.stem <= AHEAD_THROUGH}
    names = [s.name for s in stages.STAGES if s.notebook in chosen]
    sweep = artifacts.sweep_stages(cfg)
    sweep.pop("ppo", None)
    after = {n: stages.stage(n).after for n in names}
    if "kl_sweep" in after:
        after.update({n: stages.stage(n).after for n in sweep})
        after["kl_sweep"] += tuple(sweep)
    jobs: dict[str, object] = {}
    for name in runs.in_order({n: tuple(d for d in after[n] if d in after) for n in after}):
        if not runs.stage_to_run(cfg, name):
            continue
        if any(d not in jobs and runs.stage_to_run(cfg, d) for d in after[name]):
            continue
        build = partial(stages.builder(name), cfg, **(dict(zip(("kl_coef", "estimator"), sweep[name]))
                                                    if name in sweep else {}))
        jobs[name] = partial(runs.stage_job, build, {name, *stages.prerequisites(name, after)}, cfg.seed)
    return jobs, {n: after[n] for n in jobs}


def run_ahead(cfg, notebooks: list[Path] | None = None, threads: int | None = None) -> list[str]:
    """Run the stages of ``notebooks`` (default: all) ahead of them (:func:`plan_ahead`), side by
    side on this part's threads, each once those it waits for have finished
    (:func:`gendiv.runs.side_by_side`); the notebooks then read them from the cache, each starting
    once its own stages are done (:func:`wait_for_stages`). Why: in the notebooks' order one stage
    runs at a time on every thread, and a second thread speeds a stage less than a second stage
    beside it would (``tiny`` on 2 cores, chapter by chapter: PPO 1.76 times, Best-of-N 1.72, RM
    training 1.66); ahead, chapter 2's evaluation runs beside chapter 3's comparisons, and chapter
    4's PPO, chapter 5's Best-of-N and chapter 8's PPO runs, which all wait only for the RM, at
    once on a thread each (``gendiv run --profile smoke`` on 2 cores: 198 s instead of 264). A stage
    that fails here is left to its notebook, which runs it again and shows the error; the others'
    work is kept. Returns the stages it ran or tried."""
    jobs, after = plan_ahead(cfg, notebooks if notebooks is not None else list_notebooks())
    if not jobs:
        return []
    print(f"Stages ahead of the notebooks: {', '.join(jobs)}", flush=True)
    start = time.perf_counter()
    try:
        runs.side_by_side(cfg, jobs, threads=threads, after=after)
        print(f"Stages ahead of the notebooks done in {time.perf_counter() - start:.1f}s", flush=True)
    except Exception as exc:  # noqa: BLE001 - the notebook runs that stage again and shows its error
        print(f"Not every stage ran ahead ({type(exc).__name__}: {exc}); each notebook runs its own and shows "
              "any error.", flush=True)
    return list(jobs)


def run(profile: str, stages: list[str] | None = None, force: bool = False, log_output: bool = False,
        root: Path | None = None, run_dir: str = "") -> dict[str, float]:
    """Execute the selected notebooks in order on ``profile`` into the book's part of the profile's
    task (:data:`PARTS`); stop at the first failure.

    A profile given as a YAML path is made absolute: the notebooks run from notebooks/.
    """
    cfg = load_profile(profile, run_dir=run_dir or None)  # fail fast on a bad profile name or file
    if profile.endswith((".yaml", ".yml")):
        profile = str(Path(profile).resolve())
    root = root or runs.project_root()
    out_dir = part_dir(task_name(cfg), root)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / PART_FILE, {"profile": profile, "task": task_name(cfg),
                                          "run_dir": str(runs.run_dir(cfg))})
    times = {}
    selected = select_notebooks(stages, root)
    ahead = None
    for i, nb in enumerate(selected, 1):
        # Once this part has two threads or more (alone, or when the parts beside it have finished),
        # the stages of this notebook and the next start ahead of them, side by side; on one
        # thread each notebook runs its own (a forced run too: it redoes every stage in its notebook).
        if ahead is None and not force and runs.in_processes(cfg, runs.cores_now()):
            ahead = threading.Thread(target=run_ahead, args=(cfg, selected[i - 1:]), daemon=True)
            ahead.start()
        if ahead is not None:
            wait_for_stages(cfg, nb, ahead)
        threads = runs.threads_for_next_notebook()
        if threads is not None:  # one of several parts side by side: its share of the cores now
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        print(f"[{i}/{len(selected)}] {nb.stem} (profile {profile}"
              f"{'' if threads is None else f', {threads} thread(s)'}) ...", flush=True)
        times[nb.stem] = execute_notebook(nb, out_dir, profile, force, log_output, run_dir)
        print(f"[{i}/{len(selected)}] {nb.stem} done in {times[nb.stem]:.1f}s", flush=True)
    if ahead is not None:
        ahead.join()
    return times


def wait_for_stages(cfg, notebook: Path, ahead: threading.Thread, poll_s: float = 1.0) -> None:
    """Wait until every stage ``notebook`` runs (the KL sweep's runs for chapter 8) is done, or
    ``ahead`` (:func:`run_ahead`, in a thread) has ended: each notebook then starts as soon as
    the stages it shows are ready, beside the stages still running ahead."""
    own = [s.name for s in stages.STAGES if s.notebook == notebook.stem]
    if notebook.stem == stages.stage("kl_sweep").notebook:
        own += list(artifacts.sweep_stages(cfg))
    while ahead.is_alive() and any(runs.stage_to_run(cfg, s) for s in own):
        time.sleep(poll_s)


KERNEL_NOISE = ("Kernel is running over TCP without encryption",)
"""Lines of the notebook kernels' start-up that :func:`run_parts` does not pass on (ipykernel's
notice that a local kernel talks over TCP on localhost: said for every notebook, and harmless)."""


def run_parts(profiles: list[str], force: bool = False, jobs: int = 0, root: Path | None = None) -> dict[str, int]:
    """``gendiv run`` with several profiles: each part of the book (one profile per task) in a
    ``gendiv run`` process of its own, ``jobs`` at a time (0: all at once), the machine's cores
    shared out among the parts running when each notebook starts
    (:func:`gendiv.runs.threads_for_next_notebook`: when one part finishes, the other's next
    notebooks get its cores). Each line a part prints comes out prefixed with its profile. A part
    that fails does not stop the others (their finished stages are kept either way); the exit
    codes come back by profile.

    Why side by side: the tiny models use two threads poorly (SFT on ``tiny``, 2 cores: 148 s on
    two threads, 199 s on one), so two parts on a thread each finish sooner than one after the
    other. Two profiles of one task would write the same part of the book: a ConfigError."""
    import tempfile

    tasks: dict[str, str] = {}
    for profile in profiles:
        task = task_name(load_profile(profile))
        if task in tasks:
            raise ConfigError(f"Profiles {tasks[task]!r} and {profile!r} are both {task} profiles and would write "
                              f"the same part of the book (book/{PARTS[task]}/); run them one after the other.")
        tasks[task] = profile
    jobs = len(profiles) if jobs <= 0 else min(jobs, len(profiles))
    profiles = [str(Path(p).resolve()) if p.endswith((".yaml", ".yml")) else p for p in profiles]
    width = max(len(p) for p in profiles)
    lock, slots, codes = threading.Lock(), threading.Semaphore(jobs), {}

    with tempfile.TemporaryDirectory(prefix="gendiv-parts-") as running:
        def one(i: int, profile: str) -> None:
            # each notebook takes its share of the cores when it starts (run, threads_for_next_notebook)
            env = {**os.environ, runs.RUNNING_PARTS: running}
            cmd = [sys.executable, "-m", "gendiv", "run", "--profile", profile] + (["--force"] if force else [])
            codes[profile] = -1  # a part that could not start counts as failed
            try:
                with subprocess.Popen(cmd, cwd=root or runs.project_root(), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
                    for line in proc.stdout:
                        if any(noise in line for noise in KERNEL_NOISE):
                            continue
                        with lock:
                            print(f"{profile:<{width}} | {line.rstrip()}", flush=True)
                codes[profile] = proc.returncode
            finally:
                (Path(running) / str(i)).unlink()
                slots.release()

        print(f"Running {len(profiles)} parts, {jobs} at a time, the cores shared among those running: "
              f"{', '.join(profiles)}", flush=True)
        for i in range(jobs):  # the first parts are counted before any starts its first notebook
            (Path(running) / str(i)).touch()
        workers = []
        for i, profile in enumerate(profiles):  # in order, each when a slot is free
            slots.acquire()
            (Path(running) / str(i)).touch()
            workers.append(threading.Thread(target=one, args=(i, profile)))
            workers[-1].start()
        for w in workers:
            w.join()
    return codes


CLONE = re.compile(r"git clone -q --depth 1 (\S+?)\.git ")


def repository_url(root: Path | None = None) -> str:
    """The book's repository (``repository.url`` in book/_config.yml): the one place a fork sets
    it. The launch buttons read it there; :func:`stamp_repository_url` copies it into the
    notebooks' Colab cells."""
    config = yaml.safe_load(((root or runs.project_root()) / "book" / "_config.yml").read_text())
    return str(config["repository"]["url"]).rstrip("/")


def stamp_repository_url(root: Path | None = None) -> list[Path]:
    """Write the book's repository URL into the Colab cell of every notebook source
    (notebooks/NN_*.py; ``make sync`` then regenerates the .ipynb). Returns the files changed."""
    url, changed = repository_url(root), []
    for path in sorted(notebooks_dir(root).glob("[0-9][0-9]_*.py")):
        text = path.read_text()
        new = CLONE.sub(f"git clone -q --depth 1 {url}.git ", text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def executed_parts(root: Path | None = None) -> dict[str, Path]:
    """The book's parts whose every notebook has been executed, by task, in the book's order.
    A part begun but not finished is an error that names what is missing."""
    root = root or runs.project_root()
    parts = {}
    for task in PARTS:
        folder = part_dir(task, root)
        if not (folder / PART_FILE).exists() and not any(folder.glob("*.ipynb")):
            continue
        missing = [nb.name for nb in list_notebooks(root) if not (folder / nb.name).exists()]
        if missing:
            raise RunFailed(f"The {task} part of the book is not finished: {', '.join(missing)} not yet executed in "
                            f"{folder}. Run `gendiv run --profile <a {task} profile>` (or `make book`) again; "
                            "finished stages are reused.")
        parts[task] = folder
    return parts


def built_toc(book: Path, parts: dict[str, Path]) -> Path:
    """book/_toc.yml less the chapters of parts not executed (and parts left empty), written to
    book/_build/_toc.yml for the build."""
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    skipped = {PARTS[t] for t in PARTS if t not in parts}
    kept = []
    for part in toc["parts"]:
        chapters = [c for c in part["chapters"] if c["file"].split("/", 1)[0] not in skipped]
        if chapters:
            kept.append({**part, "chapters": chapters})
    out = book / "_build" / BUILT_TOC
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({**toc, "parts": kept}, sort_keys=False))
    return out


def part_runs(parts: dict[str, Path]) -> dict[str, dict]:
    """Each executed part's profile and run folder (its part.json)."""
    return {task: json.loads((folder / PART_FILE).read_text()) for task, folder in parts.items()
            if (folder / PART_FILE).exists()}


def write_tasks_scorecard(book: Path, parts: dict[str, Path]) -> Path:
    """The scorecard page's per-task section (book/_build/generated/scorecard_tasks.md): every
    claim's verdict on each task this copy of the book ran, from each run's results/claims.csv."""
    cards, checks = {}, {}
    for task, info in part_runs(parts).items():
        results = Path(info["run_dir"]) / "results"
        label = f"{task} ({Path(info['profile']).stem})"
        if (results / "claims.csv").exists():
            cards[label] = pd.read_csv(results / "claims.csv")
            checks[label] = pd.read_csv(results / "competence.csv") if (results / "competence.csv").exists() else None
    out = book / "_build" / TASKS_SCORECARD
    out.parent.mkdir(parents=True, exist_ok=True)
    absent = [t for t in PARTS if t not in parts]
    text = claims.tasks_markdown(cards, checks)
    if absent:
        text += (f"\n\nThis copy of the book has no {' or '.join(absent)} part: `make book` builds both "
                 f"tasks, `make book TASK=instruction` adds that part to a built summarisation part.\n")
    out.write_text(text)
    return out


def point_launch_buttons_at_the_notebooks(html: Path, branch: str) -> None:
    """Every part runs the same notebooks: the launch buttons of a part other than book/notebooks/
    open the clean notebook at the repository's notebooks/ (Jupyter Book would point them at the
    part's folder, which the repository does not have)."""
    for folder in PARTS.values():
        if folder == "notebooks":
            continue
        for page in (html / folder).glob("*.html"):
            text = page.read_text()
            fixed = text.replace(f"/blob/{branch}/{folder}/", f"/blob/{branch}/notebooks/")
            if fixed != text:
                page.write_text(fixed)


def check_book_after(profiles: list[str], root: Path | None = None) -> None:
    """Fail before any notebook runs if the book could not be built after running ``profiles``:
    the book's pages read the summarisation part, so it must be executed already or be among
    them (``make book TASK=instruction`` on a fresh clone would otherwise run every notebook of
    the instruction part and only then stop)."""
    tasks = {task_name(load_profile(p)) for p in profiles}
    if PAGES_PART not in tasks and PAGES_PART not in executed_parts(root):
        raise RunFailed(f"Running {', '.join(profiles)} ({', '.join(sorted(tasks))}) would leave the book without its "
                        "summarisation part, which the book's pages read. Run `make book` (both tasks) or "
                        "`make book TASK=summarisation` first; `TASK=instruction` then adds its part.")


def build_book(root: Path | None = None, strict: bool = True) -> Path:
    """Build the HTML book from the executed notebooks (Jupyter Book 1.x, no execution): one part
    per task executed (the summarisation part required: the book's pages read it), and the
    scorecard's verdicts per task."""
    root = root or runs.project_root()
    book = root / "book"
    parts = executed_parts(root)
    if PAGES_PART not in parts:
        missing = [nb.name for nb in list_notebooks(root)]
        raise RunFailed(f"Not yet executed: {', '.join(missing)} (the summarisation part, which the book's pages "
                        "read). Run `gendiv run --profile tiny` (or `make book`) first; the book only renders "
                        "executed notebooks.")
    toc = built_toc(book, parts)
    write_tasks_scorecard(book, parts)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book"), "build", str(book),
           "--toc", str(toc)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    print(f"Parts: {', '.join(parts)}", flush=True)
    print("$", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=root)
    if result.returncode != 0:
        raise RunFailed(f"The book build failed (exit {result.returncode}); see the warnings above.")
    config = yaml.safe_load((book / "_config.yml").read_text())
    point_launch_buttons_at_the_notebooks(book / "_build" / "html", config["repository"].get("branch", "main"))
    index = book / "_build" / "html" / "index.html"
    print(f"Book: {index}")
    return index


def pretrain(profile: str, out: str = "") -> Path:
    """``gendiv pretrain``: pre-train the profile's tiny base model into ``out``, by default the
    package's folder of the shipped base the profile names (``model.base``: tiny)."""
    cfg = load_profile(profile)
    if not out and cfg.model.base not in pretraining.SHIPPED:
        raise ConfigError(f"Profile {cfg.profile!r} has model.base {cfg.model.base!r}, not a shipped base "
                          f"({', '.join(pretraining.SHIPPED)}); pass --out DIR to choose where to write.")
    runs.seed_everything(cfg.pretrain.seed)
    target = Path(out).resolve() if out else pretraining.shipped_dir(cfg.model.base)
    print(f"Pre-training the base model of profile {cfg.profile!r} into {target} "
          f"(recipe {pretraining.recipe_hash(cfg)}) ...", flush=True)
    return pretraining.pretrain_base(cfg, target)


DATA_PARALLEL = ("sft", "reward", "ppo", "dpo", "rloo", "grpo")
"""Stages that train data-parallel under a launcher (the sweep's ``ppo_kl<beta>[_<estimator>]``
too; chapter 9's through TRL's trainers); the others sample and score on one process."""


def run_one_stage(name: str, profile: str, run_dir: str = "", force: bool = False,
                  seed: int | None = None) -> dict[str, Path]:
    """``gendiv stage``: run stage ``name`` of the table of stages (gendiv.stages) on ``profile``,
    into the run folder the notebooks read (``run_dir``, default runs/<profile>), so that the
    notebooks then find it finished. Under ``accelerate launch`` with several processes, the
    training stages (:data:`DATA_PARALLEL`) train data-parallel and only the main process writes."""
    try:
        row = stages.stage(name)
    except KeyError as err:
        raise ConfigError(f"{err.args[0]} A KL sweep run is ppo_kl<kl_coef>[_<estimator>], e.g. "
                          "ppo_kl0.5.") from None
    kl_coef = estimator = None
    if name.startswith(stages.SWEEP_PREFIX):
        try:
            kl_coef, estimator = stages.parse_sweep_run(name)
        except ValueError:
            raise ConfigError(f"Stage {name!r}: a KL sweep run is ppo_kl<kl_coef>[_<estimator>], e.g. ppo_kl0.5 "
                              "or ppo_kl0.05_log_ratio.") from None
    base = name if kl_coef is None else "ppo"
    if runs.world_size() > 1 and base not in DATA_PARALLEL:
        raise ConfigError(f"Stage {name!r} samples and scores on one process; {runs.world_size()} were launched. "
                          f"Run it without a launcher (`gendiv stage {name} --profile ...`); the stages that "
                          f"train data-parallel are {', '.join(DATA_PARALLEL)} and ppo_kl<kl_coef>[_<estimator>].")
    cfg = load_profile(profile, run_dir=run_dir or None, seed=seed)
    runs.seed_everything(cfg.seed)
    build = stages.builder(row.name)
    if kl_coef is None:
        return build(cfg, force=force)
    return build(cfg, force=force, kl_coef=kl_coef, estimator=estimator)


def run_seeds(profile: str, seeds: list[int], run_dir: str = "") -> Path:
    """``gendiv seeds``: every stage of ``profile`` for each seed, each seed in a run folder of its
    own (the profile's own seed in its run folder, which ``make book`` fills; the others in
    ``seeds/seed<k>`` inside it), reusing nothing across seeds; then the per-seed and pooled
    verdicts (:func:`gendiv.claims.across_seeds`) in ``seeds/claims_seeds.csv``, which chapter 10's
    "Across seeds" section shows."""
    if len(set(seeds)) < 2:
        raise ConfigError(f"gendiv seeds needs at least two different seeds, got {seeds}.")
    cfg = load_profile(profile, run_dir=run_dir or None)
    for i, k in enumerate(seeds, 1):
        folder = claims.seed_run_dir(cfg, k)
        print(f"== seed {k} ({i}/{len(seeds)}) into {folder}", flush=True)
        for row in stages.STAGES:
            if row.name in ALIGN_METHODS and row.name not in cfg.align.methods:
                continue  # chapter 9's methods the profile does not run
            run_one_stage(row.name, profile, str(folder), seed=k)
    paths = claims.write_across_seeds(cfg, seeds)
    table = pd.read_csv(paths["claims_seeds"])
    print(table.pivot(index="claim", columns="seed", values="verdict").to_string())
    return paths["claims_seeds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gendiv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the notebooks with papermill into book/notebooks/")
    p_run.add_argument("--profile", nargs="+", default=["tiny"],
                       help="profile name or YAML path (default: tiny); several (one per task) run side by side")
    p_run.add_argument("--jobs", type=int, default=0,
                       help="with several profiles: how many run at once (default: all)")
    p_run.add_argument("--stages", nargs="*", help="notebooks to run, e.g. 01 02 (default: all)")
    p_run.add_argument("--force", action="store_true", help="redo stages whose artifacts exist")
    p_run.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
    p_run.add_argument("--run-dir", default="", help="run folder (default: runs/<profile> in the project)")
    p_book = sub.add_parser("book", help="build the HTML book from the executed notebooks")
    p_book.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    p_book.add_argument("--check-after", nargs="+", metavar="PROFILE",
                        help="build nothing: fail if the book could not be built after running these profiles")
    sub.add_parser("profiles", help="list the shipped profiles")
    p_pre = sub.add_parser("pretrain", help="pre-train the tiny base model of a profile (deterministic)")
    p_pre.add_argument("--profile", default="tiny", help="profile name or YAML path (default: tiny)")
    p_pre.add_argument("--out", default="", help="output folder (default: the package's shipped base "
                                                  "named by the profile's model.base)")
    p_stage = sub.add_parser("stage", help="run one stage into the run folder (the entry for accelerate launch)")
    p_stage.add_argument("name", help=f"a stage: {', '.join(stages.BY_NAME)}, or ppo_kl<kl_coef>[_<estimator>]")
    p_stage.add_argument("--profile", default="tiny", help="profile name or YAML path (default: tiny)")
    p_stage.add_argument("--run-dir", default="", help="run folder (default: runs/<profile> in the project)")
    p_stage.add_argument("--force", action="store_true", help="redo the stage even if it finished")
    p_seeds = sub.add_parser("seeds", help="every stage for several seeds, then per-seed and pooled verdicts")
    p_seeds.add_argument("--profile", default="tiny", help="profile name or YAML path (default: tiny)")
    p_seeds.add_argument("--seeds", nargs="+", type=int, required=True, help="the seeds, e.g. 0 1 2")
    p_seeds.add_argument("--run-dir", default="", help="run folder of the profile's own seed (default: runs/<profile>)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run" and len(args.profile) > 1:
            if args.stages or args.run_dir or args.log_output:
                raise ConfigError("--stages, --run-dir and --log-output take one profile; "
                                  f"got {len(args.profile)} ({' '.join(args.profile)}). Run each profile alone.")
            start = time.perf_counter()
            codes = run_parts(args.profile, args.force, args.jobs)
            failed = [p for p, code in codes.items() if code != 0]
            if failed:
                raise RunFailed(f"Part(s) failed: {', '.join(failed)} (their errors are above, prefixed with "
                                "the profile); the other parts and every finished stage are kept.")
            print(f"All {len(codes)} parts done in {time.perf_counter() - start:.1f}s.")
        elif args.command == "run":
            times = run(args.profile[0], args.stages, args.force, args.log_output,
                        run_dir=str(Path(args.run_dir).resolve()) if args.run_dir else "")
            print(f"All {len(times)} notebook(s) done in {sum(times.values()):.1f}s.")
        elif args.command == "book" and args.check_after:
            check_book_after(args.check_after)
        elif args.command == "book":
            build_book(strict=not args.no_strict)
        elif args.command == "stage":
            paths = run_one_stage(args.name, args.profile, str(Path(args.run_dir).resolve()) if args.run_dir else "",
                                  args.force)
            if runs.is_main_process():
                print(f"Stage {args.name} finished: {len(paths)} artifact(s) in "
                      f"{runs.run_dir(load_profile(args.profile, run_dir=args.run_dir or None))}.")
        elif args.command == "seeds":
            print(f"Per-seed and pooled verdicts: {run_seeds(args.profile, args.seeds, args.run_dir)}")
        elif args.command == "pretrain":
            print(f"Base model written to {pretrain(args.profile, args.out)}.")
        else:
            print("\n".join(available_profiles()))
    except (RunFailed, ConfigError, runs.StageMissingError) as err:
        print(f"gendiv {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
