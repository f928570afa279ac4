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
# # 3. The reward model
#
# *Reproduces the second stage of RLHF in Kirk et al. (2024), Sec. 4: a reward model (RM)
# trained on pairwise preferences, and its accuracy in and out of distribution.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: how often the reward model agrees with the judge on held-out pairs, in and out of distribution (its section below).*

# %% [markdown]
# The paper initialises the RM from the SFT model, adds a scalar head read at the last token,
# trains it for one epoch on human comparisons with the Bradley-Terry loss, and then normalises
# its scores by their mean and standard deviation on about 500 held-out items; PPO, Best-of-N
# and the proxy scores all use the normalised RM. Here the comparisons are gathered as the real
# pipeline gathers them: two SFT samples per ID prompt, labelled by the miniature world's noisy
# simulated labeller. The RM is judged against the world's exact judge on held-out ID pairs and
# on pairs from both OOD splits. What this run's RM starts from (`reward.body`) is said where it
# is trained, below.

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
import json

import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from gendiv import data, plots, reward, runs, stats
from gendiv.config import task_words

cfg = runs.start(profile, seed=seed, run_dir=run_dir)
words = task_words(cfg)  # summary / response, post / instruction

# %% [markdown]
# ## Comparison data
#
# For each ID comparison prompt the labeller compares two summaries: an SFT sample at temperature
# 1 against a second SFT sample (at a temperature drawn from `reward.second_temperatures`), a
# sample of the base model (`reward.base_pair_share` of the prompts), or the prompt's reference
# (`reward.reference_pair_share`). Like the paper's comparison data, which pits many policies and
# human references against each other, the mix gives the RM pairs of varied contrast. The
# simulated labeller prefers one summary with probability $\sigma\big((u_A - u_B) / \tau\big)$, with $u$
# the gold utility (on instruction following: two responses, and the instruction world's utility;
# the paper's AlpacaFarm RM learnt from AlpacaFarm's pairwise preferences). A share of
# prompts (`reward.heldout_share`) is held out for measuring the RM. How often does the labeller
# agree with the exact judge?

# %%
comparison_paths = reward.build_comparisons(cfg, force=force)
train = pd.DataFrame(runs.read_jsonl(comparison_paths["comparisons_train"]))
heldout = pd.DataFrame(runs.read_jsonl(comparison_paths["comparisons_heldout"]))
everything = pd.concat(
    [train.assign(part="train"), heldout.assign(part="held out")]
)
if "utility_a" in everything:
    decided = everything[everything["preferred"] >= 0]
    agreement = float((decided["label"] == decided["preferred"]).mean())
    everything["sft_utility"] = np.where(
        everything["sft_side"] == "a",
        everything["utility_a"],
        everything["utility_b"],
    )
    everything["other_utility"] = np.where(
        everything["sft_side"] == "a",
        everything["utility_b"],
        everything["utility_a"],
    )
    everything["agrees"] = (everything["label"] == everything["preferred"]).where(
        everything["preferred"] >= 0
    )
    summary = everything.groupby("kind").agg(
        pairs=("uid", "size"),
        judge_ties=("preferred", lambda p: float((p < 0).mean())),
        sft_sample_utility=("sft_utility", "mean"),
        other_side_utility=("other_utility", "mean"),
        labeller_agrees=("agrees", "mean"),
    )
    display(summary.round(3))
    display(
        Markdown(
            "Where the judge is not tied, the labeller agrees with it on "
            f"**{agreement:.1%}** of "
            f"{len(decided):,} pairs (tau = {cfg.world.labeller_temperature}); "
            f"{float((everything['preferred'] < 0).mean()):.1%} of pairs are ties "
            "for the judge "
            f"(two equally good or equally bad {words['outputs']})."
        )
    )
else:
    display(
        Markdown(
            f"{len(train):,} training and {len(heldout):,} held-out human "
            "comparisons from the hub."
        )
    )

# %% [markdown]
# ## Training the reward model

# %%
reward_paths = reward.build_reward(cfg, force=force)
display(Markdown(reward.describe_body(cfg)))
rm_log = pd.read_csv(reward_paths["rm_log"])
long = rm_log.melt(
    id_vars=["step"],
    value_vars=[c for c in ("loss", "accuracy") if c in rm_log],
    var_name="measure",
    value_name="value",
).dropna()
plots.curves(
    long,
    "step",
    "value",
    hue="measure",
    name="rm_training",
    cfg=cfg,
    xlabel="optimiser step",
    ylabel="Bradley-Terry loss / batch accuracy",
    title="Reward-model training ("
    + (
        "TRL RewardTrainer"
        if cfg.reward.body == reward.SFT_BODY
        else "cross-encoder, gendiv's loop"
    )
    + ")",
)
display(Markdown(reward.describe_plateau(rm_log)))
normalisation = json.loads((reward_paths["rm"] / "normalisation.json").read_text())
print(
    f"Normalisation on {normalisation['n']} held-out {words['outputs']}: mean "
    f"{normalisation['mean']:.4f}, "
    f"std {normalisation['std']:.4f}"
)

