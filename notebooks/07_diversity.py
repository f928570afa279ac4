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
# # 7. Output diversity
#
# *Reproduces Kirk et al. (2024), Sec. 6 and Figs. 5-6: how RLHF changes the diversity of what
# a policy writes, for many samples of one input (per-input) and across inputs (across-input).*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result, the paper's Fig. 5: per-input diversity (EAD) of each method on every split (its section below, with the other metrics).*

# %% [markdown]
# Metrics (higher = more diverse): **EAD**, expectation-adjusted distinct n-grams (Liu et al.
# 2022; whitespace tokens after removing "." and newlines, n = 1..5, V = `diversity.ead_vocab`);
# **Sentence-BERT**, one minus the mean pairwise cosine similarity of sentence embeddings (model
# `diversity.sbert_model`; the paper used bert-large-nli-stsb-mean-tokens); **NLI**, the mean
# over pairs of contradiction (+1) versus entailment (-1) in both directions (paper:
# roberta-large-mnli, which does not ship offline); and, in the miniature world only, the
# **oracle**: the mean pairwise Jaccard distance between the sets of facts the outputs assert.
# Per-input: `diversity.k` samples at temperature 1 for the first `diversity.n_inputs` inputs,
# averaged over inputs. Across-input: one output per input over the evaluation inputs.
#
# For a set of outputs $Y = \{y_1, \dots, y_m\}$ (the $K$ samples of one input, or one output per
# input), with $N_n$ distinct $n$-grams among $C_n$ in all and $V$ the vocabulary size:
#
# $$
# \text{EAD}(Y) = \frac{1}{5}\sum_{n=1}^{5} \frac{N_n}{V\,\big(1 - ((V - 1)/V)^{C_n}\big)},
# \qquad
# \text{SBERT}(Y) = 1 - \binom{m}{2}^{-1} \sum_{j < k} \cos(e(y_j), e(y_k)),
# $$
#
# $$
# \text{NLI}(Y) = \binom{m}{2}^{-1} \sum_{j < k} \big(s(y_j, y_k) + s(y_k, y_j)\big), \quad
# s(a, b) = w_{\ell^\star} \, p(\ell^\star \mid a, b), \quad \ell^\star = \arg\max_\ell p(\ell \mid a, b), \quad
# w_\text{contradiction} = 1,\, w_\text{neutral} = 0,\, w_\text{entailment} = -1,
# $$
#
# $$
# \text{oracle}(Y) = \binom{m}{2}^{-1} \sum_{j < k} \Big(1 - \frac{|F(y_j) \cap F(y_k)|}{|F(y_j) \cup F(y_k)|}\Big),
# $$
#
# with $e$ the sentence embedding and $F(y)$ the set of facts the world's parser reads from $y$.
# The EAD denominator is the expected number of distinct $n$-grams in $C_n$ uniform draws from $V$
# (Liu et al. 2022, eq. 3), so EAD does not fall just because outputs are longer.

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

from gendiv import data, diversity, plots, runs, stats

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %%
paths = diversity.build_diversity(cfg, force=force)
splits = data.available_splits(cfg)
frame = runs.read_methods(paths["diversity"], diversity.METHODS)
unavailable = frame[frame["note"].notna() & (frame["note"] != "")]
measured = frame[frame["value"].notna()]
methods = [m for m in ("base", "sft", "bon", "ppo") if m in set(measured["method"])]
for metric, why in unavailable.drop_duplicates("metric")[
    ["metric", "note"]
].itertuples(index=False):
    display(Markdown(f"**{metric.upper()} is not reported in this run:** {why}."))

# %% [markdown]
# ## Per-input diversity (the paper's Fig. 5)

# %%
metric_labels = {
    "ead": "EAD",
    "sbert": "Sentence-BERT",
    "nli": "NLI",
    "oracle": "oracle (facts)",
    "sbert_effective": "effective Sentence-BERT",
    "oracle_effective": "effective oracle",
}
for scope, title in (
    ("per_input", "Per-input diversity"),
    ("across_input", "Across-input diversity"),
):
    sub = measured[measured["scope"] == scope]
    display(Markdown(f"### {title}"))
    display(
        sub.pivot_table(index="method", columns=["metric", "split"], values="value")
        .reindex(methods)
        .round(3)
    )
    for metric in [m for m in diversity.METRICS if m in set(sub["metric"])]:
        fig = plots.bars_with_intervals(
            sub[sub["metric"] == metric],
            "split",
            "value",
            "method",
            name=f"diversity_{scope}_{metric}",
            cfg=cfg,
            xlabel="test split",
            ylabel=f"{metric_labels[metric]} diversity (95% CI)",
            title=f"{title}: {metric_labels[metric]}",
            order=splits,
            hue_order=methods,
        )
        if (scope, metric) == ("per_input", "ead"):
            glue("key_result", fig, display=False)

