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
# # 2. The base model and supervised fine-tuning
#
# *Reproduces the first stage of RLHF in Kirk et al. (2024), Sec. 4 ("Models and training"):
# supervised fine-tuning (SFT) of a pretrained language model on human demonstrations.*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: the gold utility of the base model, SFT and the human references on every split (drawn again, with the table, below).*

# %% [markdown]
# The paper fine-tunes LLaMA-7B on Reddit TL;DR for one epoch (learning rate 3e-5, cosine
# schedule), with the loss on the summary tokens only and prompts truncated on the left. There is
# no pretrained model of the miniature world's language, so the `tiny` profile starts from a
# **small Llama pre-trained on the world's corpus** (all domains, both genres; some documents end
# in a TL;DR or in a comment quoting the post, and some are help threads, a request and its
# answer), the stand-in for a pretrained LLM. As the paper's
# LLaMA, it was pre-trained once, before this run, by a deterministic command, and ships with the
# package; this chapter shows where it came from and measures it. Then it fine-tunes that base
# model on the ID demonstrations with TRL's `SFTTrainer`, samples from both models on every test
# split, and scores the samples with the gold judge's utility. On instruction following (the
# book's second part) the paper starts from AlpacaFarm's SFT model, fine-tuned on 10k Alpaca
# demonstrations in Alpaca's prompt template; here the same shipped base learns the template and
# the forms from the instruction world's demonstrations.

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

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from gendiv import (
    artifacts,
    data,
    models,
    outputs,
    plots,
    pretraining,
    runs,
    sft,
    stats,
)
from gendiv.config import task_words

cfg = runs.start(profile, seed=seed, run_dir=run_dir)
words = task_words(cfg)  # summary / response, post / instruction

# %% [markdown]
# ## The base model
#
# For `model.base: tiny` the base is the checkpoint shipped in `gendiv/pretrained/tiny`, made by
# `gendiv pretrain --profile tiny`; the stage checks that it was made by this profile's recipe
# (architecture, corpus, pre-training settings, and the world's text generator) and measures its
# perplexity on documents it never saw. `model.base: scratch` pre-trains it here instead; for
# `smollm2` or a hub model this step only records where the checkpoint is.

# %%
base_paths = pretraining.build_base(cfg, force=force)
base_info = json.loads(base_paths["base_ref"].read_text())
base = models.load_causal_lm(
    artifacts.base_path(cfg), models.pick_device(cfg.model.device)
)
print(
    f"Base model: {type(base).__name__}, {models.count_parameters(base).total:,} "
    "parameters, "
    f"from {base_info['path']}"
)
del base

# %%
if "pretrain_log" in base_paths:
    made = base_info["manifest"]
    pretrain_log = pd.read_csv(base_paths["pretrain_log"])
    plots.curves(
        pretrain_log,
        "tokens",
        "train_loss",
        name="pretrain_loss",
        cfg=cfg,
        xlabel="training tokens",
        ylabel="next-token loss (nats)",
        title="Pre-training the base model on the world's corpus",
    )
    probe_cols = [c for c in pretrain_log.columns if c.endswith("_utility")]
    if probe_cols:
        probe = pretrain_log.dropna(subset=probe_cols).melt(
            id_vars="tokens",
            value_vars=probe_cols,
            var_name="split",
            value_name="utility",
        )
        probe["split"] = (
            probe["split"].str.removesuffix("_utility").map(plots.SPLIT_LABELS)
        )
        plots.curves(
            probe,
            "tokens",
            "utility",
            hue="split",
            name="pretrain_probe",
            cfg=cfg,
            xlabel="training tokens",
            ylabel="mean gold utility of its TL;DRs",
            title="The base model learning to summarise while it pre-trains",
        )
    origin = (
        (
            f"shipped with the package, made by `{made['command']}` on "
            f"{made['device']} in "
            f"{made['wall_time_s'] / 60:.0f} minutes ({made['finished_at']})"
        )
        if base_info["shipped"]
        else f"pre-trained in this run in {made['wall_time_s']:.0f} s"
    )
    display(
        Markdown(
            f"The base model ({made['parameters']:,} parameters) was {origin}: "
            f"{made['steps']:,} steps over "
            f"{made['tokens']:,} tokens of {made['documents']:,} documents. Its "
            "held-out "
            "perplexity was "
            f"{made['val_perplexity']:.2f} at the end of pre-training; measured in "
            "this run on "
            f"{base_info['heldout_documents']} documents it never saw, it is "
            f"**{base_info['heldout_perplexity']:.2f}** "
            "(a uniform guess over the vocabulary would score "
            f"{cfg.model.vocab_size:,})."
        )
    )

