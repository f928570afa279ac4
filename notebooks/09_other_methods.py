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
# # 9. Beyond PPO: DPO, RLOO and GRPO
#
# *Not in the paper: do the alignment methods most used since it escape the trade-off it found?
# Each runs on the same SFT policy, the same labelled comparisons and the same normalised RM as
# PPO, and is measured exactly as PPO is in chapters 6-8.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: PPO's KL sweep and the other methods, per-input diversity and gold utility against true KL to SFT (its section below).*

# %% [markdown]
# - **DPO** (Rafailov et al. 2023) skips the RM: it fits the policy to chapter 3's labelled
#   comparisons (chosen $y_w$, rejected $y_l$) directly, minimising
#   $-\log \sigma\big(\beta \log \frac{\pi(y_w \mid x)}{\pi_\text{SFT}(y_w \mid x)} -
#   \beta \log \frac{\pi(y_l \mid x)}{\pi_\text{SFT}(y_l \mid x)}\big)$, whose optimum is that of
#   PPO's KL-regularised objective for a Bradley-Terry reward.
# - **RLOO** (Ahmadian et al. 2024) samples $k$ outputs per prompt and uses the mean RM score of
#   the other $k - 1$ as each one's baseline: no value model.
# - **GRPO** (Shao et al. 2024) samples a group of $k$ outputs per prompt and scales each score by
#   the group's mean and standard deviation: no value model either.
#
# All three use TRL's trainers; their KL terms differ from PPO's (the deviations page), so every
# policy's true KL to SFT is measured the same way as the sweep's runs, and each method is a point
# beside chapter 8's frontier.

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

from gendiv import align, data, plots, runs, sweep

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %%
paths = align.build_alignment(cfg, force=force)
splits = data.available_splits(cfg)
ids = align.method_ids(cfg)
labels = {
    "sft": "SFT",
    "bon": "BoN",
    "ppo": "PPO",
    **{m: align.label(m) for m in ids},
}
methods = ["sft", "bon", "ppo", *ids]
if not ids:
    display(
        Markdown(
            f"Profile `{cfg.profile}` runs no other alignment method "
            "(`align.methods` is empty); the rest of this chapter has nothing to "
            "show. The book's `tiny` profiles leave them out for its time "
            "budget; `tiny-full` and `tiny-instruct-full` (the same profiles with "
            "DPO and GRPO) and `smol` train them: `make book "
            "SUMMARISATION_PROFILE=tiny-full "
            "INSTRUCTION_PROFILE=tiny-instruct-full`."
        )
    )
else:
    display(
        Markdown(
            f"This run trains: {', '.join(labels[m] for m in ids)} "
            f"(`align.methods` of profile `{cfg.profile}`); RLOO and GRPO with "
            f"{cfg.align.rl_steps} steps of {cfg.align.rl_prompts} prompts x "
            f"{cfg.align.rl_k} samples, KL coefficient {align.rl_kl_coef(cfg):g}."
        )
    )

# %% [markdown]
# ## Training
#
# DPO's loss and how often its implicit reward ranks the chosen output above the rejected one on
# its training batches; RLOO's and GRPO's mean normalised RM score and KL term per step (TRL's own
# estimates: RLOO's the sequence log-ratio, GRPO's the per-token k3).

# %%
logs = align.train_logs(cfg)
for family, columns in (
    ("dpo", {"loss": "DPO loss", "accuracy": "implicit-reward accuracy"}),
    ("rl", {"reward": "normalised RM score", "kl": "KL term (TRL's estimate)"}),
):
    part = logs[
        logs["method"]
        .map(align.family)
        .isin(["dpo"] if family == "dpo" else ["rloo", "grpo"])
    ]
    if len(part):
        _ = plots.panels(
            part.assign(method=part["method"].map(labels)),
            "step",
            columns,
            hue="method",
            ncols=2,
            name=f"align_training_{family}",
            cfg=cfg,
            xlabel="optimiser step",
            title="Training of the other alignment methods",
        )

# %% [markdown]
# ## Every method side by side
#
# One row per method and split: win rates against the reference and head to head against SFT
# (chapter 6), gold utility of the judged output, true KL to SFT (chapter 8's measure; SFT's is
# 0 by definition) and per-input diversity (chapter 7).

# %%
table = align.summary(cfg)
display(
    table.assign(method=table["method"].map(labels))
    .set_index(["split", "method"])
    .round(3)
)

# %% [markdown]
# ## Generalisation: win rates with intervals

