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
# # 8. The KL sweep
#
# *Reproduces Kirk et al. (2024), Sec. 6.3 and its appendix on the KL penalty: does a larger KL
# coefficient buy diversity back? Does the form of the penalty matter? (The verdicts on C6 and
# C7 are on the scorecard, chapter 10.)*

# %% [markdown]
# ```{glue} key_result
# ```
# *The key result: performance against per-input diversity, one point per KL coefficient (its section below).*

# %% [markdown]
# PPO is rerun from the same SFT model, RM, prompts and seed for every coefficient of
# `ppo.kl_grid`. The paper does not publish its grid; ours is a log grid from 0 (no penalty)
# through the paper's 0.05 to well above it, so it spans an unconstrained policy, the paper's
# setting and a policy held close to SFT. Each run is evaluated as in chapters 6 and 7. Every
# run maximises the same KL-regularised objective with its own $\beta$,
#
# $$
# \max_\theta\; \mathbb{E}_{x,\, y \sim \pi_\theta}\big[\hat r(x, y)\big] - \beta\, \mathrm{KL}\big(\pi_\theta(\cdot \mid x) \,\|\, \pi_\text{SFT}(\cdot \mid x)\big),
# $$
#
# whose optimum is $\pi^\star(y \mid x) \propto \pi_\text{SFT}(y \mid x)\, \exp(\hat r(x, y) / \beta)$: a larger
# $\beta$ keeps the policy closer to SFT, a smaller one concentrates it on high-reward outputs.

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

from gendiv import claims, data, plots, runs, sweep

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %%
paths = sweep.build_kl_sweep(cfg, force=force)
splits = data.available_splits(cfg)
everything = sweep.load(paths["kl_sweep"])
# The paper's sweep: kl_coef alone, with the profile's estimator (the estimator axis comes below).
frame = sweep.main_estimator(everything, cfg)
display(
    frame.pivot_table(
        index="kl_coef", columns=["measure", "split"], values="value"
    ).round(3)
)

# %% [markdown]
# ## Performance against per-input diversity
#
# One point per coefficient (the paper's appendix figure), per metric and split.

# %%
wide = (
    frame[frame["split"].isin(splits)]
    .pivot_table(index=["kl_coef", "split"], columns="measure", values="value")
    .reset_index()
)
# The judge's gold utility (continuous) where the world has one; C6 uses it too (win rates against
# the reference sit at the floor for small policies). Otherwise the proxy RM score.
performance = "gold_utility" if "gold_utility" in wide else "proxy_reward"
diversity_measures = [
    m
    for m in (
        "per_input_ead",
        "per_input_sbert",
        "per_input_nli",
        "per_input_oracle",
    )
    if m in wide
]
long = wide.melt(
    id_vars=["kl_coef", "split", performance],
    value_vars=diversity_measures,
    var_name="metric",
    value_name="per_input_diversity",
)
long["split"] = long["split"].map(plots.SPLIT_LABELS)
long["metric"] = long["metric"].str.replace("per_input_", "")
fig = plots.tradeoff(
    long,
    "per_input_diversity",
    performance,
    hue="split",
    size="kl_coef",
    col="metric",
    name="kl_sweep_tradeoff",
    cfg=cfg,
    xlabel="per-input diversity",
    ylabel=performance.replace("_", " "),
    title="KL sweep: performance against per-input diversity",
)
glue("key_result", fig, display=False)

# %% [markdown]
# ## Reward and KL frontier
#
# At the end of training (the last fifth of the steps), as the penalty itself measured KL: for
# the paper's $k_2$ that estimate reads low where a policy sharpens its distribution, so the true
# KL on the test outputs (`true_kl` in `kl_sweep.csv`; the next section's table where the sweep has
# an estimator axis) can differ from it. Chapter 10's check that
# the runs end apart uses the true KL. The first table also gives each run's mean per-token
# entropy over the same last fifth (`train_entropy`; SFT's is the first step's in each run's log):
# a penalty that holds the policy near SFT keeps its entropy near SFT's, one that sharpens the
# policy lowers it.

# %%
train = (
    frame[frame["measure"].isin(["train_kl", "train_proxy_reward"])]
    .pivot_table(index="kl_coef", columns="measure", values="value")
    .reset_index()
)
_ = plots.scatter(
    train.assign(kl_coef=train["kl_coef"].astype(str)),
    "train_kl",
    "train_proxy_reward",
    "kl_coef",
    name="kl_sweep_frontier",
    cfg=cfg,
    xlabel="KL to SFT by the training penalty's estimate (nats/sequence)",
    ylabel="proxy reward at the end of training",
    title="Reward-KL frontier of the sweep",
)

