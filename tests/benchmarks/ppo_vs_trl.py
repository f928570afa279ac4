"""Peer check of gendiv's PPO against TRL 1.12's (a benchmark, not a test).

TRL removed its PPOTrainer in 1.13; the last release with it, ``trl==1.12.0``
(``trl.experimental.ppo.PPOTrainer``), is installed in its own virtual environment, and both
trainers run there one after the other on the same SFT policy, the same normalised RM, the same
ID RL prompts, ``kl_coef`` and number of episodes:

    make peer-ppo                     # builds .venv-trl112, then runs this on PROFILE (tiny)
    .venv-trl112/bin/python tests/benchmarks/ppo_vs_trl.py --profile tiny [--run-dir DIR] [--steps N]

It needs the profile's ``sft`` and ``reward`` stages (notebooks 02 and 03). Outputs, under
``<run>/peer/``: ``ppo_vs_trl_steps.csv`` (one row per step and trainer), ``ppo_vs_trl_throughput.csv``
(median tokens per second and the ratio ours/TRL) and ``ppo_vs_trl.png`` (proxy reward and KL
against episodes on one figure).

Like for like where a knob exists: both use the plain log-ratio KL estimator (TRL's ``k1``; the
book's runs use the paper's squared form, which TRL lacks), no gradient clipping (TRL's PPO loop
does not clip), T=1 sampling with top-k 0 and top-p 1, 4 PPO epochs over minibatches of the
profile's size, clip 0.2 for policy and value, the same value-loss coefficient, GAE gamma and
lambda, and a learning rate decayed linearly to zero. What differs by design:

* Value function. Ours (as the paper's code): a new head on the policy's trunk. TRL: a separate
  value model, here a copy of the SFT model with a new one-label head (trunk and head trained).
* Scoring. Ours decodes the response and scores ``prompt + " " + text + EOS`` re-tokenised; TRL
  scores the sampled tokens as they are, at the EOS (or the last token when there is none).
  The RM normalisation is folded into the RM's head for TRL (:func:`gendiv.models.fold_normalisation`).
* Log-probs of the sampled tokens: TRL takes them from the logits ``generate`` returned; ours runs
  one more forward pass with the padding-aware positions the updates use.
* Optimiser: both Adam with eps 1e-5 (TRL: AdamW, weight decay 0, eps set to ours; its default
  1e-8 with ``--trl-adam-eps 1e-8``); ours decays the rate per gradient step, TRL per rollout
  step. Prompt order: both shuffle the same prompts with their own generators.

Throughput is measured the same way for both: rollout = response tokens (up to and including
EOS) per second of ``generate``; update = ppo_epochs x real tokens (prompt and response) per
second of the PPO epochs; step = wall seconds of a whole step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from gendiv import data, plots, runs
from gendiv.artifacts import load_reward_model, sft_path
from gendiv.config import load_profile
from gendiv.models import fold_normalisation, load_causal_lm, load_tokenizer, pick_device
from gendiv.ppo import PPOTrainer, response_mask

TRL_VERSION = "1.12.0"
COLUMNS = ["trainer", "step", "episodes", "proxy_reward", "kl", "rollout_tokens_per_s", "update_tokens_per_s",
           "step_s"]


def run_ours(cfg, prompts: list[str], steps: int) -> pd.DataFrame:
    """gendiv.ppo with the knobs aligned to TRL's (k1 KL, no gradient clipping)."""
    device = pick_device(cfg.model.device)
    ppo = dataclasses.replace(cfg.ppo, kl_estimator="log_ratio", max_grad_norm=None, steps=steps,
                              checkpoint_every=0, log_samples_every=0)
    policy = load_causal_lm(sft_path(cfg), device)
    ref = load_causal_lm(sft_path(cfg), device)
    s = cfg.sampling
    trainer = PPOTrainer(policy, ref, load_reward_model(cfg), load_tokenizer(sft_path(cfg)), prompts, ppo,
                         max_new_tokens=s.max_new_tokens, max_prompt_tokens=cfg.model.max_length - s.max_new_tokens,
                         temperature=1.0, top_k=0, top_p=1.0, seed=cfg.seed)
    log = pd.DataFrame(trainer.train(desc="gendiv PPO"))
    return pd.DataFrame({"trainer": "gendiv", "step": log["step"], "episodes": log["episodes"],
                         "proxy_reward": log["proxy_reward"], "kl": log["kl_log_ratio"],
                         "rollout_tokens_per_s": log["rollout_tokens_per_s"],
                         "update_tokens_per_s": log["update_tokens_per_s"], "step_s": log["wall_s"]})


