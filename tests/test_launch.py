"""`gendiv stage`, the entry for launchers: one stage into the run folder the notebooks read, and
the training stages data-parallel under `accelerate launch` with only the main process writing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from gendiv import cli, data, runs
from gendiv.config import ConfigError, load_profile

LAUNCH_CONFIGS = Path(__file__).resolve().parents[1] / "lib" / "gendiv" / "launch"


def launch_two(*args: str, run_dir: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m gendiv ...` on the CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "gendiv", *args, "--profile", "smoke", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_training_stages_run_data_parallel_and_the_notebooks_find_them(tmp_path, capsys):
    run = tmp_path / "run"
    for name in ("data", "base"):
        cli.run_one_stage(name, "smoke", str(run))
    sft = launch_two("stage", "sft", run_dir=run)
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert sft.stdout.count("[sft] running") == 2  # both processes trained
    cli.run_one_stage("comparisons", "smoke", str(run))
    for stage in ("reward", "ppo", "dpo", "grpo"):  # the last two: chapter 9's, through TRL's trainers
        result = launch_two("stage", stage, run_dir=run)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(f"[{stage}] done") == 2
    # sft.batch_size is global: each of the 2 processes takes 4 of its 8 rows, so an epoch has as
    # many optimiser steps as in one process (a per-device 8 would halve them)
    cfg = load_profile("smoke", run_dir=str(run))
    rows = len(data.load_split(cfg, "id", "sft_train")) + len(data.sft_mix_records(
        data.make_world(cfg), cfg, len(data.load_split(cfg, "id", "sft_train")))) if cfg.sft.pretrain_mix else \
        len(data.load_split(cfg, "id", "sft_train"))
    steps = pd.read_csv(run / "logs" / "sft.csv")["step"].max()
    assert steps == math.ceil(rows / cfg.sft.batch_size) * cfg.sft.epochs
    pairs = len(runs.read_jsonl(run / "data" / "comparisons_train.jsonl"))  # align.dpo_batch_size is global too
    # smoke's RM is the cross-encoder (reward.body), trained by gendiv's own loop: reward.batch_size global too
    assert pd.read_csv(run / "logs" / "reward.csv")["step"].max() == \
        math.ceil(pairs / cfg.reward.batch_size) * cfg.reward.epochs
    assert pd.read_csv(run / "logs" / "dpo.csv")["step"].max() == math.ceil(pairs / cfg.align.dpo_batch_size)
    assert pd.read_csv(run / "logs" / "grpo.csv")["step"].max() == cfg.align.rl_steps
    # one writer: every artifact complete, nothing half-written left behind
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers, leftovers
    for stage in ("sft", "reward", "ppo", "dpo", "grpo"):
        manifest = json.loads((run / "manifests" / f"{stage}.json").read_text())
        assert all((run / rel).exists() for rel in manifest["artifacts"].values())
    # the notebooks (and a later `gendiv stage`) find the stages finished
    capsys.readouterr()
    for stage in ("sft", "reward", "ppo", "dpo", "grpo"):
        cli.run_one_stage(stage, "smoke", str(run))
        assert f"[{stage}] cached" in capsys.readouterr().out


def test_stages_that_sample_refuse_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"Stage 'bon' samples and scores on one process; 2 were launched"):
        cli.run_one_stage("bon", "smoke")


def test_unknown_stages_name_the_table(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown stage 'rm'; the stages are data, base, sft"):
        cli.run_one_stage("rm", "smoke", str(tmp_path))
    with pytest.raises(ConfigError, match=r"ppo_kl<kl_coef>\[_<estimator>\], e.g. ppo_kl0.5 or ppo_kl0.05_log_ratio"):
        cli.run_one_stage("ppo_klhigh", "smoke", str(tmp_path))
    # a sweep run of another estimator is a stage name too
    from gendiv import stages
    assert stages.parse_sweep_run("ppo_kl0.05_log_ratio") == (0.05, "log_ratio")
    assert stages.parse_sweep_run("ppo_kl1") == (1.0, None)


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    runs.write_json(tmp_path / "x.json", {"a": 1})
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary copy
    monkeypatch.setenv("RANK", "0")
    runs.write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_batch_sizes_are_global(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runs.per_process(16, "sft.batch_size") == 4
    with pytest.raises(ConfigError, match=r"reward.batch_size \(6\) must divide by the 4 processes"):
        runs.per_process(6, "reward.batch_size")


@pytest.mark.parametrize("path", sorted(LAUNCH_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_load(path):
    """Each shipped config is one accelerate reads (its own loader), for the setup it names."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert config.distributed_type.value == raw["distributed_type"]
    if raw["distributed_type"] == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


def test_the_shipped_accelerate_configs_are_the_ones_the_docs_name():
    names = {p.stem for p in LAUNCH_CONFIGS.glob("*.yaml")}
    assert names == {"one_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "multi_cpu"}
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "book" / "gpus.md"):
        text = doc.read_text()
        for name in names:
            assert f"{name}.yaml" in text, (doc.name, name)