# %%
winrates = runs.read_methods(paths["winrates"], methods) if ids else None
if ids:
    judge = (
        "world" if "world" in set(winrates["judge"]) else winrates["judge"].iloc[0]
    )
    for opponent, ylabel, order in (
        ("reference", "win rate vs reference (95% CI)", methods),
        ("sft", "win rate vs SFT (95% CI)", methods[1:]),
    ):
        sub = winrates[
            (winrates["opponent"] == opponent) & (winrates["judge"] == judge)
        ]
        plots.bars_with_intervals(
            sub.assign(method=sub["method"].map(labels)),
            "split",
            "win_rate",
            "method",
            name=f"align_winrate_vs_{opponent}",
            cfg=cfg,
            xlabel="test split",
            ylabel=ylabel,
            title="Win rate against "
            + ("the reference" if opponent == "reference" else "SFT"),
            order=splits,
            hue_order=[labels[m] for m in order],
            chance=0.5,
        )
    gaps = runs.read_methods(paths["gaps"], methods)
    gaps = gaps[gaps["judge"] == judge]
    display(
        gaps.assign(method=gaps["method"].map(labels))
        .pivot(index="method", columns="split", values="gap")
        .reindex([labels[m] for m in methods])
        .round(3)
    )

# %% [markdown]
# ## Diversity against SFT
#
# Per-input diversity of K samples per input (the paper's Fig. 5) and across-input diversity of
# one output per input (Fig. 6), each method minus SFT, paired over inputs as in chapter 7.

# %%
if ids:
    diffs = runs.read_methods(paths["diversity_vs_sft"], ids)
    display(
        diffs.assign(method=diffs["method"].map(labels))
        .pivot_table(
            index=["scope", "method"],
            columns=["metric", "split"],
            values="difference",
        )
        .round(3)
    )
    div = runs.read_methods(paths["diversity"], methods)
    per_input = div[
        (div["scope"] == "per_input")
        & div["metric"].isin(["ead", "sbert", "oracle"])
    ]
    for split in splits:
        sub = per_input[per_input["split"] == split]
        plots.bars_with_intervals(
            sub.assign(method=sub["method"].map(labels)),
            "metric",
            "value",
            "method",
            name=f"align_per_input_diversity_{split}",
            cfg=cfg,
            xlabel="metric",
            ylabel="per-input diversity (95% CI)",
            title=f"Per-input diversity, {plots.SPLIT_LABELS.get(split, split)}",
            order=[
                m for m in ("ead", "sbert", "oracle") if m in set(sub["metric"])
            ],
            hue_order=[labels[m] for m in methods],
        )

# %% [markdown]
# ## On chapter 8's frontier
#
# The sweep's PPO runs (one per KL coefficient) and each other method as one point: per-input
# diversity against true KL to SFT, and gold utility against per-input diversity, in distribution.
# A method that reaches PPO's gold utility at more diversity, or at less KL, escapes the trade-off
# the sweep traces.

# %%
if ids:
    frontier = sweep.load(paths["kl_sweep"])
    ppo_runs = sweep.main_estimator(frontier, cfg)
    points = pd.concat([ppo_runs, frontier[frontier["method"].isin(ids)]])
    points = (
        points[points["split"] == splits[0]]
        .pivot_table(index=["method", "kl_coef"], columns="measure", values="value")
        .reset_index()
    )
    points["method"] = points["method"].map(labels)
    display(points.round(3))
    measures = {
        m: label
        for m, label in (
            ("per_input_ead", "per-input EAD"),
            ("per_input_sbert", "per-input Sentence-BERT"),
            ("gold_utility", "gold utility"),
        )
        if m in points
    }
    fig = plots.panels(
        points.sort_values("true_kl"),
        "true_kl",
        measures,
        hue="method",
        ncols=len(measures),
        markers=True,
        name="align_frontier",
        cfg=cfg,
        xlabel="true KL to SFT (nats/sequence)",
        title="In distribution: PPO's sweep and the other methods against true KL",
    )
    glue("key_result", fig, display=False)
else:
    glue(
        "key_result",
        Markdown("This profile runs no other alignment method."),
        display=False,
    )

# %% [markdown]
# ## What this chapter showed

# %%
if ids:
    wr = winrates[winrates["judge"] == judge].set_index(
        ["method", "opponent", "split"]
    )
    cols = ["win_rate", "ci_low", "ci_high"]
    lines = []
    for m in ids:
        vs_sft = "; ".join(
            "{} {:.3f} [{:.3f}, {:.3f}]".format(s, *wr.loc[(m, "sft", s)][cols])
            for s in splits
        )
        d = diffs[
            (diffs["method"] == m)
            & (diffs["scope"] == "per_input")
            & (diffs["metric"].isin(["ead", "sbert"]))
        ]
        less = [f"{r.metric} on {r.split}" for r in d.itertuples() if r.ci_high < 0]
        more = [f"{r.metric} on {r.split}" for r in d.itertuples() if r.ci_low > 0]
        lines.append(
            f"- **{labels[m]}** against SFT, head to head: {vs_sft}. Per-input "
            f"diversity is clearly lower than SFT's on "
            f"{', '.join(less) or 'no split and metric'}, clearly higher on "
            f"{', '.join(more) or 'none'}."
        )
    display(Markdown("\n".join(lines)))
    display(
        Markdown(
            "The scorecard (chapter 10) turns these comparisons into verdicts: C1 "
            "and C4 asked of each method."
        )
    )
