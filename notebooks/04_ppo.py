# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. RLHF with PPO
#
# *Reproduces the third stage of RLHF in Kirk et al. (2024), Sec. 4: reinforcement learning of
# the SFT policy against the reward model with PPO and a KL penalty.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: PPO's training, proxy reward and KL to SFT step by step (its section below).*

# %% [markdown]
# The policy starts from the SFT model and gains a newly initialised value head on its trunk. At
# every step it writes one summary (on instruction following, one response) for each of
# `ppo.rollout_batch_size` ID prompts (temperature 1, top-k 0, top-p 1). Each one's reward is the normalised RM score at its last token minus
# `ppo.kl_coef` times a per-token estimate of the KL divergence from the frozen SFT policy
# (the paper's code uses 0.5 (log pi_ref - log pi)^2 and beta = 0.05). Advantages come from GAE
# (gamma 1, lambda 0.95) and are whitened; the clipped policy and value losses are minimised for
# `ppo.ppo_epochs` passes over minibatches, with a linearly decaying learning rate. TRL no longer
# ships PPO, so the loop is `gendiv.ppo`, written on `accelerate`.

# %% tags=["remove-cell"]
# Colab only (does nothing elsewhere): fetch the book's repository, install the locked versions
# and gendiv, then restart the runtime once so that Python loads them.
import os, subprocess, sys  # noqa: E401

if "google.colab" in sys.modules and not os.path.isdir("/content/gendiv"):
    subprocess.run(
        "git clone -q --depth 1 https://github.com/gendiv/gendiv.git "
        "/content/gendiv && "
        "pip install -q --require-hashes --no-deps "
        "-r /content/gendiv/requirements.lock && "
        "pip install -q --no-deps -e /content/gendiv",
        shell=True,
        check=True,
    )
    # Colab restarts the runtime: run the notebook again from the top.
    os.kill(os.getpid(), 9)
if "google.colab" in sys.modules:
    os.chdir("/content/gendiv/notebooks")

# %% tags=["parameters"]
profile = "tiny"
run_dir = ""
seed = None
force = False

# %%
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from gendiv import data, outputs, plots, ppo, runs, stats
from gendiv.config import task_words

cfg = runs.start(profile, seed=seed, run_dir=run_dir)
words = task_words(cfg)  # summary / response, post / instruction

# %% [markdown]
# ## What PPO optimises
#
# For a prompt $x$ and a sampled response $y_{1..T}$ (up to and including EOS), the reward of
# token $t$ (Ziegler et al. 2019; Stiennon et al. 2020, eq. 2; paper Sec. 4) is
#
# $$
# r_t = -\beta\, k(y_t) + \mathbb{1}[t = T]\; \hat r(x, y),
# \qquad k_1 = \log \frac{\pi_\theta(y_t \mid \cdot)}{\pi_\text{SFT}(y_t \mid \cdot)},
# \qquad k_2 = \tfrac{1}{2}\Big(\log \frac{\pi_\text{SFT}(y_t \mid \cdot)}{\pi_\theta(y_t \mid \cdot)}\Big)^2,
# $$
#
# with $\hat r$ the normalised RM and $k$ the per-token KL estimate ($k_2$ in the paper's code;
# $k_1$ is `ppo.kl_estimator: log_ratio`). Advantages come from generalised advantage estimation
# (Schulman et al. 2016, eq. 16) with the value head $V_\psi$,
#
# $$
# \delta_t = r_t + \gamma V_\psi(s_{t+1}) - V_\psi(s_t), \qquad A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l},
# \qquad R_t = A_t + V_\psi(s_t),
# $$
#
# whitened over the batch, and each minibatch minimises the clipped surrogate (Schulman et al.
# 2017, eq. 7) plus the clipped value loss, with $\rho_t = \pi_\theta(y_t \mid \cdot) / \pi_{\theta_\text{old}}(y_t \mid \cdot)$:
#
# $$
# \mathcal{L} = \mathbb{E}_t\big[\max(-A_t \rho_t,\; -A_t\, \operatorname{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon))\big]
#   + c_v\, \tfrac{1}{2}\, \mathbb{E}_t\big[\max\big((V_\psi - R_t)^2,\; (V_\text{old} + \operatorname{clip}(V_\psi - V_\text{old}, -\epsilon_v, \epsilon_v) - R_t)^2\big)\big].
# $$

