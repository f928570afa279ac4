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
from gendiv.models import RewardModel, autocast_bf16, pick_device


def base_path(cfg: Config) -> Path:
    """Where the base model of a finished ``base`` stage lives (a run folder, the package's shipped
    checkpoint, a hub id's local copy)."""
    return Path(json.loads(runs.artifact(cfg, "base", "base_ref").read_text())["path"])


def sft_path(cfg: Config) -> Path:
    """The SFT policy (chapter 2)."""
    return runs.artifact(cfg, "sft", "sft_model")


def with_kl_coef(cfg: Config, kl_coef: float, estimator: str | None = None) -> Config:
    """``cfg`` with ppo.kl_coef (and ppo.kl_estimator, if given) replaced (the KL sweep's runs)."""
    ppo = dataclasses.replace(cfg.ppo, kl_coef=float(kl_coef), kl_estimator=estimator or cfg.ppo.kl_estimator)
    return dataclasses.replace(cfg, ppo=ppo)


def ppo_stage(cfg: Config, kl_coef: float | None = None, estimator: str | None = None) -> str:
    """'ppo' for the profile's kl_coef and estimator; 'ppo_kl<value>' for another coefficient of
    the sweep, 'ppo_kl<value>_<estimator>' for another estimator (the sweep's estimator axis)."""
    beta = cfg.ppo.kl_coef if kl_coef is None else float(kl_coef)
    own_estimator = estimator is None or estimator == cfg.ppo.kl_estimator or beta == 0
    if beta == cfg.ppo.kl_coef and own_estimator:
        return "ppo"
    name = f"{stages.SWEEP_PREFIX}{beta:g}"
    return name if own_estimator else f"{name}_{estimator}"


def ppo_path(cfg: Config, kl_coef: float | None = None, estimator: str | None = None) -> Path:
    """The PPO policy of chapter 4 (or of the sweep's run for ``kl_coef`` and ``estimator``)."""
    return runs.artifact(cfg, ppo_stage(cfg, kl_coef, estimator), "policy")


def sweep_runs(cfg: Config) -> list[tuple[float, str]]:
    """The KL sweep's runs as (kl_coef, estimator): every coefficient of ``ppo.kl_grid`` with the
    profile's estimator, then each of ``ppo.sweep_estimators`` at ``ppo.sweep_estimator_betas``
    (empty: the whole grid), leaving out coefficient 0 (no penalty: the same run whatever the
    estimator) and the profile's own estimator."""
    p = cfg.ppo
    out = [(float(b), p.kl_estimator) for b in p.kl_grid]
    for est in p.sweep_estimators:
        if est == p.kl_estimator:
            continue
        out += [(float(b), est) for b in (p.sweep_estimator_betas or p.kl_grid) if b > 0]
    return list(dict.fromkeys(out))


def sweep_stages(cfg: Config) -> dict[str, tuple[float, str]]:
    """The KL sweep's runs by stage name (:func:`ppo_stage`): {name: (kl_coef, estimator)}, in
    :func:`sweep_runs`' order; the run at the profile's own coefficient and estimator is ``ppo``
    (chapter 4's)."""
    return {ppo_stage(cfg, b, e): (b, e) for b, e in sweep_runs(cfg)}


def load_reward_model(cfg: Config) -> RewardModel:
    """The trained, normalised RM of chapter 3 (a sentence-encoder RM at ``reward.precision``)."""
    device = pick_device(cfg.model.device)
    return RewardModel.load(runs.artifact(cfg, "reward", "rm"), device, cfg.model.max_length,
                            bf16=autocast_bf16(cfg.reward.precision, device))


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
