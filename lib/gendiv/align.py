"""Beyond PPO (notebook 09; not in the paper): DPO, RLOO and GRPO on the same SFT policy, the same
labelled comparisons and the same normalised RM, each evaluated exactly as PPO is.

- **DPO** (Rafailov et al. 2023) with TRL's ``DPOTrainer`` on chapter 3's labelled comparisons
  (the labeller's chosen and rejected summaries), one policy per beta of ``align.dpo_betas``, the
  SFT policy as its reference.
- **RLOO** (Ahmadian et al. 2024) and **GRPO** (Shao et al. 2024) with TRL's trainers, the
  normalised RM as the reward, ``align.rl_k`` samples per prompt on the ID RL prompts PPO trains
  on, and the KL coefficient matched to PPO's (``align.kl_coef``, null: ``ppo.kl_coef``). TRL's
  forms of the KL term are their own (RLOO: beta times the sequence's k1 log-ratio subtracted
  from the reward; GRPO: beta times the per-token k3 added to the loss), not the paper's per-token
  k2 in the reward: the deviations page says so, and each policy's true KL to SFT is measured the
  same way as the sweep's runs, so all of them sit on one axis.

Each method's policy is then sampled and measured like PPO: one output per evaluation input
(judged against the reference and head to head against SFT, with gold utilities and RM scores),
K samples per diversity input (per-input diversity), across-input diversity, and the sweep's
measures (true KL, gold utility, per-input diversity) as a point beside chapter 8's frontier. The
rows go into the same tables as chapters 6-8 (``winrates.csv``, ``gaps.csv``, ``scores.csv``,
``diversity.csv``, ``diversity_vs_sft.csv``, ``kl_sweep.csv`` with its ``method`` column), each
stage keeping the other's rows.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from gendiv import artifacts, data, diversity, evaluation, outputs, runs, stages, stats, sweep
from gendiv.config import Config, ConfigError
from gendiv.diversity import Metrics
from gendiv.lm import left_truncate, tokenizer_sides
from gendiv.models import (load_causal_lm, load_policy, load_tokenizer, pick_device, save_pretrained_atomic,
                           trainer_device_args)

LABELS = {"dpo": "DPO", "rloo": "RLOO", "grpo": "GRPO"}
KL_FORMS = {"dpo": "implicit", "rloo": "log_ratio", "grpo": "k3"}
"""How each method holds the policy near SFT, in the ``estimator`` column of ``kl_sweep.csv``:
DPO's KL is implicit in its loss; RLOO's is the sequence's k1 log-ratio in the reward; GRPO's the
per-token k3 in the loss."""
TRAIN_LOG_COLUMNS = ["method", "step", "loss", "reward", "kl", "mean_length", "entropy", "accuracy", "margin"]


def require_method(cfg: Config, method: str) -> None:
    """A ConfigError unless ``method`` is one of the profile's ``align.methods``."""
    if method not in cfg.align.methods:
        raise ConfigError(f"Stage {method!r} is not among align.methods {list(cfg.align.methods)} of profile "
                          f"{cfg.profile!r}; add it there (or pass align.methods) to train it.")


def rl_kl_coef(cfg: Config) -> float:
    """The KL coefficient of RLOO and GRPO: ``align.kl_coef``, or PPO's when it is null."""
    return cfg.ppo.kl_coef if cfg.align.kl_coef is None else float(cfg.align.kl_coef)


def method_ids(cfg: Config) -> list[str]:
    """The policies chapter 9 trains, in order: ``dpo_beta<b>`` for each beta of ``align.dpo_betas``,
    then ``rloo`` and ``grpo`` (those of ``align.methods``)."""
    out = []
    for m in ("dpo", "rloo", "grpo"):
        if m in cfg.align.methods:
            out += [f"dpo_beta{b:g}" for b in cfg.align.dpo_betas] if m == "dpo" else [m]
    return out


def family(method_id: str) -> str:
    """'dpo', 'rloo' or 'grpo' of a method id."""
    return method_id.split("_", 1)[0]


def label(method_id: str) -> str:
    """A method id as the book writes it: 'DPO (beta 0.1)', 'RLOO', 'GRPO'."""
    if method_id.startswith("dpo_beta"):
        return f"DPO (beta {method_id[len('dpo_beta'):]})"
    return LABELS.get(method_id, method_id)


