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
# # 1. Data splits: in distribution and out of distribution
#
# *Reproduces the set-up of Kirk et al. (2024), Sec. 3 ("Tasks and datasets"): summarisation
# data for supervised fine-tuning (SFT), reward modelling and RL, and test sets in distribution
# (ID) and out of distribution (OOD).*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: how far each test split is from the training distribution (its section, below, explains the measures).*

# %% [markdown]
# The paper trains on Reddit TL;DR and tests on TL;DR (ID) and CNN/DailyMail (OOD). This book's
# default profile builds the same structure in the **miniature world** (see
# [the miniature world](../world.md)): forum posts from training domains (ID), forum posts from
# held-out domains (OOD-near), and news reports (OOD-far), each with latent facts, a human-like
# reference TL;DR, and an exact gold judge that stands in for the paper's GPT-4.
#
# This chapter builds the splits, shows examples, puts the judge to work on one post, checks that
# the judge prefers references to corrupted versions of them and to copying from the post, and
# measures how far each OOD split is from ID.

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
from IPython.display import HTML, Markdown, Math, display
from myst_nb import glue

from gendiv import data, plots, runs, world as world_module

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %% [markdown]
# ## Build the splits
#
# One call builds every split, the pre-training corpus, and the two results tables of this
# chapter. It is cached: rerunning with the same configuration reuses the files.

# %%
paths = data.build_splits(cfg, force=force)
splits = pd.read_csv(paths["splits"])
world = data.world_or_none(cfg)

# %% [markdown]
# ## Sizes
#
# The ID split has every role of the pipeline: demonstrations for SFT, prompts whose sampled
# summaries the labeller compares (reward-model data), prompts for PPO, and a test set. The OOD
# splits are test sets only, as in the paper.

# %%
display(splits[["split", "role", "genre", "n"]])

# %% [markdown]
# ## One example from each test split
#
# Each prompt is in the paper's template (`SUBREDDIT/TITLE/POST ... TL;DR:` for forum posts,
# `ARTICLE ... TL;DR:` for news). World examples also list their latent facts: the salient ones
# (problem, cause, and the poster's ask, or the authority's response in news) are what a good
# summary should say; minor facts and distractors are not.

# %%
for split in data.available_splits(cfg):
    record = data.load_split(cfg, split, "test")[0]
    quoted = "\n".join("> " + line for line in record["prompt"].splitlines())
    display(
        Markdown(
            f"### {plots.SPLIT_LABELS[split]} "
            f"({record['genre']})\n\n**Prompt**\n\n{quoted}\n\n"
            f"**Reference:** {record['reference']}"
        )
    )
    if record.get("facts"):
        display(pd.DataFrame(record["facts"]))

# %% [markdown]
# ## The judge at work on one post
#
# The paper's GPT-4 judge is asked which summary "captures the most important points of the
# post, precisely and concisely". The world's gold utility of a summary (see
# [the miniature world](../world.md)) rewards the salient facts it states and punishes
# imprecision and verbosity:
#
# $$
# u = (\text{coverage} + b\, n_\text{minor})\, f - c_d\, n_\text{distractor} - c_h\, n_\text{hallucinated}
#     - c_\ell \max(0, n_\text{words} - B) - c_r\, r - c_t\,[\text{unterminated}]
# $$
#
# with *f* the fluency factor, *B* the length budget and *r* the share of repeated trigrams; the
# weights this run uses are printed below, read from `gendiv.world.UtilityWeights`. Then the
# utility of the reference of the first ID test post, of five corrupted versions of it, and of
# four extractive baselines taken from the post (its first one, two and three sentences, and the
# whole post).

# %%
if world is not None:
    terms = pd.DataFrame(world.judge_terms())
    display(Math(world.utility_formula()))
    with pd.option_context("display.max_colwidth", 200):
        display(terms)
    # For the book's world page (pasted there with myst-nb's glue).
    glue("judge_terms", HTML(terms.to_html(index=False)), display=False)
    glue("utility_formula", Math(world.utility_formula()), display=False)