# %% [markdown]
# ## Supervised fine-tuning
#
# TRL's `SFTTrainer` on the ID demonstrations $(x_i, y_i)$: prompt-completion data, the loss on the
# completion tokens only (paper Sec. 4; the prompt $x_i$ is cut on the left), the completion being
# a space, the reference and EOS:
#
# $$
# \mathcal{L}_\text{SFT}(\theta) = -\frac{1}{\sum_i |y_i|} \sum_i \sum_{t=1}^{|y_i|}
#     \log \pi_\theta(y_{i,t} \mid x_i, y_{i,<t}).
# $$
#
# The base model was pre-trained with the same next-token loss on every token of its documents,
# and its perplexity above is $\exp$ of that loss's mean over held-out tokens. With `model.freeze_fraction` the
# bottom blocks, the embeddings and the LM head are frozen (the paper freezes 80%); with
# `model.adapter: lora` (or `sft.adapter: lora`, for SFT alone), peft adapters on every block are
# trained and merged afterwards. With `sft.interpolation` below 1 the model every later stage loads
# keeps only that share of SFT's change: its weights are $\theta_0 + a\,(\theta_{\mathrm{SFT}} - \theta_0)$,
# weight-space ensembling (WiSE-FT, Wortsman et al. 2022), which gives back part of what the base
# knew about the held-out domains. The loss curves below are of the model as trained, before that
# step; the gold utilities after them are of the model the later stages use.

# %%
sft_paths = sft.build_sft(cfg, force=force)
counts = json.loads(sft_paths["trainable"].read_text())
print(
    f"SFT trained {counts['trainable']:,} of {counts['total']:,} parameters "
    f"({counts['trainable'] / counts['total']:.1%}): {sft.describe_training(cfg)}."
)

# %%
sft_log = pd.read_csv(sft_paths["sft_log"])
train_curve = sft_log.dropna(subset=["loss"]).assign(kind="train")[
    ["step", "loss", "kind"]
]
val_curve = sft_log.dropna(subset=["eval_loss"])[["step", "eval_loss"]].rename(
    columns={"eval_loss": "loss"}
)
curve = pd.concat(
    [train_curve, val_curve.assign(kind="validation")], ignore_index=True
)
_ = plots.curves(
    curve,
    "step",
    "loss",
    hue="kind",
    name="sft_loss",
    cfg=cfg,
    xlabel="optimiser step",
    ylabel="completion loss (nats/token)",
    title="SFT on the ID demonstrations",
)

# %% [markdown]
# ## Base and SFT samples, judged
#
# Samples at temperature 1 (as the paper samples) on the first `sampling.n_eval_inputs` test
# inputs of each split, scored by the gold utility. Each input's utility is the mean over
# `sampling.utility_samples` samples, an estimate of the model's expected utility on it; the
# tables show the first sample, the one later chapters and the judge see.

