"""The table of stages, and the library's layers: every import points down."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gendiv import runs, stages
from gendiv.config import SECTIONS, load_profile

LIB = Path(__file__).resolve().parents[1] / "lib" / "gendiv"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

ORDER = ["world", "instruct", "stats", "config", "stages", "runs", "embeddings", "plots", "data", "lm", "models",
         "artifacts", "outputs", "judges",
         # the stages, in pipeline order
         "pretraining", "sft", "reward", "ppo", "bon", "evaluation", "diversity", "sweep", "align", "claims",
         "cli", "__main__"]
"""The library's modules from the ground up: each may import only modules before it."""


def _gendiv_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at top level) of every gendiv module ``path`` imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "gendiv":
                names = [a.name for a in node.names]
            elif node.module.startswith("gendiv."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("gendiv.")]
        out += [(n, node.lineno, node.col_offset == 0) for n in names if (LIB / f"{n}.py").exists()]
    return out


def test_every_module_has_its_place_in_the_layers():
    modules = {p.stem for p in LIB.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER), f"unplaced: {modules - set(ORDER)}; gone: {set(ORDER) - modules}"


@pytest.mark.parametrize("module", ORDER)
def test_imports_point_down_and_sit_at_the_top(module):
    for name, line, top in _gendiv_imports(LIB / f"{module}.py"):
        assert ORDER.index(name) < ORDER.index(module), f"{module}.py:{line} imports {name}, which sits above it"
        assert top, f"{module}.py:{line} imports gendiv.{name} inside a function"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    def alone(module):
        return module, subprocess.run([sys.executable, "-c", f"import gendiv.{module}"], capture_output=True,
                                      text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for module, result in pool.map(alone, ORDER):
            assert result.returncode == 0, f"gendiv.{module}: {result.stderr[-400:]}"


def test_the_table_names_real_notebooks_sections_keys_and_builders():
    cfg_dict = load_profile("smoke").to_dict()
    for row in stages.STAGES:
        assert (NOTEBOOKS / f"{row.notebook}.py").exists(), row
        assert set(row.sections) <= set(SECTIONS), row
        for key in row.ignore:
            section, name = key.split(".")
            assert section in row.sections and name in cfg_dict[section], (row.name, key)
        assert callable(stages.builder(row.name))
    assert stages.stage("ppo_kl0.2").notebook == "08_kl_sweep"
    assert stages.stage("ppo_kl0.2").sections == stages.stage("ppo").sections
    with pytest.raises(KeyError, match="Unknown stage 'nope'"):
        stages.stage("nope")


def test_seeds_differ_between_stages_that_sample_the_same_model():
    cfg = load_profile("smoke", seed=5)
    seeds = {name: stages.seed(cfg, name) for name in ("sft_eval", "bon", "diversity")}
    assert seeds == {"sft_eval": 5, "bon": 106, "diversity": 207}


def test_a_stage_cache_follows_its_sections_and_ignores_what_it_should():
    base = load_profile("smoke")
    assert runs.stage_hash(base, "ppo") == runs.stage_hash(load_profile("smoke", **{"ppo.kl_grid": [0.3]}), "ppo")
    assert runs.stage_hash(base, "ppo") != runs.stage_hash(load_profile("smoke", **{"ppo.lr": 0.5}), "ppo")
    assert runs.stage_hash(base, "sft") == runs.stage_hash(load_profile("smoke", **{"ppo.lr": 0.5}), "sft")
    assert runs.stage_hash(base, "kl_sweep") != runs.stage_hash(load_profile("smoke", **{"ppo.kl_grid": [0.3]}),
                                                                "kl_sweep")
    # chapter 4 draws PPO's per-input samples: it follows diversity's k and n_inputs, nothing else of it
    assert runs.stage_hash(base, "ppo_eval") != runs.stage_hash(load_profile("smoke", **{"diversity.k": 5}), "ppo_eval")
    assert runs.stage_hash(base, "ppo_eval") != runs.stage_hash(load_profile("smoke", **{"diversity.n_inputs": 2}),
                                                                "ppo_eval")
    assert runs.stage_hash(base, "ppo_eval") == runs.stage_hash(load_profile("smoke", **{"diversity.n_boot": 7}),
                                                                "ppo_eval")


@pytest.mark.parametrize("force", [False, True])
def test_the_kl_sweep_never_retrains_chapter_4s_run(monkeypatch, tmp_path, force):
    # the sweep reads chapter 4's run's samples (ppo_eval): a forced sweep that retrained
    # it would measure samples of a policy it had replaced; the other runs train when not done or forced
    from gendiv import sweep
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    done = {sweep.artifacts.ppo_stage(cfg, 0.5, cfg.ppo.kl_estimator)}  # trained and cached; the others not
    monkeypatch.setattr(sweep.runs, "stage_to_run", lambda c, name: name not in done)
    queued = {}
    monkeypatch.setattr(sweep.runs, "side_by_side", lambda c, jobs: queued.update(jobs) or {})
    trained = sweep.train_runs(cfg, force=force)
    everything = set(sweep.artifacts.sweep_stages(cfg))
    assert "ppo" in everything and done < everything and "ppo" not in queued
    assert set(queued) == (everything - {"ppo"} if force else everything - {"ppo"} - done)
    assert sorted(trained) == sorted(r for r in sweep.artifacts.sweep_runs(cfg)
                                     if sweep.artifacts.ppo_stage(cfg, *r) in queued)
