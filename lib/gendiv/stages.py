"""The table of stages: for each stage of the pipeline, the notebook that runs it, the config
sections its cache depends on (and the keys of those it ignores), the function that builds it and
the offset of its random draws from the run's seed. Caching (gendiv.runs), the messages that say
which notebook to run, the book's timing table and the KL sweep all read this one table.

Builders are named as ``"module:function"`` strings, not imported: the table sits below the
stage modules, which import it (through gendiv.runs), so it cannot import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from gendiv.config import SECTIONS, AlignConfig, DiversityConfig, PPOConfig

UPSTREAM = ("world", "data", "model", "pretrain")
"""What every model stage depends on: the world, the data, the base model and how it was made."""
SWEEP_ONLY = ("ppo.kl_grid", "ppo.sweep_estimators", "ppo.sweep_estimator_betas")
"""PPO keys only the KL sweep reads: the stages before it ignore them."""
DPO_KEYS = tuple(f"align.{k}" for k in AlignConfig.__dataclass_fields__ if not k.startswith("dpo_"))
"""Align keys DPO ignores (all but its own dpo_*)."""
ONLINE_KEYS = (tuple(f"align.{k}" for k in AlignConfig.__dataclass_fields__ if k.startswith("dpo_") or k == "methods")
               + tuple(f"ppo.{k}" for k in PPOConfig.__dataclass_fields__ if k != "kl_coef"))
"""Keys RLOO and GRPO ignore: DPO's, which methods run, and PPO's but its kl_coef (theirs by default)."""
RM_TRAINING_ONLY = ("reward.body", "reward.lr", "reward.epochs", "reward.batch_size", "reward.warmup_share",
                    "reward.head_lr_scale", "reward.precision", "reward.score_batch_size", "reward.freeze_fraction")
"""Reward keys only the RM's training reads: the comparisons it trains on ignore them."""
NOT_PER_INPUT_SAMPLES = tuple(f"diversity.{k}" for k in DiversityConfig.__dataclass_fields__
                              if k not in ("k", "n_inputs"))