# %%
eval_paths = sft.evaluate_sft(cfg, force=force)
splits = data.available_splits(cfg)
gold = pd.read_csv(eval_paths["gold_utility"])
if len(gold):
    display(
        gold.pivot(index="method", columns="split", values="mean_utility")[
            splits
        ].round(3)
    )
    fig = plots.bars_with_intervals(
        gold,
        "split",
        "mean_utility",
        "method",
        name="sft_gold_utility",
        cfg=cfg,
        xlabel="test split",
        ylabel="mean gold utility (95% CI)",
        title=f"Gold utility of base, SFT and reference {words['outputs']}",
        order=splits,
        hue_order=["base", "sft", "reference"],
    )
    glue("key_result", fig, display=False)
else:
    glue(
        "key_result",
        Markdown("No gold judge exists for this profile's data."),
        display=False,
    )
    display(
        Markdown(
            "No gold judge exists for this profile's data, so gold utility is not "
            "computed."
        )
    )

# %%
for split in splits:
    rows = runs.read_jsonl(eval_paths[f"sft_{split}"])[:3]
    base_rows = runs.read_jsonl(eval_paths[f"base_{split}"])[:3]
    table = pd.DataFrame(
        {
            "reference": [r["reference"] for r in rows],
            "base sample": [r["output"] for r in base_rows],
            "SFT sample": [r["output"] for r in rows],
        }
    )
    if "utility" in rows[0]:
        table["utility (ref / base / SFT)"] = [
            f"{r['reference_utility']:.2f} / {b['utility']:.2f} / "
            f"{r['utility']:.2f}"
            for r, b in zip(rows, base_rows)
        ]
    display(Markdown(f"### {plots.SPLIT_LABELS[split]}"))
    with pd.option_context("display.max_colwidth", 200):
        display(table)

# %% [markdown]
# ## Where the gold utility comes from
#
# Some of the gold utility's own terms, averaged over each model's first sample per input (the
# one the judge sees), with the reference beside them: the share of the salient facts stated
# (coverage), the facts the input does not contain, the length in words, and how often an output
# holds a word the world's language never uses, or opens with one. Such words are mostly broken
# across sub-word pieces: a summary that opens with a capitalised noun ("Contractor grew black
# mould.") must spell it from pieces ("C", "ont", "ractor") that share nothing with the
# lowercase word the post spells. Not in the paper, whose judge reads real models' text; it says
# which part of the utility a model gains or loses.

# %%
if "output_parts" in eval_paths:
    parts = pd.read_csv(eval_paths["output_parts"])
    labels = outputs.OUTPUT_PARTS
    by = parts.set_index(["method", "split", "part"])["mean"]
    table = pd.DataFrame(
        [
            [by[(m, s, p)] for p in labels]
            for s in splits
            for m in ("base", "sft", "reference")
        ],
        index=[
            f"{plots.SPLIT_LABELS[s]}: {m}"
            for s in splits
            for m in ("base", "sft", "reference")
        ],
        columns=list(labels.values()),
    )
    display(table.round(3))

    def pair(part, s, pct=False):
        b, f = by[("base", s, part)], by[("sft", s, part)]
        return f"{f:.1%} (base {b:.1%})" if pct else f"{f:.2f} (base {b:.2f})"

    lines = [
        f"- {plots.SPLIT_LABELS[s]}: coverage {pair('coverage', s)}, facts not "
        f"in the {words['input']} {pair('hallucinated', s)} per {words['output']}, "
        f"{pair('n_words', s)} words; a broken word in "
        f"{pair('any_broken', s, True)} of {words['outputs']}, the first word "
        f"broken in {pair('opens_broken', s, True)}."
        for s in splits
    ]
    display(Markdown("SFT's first samples:\n\n" + "\n".join(lines)))
elif data.world_or_none(cfg) is not None:
    print(
        "This run's sft_eval stage finished before the breakdown existed; run this "
        "chapter with force=True to compute it."
    )

