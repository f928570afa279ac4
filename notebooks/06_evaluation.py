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
# # 6. Evaluation: win rates in and out of distribution
#
# *Reproduces Kirk et al. (2024), Sec. 5 and Fig. 2: the simulated-human win rates of SFT,
# Best-of-N and RLHF against the references, in distribution and under two shifts, and the
# generalisation gaps.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result, the paper's Fig. 2: each method's win rate against the human reference on every split (its section below).*

# %% [markdown]
# The paper's simulated human is GPT-4 judging which summary captures the most important points
# precisely and concisely (on instruction following, through AlpacaEval's pairwise prompt: which
# response follows the instruction better). Ours is the miniature world's gold judge, which
# compares the gold utilities of the two outputs (exact; ties count one half). An LLM judge speaking the same
# pairwise prompt, asked in both orders, can be added with `judge.llm_backend`. Every method is
# judged on the same inputs: one sample per input, the first `sampling.n_eval_inputs` test inputs
# of each split. The win rate of a method's outputs $y_i$ against opponents $y'_i$ (the
# references, or SFT's outputs) on $n$ inputs, and the generalisation gap, are
#
# $$
# W = \frac{1}{n} \sum_{i=1}^n \Big(\mathbb{1}[u_i(y_i) > u_i(y'_i)] + \tfrac{1}{2}\, \mathbb{1}[u_i(y_i) = u_i(y'_i)]\Big),
# \qquad \text{gap} = W_\text{ID} - W_\text{OOD},
# $$
#
# with $u_i$ the judge's utility for input $i$. Intervals are 95% percentile bootstrap intervals:
# the 2.5th and 97.5th percentiles of $W$ over 1,000 resamples of the inputs with replacement
# (paired where two methods share inputs; for the gap, ID and OOD inputs are resampled apart).

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
from IPython.display import Markdown, display
from myst_nb import glue

from gendiv import data, evaluation, plots, runs, stats

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %%
paths = evaluation.build_evaluation(cfg, force=force)
splits = data.available_splits(cfg)
winrates = runs.read_methods(paths["winrates"], evaluation.METHODS)
judges = list(dict.fromkeys(winrates["judge"]))
methods = [m for m in evaluation.METHODS if m in set(winrates["method"])]

# %% [markdown]
# ## Win rate against the reference (the paper's Fig. 2)

# %%
for judge in judges:
    vs_ref = winrates[
        (winrates["opponent"] == "reference") & (winrates["judge"] == judge)
    ]
    display(
        vs_ref.pivot(index="method", columns="split", values="win_rate")
        .reindex(methods)[splits]
        .round(3)
    )
    fig = plots.bars_with_intervals(
        vs_ref,
        "split",
        "win_rate",
        "method",
        name=f"winrate_vs_reference_{judge}".replace(":", "_"),
        cfg=cfg,
        xlabel="test split",
        ylabel="win rate vs reference (95% CI)",
        title=f"Win rate against the reference ({judge} judge)",
        order=splits,
        hue_order=methods,
        chance=0.5,
    )
    if judge == judges[0]:
        glue("key_result", fig, display=False)

# %% [markdown]
# ## Head to head against SFT

# %%
for judge in judges:
    vs_sft = winrates[
        (winrates["opponent"] == "sft") & (winrates["judge"] == judge)
    ]
    order = [m for m in methods if m != "sft"]
    plots.bars_with_intervals(
        vs_sft,
        "split",
        "win_rate",
        "method",
        name=f"winrate_vs_sft_{judge}".replace(":", "_"),
        cfg=cfg,
        xlabel="test split",
        ylabel="win rate vs SFT (95% CI)",
        title=f"Win rate against SFT ({judge} judge)",
        order=splits,
        hue_order=order,
        chance=0.5,
    )

# %% [markdown]
# ## Generalisation gaps
#
# The gap is the win rate against the reference in distribution minus the same out of
# distribution (bigger = worse generalisation); intervals resample each split's inputs.

# %%
gaps = runs.read_methods(paths["gaps"], evaluation.METHODS)
if len(gaps):
    for judge in judges:
        g = gaps[gaps["judge"] == judge]
        plots.bars_with_intervals(
            g,
            "split",
            "gap",
            "method",
            name=f"generalisation_gap_{judge}".replace(":", "_"),
            cfg=cfg,
            xlabel="OOD split",
            ylabel="ID minus OOD win rate (95% CI)",
            title=f"Generalisation gap ({judge} judge)",
            order=[s for s in splits if s != "id"],
            hue_order=methods,
            chance=0.0,
        )

# %% [markdown]
# ## Proxy reward beside gold utility
#
# The RM is what PPO and BoN optimise; the gold utility is what the judge rewards. A method that
# gains on the proxy but not on gold is over-optimising the RM. Both score the one sample per
# input the judge saw, so these gold utilities are noisier than chapters 2 and 4's averages over
# `sampling.utility_samples` samples, and can differ from them by that noise.

# %%
scores = runs.read_methods(paths["scores"], evaluation.METHODS)
display(
    scores.pivot_table(index="method", columns=["measure", "split"], values="value")
    .reindex(methods)
    .round(3)
)
for measure, label in (
    ("rm_score", "normalised RM score"),
    ("gold_utility", "gold utility"),
):
    sub = scores[scores["measure"] == measure]
    if len(sub):
        plots.bars_with_intervals(
            sub,
            "split",
            "value",
            "method",
            name=f"scores_{measure}",
            cfg=cfg,
            xlabel="test split",
            ylabel=f"mean {label} (95% CI)",
            title=f"{label.capitalize()} by method",
            order=splits,
            hue_order=methods,
        )

# %% [markdown]
# ## What this chapter showed

# %%
judge = judges[0]
wr = winrates[winrates["judge"] == judge].set_index(["method", "opponent", "split"])
lines = []
for split in splits:
    ranked = sorted(
        methods, key=lambda m: -wr.loc[(m, "reference", split), "win_rate"]
    )
    h2h = wr.loc[("ppo", "sft", split)]
    side = stats.direction(h2h["ci_low"] - 0.5, h2h["ci_high"] - 0.5)
    side = side.replace("higher", "above one half").replace(
        "lower", "below one half"
    )
    lines.append(
        f"- {plots.SPLIT_LABELS[split]}: against the reference, "
        + ", ".join(
            f"{m.upper()} {wr.loc[(m, 'reference', split), 'win_rate']:.1%}"
            for m in ranked
        )
        + f"; PPO against SFT {h2h['win_rate']:.1%} ({side})."
    )
display(Markdown(f"With the {judge} judge:\n\n" + "\n".join(lines)))
