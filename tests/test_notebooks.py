"""Notebooks: paired with their .py, committed clean, and executed end to end on the smoke profile;
then the strict book build over the executed notebooks."""

import json
import shutil
import subprocess
import sys
import time

import jupytext
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from gendiv import claims, cli, data, outputs, reward, runs, stats
from gendiv.config import load_profile

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_clean_and_python3(path):
    raw = json.loads(path.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and not cell.get("execution_count"), \
                f"{path.name} carries outputs: run `jupyter nbconvert --clear-output` or `make sync`"
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    paired = path.with_suffix(".py")
    assert paired.exists(), f"{path.name} has no paired {paired.name}"
    assert _cells(jupytext.read(path)) == _cells(jupytext.read(paired)), \
        f"{path.name} and {paired.name} have drifted: run `make sync`"
    tagged = [c for c in raw["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "profile = " in "".join(tagged[0]["source"])


def test_colab_cells_clone_the_books_repository(tmp_path):
    url = cli.repository_url()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f"git clone -q --depth 1 {url}.git " in path.read_text(), f"{path.name}: run `make sync`"
    # a fork sets its URL in one place; `make sync` carries it into every notebook
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "_config.yml").write_text("repository:\n  url: https://github.com/someone/fork\n")
    changed = cli.stamp_repository_url(tmp_path)
    assert len(changed) == len(NOTEBOOKS)
    assert all("github.com/someone/fork.git " in p.read_text() for p in changed)


def test_colab_cells_install_the_locked_versions_the_makefile_installs():
    """Colab gets the lock's exact versions, hash-checked, as `make venv` installs them (torch
    stays Colab's own: the lock leaves it out), then one restart; a re-run only changes directory."""
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in makefile
    assert not any(line.startswith("torch==") for line in (ROOT / "requirements.lock").read_text().splitlines())
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        cell = path.read_text().split('# %% tags=["remove-cell"]', 1)[1].split("# %%", 1)[0]
        install = cell.index("--require-hashes --no-deps")
        assert install < cell.index('"-r /content/gendiv/requirements.lock && "') < cell.index(
            "pip install -q --no-deps -e /content/gendiv") < cell.index("os.kill(os.getpid(), 9)"), path.name
        assert 'if "google.colab" in sys.modules:\n    os.chdir("/content/gendiv/notebooks")' in cell, path.name


def test_every_notebook_is_in_the_book():
    toc = (ROOT / "book" / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in toc


def test_cli_errors_are_clear(capsys):
    assert cli.main(["run", "--profile", "tinny"]) == 1
    assert "Unknown profile 'tinny'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown stage '99'"):
        cli.select_notebooks(["99"], ROOT)
    assert [p.stem for p in cli.select_notebooks(["1"], ROOT)] == ["01_data_splits"]
    assert [p.stem for p in cli.select_notebooks(["data_splits"], ROOT)] == ["01_data_splits"]


def test_a_profile_file_reaches_the_notebooks_as_an_absolute_path(tmp_path, monkeypatch):
    profile = tmp_path / "mine.yaml"
    profile.write_text("seed: 3\n")
    seen = []
    monkeypatch.setattr(cli, "execute_notebook", lambda nb, out, prof, *a: seen.append(prof) or 0.0)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    cli.run("mine.yaml", stages=["01"], root=tmp_path)
    assert seen == [str(profile)]
    # the part records what it ran on, for the book's scorecard across tasks
    part = json.loads((tmp_path / "book" / "notebooks" / cli.PART_FILE).read_text())
    assert part["profile"] == str(profile) and part["task"] == "summarisation"


def test_parts_share_the_cores_out():
    assert runs.part_threads(2, cores=2) == 1
    assert runs.part_threads(2, cores=16) == 8
    assert runs.part_threads(3, cores=2) == 1  # never none
    assert runs.part_threads(1, cores=2) == 2


def test_parts_run_side_by_side_prefixed_and_a_failure_spares_the_other(tmp_path, monkeypatch, capsys):
    """Each part is a `gendiv run` of its own on its share of the threads; its lines come out
    prefixed with its profile; one failing does not stop the other, and main says which failed."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"  # stands in for `python -m gendiv run --profile P`: $5 is P
                    'echo "running=$(ls "$GENDIV_RUNNING_PARTS" | wc -l | tr -d " ") args=$*"\n'
                    'echo "[IPKernelApp] WARNING | Kernel is running over TCP without encryption."\n'
                    'sleep 1; echo "$5 finished"\n'
                    'case "$5" in *instruct*) exit 3;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setattr(cli.sys, "executable", str(fake))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    start = time.perf_counter()
    codes = cli.run_parts(["smoke", "smoke-instruct"], root=tmp_path)
    assert time.perf_counter() - start < 1.9  # side by side, not 2 x 1 s
    assert codes == {"smoke": 0, "smoke-instruct": 3}
    out = capsys.readouterr().out
    assert "smoke          | running=2 args=-m gendiv run --profile smoke\n" in out
    assert "smoke-instruct | smoke-instruct finished\n" in out
    assert "without encryption" not in out  # the kernels' start-up notice is not passed on
    codes = cli.run_parts(["smoke", "smoke-instruct"], jobs=1, root=tmp_path)
    out = capsys.readouterr().out  # one at a time: each alone
    assert out.count("running=1 ") == 2 and "running=2" not in out
    assert cli.main(["run", "--profile", "smoke", "smoke-instruct"]) == 1
    err = capsys.readouterr().err
    assert "Part(s) failed: smoke-instruct" in err
    assert cli.main(["run", "--profile", "smoke", "tiny"]) == 1
    assert "'smoke' and 'tiny' are both summarisation profiles" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "smoke", "smoke-instruct", "--stages", "01"]) == 1
    assert "take one profile" in capsys.readouterr().err


def test_a_part_takes_the_cores_of_the_parts_that_finished(tmp_path, monkeypatch):
    """Each notebook's kernel gets the cores shared among the parts running when it starts: two
    parts on two cores, a thread each; once the other part is done, both cores, and the stages of
    the notebooks left start ahead of them."""
    running = tmp_path / "running"
    running.mkdir()
    (running / "0").touch()
    (running / "1").touch()
    monkeypatch.setenv(runs.RUNNING_PARTS, str(running))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    seen = []

    def execute(nb, out, prof, *a):
        seen.append(cli.os.environ["OMP_NUM_THREADS"])
        (running / "1").unlink(missing_ok=True)  # the other part finishes during this notebook
        return 0.0

    monkeypatch.setattr(cli, "execute_notebook", execute)
    ahead = []  # the notebooks whose stages start ahead (none run here)
    monkeypatch.setattr(cli, "run_ahead", lambda cfg, notebooks: ahead.append([nb.stem for nb in notebooks]))
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # restored afterwards, as is MKL_NUM_THREADS
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    cli.run("smoke", stages=["01", "02"], root=tmp_path)
    assert seen == ["1", "2"]
    assert ahead == [["02_sft"]]  # on one thread each notebook runs its stages; on two, the rest run ahead
    monkeypatch.delenv(runs.RUNNING_PARTS)
    assert runs.threads_for_next_notebook() is None  # not a part: the kernel keeps what it was given


def test_each_task_has_its_part_of_the_book():
    from gendiv.config import TASKS

    assert set(cli.PARTS) == set(TASKS.values())
    toc = (ROOT / "book" / "_toc.yml").read_text()
    for folder in cli.PARTS.values():
        for nb in NOTEBOOKS:
            assert f"file: {folder}/{nb.stem}\n" in toc


def _book_sources(root):
    """The repository's notebooks and book sources (no build, no executed part) under ``root``."""
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("_build", "notebooks"))


def _stub_part(folder):
    """A part of the book whose every notebook counts as executed (empty stand-ins)."""
    folder.mkdir()
    for nb in NOTEBOOKS:
        (folder / nb.name).write_text("{}")


def test_the_book_leaves_out_a_part_not_executed_and_refuses_a_part_half_run(tmp_path):
    _book_sources(tmp_path)
    _stub_part(tmp_path / "book" / "notebooks")
    parts = cli.executed_parts(tmp_path)
    assert list(parts) == ["summarisation"]
    toc = yaml.safe_load(cli.built_toc(tmp_path / "book", parts).read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "notebooks/10_scorecard" in files and "scorecard" in files
    assert not any(f.startswith("instruction/") for f in files)
    assert len(toc["parts"]) == 2 and toc["root"] == "intro"
    (tmp_path / "book" / "instruction").mkdir()
    (tmp_path / "book" / "instruction" / NOTEBOOKS[0].name).write_text("{}")
    with pytest.raises(cli.RunFailed, match=r"instruction following part .* not finished: 02_sft.ipynb"):
        cli.executed_parts(tmp_path)


def test_book_refuses_to_build_before_the_notebooks_ran(tmp_path):
    _book_sources(tmp_path)
    with pytest.raises(cli.RunFailed, match="Not yet executed: 01_data_splits.ipynb"):
        cli.build_book(tmp_path)


def test_make_book_stops_before_running_when_the_book_could_not_be_built(tmp_path):
    _book_sources(tmp_path)
    with pytest.raises(cli.RunFailed, match="smoke-instruct .*without its summarisation part"):
        cli.check_book_after(["smoke-instruct"], tmp_path)
    cli.check_book_after(["smoke"], tmp_path)
    cli.check_book_after(["smoke", "smoke-instruct"], tmp_path)
    _stub_part(tmp_path / "book" / "notebooks")  # a built summarisation part: instruction adds to it
    cli.check_book_after(["smoke-instruct"], tmp_path)


def test_gendiv_run_plans_the_stages_ahead_with_what_each_waits_for(tmp_path):
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    jobs, after = cli.plan_ahead(cfg, cli.list_notebooks())
    sweep = [s for s in jobs if s.startswith("ppo_kl")]
    assert sweep and set(jobs) == {"data", "base", "sft", "sft_eval", "comparisons", "reward", "ppo", "ppo_eval",
                                   "bon", "evaluation", "diversity", "kl_sweep", *sweep}  # not chapters 9, 10
    assert after["kl_sweep"] == ("ppo_eval", *sweep)  # not chapter 7: it runs beside it
    assert {after[s] for s in ["ppo", "bon", *sweep]} == {("reward",)}  # the trainings that run at once
    # chapter 4 alone on a fresh run: what it waits for is neither done nor planned, so its notebook
    # runs it (and says what to run first)
    assert cli.plan_ahead(cfg, cli.select_notebooks(["04"])) == ({}, {})


def test_a_notebook_starts_once_its_stages_ran_ahead_or_the_stages_ahead_ended(tmp_path):
    import threading
    from pathlib import Path
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    times = {}

    def ahead():  # the data stage after 0.5 s, then 1.5 s more of other stages
        time.sleep(0.5)
        runs.run_stage(cfg, "data", lambda root: {"x": runs.write_text(root / "x.txt", "x")})
        times["data"] = time.perf_counter()
        time.sleep(1.5)

    thread = threading.Thread(target=ahead)
    thread.start()
    cli.wait_for_stages(cfg, Path("01_data_splits.ipynb"), thread, poll_s=0.05)
    assert "data" in times and thread.is_alive()  # chapter 1 starts beside the stages still running
    cli.wait_for_stages(cfg, Path("02_sft.ipynb"), thread, poll_s=0.05)
    assert not thread.is_alive()  # its stages never ran ahead: it waits for the end, then runs them itself
    assert time.perf_counter() - times["data"] >= 1.5


@pytest.mark.slow
def test_notebooks_run_on_smoke_and_the_book_builds_strictly(tmp_path):
    _book_sources(tmp_path)
    run_dir = tmp_path / "runs" / "smoke"
    # On two threads or more, `gendiv run` starts chapters 1-8's stages ahead of the notebooks, side by
    # side; here on one, in turn, each allowed to read only the stages it waits for (Stage.after), so
    # a prerequisite missing from the table fails it; the notebooks then read them from the cache.
    ahead = cli.run_ahead(load_profile("smoke", run_dir=str(run_dir)), threads=1)
    sweep = [s for s in ahead if s.startswith("ppo_kl")]
    assert sweep and ahead == ["data", "base", "sft", "sft_eval", "comparisons", "reward", "ppo", "ppo_eval",
                               "bon", "evaluation", "diversity", *sweep, "kl_sweep"]
    assert all((run_dir / "manifests" / f"{s}.json").exists() for s in ahead)
    times = cli.run("smoke", root=tmp_path, run_dir=str(run_dir))
    assert set(times) == {nb.stem for nb in NOTEBOOKS}

    results = run_dir / "results"
    assert list(pd.read_csv(results / "splits.csv").columns) == data.SPLITS_COLUMNS
    assert list(pd.read_csv(results / "judge_checks.csv").columns) == data.JUDGE_CHECK_COLUMNS
    # the results contract (book/protocol.md)
    contract = {"winrates.csv": ["method", "split", "opponent", "judge", "win_rate", "ci_low", "ci_high", "n"],
                "diversity.csv": ["method", "split", "scope", "metric", "value", "ci_low", "ci_high", "n_inputs", "k"],
                "rm_accuracy.csv": ["split", "accuracy", "ci_low", "ci_high", "n"],
                "kl_sweep.csv": ["kl_coef", "split", "measure", "value", "ci_low", "ci_high", "estimator", "method"],
                "claims.csv": ["claim", "statement", "evidence", "verdict", "task"],
                "competence.csv": ["check", "split", "value", "threshold", "passed", "claims"]}
    for name, columns in contract.items():
        frame = pd.read_csv(results / name)
        assert list(frame.columns[: len(columns)]) == columns, name
        assert len(frame), name
    # the sweep's estimator axis: smoke's k1 run beside k2's, every run's true KL measured, C7 computed
    sweep = pd.read_csv(results / "kl_sweep.csv")
    assert set(sweep[sweep["method"] == "ppo"]["estimator"]) == {"squared", "log_ratio"}
    true_kl = sweep[sweep["measure"] == "true_kl"]
    true_kl = true_kl[true_kl["method"] == "ppo"]
    assert len(true_kl) == 4 * len(data.SPLITS) and true_kl["value"].notna().all()
    assert (run_dir / "manifests" / "ppo_kl0.5_log_ratio.json").exists()
    # each run's entropy over the last fifth of its training, from its own step log
    log = pd.read_csv(run_dir / "logs" / "ppo_kl0.5_log_ratio.csv")
    entropy = sweep[(sweep["measure"] == "train_entropy") & (sweep["estimator"] == "log_ratio")]
    assert list(entropy["kl_coef"]) == [0.05, 0.5]
    assert entropy["value"].iloc[1] == pytest.approx(log["entropy"].tail(max(1, len(log) // 5)).mean())
    # chapter 10's spread checks read each line's true KL on ID (0.05 over 0.5 in smoke), not the
    # penalty's own estimate at the end of training; each carries C6 on its own line (and C7)
    competence = pd.read_csv(results / "competence.csv").set_index("check")
    for est, claim in (("squared", "C6"), ("log_ratio", "C6[log_ratio]")):
        spread = competence.loc[claims.spread_check(est)]
        line = true_kl[(true_kl["estimator"] == est) & (true_kl["split"] == "id")].set_index("kl_coef")["value"]
        expected = line[0.05] / line[0.5] if line[0.5] > 0 else float("inf")
        assert spread["value"] == pytest.approx(round(expected, 4))
        assert spread["passed"] == (expected >= claims.KL_SPREAD and line[0.05] > line[0.5])
        assert spread["claims"] == f"{claim} C7"
    assert (run_dir / "figures" / "kl_estimator_frontier.png").exists()
    winrates = pd.read_csv(results / "winrates.csv")
    others = {"dpo_beta0.1", "rloo", "grpo"}  # chapter 9's methods, in the same tables
    assert set(winrates["method"]) == {"base", "sft", "bon", "ppo"} | others
    assert set(sweep["method"]) == {"ppo"} | others
    assert set(sweep[sweep["method"] == "grpo"]["estimator"]) == {"k3"}
    for m in others:  # each has its true KL measured on every split, as the sweep's runs
        assert sweep[(sweep["method"] == m) & (sweep["measure"] == "true_kl")]["value"].notna().sum() == 3
    # chapter 9's differences from SFT pair with the same SFT values chapter 7 measured: a method's
    # across-input difference is its value minus SFT's in diversity.csv
    div = pd.read_csv(results / "diversity.csv").set_index(["method", "split", "scope", "metric"])["value"]
    vs_sft = pd.read_csv(results / "diversity_vs_sft.csv")
    for r in vs_sft[vs_sft["method"].isin(others) & (vs_sft["scope"] == "across_input")].dropna().itertuples():
        assert r.difference == pytest.approx(div[r.method, r.split, r.scope, r.metric]
                                             - div["sft", r.split, r.scope, r.metric], abs=1e-9)
    assert set(winrates["split"]) == set(data.SPLITS)
    # chapter 7's first BoN output of each input is chapter 5's (the best of the same scored candidates),
    # and its PPO samples are the ones chapter 4 drew, which the sweep's run at 0.05 measures too
    for split in data.SPLITS:
        bon_k = runs.read_jsonl(run_dir / "samples" / f"bon_k2_{split}.jsonl")
        assert [r["outputs"][0] for r in bon_k] == [r["output"] for r in
                                                    runs.read_jsonl(run_dir / "samples" / f"bon_{split}.jsonl")][:4]
    per_input = pd.read_csv(run_dir / "logs" / "diversity_per_input.csv")
    swept = pd.read_csv(run_dir / "logs" / "kl_sweep_per_input.csv")
    ppo_ead = per_input[(per_input["method"] == "ppo") & (per_input["metric"] == "ead")]
    own_ead = swept[(swept["kl_coef"] == 0.05) & (swept["estimator"] == "squared")
                    & (swept["measure"] == "per_input_ead")]
    assert len(ppo_ead) == 12 and list(own_ead["value"]) == pytest.approx(list(ppo_ead["value"]))
    # each win rate is the mean of its per-input verdicts (logs/verdicts.csv), ties counting one half
    verdicts_per_input = pd.read_csv(run_dir / "logs" / "verdicts.csv")
    means = verdicts_per_input.groupby(["method", "split", "opponent", "judge"])["verdict"].mean()
    for row in winrates.itertuples():
        assert row.win_rate == pytest.approx(means[row.method, row.split, row.opponent, row.judge])
        assert row.ci_low <= row.win_rate <= row.ci_high
    diversity = pd.read_csv(results / "diversity.csv")
    nli = diversity[diversity["metric"] == "nli"]
    assert nli["value"].isna().all() and nli["note"].str.contains("no NLI model").all()
    measured = diversity[diversity["metric"].isin(["ead", "sbert", "oracle", "sbert_effective", "oracle_effective"])]
    assert measured["value"].notna().all() and {"per_input", "across_input"} == set(measured["scope"])
    verdicts = pd.read_csv(results / "claims.csv")
    method_claims = [f"{c}[{m}]" for m in ("dpo_beta0.1", "rloo", "grpo") for c in ("C1", "C4")]
    assert list(verdicts["claim"]) == claims.ALL_CLAIMS.split() + ["C6[log_ratio]"] + method_claims
    # C6 on k1's line: at 0.5 minus at 0.05, paired over inputs, from k1's own runs
    per_input = pd.read_csv(run_dir / "logs" / "kl_sweep_per_input.csv")
    gold = per_input[(per_input["estimator"] == "log_ratio") & (per_input["split"] == "id")
                     & (per_input["measure"] == "gold_utility")].pivot(index="uid", columns="kl_coef", values="value")
    row = pd.read_csv(results / "claims_evidence.csv").set_index(["claim", "comparison"]).loc[
        ("C6[log_ratio]", "id performance (gold utility) at kl_coef 0.5 - at 0.05")]
    assert row["value"] == pytest.approx((gold[0.5] - gold[0.05]).mean())
    assert set(verdicts["verdict"]) <= set(claims.VERDICTS)
    # every verdict follows from its comparisons (results/claims_evidence.csv) by the claim's rule
    evidence = pd.read_csv(results / "claims_evidence.csv")
    assert list(evidence.columns) == claims.EVIDENCE_COLUMNS
    assert claims.verdicts_from(evidence) == dict(zip(verdicts["claim"], verdicts["verdict"]))
    executed = json.loads((tmp_path / "book" / "notebooks" / "01_data_splits.ipynb").read_text())
    text = json.dumps(executed)
    assert "judge preferred the reference on at least" in text
    assert "image/png" in text

    index = cli.build_book(tmp_path)
    assert index.exists()
    chapter1 = (tmp_path / "book" / "_build" / "html" / "notebooks" / "01_data_splits.html").read_text()
    # the page opens with its text and a collapsed config, not the parameter cells
    assert "tag_injected-parameters" not in chapter1 and "tag_parameters" not in chapter1
    assert "settings differ from the defaults" in chapter1
    assert "tag_hide-input" in chapter1  # the setup code folded behind a toggle, its config line shown
    # each chapter opens with its key figure (the scorecard: its table): right under the title and
    # the one paragraph saying what it reproduces, before the chapter's text
    for nb in NOTEBOOKS:
        page = (tmp_path / "book" / "_build" / "html" / "notebooks" / f"{nb.stem}.html").read_text()
        title = page.index("<h1", page.index("<article"))
        key = page.index('<div class="output text_html">' if nb.stem == "10_scorecard" else "<img", title)
        assert page.count("<p>", title, key) == 1, f"{nb.stem}: text comes before the key result"
    # The scorecard and intro pages paste chapter 10's generated verdicts and run description.
    html = tmp_path / "book" / "_build" / "html"
    scorecard = (html / "scorecard.html").read_text()
    for row in verdicts.itertuples():
        assert f"{row.claim} is {row.verdict}" in scorecard
    assert claims.rule_text("C5") in scorecard  # the combination rules, generated from the code
    assert "No seeds run for this profile yet" in scorecard and "gendiv seeds --profile smoke" in scorecard
    # smoke's micro models and samples fail the competence checks, and every verdict says so
    checks = pd.read_csv(results / "competence.csv")
    evaluated = checks[checks["check"] == "evaluation inputs"]
    assert set(evaluated["split"]) == set(data.SPLITS) and not evaluated["passed"].any()
    # the RM is also checked where BoN and PPO use it: between two SFT samples, on every split
    ranks = checks[checks["check"].str.startswith("RM accuracy on two SFT samples")].set_index("split")
    by_kind = pd.read_csv(run_dir / "logs" / "rm_accuracy_by_kind.csv")
    by_kind = by_kind[by_kind["kind"] == "sft_vs_sft"].set_index("split")
    assert set(ranks.index) == set(data.SPLITS) and "id" in by_kind.index
    for split, r in ranks.iterrows():  # smoke has SFT-SFT pairs in distribution only: the others fail
        low = by_kind["ci_low"].get(split, float("nan"))
        assert (r["value"] == round(low, 4) and r["passed"] == (low > 0.5)) or (pd.isna(low) and not r["passed"])
    assert scorecard.count("Not yet a finding") == len(verdicts)
    # PPO against SFT in gold utility, paired over the ID inputs: PPO's outputs minus SFT's (not
    # BoN's, not the other way round, not another split), the interval's lower end above zero
    ppo_over = checks.set_index("check").loc[claims.PPO_OVER_SFT]
    ppo_u, sft_u = (outputs.expected_utilities(runs.read_jsonl(run_dir / "samples" / f"{m}_id.jsonl"))
                    for m in ("ppo", "sft"))
    _, low, _ = stats.paired_difference(ppo_u, sft_u, seed=yaml.safe_load(
        (run_dir / "config.yaml").read_text())["seed"])
    assert ppo_over["split"] == "id" and ppo_over["value"] == pytest.approx(round(low, 4))
    assert ppo_over["passed"] == (low > 0) and ppo_over["claims"] == claims.ALL_CLAIMS
    # chapter 3 sets the RM beside the judge, part by part of the gold utility (smoke's few OOD
    # pairs may all be judge ties: in distribution at least)
    by_part = pd.read_csv(run_dir / "logs" / "rm_agreement_by_part.csv")
    assert "id" in set(by_part["split"]) and set(by_part["split"]) <= set(data.SPLITS)
    assert set(by_part["who"]) == {"judge", "reward model"}
    assert len(by_part) and set(by_part["part"]) <= set(reward.UTILITY_PARTS)  # smoke: often length alone
    assert "What the RM rewards, part by part" in (html / "notebooks" / "03_reward_model.html").read_text()
    # ... and beside the SFT model's own likelihood, on the same pairs, split by split
    stick = pd.read_csv(run_dir / "logs" / "rm_yardstick.csv")
    rm_rows = stick[stick["scorer"] == "reward model"].set_index("split")
    assert set(stick["scorer"]) == {"reward model", reward.LIKELIHOOD_SCORER} and "id" in rm_rows.index
    accuracy = pd.read_csv(results / "rm_accuracy.csv").set_index("split").loc[rm_rows.index]
    assert np.allclose(rm_rows["accuracy"], accuracy["accuracy"], equal_nan=True)
    # chapter 2 breaks each model's gold utility into its terms; the references are the world's own
    # text, so they break no word and invent no fact (a vocabulary of another world would say they do)
    parts = pd.read_csv(run_dir / "logs" / "output_parts.csv")
    assert len(parts) == 3 * len(data.SPLITS) * len(outputs.OUTPUT_PARTS)
    refs = parts[parts["method"] == "reference"].set_index(["part", "split"])["mean"]
    assert (refs["any_broken"] == 0).all() and (refs["hallucinated"] == 0).all()
    assert "SFT's first samples" in (html / "notebooks" / "02_sft.html").read_text()
    world_page = (html / "world.html").read_text()  # the judge's weights, pasted from chapter 1
    assert "facts the post does not contain" in world_page and "0.03" in world_page
    intro = (html / "intro.html").read_text()
    assert "produced by the <b>smoke</b> profile" in intro
    assert "colab.research.google.com/github/gendiv/gendiv/blob/main/notebooks/01_data_splits.ipynb" in \
        (html / "notebooks" / "01_data_splits.html").read_text()

    # The second task: the same notebooks, unchanged, on smoke-instruct (Alpaca's prompt template
    # without its opening sentence, as tiny-instruct; the instruction judge, its oracle), into the
    # results contract and the book's second part
    instruct_run = tmp_path / "runs" / "smoke-instruct"
    times = cli.run("smoke-instruct", root=tmp_path, run_dir=str(instruct_run))
    assert set(times) == {nb.stem for nb in NOTEBOOKS}
    test = json.loads((instruct_run / "data" / "id_test.jsonl").read_text().splitlines()[0])
    assert test["prompt"].startswith("### Instruction:\n") and "\n\n### Input:\n" in test["prompt"]
    assert test["prompt"].endswith("### Response:")
    splits = pd.read_csv(instruct_run / "results" / "splits.csv").set_index(["split", "role"])
    assert splits.loc[("ood_far", "test"), "genre"] == "sequential"
    assert splits.loc[("id", "test"), "genre"] == "instruction"
    from gendiv.instruct import CORRUPTIONS
    assert set(pd.read_csv(instruct_run / "results" / "judge_checks.csv")["variant"]) == set(CORRUPTIONS)
    instruct_winrates = pd.read_csv(instruct_run / "results" / "winrates.csv")
    assert set(instruct_winrates["judge"]) == {"world"} and set(instruct_winrates["split"]) == set(data.SPLITS)
    instruct_diversity = pd.read_csv(instruct_run / "results" / "diversity.csv")
    assert instruct_diversity.loc[instruct_diversity["metric"] == "oracle", "value"].notna().all()
    instruct_card = pd.read_csv(instruct_run / "results" / "claims.csv")
    assert list(instruct_card["claim"]) == list(verdicts["claim"])
    assert set(instruct_card["task"]) == {"instruction following"} and set(verdicts["task"]) == {"summarisation"}
    assert not (tmp_path / "book" / "notebooks" / "part.json").read_text().count("smoke-instruct")

    cli.build_book(tmp_path)
    for nb in NOTEBOOKS:  # both parts, each chapter's page once per part
        assert (html / "notebooks" / f"{nb.stem}.html").exists() and (html / "instruction" / f"{nb.stem}.html").exists()
    page = (html / "instruction" / "06_evaluation.html").read_text()
    assert "tiny-instruct" not in page and "smoke-instruct" in page
    # each part's generated text speaks of its task's outputs
    assert "held-out responses" in (html / "instruction" / "03_reward_model.html").read_text()
    assert "held-out summaries" in (html / "notebooks" / "03_reward_model.html").read_text()
    # its launch button opens the same clean notebook in the repository
    assert "colab.research.google.com/github/gendiv/gendiv/blob/main/notebooks/06_evaluation.ipynb" in page
    assert "blob/main/instruction/" not in page
    # the scorecard gives every claim's verdict on each task, from each run's claims.csv
    scorecard = (html / "scorecard.html").read_text()
    assert "summarisation (smoke)" in scorecard and "instruction following (smoke-instruct)" in scorecard
    table = scorecard[scorecard.index("summarisation (smoke)"):]
    for (claim, v1), v2 in zip(zip(verdicts["claim"], verdicts["verdict"]), instruct_card["verdict"]):
        assert f"<td><p>{claim}</p></td>\n<td><p>{v1}</p></td>\n<td><p>{v2}</p></td>" in table, claim
    assert "has no" not in scorecard  # both parts are in this copy


def test_notebook_code_reads_at_the_column_width():
    """Code lines of the notebooks fit the book's column (black-style at 84, `make sync` formats)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", *map(str, NOTEBOOK_SOURCES)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in NOTEBOOK_SOURCES:
        long = [i for i, line in enumerate(path.read_text().splitlines(), 1)
                if len(line) > 84 and not line.lstrip().startswith("#")]
        assert not long, f"{path.name}: code lines over 84 characters: {long}"


def test_executed_notebooks_leave_the_parameter_cells_out_of_the_book(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'tiny'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("from gendiv import runs\ncfg = runs.start(profile)"),
                nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    cli.hide_parameter_cells(path)
    tags = [c.metadata.get("tags", []) for c in nbformat.read(str(path), as_version=4).cells]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["hide-input"], []]


def test_the_config_opens_a_chapter_collapsed_with_what_differs_from_the_defaults():
    from gendiv import runs
    from gendiv.config import differences, load_profile

    cfg = load_profile("smoke")
    changed = differences(cfg)
    assert "model.base: \"scratch\"" in changed and "ppo.steps: 2" in changed
    assert not any(line.startswith("ppo.kl_coef") for line in changed)  # smoke keeps the paper's 0.05
    html = runs.config_html(cfg)
    assert html.startswith("<details>") and f"{len(changed)} settings differ from the defaults" in html
    assert html.count("<details>") == 2  # the full config is a second click away


def test_an_empty_bar_chart_says_why():
    from gendiv import plots

    zeros = pd.DataFrame({"method": ["sft", "ppo"], "split": ["id", "id"], "win_rate": [0.0, 0.0]})
    assert plots.empty_bars_reason(zeros, "win_rate", "win rate vs reference (95% CI)") == (
        "Every bar is 0: the win rate vs reference is 0 for every group (2 of them), so there is nothing to draw.")
    assert plots.empty_bars_reason(zeros.assign(win_rate=[0.0, 0.1]), "win_rate", "win rate") == ""