# %%
p = cfg.ppo
display(
    Markdown(
        f"In this run: $\\beta$ = {p.kl_coef:g} "
        f"({'adaptive' if p.adaptive_kl else 'fixed'}), "
        "estimator "
        f"$k_{{{1 if p.kl_estimator == 'log_ratio' else 2}}}$, $\\gamma$ = "
        f"{p.gamma:g}, "
        f"$\\lambda$ = {p.lam:g}, "
        f"$\\epsilon$ = {p.clip:g}, $\\epsilon_v$ = {p.value_clip:g}, $c_v$ = "
        f"{p.vf_coef:g}, "
        f"{p.ppo_epochs} PPO epochs over minibatches of {p.minibatch_size}, Adam "
        f"at {p.lr:g} "
        "decayed linearly to 0."
    )
)

# %% [markdown]
# ## Training
#
# The run checkpoints every `ppo.checkpoint_every` steps; an interrupted run resumes from the
# last checkpoint when this cell is run again.

# %%
ppo_paths = ppo.build_ppo(cfg, force=force)
log = pd.read_csv(ppo_paths["log"])
display(
    Markdown(
        f"{len(log)} steps of {p.rollout_batch_size} prompts "
        f"({int(log['episodes'].iloc[-1]):,} "
        f"episodes), {p.ppo_epochs} PPO epochs over minibatches of "
        f"{p.minibatch_size}, lr "
        f"{p.lr:g}, "
        f"kl_coef {p.kl_coef:g} ({'adaptive' if p.adaptive_kl else 'fixed'}), KL "
        "estimator "
        f"`{p.kl_estimator}`, {log['wall_s'].sum():.0f} s in all."
    )
)

# %%
fig = plots.panels(
    log,
    "step",
    {
        "proxy_reward": "proxy reward (normalised RM)",
        "kl": "KL to SFT (nats/sequence)",
        "total_reward": "total reward (RM - beta KL)",
        "entropy": "entropy (nats/token)",
        "response_length": "response length (tokens)",
        "eos_share": "share ending with EOS",
    },
    name="ppo_training",
    cfg=cfg,
    xlabel="PPO step",
    title="PPO training: reward, KL and outputs",
)
glue("key_result", fig, display=False)

# %%
_ = plots.panels(
    log,
    "step",
    {
        "policy_loss": "policy loss",
        "value_loss": "value loss",
        "explained_variance": "explained variance",
        "clip_fraction": "clip fraction",
        "approx_kl": "approx. KL(old || new)",
        "lr": "learning rate",
    },
    name="ppo_optimisation",
    cfg=cfg,
    xlabel="PPO step",
    title="PPO optimisation diagnostics",
)

# %%
throughput = log[["rollout_tokens_per_s", "update_tokens_per_s"]].median()
display(
    Markdown(
        f"Median throughput on {runs.device_name()}: rollouts generate "
        f"**{throughput['rollout_tokens_per_s']:,.0f}** response tokens/s; updates "
        "process "
        f"**{throughput['update_tokens_per_s']:,.0f}** tokens/s (prompt and "
        "response, every "
        "PPO epoch)."
    )
)

# %% [markdown]
# ## Samples during training

# %%
samples = pd.DataFrame(runs.read_jsonl(ppo_paths["samples"]))
if len(samples):
    shown = samples.groupby("step").head(1)
    shown = shown.assign(**{words["input"]: shown["prompt"].str.slice(-160)})[
        ["step", words["input"], "response", "proxy_reward"]
    ]
    with pd.option_context("display.max_colwidth", 160):
        display(shown.round(2))

