"""Where each stage's outputs live and how they load: the base, SFT and PPO policies, the
normalised reward model, the test inputs every method is evaluated on, and each method's one
output per input. A stage that needs an earlier one's outputs asks here, so no stage imports
another to find its files; a missing stage raises StageMissingError naming the notebook to run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gendiv import data, runs, stages
from gendiv.config import Config
from gendiv.models import RewardModel, pick_device


def base_path(cfg: Config) -> Path:
    """Where the base model of a finished ``base`` stage lives (a run folder, the package's shipped
    checkpoint, a hub id's local copy)."""
    return Path(json.loads(runs.artifact(cfg, "base", "base_ref").read_text())["path"])


def sft_path(cfg: Config) -> Path:
    """The SFT policy (chapter 2)."""
    return runs.artifact(cfg, "sft", "sft_model")


def with_kl_coef(cfg: Config, kl_coef: float) -> Config:
    """``cfg`` with ppo.kl_coef replaced (the KL sweep's runs)."""
    return dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, kl_coef=float(kl_coef)))


def ppo_stage(cfg: Config, kl_coef: float | None = None) -> str:
    """'ppo' for the profile's kl_coef, 'ppo_kl<value>' for another coefficient of the sweep."""
    if kl_coef is None or float(kl_coef) == cfg.ppo.kl_coef:
        return "ppo"
    return f"{stages.SWEEP_PREFIX}{float(kl_coef):g}"


def ppo_path(cfg: Config, kl_coef: float | None = None) -> Path:
    """The PPO policy of chapter 4 (or of the sweep's run for ``kl_coef``)."""
    return runs.artifact(cfg, ppo_stage(cfg, kl_coef), "policy")


def load_reward_model(cfg: Config) -> RewardModel:
    """The trained, normalised RM of chapter 3."""
    return RewardModel.load(runs.artifact(cfg, "reward", "rm"), pick_device(cfg.model.device), cfg.model.max_length)


def test_records(cfg: Config, n_inputs: int | None = None) -> dict[str, list[dict]]:
    """{split: the first ``n_inputs`` (default sampling.n_eval_inputs) test records}: every
    method is evaluated on the same inputs, in each split's fixed order (the paper: the first 500)."""
    n = cfg.sampling.n_eval_inputs if n_inputs is None else n_inputs
    return {s: data.load_split(cfg, s, "test")[:n] for s in data.available_splits(cfg)}


METHOD_SOURCES = {"base": ("sft_eval", "base"), "sft": ("sft_eval", "sft"), "bon": ("bon", "bon"),
                  "ppo": ("ppo_eval", "ppo")}
"""Each method's one output per test input: (stage, file prefix)."""


def method_outputs(cfg: Config) -> dict[str, dict[str, list[dict]]]:
    """{method: {split: rows}} of one output per test input for base, SFT (chapter 2), BoN
    (chapter 5) and PPO (chapter 4): the same inputs in the same order for every method."""
    splits = data.available_splits(cfg)
    return {method: {s: runs.read_jsonl(runs.artifact(cfg, stage, f"{prefix}_{s}")) for s in splits}
            for method, (stage, prefix) in METHOD_SOURCES.items()}