# %% [markdown]
# ## Does the model read the post?
#
# The gold utility rewards facts taken from the post, so a summariser must read it. This probe
# measures whether it does: the negative log-likelihood (NLL, nats per token) of each reference
# given its own prompt, and given the prompt $x_{j(i)}$ of another test input of the same domain
# (same subreddit and task, a different post):
#
# $$
# \text{gain}_i = \text{NLL}(y^\text{ref}_i \mid x_{j(i)}) - \text{NLL}(y^\text{ref}_i \mid x_i),
# $$
#
# averaged over inputs with a bootstrap interval. It is 0 for a model that ignores the post and
# grows as the model copies from it. On instruction following, the post is the instruction's
# situation and the reference the response a person wrote. A rise in `nll_own` from the base to the
# SFT model on a split is forgetting: fine-tuning made that split's references less likely.

# %%
if "context_reliance" in eval_paths:
    reliance = pd.read_csv(eval_paths["context_reliance"])
    display(reliance.round(3))
    plots.bars_with_intervals(
        reliance,
        "split",
        "gain",
        "method",
        name="context_reliance",
        cfg=cfg,
        xlabel="test split",
        ylabel="NLL gain from the right post (nats/token)",
        title="How much each model reads the post",
        order=splits,
        hue_order=["base", "sft"],
    )
else:
    print(
        "This run's sft_eval stage finished before the probe existed; run this "
        "chapter with "
        "force=True to compute it."
    )
    reliance = None

# %% [markdown]
# ## What this chapter showed

# %%
if len(gold):
    # Base and SFT are sampled on the same inputs, so the difference is paired over inputs; a
    # split counts as won or lost only when its 95% interval excludes zero.
    wide = gold.pivot(
        index="split", columns="method", values="mean_utility"
    ).reindex(splits)
    lines, outcome = [], {}
    for s in splits:
        sft_u = outputs.expected_utilities(runs.read_jsonl(eval_paths[f"sft_{s}"]))
        base_u = outputs.expected_utilities(
            runs.read_jsonl(eval_paths[f"base_{s}"])
        )
        diff, lo, hi = stats.paired_difference(sft_u, base_u, seed=cfg.seed)
        outcome[s] = stats.direction(lo, hi)
        lines.append(
            f"- {plots.SPLIT_LABELS[s]}: SFT {wide.loc[s, 'sft']:.3f} vs base "
            f"{wide.loc[s, 'base']:.3f} "
            f"(references {wide.loc[s, 'reference']:.3f}); SFT - base = "
            f"{diff:+.3f}, 95% CI "
            f"{lo:+.3f} to {hi:+.3f}, n = {len(sft_u)}: {outcome[s]}."
        )
    ahead = [s for s in splits if wide.loc[s, "sft"] > wide.loc[s, "base"]]
    clear = [plots.SPLIT_LABELS[s] for s in splits if outcome[s] == "higher"]
    clear = " and ".join(
        [", ".join(clear[:-1]), clear[-1]] if len(clear) > 1 else clear
    )
    verdict = (
        "SFT's mean is above the base model's on every split"
        if len(ahead) == len(splits)
        else f"SFT's mean is above the base model's on {len(ahead)} of "
        f"{len(splits)} splits"
    )
    verdict += (
        f"; the paired interval excludes zero on {clear}"
        if clear
        else "; on no split does the paired interval exclude zero"
    )
    display(Markdown(f"By gold utility, {verdict}:\n\n" + "\n".join(lines)))

if reliance is not None:
    r = reliance.set_index(["method", "split"])
    lines = [
        f"- {plots.SPLIT_LABELS[s]}: reference NLL "
        f"{r.loc[('base', s), 'nll_own']:.2f} (base) and "
        f"{r.loc[('sft', s), 'nll_own']:.2f} (SFT) nats/token; gain from the right "
        "post "
        f"{r.loc[('base', s), 'gain']:+.3f} (base) and "
        f"{r.loc[('sft', s), 'gain']:+.3f} "
        f"[{r.loc[('sft', s), 'ci_low']:+.3f}, "
        f"{r.loc[('sft', s), 'ci_high']:+.3f}] (SFT)"
        for s in splits
    ]
    display(Markdown("How much each model reads the post:\n\n" + "\n".join(lines)))
