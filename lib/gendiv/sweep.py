"""The KL sweep (notebook 08; paper Sec. 6.3 and its appendix): PPO for each coefficient of
``ppo.kl_grid``, each evaluated with the same judge and diversity metrics as chapters 6 and 7.

The sweep can also vary the form of the per-token KL penalty (``ppo.sweep_estimators``, not in
the paper): each run's true sequence KL to SFT is then measured the same way for every run, so
the estimators' frontiers can be compared at equal KL (claim C7 of the scorecard).

The paper does not publish its grid. Ours is a log grid from 0 (no penalty) through the paper's
0.05 to well above it (``ppo.kl_grid``), so the sweep spans an unconstrained policy, the paper's
setting and one held close to SFT. Every run starts from the same SFT model, RM, prompts and seed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from gendiv import artifacts, data, judges, runs, stages, stats
from gendiv.config import Config
from gendiv.diversity import Metrics
from gendiv.lm import completion_nll, sample_policy
from gendiv.models import load_causal_lm, load_tokenizer, pick_device
from gendiv.outputs import gold_utilities
from gendiv.ppo import build_ppo

KL_SWEEP_COLUMNS = ["kl_coef", "split", "measure", "value", "ci_low", "ci_high", "estimator", "method"]
"""``method`` is 'ppo' for the sweep's runs; chapter 9 adds one point per other alignment method."""


def true_kl(policy, sft, tok, records: list[dict], outputs: list[str], max_prompt_tokens: int,
            batch_size: int = 32) -> np.ndarray:
    """Each output's sequence log-ratio log pi(y | x) - log pi_SFT(y | x), for outputs sampled
    from pi: their mean is an unbiased estimate of the true sequence KL(pi || pi_SFT) on these
    inputs, whatever estimator trained pi (the response is scored as SFT trains on it, with its
    EOS, so an output cut at the token limit counts one EOS it did not sample)."""
    prompts = [r["prompt"] for r in records]
    nll_sft = completion_nll(sft, tok, prompts, outputs, max_prompt_tokens, batch_size, per_token=False)
    nll_policy = completion_nll(policy, tok, prompts, outputs, max_prompt_tokens, batch_size, per_token=False)
    return nll_sft - nll_policy