# %% [markdown]
# ## Reward-model accuracy in and out of distribution
#
# Accuracy is the share of pairs on which the RM prefers the summary the exact judge prefers,
# $\frac{1}{n}\sum_i \mathbb{1}\big[\operatorname{sign}(r_\phi(x_i, a_i) - r_\phi(x_i, b_i)) = \operatorname{sign}(u(a_i) - u(b_i))\big]$
# (judge ties left out, RM ties counted one half), with 95% bootstrap intervals over pairs. The
# paper reports RM accuracy against human labels; our judge is the noise-free version of the
# labeller.
#
# Beside the RM stands a yardstick that learns nothing from the comparisons: the SFT model (which
# the paper's RM starts from) preferring the summary it finds more likely given the post (a higher
# mean log-likelihood per token; this is not in the paper). An RM started from the SFT model that
# falls below it has learnt from its comparisons something other than what its starting point
# already knew; an RM on another body is measured against it as against any scorer that needs no
# comparisons.

# %%
accuracy = pd.read_csv(reward_paths["rm_accuracy"])
display(accuracy.round(3))
if "rm_accuracy_by_kind" in reward_paths:
    by_kind = pd.read_csv(reward_paths["rm_accuracy_by_kind"])
    display(
        Markdown(
            "By kind of pair (the SFT-against-SFT pairs are the ones Best-of-N and "
            "PPO lean on):"
        )
    )
    display(
        by_kind.pivot(index="kind", columns="split", values="accuracy")
        .reindex(columns=[s for s in data.SPLITS if s in set(by_kind["split"])])
        .round(3)
    )
if "rm_yardstick" in reward_paths:
    bars = pd.read_csv(reward_paths["rm_yardstick"]).dropna(subset=["accuracy"])
    title = "Reward-model accuracy, beside the SFT model's own likelihood"
else:  # a run from before the yardstick
    bars = accuracy.assign(scorer="reward model")
    title = "Reward-model accuracy"
fig = plots.bars_with_intervals(
    bars,
    "split",
    "accuracy",
    "scorer",
    name="rm_accuracy",
    cfg=cfg,
    xlabel="split of the pairs",
    ylabel="agreement with the judge (95% CI)",
    title=title,
    order=list(accuracy["split"]),
    chance=0.5,
)
glue("key_result", fig, display=False)

# %% [markdown]
# ## What the RM rewards, part by part
#
# Accuracy says how often the RM agrees with the judge, not what it has learnt. The gold utility
# has parts (the key facts an output states, the facts it invents, its fluency, its length), and
# the world can say, for every pair, which output is better in each. Over the pairs whose two
# outputs differ in a part, the bars give how often the judge prefers the output that is better
# in it, and how often the RM does. A part the judge follows and the RM does not is a part of the
# task the RM has not learnt: a policy optimised on the RM has no reason to learn it either.
# Length has no better way; "longer" is read as one, to show who leans on it.

# %%
if "rm_agreement_by_part" in reward_paths:
    by_part = pd.read_csv(reward_paths["rm_agreement_by_part"])
else:  # a run from before this measure
    by_part = pd.DataFrame()