# %% [markdown]
# ## SFT and PPO on the test splits
#
# PPO samples on the same test inputs as chapter 2's SFT samples, judged by the gold utility and,
# as there, averaged over `sampling.utility_samples` samples per input; the difference is paired
# over inputs. The tables show the first sample. Chapter 6 compares every method's one sample per
# input with the simulated-human judge.

# %%
eval_paths = ppo.evaluate_ppo(cfg, force=force)
splits = data.available_splits(cfg)
sft_eval = runs.artifact(cfg, "sft_eval", "gold_utility")
gold = pd.concat(
    [pd.read_csv(sft_eval), pd.read_csv(eval_paths["gold_utility"])],
    ignore_index=True,
)
if len(gold):
    gold = gold[gold["method"].isin(["sft", "ppo", "reference"])]
    plots.bars_with_intervals(
        gold,
        "split",
        "mean_utility",
        "method",
        name="ppo_gold_utility",
        cfg=cfg,
        xlabel="test split",
        ylabel="mean gold utility (95% CI)",
        title=f"Gold utility of SFT and PPO {words['outputs']}",
        order=splits,
        hue_order=["sft", "ppo", "reference"],
    )
else:
    display(
        Markdown(
            "No gold judge exists for this profile's data, so gold utility is not "
            "computed."
        )
    )

# %%
for split in splits:
    sft_rows = runs.read_jsonl(runs.artifact(cfg, "sft_eval", f"sft_{split}"))[:3]
    ppo_rows = runs.read_jsonl(eval_paths[f"ppo_{split}"])[:3]
    table = pd.DataFrame(
        {
            "reference": [r["reference"] for r in sft_rows],
            "SFT sample": [r["output"] for r in sft_rows],
            "PPO sample": [r["output"] for r in ppo_rows],
        }
    )
    if "utility" in sft_rows[0]:
        table["utility (ref / SFT / PPO)"] = [
            f"{s['reference_utility']:.2f} / {s['utility']:.2f} / "
            f"{q['utility']:.2f}"
            for s, q in zip(sft_rows, ppo_rows)
        ]
    display(Markdown(f"### {plots.SPLIT_LABELS[split]}"))
    with pd.option_context("display.max_colwidth", 200):
        display(table)

# %% [markdown]
# ## What this chapter showed

# %%
first, last = log.head(max(1, len(log) // 5)), log.tail(max(1, len(log) // 5))
lines = [
    f"- Proxy reward: {first['proxy_reward'].mean():.2f} over the first fifth of "
    "training, "
    f"{last['proxy_reward'].mean():.2f} over the last; KL to the SFT policy "
    f"{first['kl'].mean():.2f} -> "
    f"{last['kl'].mean():.2f} nats per {words['output']} "
    f"(max {log['kl'].max():.2f}); "
    f"{words['outputs']} "
    f"{first['response_length'].mean():.1f} -> "
    f"{last['response_length'].mean():.1f} tokens."
]
if len(log) >= 5:
    trend = ppo.reward_trend(log)
    shape = (
        "has flattened: the last fifth of training added"
        if trend["flattened"]
        else "has not flattened: the last fifth of training added"
    )
    lines.append(
        f"- The proxy reward's rise {shape} {trend['last_rise']:+.2f} of its "
        f"{trend['rise']:+.2f} "
        "(first fifth to last fifth; it counts as flattened below a fifth of the "
        "rise)."
    )
if len(gold):
    for split in splits:
        sft_u = outputs.expected_utilities(
            runs.read_jsonl(runs.artifact(cfg, "sft_eval", f"sft_{split}"))
        )
        ppo_u = outputs.expected_utilities(
            runs.read_jsonl(eval_paths[f"ppo_{split}"])
        )
        diff, lo, hi = stats.paired_difference(ppo_u, sft_u, seed=cfg.seed)
        lines.append(
            f"- {plots.SPLIT_LABELS[split]}: PPO's gold utility is "
            f"{stats.direction(lo, hi)} "
            "than SFT's "
            f"(PPO - SFT = {diff:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}, n = "
            f"{len(ppo_u)})."
        )
display(Markdown("\n".join(lines)))