def policy_measures(cfg: Config, rm, world, metrics: Metrics, model, sft, sft_tok, records: list[dict],
                    outputs: list[str], div_records: list[dict], k_samples: list[list[str]] | None,
                    per_input_diversity: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """What the sweep measures of one policy on one split, per input: the proxy RM score, the
    true sequence KL to SFT (:func:`true_kl`) of one output per evaluation input (``outputs``),
    with the world the win against the reference and the gold utility, and every per-input
    diversity metric of the K samples per diversity input (``k_samples``; or, already measured,
    ``per_input_diversity``: {metric: per-input values})."""
    values = {"proxy_reward": rm.score([r["prompt"] for r in records], outputs, cfg.reward.score_batch_size),
              "true_kl": true_kl(model, sft, sft_tok, records, outputs, cfg.max_prompt_tokens, cfg.sampling.batch_size)}
    if world is not None:
        values["win_rate_vs_reference"] = judges.verdicts(judges.WorldJudge(world), records, outputs,
                                                          [r["reference"] for r in records])
        values["gold_utility"] = np.array(gold_utilities(world, records, outputs))
    if per_input_diversity is None:
        feats = metrics.prepare_many(k_samples, [[r] * len(t) for r, t in zip(div_records, k_samples)])
        diversity = [metrics.compute(f) for f in feats]
        per_input_diversity = {metric: np.array([d[metric] for d in diversity]) for metric in diversity[0]}
    values.update({f"per_input_{metric}": v for metric, v in per_input_diversity.items()})
    return values


def train_runs(cfg: Config, force: bool = False) -> list[tuple[float, str]]:
    """Train the sweep's PPO runs that are not done yet (all with ``force``) side by side on the
    cores this part has (:func:`gendiv.runs.side_by_side`); returns the (kl_coef, estimator) pairs
    it trained. Each run is the same cached stage, with the same seed and data, as when trained
    alone. Chapter 4's own run is chapter 4's, even with ``force``: the sweep reads that run's
    samples from chapter 4 (those chapter 7 measures too), which a retrained policy would no longer match (and a forced
    book would train it twice)."""
    todo = {name: run for name, run in artifacts.sweep_stages(cfg).items()
            if name != "ppo" and (force or runs.stage_to_run(cfg, name))}
    runs.side_by_side(cfg, {name: partial(build_ppo, cfg, force=force, kl_coef=b, estimator=e)
                            for name, (b, e) in todo.items()})
    return list(todo.values())


def build_kl_sweep(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``kl_sweep``: train (or reuse) PPO for every run of the sweep
    (:func:`gendiv.artifacts.sweep_runs`: every kl_coef of the grid with the profile's estimator,
    and the estimator axis), then measure on every split: win rate against the reference (world
    judge), gold utility, proxy RM score and the true sequence KL to SFT (:func:`true_kl`) of one
    sample per evaluation input, and per-input diversity of K samples on the diversity inputs;
    and from each run's step log, the mean over the last fifth of training of the penalty's own KL
    estimate, the proxy reward and the policy's per-token entropy (``train_*``, split id). The
    run at the profile's own kl_coef and estimator reuses chapter 4's samples (``ppo_eval``: those
    chapter 7 measures too). Writes ``results/kl_sweep.csv`` and the per-input values
    (``logs/kl_sweep_per_input.csv``). Each run is sampled as chapter 4 samples PPO: one sample
    per evaluation input with the run's seed, K per diversity input with diversity's seed."""
    def body(root: Path) -> dict[str, Path]:
        world = data.world_or_none(cfg)
        metrics = Metrics(cfg, world)
        rm = artifacts.load_reward_model(cfg)
        tests, div_tests = artifacts.test_records(cfg), artifacts.test_records(cfg, cfg.diversity.n_inputs)
        rows, per_input = [], []
        device = pick_device(cfg.model.device)
        sft_path = artifacts.sft_path(cfg)
        sft, sft_tok = load_causal_lm(sft_path, device).eval(), load_tokenizer(sft_path)
        train_runs(cfg, force)
        for kl_coef, estimator in artifacts.sweep_runs(cfg):
            paths = build_ppo(cfg, kl_coef=kl_coef, estimator=estimator)  # trained above, or cached
            tag = f"kl {kl_coef:g}" + ("" if estimator == cfg.ppo.kl_estimator else f" ({estimator})")
            log = pd.read_csv(paths["log"])
            tail = log.tail(max(1, len(log) // 5))
            for measure in ("kl", "proxy_reward", "entropy"):
                rows.append({"kl_coef": kl_coef, "split": "id", "measure": f"train_{measure}",
                             "value": float(tail[measure].mean()), "ci_low": float("nan"), "ci_high": float("nan"),
                             "estimator": estimator, "method": "ppo"})
            own = artifacts.ppo_stage(cfg, kl_coef, estimator) == "ppo"
            path = artifacts.ppo_path(cfg, kl_coef, estimator)
            model, tok = load_causal_lm(path, device).eval(), load_tokenizer(path)
            for split, records in tests.items():
                if own:
                    outputs = [r["output"] for r in runs.read_jsonl(runs.artifact(cfg, "ppo_eval", f"ppo_{split}"))]
                    k_samples = [r["outputs"] for r in
                                 runs.read_jsonl(runs.artifact(cfg, "ppo_eval", f"ppo_k_{split}"))]
                else:
                    outputs = sample_policy(cfg, model, tok, records, cfg.seed, f"{tag}: {split}").first()
                    k_samples = sample_policy(cfg, model, tok, div_tests[split], stages.seed(cfg, "diversity"),
                                              f"{tag}: {cfg.diversity.k} samples on {split}",
                                              n_samples=cfg.diversity.k).texts
                values = policy_measures(cfg, rm, world, metrics, model, sft, sft_tok, records, outputs,
                                         div_tests[split], k_samples)
                for measure, v in values.items():
                    mean, lo, hi = stats.bootstrap_ci(v, seed=cfg.seed)
                    rows.append({"kl_coef": kl_coef, "split": split, "measure": measure, "value": mean,
                                 "ci_low": lo, "ci_high": hi, "estimator": estimator, "method": "ppo"})
                    uids = [r["uid"] for r in (div_tests[split] if measure.startswith("per_input") else records)]
                    per_input += [{"kl_coef": kl_coef, "estimator": estimator, "split": split, "measure": measure,
                                   "uid": u, "value": float(x)} for u, x in zip(uids, v)]
        return {"kl_sweep": runs.merge_csv(runs.results_dir(cfg) / "kl_sweep.csv",
                                           pd.DataFrame(rows, columns=KL_SWEEP_COLUMNS), "method", ["ppo"],
                                           missing="ppo"),
                "per_input": runs.write_csv(root / "logs" / "kl_sweep_per_input.csv", pd.DataFrame(per_input))}

    return runs.run_stage(cfg, "kl_sweep", body, force=force)


def load(path: str | Path) -> pd.DataFrame:
    """``results/kl_sweep.csv``; a table written before it had a ``method`` column holds PPO only."""
    frame = pd.read_csv(path)
    return frame if "method" in frame else frame.assign(method="ppo")


def ppo_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The sweep's own rows (PPO), without chapter 9's other methods."""
    return frame[frame["method"] == "ppo"] if "method" in frame else frame


def main_estimator(frame: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The PPO rows of the profile's own estimator (the paper's sweep over kl_coef alone)."""
    frame = ppo_runs(frame)
    return frame[frame["estimator"] == cfg.ppo.kl_estimator]


def lines(cfg: Config) -> list[str]:
    """The estimators whose runs span the sweep's grid, from its smallest coefficient to its
    largest (:func:`gendiv.artifacts.sweep_runs`; the run at 0 serves every estimator): the
    profile's own first (the paper's C6), then each of ``ppo.sweep_estimators`` that ran at both ends."""
    trained = set(artifacts.sweep_runs(cfg))
    ends = (min(cfg.ppo.kl_grid), max(cfg.ppo.kl_grid))
    return [cfg.ppo.kl_estimator] + [e for e in dict.fromkeys(cfg.ppo.sweep_estimators) if e != cfg.ppo.kl_estimator
                                     and all(b == 0 or (float(b), e) in trained for b in ends)]


def line_true_kl(frame: pd.DataFrame, cfg: Config, estimator: str, split: str = "id") -> np.ndarray:
    """The true KL to SFT on ``split`` of one estimator's line (:func:`by_estimator`: with the
    shared run at 0), in order of kl_coef."""
    line = by_estimator(frame, cfg)
    line = line[(line["estimator"] == estimator) & (line["measure"] == "true_kl") & (line["split"] == split)]
    return line.sort_values("kl_coef")["value"].to_numpy()


def spread(kl: np.ndarray) -> tuple[float, bool]:
    """A line's true KL at its smallest coefficient over at its largest (inf where the largest's
    is not above 0), and whether it falls at every step up the grid."""
    return (kl[0] / kl[-1] if kl[-1] > 0 else float("inf")), bool(all(a > b for a, b in zip(kl, kl[1:])))


def by_estimator(frame: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The sweep's rows with the run at kl_coef 0 (no penalty: one run for every estimator)
    repeated under each estimator of the estimator axis, so each estimator's line starts there."""
    frame = ppo_runs(frame)
    others = [e for e in dict.fromkeys(frame["estimator"]) if e != cfg.ppo.kl_estimator]
    shared = frame[(frame["kl_coef"] == 0) & (frame["estimator"] == cfg.ppo.kl_estimator)]
    return pd.concat([frame, *(shared.assign(estimator=e) for e in others)], ignore_index=True)