if len(by_part):
    part_words = {p: w for p, (_, w) in reward.UTILITY_PARTS.items()}
    by_part = by_part.assign(label=by_part["part"].map(part_words))
    display(
        by_part.assign(
            split=pd.Categorical(by_part["split"], data.SPLITS, ordered=True)
        )
        .pivot_table(
            index=["split", "label", "n"],
            columns="who",
            values="agreement",
            observed=True,
        )
        .round(3)
    )
    for split in [s for s in data.SPLITS if s in set(by_part["split"])]:
        plots.bars_with_intervals(
            by_part[by_part["split"] == split],
            "label",
            "agreement",
            "who",
            name=f"rm_agreement_by_part_{split}",
            cfg=cfg,
            xlabel=f"pairs whose {words['outputs']} differ in it: the one with ...",
            ylabel="prefers the better one (95% CI)",
            title=f"What the judge and the RM reward: {plots.SPLIT_LABELS[split]}",
            chance=0.5,
        )
    parts_rows = by_part.set_index(["split", "part", "who"])["agreement"]
    ignored = [
        (split, part)
        for split in data.SPLITS
        for part in reward.UTILITY_PARTS
        if parts_rows.get((split, part, "judge"), np.nan) >= 0.8
        and parts_rows.get((split, part, "reward model"), np.nan) < 0.6
    ]
    if ignored:
        display(
            Markdown(
                "Parts the judge follows (at least 80% of the pairs that differ "
                "in them) and the RM does not (below 60%): "
                + "; ".join(
                    f"{plots.SPLIT_LABELS[s]}: {part_words[p]} "
                    f"({100 * parts_rows[(s, p, 'reward model')]:.0f}% "
                    f"for the RM, {100 * parts_rows[(s, p, 'judge')]:.0f}% "
                    "for the judge)"
                    for s, p in ignored
                )
                + "."
            )
        )
else:
    print(
        "Not measurable on this profile: its comparisons come without the world's "
        "gold utility, so there are no parts to compare."
    )

# %% [markdown]
# ## Normalised RM score against gold utility
#
# Each point is one SFT summary. A good proxy orders summaries as the gold utility does; where
# the two part ways, PPO can exploit the RM (over-optimisation, which chapter 6 measures).

# %%
rm_vs_gold = pd.read_csv(reward_paths["rm_vs_gold"])
if len(rm_vs_gold):
    plots.scatter(
        rm_vs_gold.assign(split=rm_vs_gold["split"].map(plots.SPLIT_LABELS)),
        "gold_utility",
        "rm_score",
        "split",
        name="rm_vs_gold",
        cfg=cfg,
        xlabel="gold utility",
        ylabel="normalised RM score",
        title="The RM as a proxy for the gold utility",
    )
    spearman = rm_vs_gold.groupby("split").apply(
        lambda g: g["rm_score"].rank().corr(g["gold_utility"].rank()),
        include_groups=False,
    )
    display(
        Markdown(
            "Spearman rank correlation between RM score and gold utility: "
            + ", ".join(
                f"{plots.SPLIT_LABELS[s]} {spearman[s]:.2f}"
                for s in data.SPLITS
                if s in spearman
            )
            + "."
        )
    )

# %% [markdown]
# ## What this chapter showed

# %%
rows = accuracy.set_index("split")
lines = []
for split, row in rows.iterrows():
    if np.isnan(row["accuracy"]):
        lines.append(
            f"- {plots.SPLIT_LABELS[split]}: not measurable (no judge for this "
            "data)"
        )
        continue
    side = (
        "above chance"
        if row["ci_low"] > 0.5
        else "below chance"
        if row["ci_high"] < 0.5
        else "not distinguishable from chance"
    )
    lines.append(
        f"- {plots.SPLIT_LABELS[split]}: {row['accuracy']:.1%} "
        f"(95% CI {row['ci_low']:.1%} to {row['ci_high']:.1%}, n = "
        f"{int(row['n'])}), {side}"
    )
display(Markdown("Reward-model accuracy against the judge:\n\n" + "\n".join(lines)))
if "rm_yardstick" in reward_paths:
    stick = pd.read_csv(reward_paths["rm_yardstick"])
    stick = stick[stick["scorer"] == reward.LIKELIHOOD_SCORER].set_index("split")
    measured = stick.reindex(columns=["rm_minus"])["rm_minus"].notna()
    compared = []
    for split in [s for s in data.SPLITS if s in stick.index[measured]]:
        lk = stick.loc[split]
        side = {
            "higher": "the RM above it",
            "lower": "the RM below it",
            "no clear difference": "no clear difference",
        }[stats.direction(lk["rm_minus_low"], lk["rm_minus_high"])]
        compared.append(
            f"{plots.SPLIT_LABELS[split]}: SFT likelihood {lk['accuracy']:.1%}, "
            f"RM minus it {100 * lk['rm_minus']:+.1f} points "
            f"[{100 * lk['rm_minus_low']:+.1f}, "
            f"{100 * lk['rm_minus_high']:+.1f}] ({side})"
        )
    if compared:
        display(
            Markdown(
                "Against the yardstick that learns nothing from comparisons "
                "(the SFT model's own likelihood; the RM's accuracy minus it, "
                "paired over the same pairs, with its 95% bootstrap interval): "
                + "; ".join(compared)
                + "."
            )
        )