# %% [markdown]
# ## The form of the penalty: k1 against the paper's k2
#
# The paper's per-token penalty is $k_2 = \tfrac{1}{2}(\log \pi - \log \pi_\text{SFT})^2$; the
# textbook one is $k_1 = \log \pi - \log \pi_\text{SFT}$, whose optimum is known
# ($\pi_\text{SFT}\, e^{r/\beta} / Z$; chapter 4's bandit test). The two reach different KL at the
# same coefficient, so they are compared at equal **true** KL: for every run, the sequence
# log-ratio $\log \pi(y \mid x) - \log \pi_\text{SFT}(y \mid x)$ averaged over its own samples on the
# evaluation inputs (an unbiased estimate of $\mathrm{KL}(\pi \,\|\, \pi_\text{SFT})$, the same
# for every run whichever estimator trained it). Does k2 trace the same frontier of diversity
# and gold utility against true KL as k1, or does it lose diversity at equal KL (claim C7)? The
# run without a penalty (coefficient 0) is one run for every estimator, so each line starts there.
# Chapter 10 reads every run of one estimator whose true KL lies between two runs of the other
# against the other's line, linearly between those two runs, and averages k2 minus k1 over these
# points.

# %%
axis = sweep.by_estimator(everything, cfg)
estimators = list(dict.fromkeys(axis["estimator"]))
if len(estimators) < 2:
    display(
        Markdown(
            "This profile's sweep runs one estimator (`ppo.sweep_estimators` is "
            "empty), so there is no estimator axis to draw. The book's `tiny` "
            "profiles leave it out for its time budget; `tiny-full`, "
            "`tiny-instruct-full` and `smol` run k1 beside k2."
        )
    )
else:
    points = (
        axis[axis["split"].isin(splits)]
        .pivot_table(
            index=["estimator", "kl_coef", "split"],
            columns="measure",
            values="value",
        )
        .reset_index()
    )
    points["estimator"] = points["estimator"].map(claims.ESTIMATOR_LABELS)
    display(
        points.set_index(["split", "estimator", "kl_coef"])
        .sort_index()[
            [
                c
                for c in (
                    "true_kl",
                    "gold_utility",
                    "per_input_ead",
                    "per_input_sbert",
                    "per_input_oracle",
                )
                if c in points
            ]
        ]
        .round(3)
    )
    measures = {
        m: label
        for m, label in (
            ("per_input_ead", "per-input EAD"),
            ("per_input_sbert", "per-input Sentence-BERT"),
            ("per_input_oracle", "per-input oracle (facts)"),
            ("gold_utility", "gold utility"),
        )
        if m in points
    }
    _ = plots.panels(
        points[points["split"] == "id"].sort_values("true_kl"),
        "true_kl",
        measures,
        hue="estimator",
        ncols=4,
        markers=True,
        name="kl_estimator_frontier",
        cfg=cfg,
        xlabel="true KL to SFT (nats/sequence)",
        title="In distribution: each estimator's runs against their true KL",
    )

# %% [markdown]
# ## Does the coefficient set how far PPO goes?
#
# The objective above promises that a larger $\beta$ keeps the policy closer to SFT. That holds for
# the penalty whose policy gradient is the gradient of the KL: $k_1$, used as a per-token reward
# inside the return, as PPO uses every penalty here. The paper's $k_2$, used the same way, gives
# $\mathbb{E}_\pi[\nabla \log \pi(a)\, \tfrac{1}{2} d(a)^2]$ with $d = \log \pi - \log \pi_\text{SFT}$:
# second order in $d$, so near SFT it has no pull back at all, and it lowers every token whose
# $d^2$ is above its mean under $\pi$, including the tokens the policy has already made rarer than SFT does
# ($d < 0$), which then grow rarer still. On its own it moves a sharpened SFT further away, to SFT
# truncated to its likeliest tokens (`tests/test_ppo_math.py` follows that flow exactly). So on
# $k_2$'s line a larger coefficient need not mean a smaller KL. Below, each line's true KL to SFT
# on the ID test outputs, by coefficient (the run at 0 is on every line); chapter 10 checks that
# each line ends apart, and asks C6 of each line that spans the grid (`C6` on the paper's $k_2$,
# `C6[log_ratio]` on $k_1$).

# %%
true_kl = axis[(axis["measure"] == "true_kl") & (axis["split"] == "id")]
kl_table = true_kl.pivot_table(index="kl_coef", columns="estimator", values="value")
kl_table.columns = [claims.ESTIMATOR_LABELS[c] for c in kl_table.columns]
display(kl_table.round(2))
lines = []
for estimator in sweep.lines(cfg):
    kl = sweep.line_true_kl(everything, cfg, estimator)
    ratio, falling = sweep.spread(kl)
    lines.append(
        f"- {claims.ESTIMATOR_LABELS[estimator]}: from {kl[0]:.2f} nats at the "
        f"smallest coefficient to {kl[-1]:.2f} at the largest ({ratio:.2f} times), "
        + (
            "falling at every step."
            if falling
            else "**not** falling at every step."
        )
    )
display(
    Markdown(
        "True KL to SFT in distribution along each line of the sweep:\n\n"
        + "\n".join(lines)
    )
)