"""Diversity keys that do not change which samples are drawn for per-input diversity (all but
``k`` and ``n_inputs``): chapter 4, which draws PPO's, ignores them."""
NOT_THE_BASE = ("model.adapter", "model.freeze_fraction", "model.lora_r", "model.lora_alpha", "model.device")
"""Model keys that change how the base is fine-tuned, not the base model itself."""


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module docstring)."""

    name: str
    notebook: str
    sections: tuple[str, ...]
    builder: str
    ignore: tuple[str, ...] = ()
    seed_offset: int = 0
    after: tuple[str, ...] = ()
    """The stages whose artifacts it reads, directly (the rest follow from theirs): ``gendiv run``
    starts a stage ahead of its notebook once these are done (:func:`prerequisites`)."""


STAGES = (
    Stage("data", "01_data_splits", ("world", "data"), "gendiv.data:build_splits"),
    Stage("base", "02_sft", UPSTREAM, "gendiv.pretraining:build_base", ignore=NOT_THE_BASE, after=("data",)),
    Stage("sft", "02_sft", UPSTREAM + ("sft",), "gendiv.sft:build_sft", after=("base",)),
    Stage("sft_eval", "02_sft", UPSTREAM + ("sft", "sampling"), "gendiv.sft:evaluate_sft", after=("sft",)),
    # Comparison pairs on OOD prompts draw from the run's seed + 7 (ID prompts: + 0).
    Stage("comparisons", "03_reward_model", UPSTREAM + ("sft", "reward", "sampling"),
          "gendiv.reward:build_comparisons", ignore=RM_TRAINING_ONLY, after=("sft",)),
    Stage("reward", "03_reward_model", UPSTREAM + ("sft", "reward", "sampling"), "gendiv.reward:build_reward",
          after=("comparisons",)),
    # A PPO run does not depend on the sweep's grid or on how many test inputs are evaluated.
    Stage("ppo", "04_ppo", UPSTREAM + ("sft", "reward", "sampling", "ppo"), "gendiv.ppo:build_ppo",
          ignore=SWEEP_ONLY + ("sampling.n_eval_inputs",), after=("reward",)),
    # PPO's samples for chapter 7 (and the sweep) are drawn here: diversity.k and n_inputs.
    Stage("ppo_eval", "04_ppo", UPSTREAM + ("sft", "reward", "sampling", "ppo", "diversity"),
          "gendiv.ppo:evaluate_ppo", ignore=SWEEP_ONLY + NOT_PER_INPUT_SAMPLES, after=("ppo",)),
    Stage("bon", "05_best_of_n", UPSTREAM + ("sft", "reward", "sampling", "bon"), "gendiv.bon:build_best_of_n",
          seed_offset=101, after=("reward",)),
    Stage("evaluation", "06_evaluation", UPSTREAM + ("sft", "reward", "sampling", "bon", "ppo", "judge"),
          "gendiv.evaluation:build_evaluation", ignore=SWEEP_ONLY, after=("sft_eval", "ppo_eval", "bon")),
    # Best-of-N outputs for per-input diversity draw from diversity's seed plus Best-of-N's offset.
    Stage("diversity", "07_diversity", UPSTREAM + ("sft", "reward", "sampling", "bon", "ppo", "diversity"),
          "gendiv.diversity:build_diversity", ignore=SWEEP_ONLY, seed_offset=202,
          after=("sft_eval", "ppo_eval", "bon")),
    # The KL sweep also reads its PPO runs (ppo_kl<beta>, after reward), which the config names; of
    # chapter 4's run, the samples of ppo_eval (those chapter 7 measures too).
    Stage("kl_sweep", "08_kl_sweep", UPSTREAM + ("sft", "reward", "sampling", "bon", "ppo", "diversity"),
          "gendiv.sweep:build_kl_sweep", after=("ppo_eval",)),
    Stage("dpo", "09_other_methods", UPSTREAM + ("sft", "reward", "sampling", "align"), "gendiv.align:build_dpo",
          ignore=DPO_KEYS, after=("comparisons",)),
    Stage("rloo", "09_other_methods", UPSTREAM + ("sft", "reward", "sampling", "ppo", "align"),
          "gendiv.align:build_rloo", ignore=ONLINE_KEYS, after=("reward",)),
    Stage("grpo", "09_other_methods", UPSTREAM + ("sft", "reward", "sampling", "ppo", "align"),
          "gendiv.align:build_grpo", ignore=ONLINE_KEYS, after=("reward",)),
    # The alignment stage also reads the methods' trainings (dpo, rloo, grpo), which the config names.
    Stage("alignment", "09_other_methods",
          UPSTREAM + ("sft", "reward", "sampling", "bon", "ppo", "judge", "diversity", "align"),
          "gendiv.align:build_alignment", ignore=SWEEP_ONLY, after=("evaluation", "diversity")),
    Stage("claims", "10_scorecard", tuple(SECTIONS), "gendiv.claims:build_claims",
          after=("evaluation", "diversity", "kl_sweep", "alignment")),
)
BY_NAME = {s.name: s for s in STAGES}
SWEEP_PREFIX = "ppo_kl"
"""The KL sweep's PPO runs are stages named ``ppo_kl<beta>`` (the ``ppo`` stage at another
kl_coef), or ``ppo_kl<beta>_<estimator>`` with another KL estimator."""


def parse_sweep_run(name: str) -> tuple[float, str | None]:
    """(kl_coef, estimator or None for the profile's own) of a sweep run's stage name; a
    ValueError for a name that is not ``ppo_kl<beta>[_<estimator>]``."""
    if not name.startswith(SWEEP_PREFIX):
        raise ValueError(f"{name!r} is not a KL sweep run (ppo_kl<kl_coef>[_<estimator>]).")
    beta, _, estimator = name[len(SWEEP_PREFIX):].partition("_")
    return float(beta), estimator or None


def stage(name: str) -> Stage:
    """The table's row for ``name`` (a sweep run ``ppo_kl<beta>`` is a ``ppo`` stage run by notebook 08)."""
    if name.startswith(SWEEP_PREFIX):
        ppo = BY_NAME["ppo"]
        return Stage(name, "08_kl_sweep", ppo.sections, ppo.builder, ppo.ignore, ppo.seed_offset, ppo.after)
    if name not in BY_NAME:
        raise KeyError(f"Unknown stage {name!r}; the stages are {', '.join(BY_NAME)}.")
    return BY_NAME[name]


def seed(cfg, name: str) -> int:
    """The seed of a stage's random draws: the run's seed plus the stage's offset, so that stages
    that sample the same model on the same inputs draw different samples."""
    return cfg.seed + stage(name).seed_offset


def builder(name: str) -> Callable:
    """The function that builds stage ``name`` (imported on demand: the stage modules sit above)."""
    module, function = stage(name).builder.split(":")
    return getattr(importlib.import_module(module), function)


def prerequisites(name: str, after: dict[str, tuple[str, ...]] | None = None) -> set[str]:
    """Every stage ``name`` reads, directly or through the stages it reads (the table's ``after``,
    followed down); ``after`` gives stages' direct prerequisites in place of the table's (a plan's:
    the KL sweep's with its runs, which the config names)."""
    after = after or {}
    seen: set[str] = set()
    todo = list(after.get(name, stage(name).after))
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += after.get(s, stage(s).after)
    return seen