# %% [markdown]
# ## Across-input diversity (the paper's Fig. 6)
#
# The figures above under "Across-input diversity" use one output per input, for the same
# inputs as chapter 6. Differences from SFT, with intervals paired over inputs:

# %%
diffs = runs.read_methods(paths["diversity_vs_sft"], diversity.METHODS)
display(
    diffs.pivot_table(
        index=["scope", "method"], columns=["metric", "split"], values="difference"
    ).round(3)
)

# %% [markdown]
# ## Diversity among good outputs
#
# Lexical and embedding diversity reward incoherence: a policy that states wrong facts in many
# ways looks diverse. The **effective** metrics (Shypula et al. 2025) count a pair of outputs only
# if both are good: the mean over pairs of the pair's distance (Sentence-BERT or the oracle's
# Jaccard) when both outputs' gold utility reaches a threshold, else 0 (`diversity.quality_threshold`,
# shown in the tables above as `sbert_effective` and `oracle_effective`). How much hangs on the
# threshold: per-input effective diversity at several thresholds, with the share of outputs that
# reach each.

# %%
if "effective_sensitivity" in paths:
    sens = runs.read_methods(paths["effective_sensitivity"], diversity.METHODS)
    if len(sens):
        display(
            sens.pivot_table(
                index=["metric", "method"],
                columns=["split", "threshold"],
                values="value",
            ).round(3)
        )
        display(
            sens.pivot_table(
                index="method", columns=["split", "threshold"], values="good_share"
            ).round(2)
        )
        _ = plots.panels(
            sens[
                (sens["split"] == splits[0]) & (sens["metric"] == "sbert_effective")
            ],
            "threshold",
            {
                "value": "effective Sentence-BERT (ID)",
                "good_share": "share of outputs that count",
            },
            hue="method",
            ncols=2,
            name="effective_diversity_thresholds",
            cfg=cfg,
            xlabel="gold-utility threshold",
            title="Per-input effective diversity against its threshold (ID)",
        )
    else:
        display(
            Markdown(
                "Effective diversity needs the world's gold utility; this run has "
                "none."
            )
        )

# %% [markdown]
# ## K samples for one input

# %%
for method in ("sft", "ppo"):
    rows = runs.read_jsonl(paths[f"{method}_{splits[0]}"])
    display(
        Markdown(
            f"**{method.upper()}**, {len(rows[0]['outputs'])} samples for the "
            "first ID input:"
        )
    )
    display(
        Markdown(
            "\n".join(f"{i + 1}. {t}" for i, t in enumerate(rows[0]["outputs"][:8]))
        )
    )

# %% [markdown]
# ## Do the learned metrics agree with the oracle?
#
# Rank correlation, over inputs and methods, between each metric's per-input diversity and the
# oracle's (which knows exactly which facts each output asserts).

# %%
per_input = runs.read_methods(paths["per_input"], diversity.METHODS)
wide = per_input.pivot_table(
    index=["method", "split", "uid"], columns="metric", values="value"
)
if "oracle" in wide:
    agreement = pd.DataFrame(
        {
            m: [wide[m].rank().corr(wide["oracle"].rank())]
            for m in wide
            if m != "oracle"
        },
        index=["Spearman with oracle"],
    )
    display(agreement.round(3))
    plots.scatter(
        wide.reset_index(),
        "oracle",
        "sbert",
        "method",
        name="sbert_vs_oracle",
        cfg=cfg,
        xlabel="oracle diversity (Jaccard distance of facts)",
        ylabel="Sentence-BERT diversity",
        title="Per-input diversity: Sentence-BERT against the oracle",
    )

# %%
timing = pd.read_csv(paths["timing"])
display(
    Markdown(
        "Time spent per metric: "
        + ", ".join(f"{r.metric} {r.seconds:.1f} s" for r in timing.itertuples())
        + "."
    )
)

# %% [markdown]
# ## What this chapter showed

# %%
lines = []
for scope in ("per_input", "across_input"):
    for metric in [m for m in diversity.METRICS if m in set(diffs["metric"])]:
        sub = diffs[
            (diffs["method"] == "ppo")
            & (diffs["scope"] == scope)
            & (diffs["metric"] == metric)
        ]
        parts = [
            f"{plots.SPLIT_LABELS[r.split]} {r.difference:+.3f} [{r.ci_low:+.3f}, "
            f"{r.ci_high:+.3f}], "
            f"{stats.direction(r.ci_low, r.ci_high)}"
            for r in sub.itertuples()
        ]
        lines.append(
            f"- {scope.replace('_', '-')} {metric_labels[metric]}, PPO minus SFT: "
            + "; ".join(parts)
        )
display(
    Markdown(
        "PPO's diversity against SFT's (95% intervals):\n\n" + "\n".join(lines)
    )
)