def method_kl_coef(cfg: Config, method_id: str) -> float:
    """The coefficient a method's KL term carries: DPO's beta, or RLOO's and GRPO's kl_coef."""
    return float(method_id[len("dpo_beta"):]) if method_id.startswith("dpo_beta") else rl_kl_coef(cfg)


def policy_path(cfg: Config, method_id: str) -> Path:
    """Where the trained policy of ``method_id`` lives (its family's stage must have finished)."""
    return runs.artifact(cfg, family(method_id), f"policy_{method_id}")


def _train_log(method_id: str, history: list[dict]) -> pd.DataFrame:
    """TRL's log history as ``TRAIN_LOG_COLUMNS`` rows (the names differ between trainers)."""
    pick = {"loss": ("loss",), "reward": ("reward",), "kl": ("kl",),
            "mean_length": ("completions/mean_length",), "entropy": ("entropy",),
            "accuracy": ("rewards/accuracies",), "margin": ("rewards/margins",)}
    rows = []
    for h in history:
        if "loss" not in h or "train_runtime" in h:
            continue
        row = {"method": method_id, "step": int(h.get("step", len(rows) + 1))}
        for column, names in pick.items():
            row[column] = next((float(h[n]) for n in names if n in h), float("nan"))
        rows.append(row)
    return pd.DataFrame(rows, columns=TRAIN_LOG_COLUMNS)


