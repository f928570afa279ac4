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
# # 5. Best-of-N
#
# *Reproduces the Best-of-N baseline of Kirk et al. (2024), Sec. 4: N samples from the SFT
# policy, the reward model keeps the best.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: the kept output's proxy score and gold utility as N grows (its section below).*

# %% [markdown]
# Best-of-N (BoN) needs no RL training: for each input it draws `bon.n` SFT samples (paper: 16)
# and keeps the one with the highest normalised RM score. It pays at inference: N samples per
# kept output. The paper's text samples at temperature 0.7 and its code at 1.0; we follow the
# code (`bon.temperature`), which also makes the candidates ordinary SFT samples that the
# diversity chapter reuses. This chapter shows how the kept output's RM score and gold utility
# grow with N, in and out of distribution, and what that costs.

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

from gendiv import bon, data, plots, runs

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %% [markdown]
# ## Sampling and picking
#
# For each input $x$, $N$ candidates $y_1, \dots, y_N \sim \pi_\text{SFT}(\cdot \mid x)$ and the kept
# output
#
# $$
# y^\star = \arg\max_{j \le N} \hat r(x, y_j),
# $$
#
# the first candidate on a tie. Its cost is $N$ samples, $\sum_j |y_j|$ generated tokens, where one
# SFT or PPO output costs one sample. The scaling curve keeps the best of the first $n$
# candidates for $n = 1, 2, 4, \dots, N$.

# %%
bon_paths = bon.build_best_of_n(cfg, force=force)
splits = data.available_splits(cfg)
scaling = pd.read_csv(bon_paths["bon_scaling"])
display(
    scaling.pivot_table(
        index=["measure", "split"], columns="n", values="value"
    ).round(3)
)

# %% [markdown]
# ## How the kept output improves with N
#
# N = 1 is a single SFT sample; each larger N takes the first N candidates, so the curves are
# nested. The proxy (RM) score rises by construction; whether the gold utility rises with it
# shows how far the RM can be trusted, in distribution and out of it.

# %%
curve = scaling.assign(
    split=scaling["split"].map(plots.SPLIT_LABELS),
    measure=scaling["measure"].map(
        {"rm_score": "normalised RM score (proxy)", "gold_utility": "gold utility"}
    ),
)
fig = plots.panels(
    curve.pivot_table(
        index=["n", "split"], columns="measure", values="value"
    ).reset_index(),
    "n",
    {
        "normalised RM score (proxy)": "normalised RM score (proxy)",
        "gold utility": "gold utility",
    },
    hue="split",
    name="bon_scaling",
    cfg=cfg,
    xlabel="N (samples per kept output)",
    title="Best-of-N: the kept output against N",
    ncols=2,
)
glue("key_result", fig, display=False)

# %% [markdown]
# ## Cost

# %%
cost = scaling[scaling["measure"] == "rm_score"].pivot_table(
    index="n", columns="split", values="tokens_per_output"
)
display(cost.round(1).rename(columns=plots.SPLIT_LABELS))
display(
    Markdown(
        f"At N = {cfg.bon.n}, every kept output costs {cfg.bon.n} samples: "
        + ", ".join(
            f"{cost.loc[cfg.bon.n, s]:.0f} generated tokens on "
            f"{plots.SPLIT_LABELS[s]}"
            for s in splits
            if s in cost
        )
        + " (and as many RM evaluations)."
    )
)

# %% [markdown]
# ## Examples

# %%
for split in splits:
    cands = runs.read_jsonl(bon_paths[f"sft_candidates_{split}"])[0]
    table = (
        pd.DataFrame(
            {
                "candidate": cands["outputs"],
                "RM score": cands["rm_scores"],
                "gold utility": cands["utilities"],
            }
        )
        .sort_values("RM score", ascending=False)
        .head(5)
    )
    display(
        Markdown(
            f"### {plots.SPLIT_LABELS[split]}: the top five of "
            f"{len(cands['outputs'])} candidates "
            f"for one input (reference: *{cands['reference']}*)"
        )
    )
    with pd.option_context("display.max_colwidth", 200):
        display(table.round(3))

# %% [markdown]
# ## What this chapter showed

# %%
lines = []
for split in splits:
    s = scaling[scaling["split"] == split].set_index(["measure", "n"])["value"]
    if ("gold_utility", 1) in s and not pd.isna(s["gold_utility", 1]):
        lines.append(
            f"- {plots.SPLIT_LABELS[split]}: from N = 1 to N = {cfg.bon.n}, the "
            "kept output's "
            "RM score "
            f"goes {s['rm_score', 1]:+.2f} -> {s['rm_score', cfg.bon.n]:+.2f} and "
            "its gold utility "
            f"{s['gold_utility', 1]:.3f} -> {s['gold_utility', cfg.bon.n]:.3f}."
        )
    else:
        lines.append(
            f"- {plots.SPLIT_LABELS[split]}: RM score {s['rm_score', 1]:+.2f} -> "
            f"{s['rm_score', cfg.bon.n]:+.2f}."
        )
display(Markdown("\n".join(lines)))