def run_trl(cfg, prompts: list[str], steps: int, adam_eps: float = 1e-5) -> pd.DataFrame:
    """TRL 1.12's PPOTrainer on the same models and prompts, timed by wrapping its generation
    and training forward passes (module-level functions of its trainer)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer as TRLPPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    device = pick_device(cfg.model.device)
    sft = str(sft_path(cfg))
    tok = load_tokenizer(sft)
    tok.padding_side = tok.truncation_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(sft)
    ref = AutoModelForCausalLM.from_pretrained(sft)
    value = AutoModelForSequenceClassification.from_pretrained(sft, num_labels=1)
    hidden = value.config.hidden_size
    torch.manual_seed(cfg.seed)
    torch.nn.init.normal_(value.score.weight, std=1 / math.sqrt(hidden + 1))  # as our value head
    value.config.pad_token_id = tok.pad_token_id
    rm = load_reward_model(cfg)
    reward_model = fold_normalisation(rm.model, rm.mean, rm.std)

    s, p = cfg.sampling, cfg.ppo
    enc = tok(prompts, truncation=True, max_length=cfg.model.max_length - s.max_new_tokens, add_special_tokens=False)
    train = Dataset.from_dict({"input_ids": enc["input_ids"]})
    out_dir = tempfile.mkdtemp(prefix="trl-ppo-")
    args = PPOConfig(
        output_dir=out_dir, seed=cfg.seed, use_cpu=device.type == "cpu", bf16=False, fp16=False,
        report_to=[], save_strategy="no", logging_steps=1, num_sample_generations=0, disable_tqdm=False,
        per_device_train_batch_size=p.rollout_batch_size, gradient_accumulation_steps=1,
        num_mini_batches=p.rollout_batch_size // p.minibatch_size,
        local_rollout_forward_batch_size=p.rollout_batch_size,
        total_episodes=steps * p.rollout_batch_size, num_ppo_epochs=p.ppo_epochs, learning_rate=p.lr,
        adam_epsilon=adam_eps, weight_decay=0.0,
        kl_coef=p.kl_coef, kl_estimator="k1", cliprange=p.clip, cliprange_value=p.value_clip, vf_coef=p.vf_coef,
        gamma=p.gamma, lam=p.lam, whiten_rewards=False, temperature=1.0, response_length=s.max_new_tokens,
        stop_token="eos", missing_eos_penalty=p.missing_eos_penalty, per_device_eval_batch_size=1)

    eos, pad = tok.eos_token_id, tok.pad_token_id
    timing: list[dict] = []
    generate, forward = trl_ppo.batch_generation, trl_ppo.forward

    def timed_generation(model, queries, *rest):
        t0 = time.perf_counter()
        query_responses, logits = generate(model, queries, *rest)
        gen_s = time.perf_counter() - t0
        response = query_responses[:, queries.shape[1]:]
        n_response = int(response_mask(response, eos).sum())
        timing.append({"start": t0, "generation_s": gen_s, "response_tokens": n_response,
                       "tokens": int((queries != pad).sum()) + n_response, "update_start": None})
        return query_responses, logits

    def timed_forward(model, query_responses, pad_token_id):
        if isinstance(model, trl_ppo.PolicyAndValueWrapper) and timing and timing[-1]["update_start"] is None:
            timing[-1]["update_start"] = time.perf_counter()
        return forward(model, query_responses, pad_token_id)

    records: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = logs or {}
            if "objective/scores" in entry:
                records.append({"proxy_reward": entry["objective/scores"], "kl": entry["objective/kl"],
                             "end": time.perf_counter()})

    trl_ppo.batch_generation, trl_ppo.forward = timed_generation, timed_forward
    try:
        trainer = TRLPPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                                reward_model=reward_model, train_dataset=train, value_model=value,
                                eval_dataset=train.select(range(min(4, len(train)))), callbacks=[Record()])
        trainer.train()
    finally:
        trl_ppo.batch_generation, trl_ppo.forward = generate, forward
    rows = []
    for i, (t, entry) in enumerate(zip(timing, records)):
        update_s = entry["end"] - t["update_start"]
        rows.append({"trainer": f"TRL {TRL_VERSION}", "step": i + 1, "episodes": (i + 1) * p.rollout_batch_size,
                     "proxy_reward": entry["proxy_reward"], "kl": entry["kl"],
                     "rollout_tokens_per_s": t["response_tokens"] / t["generation_s"],
                     "update_tokens_per_s": p.ppo_epochs * t["tokens"] / update_s,
                     "step_s": entry["end"] - t["start"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def throughput(steps: pd.DataFrame) -> pd.DataFrame:
    """Median per-step throughput of each trainer (the first step, with its warm-up, left out),
    and the ratio gendiv / TRL."""
    med = steps[steps["step"] > 1].groupby("trainer")[["rollout_tokens_per_s", "update_tokens_per_s", "step_s"]] \
        .median()
    rows = [{"trainer": name, **row.to_dict()} for name, row in med.iterrows()]
    ours, trl = med.loc["gendiv"], med.loc[f"TRL {TRL_VERSION}"]
    rows.append({"trainer": "ratio gendiv/TRL", "rollout_tokens_per_s": ours["rollout_tokens_per_s"]
                 / trl["rollout_tokens_per_s"], "update_tokens_per_s": ours["update_tokens_per_s"]
                 / trl["update_tokens_per_s"], "step_s": ours["step_s"] / trl["step_s"]})
    return pd.DataFrame(rows)


def figure(steps: pd.DataFrame, book_log: pd.DataFrame | None, path: Path) -> Path:
    """Proxy reward and sequence KL (log-ratio) against episodes, both trainers on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, g in steps.groupby("trainer", sort=False):
        axes[0].plot(g["episodes"], g["proxy_reward"], marker="o", ms=3, label=name)
        axes[1].plot(g["episodes"], g["kl"], marker="o", ms=3, label=name)
    if book_log is not None:
        label = "gendiv, the book's run (squared KL, clipped grads)"
        axes[0].plot(book_log["episodes"], book_log["proxy_reward"], ls="--", color="grey", label=label)
        axes[1].plot(book_log["episodes"], book_log["kl_log_ratio"], ls="--", color="grey", label=label)
    axes[0].set(xlabel="episodes", ylabel="proxy reward (normalised RM)", title="Proxy reward")
    axes[1].set(xlabel="episodes", ylabel="KL to SFT per response (nats, log-ratio)", title="KL")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--run-dir", default="", help="the run folder (default runs/<profile>)")
    parser.add_argument("--steps", type=int, default=0, help="rollout steps of each trainer (default: the profile's)")
    parser.add_argument("--trl-adam-eps", type=float, default=1e-5,
                        help="Adam epsilon of TRL's optimiser (default 1e-5, as ours; TRL's own default is 1e-8)")
    args = parser.parse_args(argv)

    import trl

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"ppo_vs_trl needs trl=={TRL_VERSION} (the last release with PPOTrainer), found "
                         f"{trl.__version__}. Run it with `make peer-ppo`, which builds .venv-trl112.")
    cfg = load_profile(args.profile, **({"run_dir": args.run_dir} if args.run_dir else {}))
    for stage in ("sft", "reward"):
        runs.require_stage(cfg, stage)
    steps = args.steps or cfg.ppo.steps
    prompts = [r["prompt"] for r in data.load_split(cfg, "id", "rl")]
    print(f"PPO peer check on profile {cfg.profile}: {steps} steps x {cfg.ppo.rollout_batch_size} prompts, "
          f"kl_coef {cfg.ppo.kl_coef:g}, device {pick_device(cfg.model.device)}", flush=True)
    runs.seed_everything(cfg.seed)
    ours = run_ours(cfg, prompts, steps)
    runs.seed_everything(cfg.seed)
    theirs = run_trl(cfg, prompts, steps, args.trl_adam_eps)
    steps_frame = pd.concat([ours, theirs], ignore_index=True)[COLUMNS]
    out = runs.run_dir(cfg) / "peer"
    runs.write_csv(out / "ppo_vs_trl_steps.csv", steps_frame)
    speed = throughput(steps_frame)
    runs.write_csv(out / "ppo_vs_trl_throughput.csv", speed)
    book_log_path = runs.run_dir(cfg) / "logs" / "ppo.csv"
    book_log = pd.read_csv(book_log_path) if book_log_path.exists() else None
    fig = figure(steps_frame, book_log, out / "ppo_vs_trl.png")
    summary = steps_frame.groupby("trainer", sort=False).apply(
        lambda g: pd.Series({"reward_first5": g["proxy_reward"].head(5).mean(),
                             "reward_last5": g["proxy_reward"].tail(5).mean(),
                             "kl_last5": g["kl"].tail(5).mean(), "kl_max": g["kl"].max()}), include_groups=False)
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(summary)
        print(speed.to_string(index=False))
    print(f"Wrote {out / 'ppo_vs_trl_steps.csv'}, {out / 'ppo_vs_trl_throughput.csv'} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