def _trainer_args(device, steps: int) -> dict:
    """What every trainer of this chapter shares: the device's precision, no checkpoints, no
    reporting, and about 50 log rows a run (every step of a short one)."""
    return {**trainer_device_args(device), "report_to": "none",
            "save_strategy": "no", "logging_steps": max(1, steps // 50), "logging_first_step": True,
            "disable_tqdm": False, "dataloader_num_workers": 0}


def _save_policy(cfg: Config, model, tok, out: Path) -> Path:
    lm = model.merge_and_unload() if cfg.model.adapter == "lora" else model
    return save_pretrained_atomic(lm, tok, out)


# ------------------------------------------------------------------ DPO
def dpo_dataset(tokenizer, comparisons: list[dict], max_prompt_tokens: int):
    """Prompt / chosen / rejected rows for TRL's DPOTrainer from labelled comparisons (the
    labeller's choice), prompts cut on the left as SFT's, each summary as SFT's target."""
    from datasets import Dataset  # slow to import; only training needs it
    eos = tokenizer.eos_token
    return Dataset.from_dict({
        "prompt": left_truncate(tokenizer, [c["prompt"] for c in comparisons], max_prompt_tokens),
        "chosen": [data.sft_target(c["chosen"], eos) for c in comparisons],
        "rejected": [data.sft_target(c["rejected"], eos) for c in comparisons]})


def build_dpo(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``dpo`` (notebook 09): DPO from the SFT policy on chapter 3's labelled training
    comparisons, one policy per beta of ``align.dpo_betas`` (``models/dpo_beta<b>``), the SFT
    policy frozen as the reference (with LoRA: the adapters switched off). Logs TRL's loss,
    implicit-reward accuracy and margin per step (``logs/dpo.csv``)."""
    require_method(cfg, "dpo")

    def body(root: Path) -> dict[str, Path]:
        from trl import DPOConfig, DPOTrainer  # heavy (~5 s): only training needs it, not a cached read
        a, sft = cfg.align, artifacts.sft_path(cfg)
        comparisons = runs.read_jsonl(runs.artifact(cfg, "comparisons", "comparisons_train"))
        device = pick_device(cfg.model.device)
        paths, logs = {}, []
        for beta in a.dpo_betas:
            method_id = f"dpo_beta{beta:g}"
            model, tok, counts = load_policy(cfg, sft)
            print(f"{label(method_id)} trains {counts} on {len(comparisons)} labelled comparisons")
            ref = None if cfg.model.adapter == "lora" else load_causal_lm(sft, device).eval()
            with tempfile.TemporaryDirectory() as scratch, tokenizer_sides(tok, "right", "left"), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                args = DPOConfig(output_dir=scratch, beta=float(beta), learning_rate=a.dpo_lr,
                                 num_train_epochs=a.dpo_epochs, lr_scheduler_type="linear", warmup_steps=0,
                                 per_device_train_batch_size=runs.per_process(a.dpo_batch_size,
                                                                              "align.dpo_batch_size"),
                                 max_length=cfg.model.max_length, seed=cfg.seed, data_seed=cfg.seed,
                                 **_trainer_args(device, math.ceil(len(comparisons) / a.dpo_batch_size
                                                                   * a.dpo_epochs)))
                trainer = DPOTrainer(model=model, ref_model=ref, args=args, processing_class=tok,
                                     train_dataset=dpo_dataset(tok, comparisons, cfg.max_prompt_tokens))
                trainer.train()
                logs.append(_train_log(method_id, trainer.state.log_history))
            paths[f"policy_{method_id}"] = _save_policy(cfg, trainer.model, tok, root / "models" / method_id)
        paths["log"] = runs.write_csv(root / "logs" / "dpo.csv", pd.concat(logs, ignore_index=True))
        return paths

    return runs.run_stage(cfg, "dpo", body, force=force)


# ------------------------------------------------------------------ RLOO and GRPO
def rm_reward(rm, batch_size: int):
    """A TRL reward function: the normalised RM's score of each (prompt, completion)."""
    def reward(prompts, completions, **_) -> list[float]:
        return [float(x) for x in rm.score(list(prompts), list(completions), batch_size)]

    reward.__name__ = "normalised_rm"
    return reward


def build_online(cfg: Config, method: str, force: bool = False) -> dict[str, Path]:
    """Stage ``rloo`` or ``grpo`` (notebook 09): TRL's RLOOTrainer or GRPOTrainer from the SFT
    policy against the normalised RM on the ID RL prompts (PPO's), ``align.rl_prompts`` prompts a
    step with ``align.rl_k`` samples each at the sampling settings of every other stage, for
    ``align.rl_steps`` steps, KL coefficient :func:`rl_kl_coef`. GRPO keeps TRL's defaults for what
    the comparison does not fix (group-scaled advantages, its token-level loss); both say so on
    the deviations page. Saves ``models/<method>`` and the step log ``logs/<method>.csv``."""
    if method not in ("rloo", "grpo"):
        raise ValueError(f"Unknown online method {method!r}: 'rloo' or 'grpo'.")
    require_method(cfg, method)

    def body(root: Path) -> dict[str, Path]:
        from datasets import Dataset  # heavy, as trl: only training needs them, not a cached read
        if method == "rloo":
            from trl import RLOOConfig as TrainerConfig, RLOOTrainer as Trainer
        else:
            from trl import GRPOConfig as TrainerConfig, GRPOTrainer as Trainer
        a, s, sft = cfg.align, cfg.sampling, artifacts.sft_path(cfg)
        model, tok, counts = load_policy(cfg, sft)
        print(f"{LABELS[method]} trains {counts}: {a.rl_steps} steps of {a.rl_prompts} prompts x {a.rl_k} samples, "
              f"kl_coef {rl_kl_coef(cfg):g}")
        rm = artifacts.load_reward_model(cfg)
        prompts = left_truncate(tok, [r["prompt"] for r in data.load_split(cfg, "id", "rl")], cfg.max_prompt_tokens)
        device = pick_device(cfg.model.device)
        with tempfile.TemporaryDirectory() as scratch, tokenizer_sides(tok, "left", "left"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            args = TrainerConfig(output_dir=scratch, max_steps=a.rl_steps, learning_rate=a.rl_lr,
                                 lr_scheduler_type="linear", warmup_steps=0,
                                 per_device_train_batch_size=runs.per_process(a.rl_prompts * a.rl_k,
                                                                              "align.rl_prompts x align.rl_k"),
                                 num_generations=a.rl_k, num_iterations=a.rl_iterations,
                                 max_completion_length=s.max_new_tokens, temperature=s.temperature,
                                 top_k=s.top_k, top_p=s.top_p, beta=rl_kl_coef(cfg), seed=cfg.seed,
                                 data_seed=cfg.seed, disable_dropout=True, **_trainer_args(device, a.rl_steps))
            trainer = Trainer(model=model, reward_funcs=rm_reward(rm, cfg.reward.score_batch_size), args=args,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok)
            trainer.train()
            log = _train_log(method, trainer.state.log_history)
        out = _save_policy(cfg, trainer.model, tok, root / "models" / method)
        return {f"policy_{method}": out, "log": runs.write_csv(root / "logs" / f"{method}.csv", log)}

    return runs.run_stage(cfg, method, body, force=force)


def build_rloo(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``rloo`` (:func:`build_online`)."""
    return build_online(cfg, "rloo", force)


def build_grpo(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``grpo`` (:func:`build_online`)."""
    return build_online(cfg, "grpo", force)


# ------------------------------------------------------------------ evaluation
def build_alignment(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``alignment`` (notebook 09): train (or reuse) every method of ``align.methods`` (side by
    side on the cores this part has: :func:`gendiv.runs.side_by_side`), then
    measure each policy as PPO is measured in chapters 4 and 6-8 and write its rows into the same
    tables (see the module docstring). Samples are drawn with the seeds PPO's are: one per
    evaluation input with the run's seed (gold utility averaged over ``sampling.utility_samples``),
    K per diversity input with diversity's seed. Also writes ``logs/alignment_gold_utility.csv``
    and ``logs/alignment_per_input.csv`` (the sweep's per-input measures of each policy)."""
    def body(root: Path) -> dict[str, Path]:
        ids = method_ids(cfg)
        trainings = [m for m in ("dpo", "rloo", "grpo") if m in cfg.align.methods]
        runs.side_by_side(cfg, {m: partial(stages.builder(m), cfg, force=force) for m in trainings
                                if runs.stage_to_run(cfg, m, force)})
        paths: dict[str, Path] = {}
        if not ids:
            return paths
        world = data.world_or_none(cfg)
        tests, div_tests = artifacts.test_records(cfg), artifacts.test_records(cfg, cfg.diversity.n_inputs)
        splits = data.available_splits(cfg)
        device = pick_device(cfg.model.device)
        sft_path = artifacts.sft_path(cfg)
        sft, sft_tok = load_causal_lm(sft_path, device).eval(), load_tokenizer(sft_path)
        rm = artifacts.load_reward_model(cfg)
        metrics = Metrics(cfg, world)
        mine, samples, utility_rows, sweep_rows, per_input_rows = {}, {}, [], [], []
        for method_id in ids:  # one output per evaluation input, K per diversity input
            path = policy_path(cfg, method_id)
            p, u = outputs.sample_outputs(cfg, path, method_id, tests, root / "samples", world)
            paths.update(p)
            utility_rows += u
            mine[method_id] = {s: runs.read_jsonl(p[f"{method_id}_{s}"]) for s in splits}
            k = outputs.sample_k(cfg, path, method_id, {s: div_tests[s] for s in splits},
                                 stages.seed(cfg, "diversity"), root / "samples")
            samples[method_id] = {s: runs.read_jsonl(k[f"{method_id}_k_{s}"]) for s in splits}
        # Per-input diversity as chapter 7 measures it (SFT's K samples are chapter 7's own).
        sft_k = {s: runs.read_jsonl(runs.artifact(cfg, "diversity", f"sft_{s}")) for s in splits}
        rows, per_input, long_rows, sensitivity = diversity.measure_per_input(
            cfg, metrics, {"sft": sft_k, **samples}, div_tests)
        for method_id in ids:  # the sweep's measures: a point beside chapter 8's frontier
            path = policy_path(cfg, method_id)
            model = load_causal_lm(path, device).eval()
            beta, form = method_kl_coef(cfg, method_id), KL_FORMS[family(method_id)]
            for split in splits:
                measured = {m: v for (who, sp, m), v in per_input.items() if who == method_id and sp == split}
                values = sweep.policy_measures(cfg, rm, world, metrics, model, sft, sft_tok, tests[split],
                                               [r["output"] for r in mine[method_id][split]], div_tests[split],
                                               None, per_input_diversity=measured)
                for measure, v in values.items():
                    mean, lo, hi = stats.bootstrap_ci(v, seed=cfg.seed)
                    sweep_rows.append({"kl_coef": beta, "split": split, "measure": measure, "value": mean,
                                       "ci_low": lo, "ci_high": hi, "estimator": form, "method": method_id})
                    uids = [r["uid"] for r in (div_tests[split] if measure.startswith("per_input") else tests[split])]
                    per_input_rows += [{"method": method_id, "split": split, "measure": measure, "uid": u,
                                        "value": float(x)} for u, x in zip(uids, v)]
        # Judged as chapter 6 judges: against the reference and head to head against SFT's outputs.
        sft_outputs = artifacts.method_outputs(cfg)["sft"]
        verdicts = evaluation.judge_methods(cfg, root, mine, sft_outputs, tests)
        paths.update(evaluation.write_tables(cfg, root, verdicts, evaluation.score_rows(cfg, mine, rm), ids))
        # Across-input diversity as chapter 7 measures it, SFT's recomputed with the same draws to pair.
        across, boot = diversity.measure_across_input(cfg, metrics, {"sft": sft_outputs, **mine}, splits)
        diffs = diversity.differences_from_sft(ids, per_input, boot, cfg.seed)
        res = runs.results_dir(cfg)
        rows = [r for r in rows + across if r["method"] != "sft"]
        paths["diversity"] = runs.merge_csv(res / "diversity.csv", pd.DataFrame(
            rows, columns=diversity.DIVERSITY_COLUMNS), "method", ids)
        paths["diversity_vs_sft"] = runs.merge_csv(res / "diversity_vs_sft.csv", pd.DataFrame(
            diffs, columns=diversity.DIFFERENCE_COLUMNS), "method", ids)
        paths["diversity_per_input"] = runs.merge_csv(root / "logs" / "diversity_per_input.csv", pd.DataFrame(
            [r for r in long_rows if r["method"] != "sft"], columns=diversity.PER_INPUT_COLUMNS), "method", ids)
        paths["effective_sensitivity"] = runs.merge_csv(
            root / "logs" / "effective_diversity_thresholds.csv",
            pd.DataFrame([r for r in sensitivity if r["method"] != "sft"], columns=diversity.SENSITIVITY_COLUMNS),
            "method", ids)
        paths["kl_sweep"] = runs.merge_csv(res / "kl_sweep.csv",
                                           pd.DataFrame(sweep_rows, columns=sweep.KL_SWEEP_COLUMNS), "method", ids,
                                           missing="ppo")  # a table from before the column: PPO's
        paths["per_input"] = runs.write_csv(root / "logs" / "alignment_per_input.csv", pd.DataFrame(per_input_rows))
        paths["gold_utility"] = runs.write_csv(root / "logs" / "alignment_gold_utility.csv",
                                               outputs.gold_utility_frame(utility_rows))
        return paths

    return runs.run_stage(cfg, "alignment", body, force=force)


def train_logs(cfg: Config) -> pd.DataFrame:
    """Every trained method's step log (``TRAIN_LOG_COLUMNS``), DPO's betas one after another."""
    frames = [pd.read_csv(runs.artifact(cfg, m, "log")) for m in ("dpo", "rloo", "grpo") if m in cfg.align.methods]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAIN_LOG_COLUMNS)


def summary(cfg: Config) -> pd.DataFrame:
    """One row per method and split, chapter 9's table: the win rates against the reference and
    against SFT, the gold utility of the judged output (world only), the true KL to SFT (0 for
    SFT itself; not measured for Best-of-N) and per-input EAD and Sentence-BERT, for SFT,
    Best-of-N, PPO and every method of ``align.methods`` (from the results tables)."""
    res = runs.results_dir(cfg)
    win = pd.read_csv(res / "winrates.csv")
    judge = "world" if "world" in set(win["judge"]) else sorted(set(win["judge"]))[0]
    win = win[win["judge"] == judge]
    scores, div = pd.read_csv(res / "scores.csv"), pd.read_csv(res / "diversity.csv")
    sw = sweep.load(res / "kl_sweep.csv")
    kl = sw[sw["measure"] == "true_kl"]
    kl = pd.concat([sweep.main_estimator(kl, cfg).query("kl_coef == @cfg.ppo.kl_coef"),
                    kl[kl["method"] != "ppo"]])
    rows = []
    for method in ["sft", "bon", "ppo", *method_ids(cfg)]:
        for split in data.available_splits(cfg):
            def first(frame: pd.DataFrame, column: str = "value") -> float:
                return float(frame[column].iloc[0]) if len(frame) else np.nan

            at = {"method": method, "split": split}
            row = dict(at)
            for opponent in ("reference", "sft"):
                row[f"win_rate_vs_{opponent}"] = first(win[(win["method"] == method) & (win["split"] == split)
                                                           & (win["opponent"] == opponent)], "win_rate")
            row["gold_utility"] = first(scores[(scores["method"] == method) & (scores["split"] == split)
                                               & (scores["measure"] == "gold_utility")])
            row["true_kl"] = 0.0 if method == "sft" else first(kl[(kl["method"] == method) & (kl["split"] == split)])
            for metric in ("ead", "sbert"):
                row[f"per_input_{metric}"] = first(div[(div["method"] == method) & (div["split"] == split)
                                                       & (div["scope"] == "per_input") & (div["metric"] == metric)])
            rows.append(row)
    return pd.DataFrame(rows)