# %%
if world is not None:
    examples = data.load_examples(cfg, "id", "test")
    demo = data.judge_demo(world, examples[0], examples[1], cfg.seed)
    with pd.option_context("display.max_colwidth", 120):
        display(demo)

# %% [markdown]
# ## Does the judge prefer references to corrupted versions, and to copying the post?
#
# On every test post of every split, the judge compares the reference with each corrupted
# version of it (truncated, another post's summary, empty, words shuffled, a made-up fact added)
# and with each extractive baseline (ties count one half). A sound judge prefers the reference to
# a corrupted version nearly always. A judge that asks for precision and concision also prefers it
# to a verbatim copy of the post nearly always, although the copy states every salient fact: the
# copy states every aside too, at about three times the length. Lead sentences usually state the
# problem but rarely the ask, so they should lose on most posts; news reports open with the
# problem and its cause (the inverted pyramid that makes lead-3 a strong baseline on
# CNN/DailyMail), so there they lose less often.

# %%
if world is not None:
    checks = pd.read_csv(paths["judge_checks"])
    variants = list(world.judge_variants)
    display(
        checks.pivot(
            index="variant", columns="split", values="reference_preferred_rate"
        )
        .reindex(variants)[data.available_splits(cfg)]
        .round(3)
    )
    plots.judge_checks_figure(checks, cfg)
    corrupted = checks[~checks["variant"].isin(world_module.EXTRACTIVE)]
    worst = corrupted.loc[corrupted["reference_preferred_rate"].idxmin()]
    copy = checks[checks["variant"] == "post_copy"].set_index("split")[
        "reference_preferred_rate"
    ]
    leads = checks[checks["variant"].str.startswith("lead_")]
    unit = "instructions" if cfg.data.source == "instruct" else "posts"
    lines = [
        f"- Against {len(corrupted)} split-variant pairs of corrupted references "
        "the judge "
        "preferred the "
        f"reference on at least **{worst.reference_preferred_rate:.1%}** of {unit} "
        "(lowest: "
        f"`{worst.variant}` on `{worst.split}`, n = {worst.n}).",
    ]
    if len(copy):  # summarisation: the extractive baselines taken from the post
        lines += [
            "- Against a verbatim copy of the post it preferred the reference on "
            + ", ".join(
                f"{r:.1%} ({plots.SPLIT_LABELS[s]})" for s, r in copy.items()
            )
            + " of posts.",
            "- Against the lead sentences: "
            + "; ".join(
                f"{plots.SPLIT_LABELS[s]} "
                + ", ".join(
                    f"{k} {rate:.0%}"
                    for k, rate in (
                        (
                            k,
                            g.set_index("variant").loc[
                                f"lead_{k}", "reference_preferred_rate"
                            ],
                        )
                        for k in (1, 2, 3)
                    )
                )
                for s, g in leads.groupby("split", sort=False)
            )
            + " (sentences 1, 2, 3: the share of posts where the reference is "
            "preferred).",
        ]
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## How far is each OOD split from ID?
#
# Four measures against the ID training prompts: the share of running words and of word types
# already seen in ID, the share of gold facts whose predicate occurs in ID posts (world only),
# and the cosine distance between mean all-MiniLM-L6-v2 embeddings. The paper's claim C2 is about
# how RLHF's advantage changes as this distance grows.

# %%
tests = splits[splits["role"] == "test"].set_index("split")
measures = [c for c in data.SPLITS_COLUMNS[4:] if tests[c].notna().any()]
display(tests[measures].round(3))
glue("key_result", plots.shift_figure(splits, cfg), display=False)
order = tests["embedding_distance_from_id"].sort_values().index.tolist()
display(
    Markdown(
        "By embedding distance from the ID training prompts the splits order as "
        + " < ".join(
            f"{plots.SPLIT_LABELS.get(s, s)} "
            f"({tests.loc[s, 'embedding_distance_from_id']:.3f})"
            for s in order
        )
        + "."
    )
)

# %% [markdown]
# ## What this chapter produced
#
# `results/splits.csv` and `results/judge_checks.csv` in the run folder, and the data files of
# every split under `data/`.

# %%
print("\n".join(f"{name}: {path}" for name, path in sorted(paths.items())))
