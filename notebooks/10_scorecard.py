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
# # 10. The claims scorecard
#
# *The book's verdict on the paper's claims C1-C6 (Kirk et al. 2024, Secs. 5-6), on C7 (the KL
# penalty's form, chapter 8), on C6 asked of the k1 penalty's line of the KL sweep where the
# sweep runs k1 across its grid (`C6[log_ratio]`, chapter 8), and on C1 and C4 asked of each
# alignment method of chapter 9, computed from this run's results by stated rules.*

# %% [markdown]
# ```{glue} scorecard
# ```
# *The verdicts in one table (computed below, where each claim's evidence follows).*

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
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from gendiv import claims, runs

cfg = runs.start(profile, seed=seed, run_dir=run_dir)

# %% [markdown]
# ## The verdicts
#
# Each verdict is computed from this run's results by the rule in `gendiv.claims`: a 95%
# bootstrap interval of a difference (paired over inputs where the two sides share inputs) that
# excludes zero in the claimed direction supports a claim, one that excludes zero the other way
# contradicts it, anything else is inconclusive. How each claim combines its comparisons (the
# table below, generated from the code) decides between supported, not supported, mixed
# (comparisons pointing in opposite directions) and inconclusive.
#
# A verdict is a finding only if the models are competent and the samples large enough. Before
# the verdicts, the run checks itself (`gendiv.claims.competence`; each check's threshold is in
# the table): does SFT beat the human reference often enough, and the base model clearly, is the
# RM right about the judge's preferences (overall, and between two of SFT's own samples, which is
# what Best-of-N and PPO ask of it), did PPO's proxy reward flatten, do the sweep's runs end
# at clearly different KL, and are the samples as large as the book promises? Each verdict then
# names the failed checks it rests on.

# %%
rules = claims.rules_frame(cfg)
display(rules)
glue("claim_rules", HTML(rules.to_html(index=False)), display=False)

# %%
claim_paths = claims.build_claims(cfg)
card = pd.read_csv(claim_paths["claims"])
checks = pd.read_csv(claim_paths["competence"])
display(checks)
display(Markdown(f"{int(checks['passed'].sum())} of {len(checks)} checks pass."))
display(card[["claim", "statement", "verdict"]])
notes = claims.caveats(card, checks)
for row in card.itertuples():
    caveat = (
        "\n\n*Not yet a finding: rests on failed checks: "
        f"{'; '.join(notes[row.claim])}.*"
        if notes[row.claim]
        else ""
    )
    display(
        Markdown(
            f"**{row.claim}: {row.verdict}.** {row.statement}\n\nEvidence: "
            f"{row.evidence}{caveat}"
        )
    )
# For the book's scorecard and intro pages (pasted there with myst-nb's glue).
glue("scorecard", HTML(claims.scorecard_html(card, checks)), display=False)

# %% [markdown]
# ## Across seeds
#
# One seed's verdict can be a draw. `gendiv seeds --profile <profile> --seeds 0 1 2` runs every
# stage again for each further seed, reusing nothing across seeds, and pools the evidence: a
# two-level bootstrap that draws seeds, then each drawn seed's estimate from its own interval
# (`gendiv.claims.pool_evidence`), so a pooled interval is wide when the seeds disagree. The
# table shows each seed's verdict and the pooled one, by the same rules.

# %%
seeds_file = claims.seeds_root(cfg) / "claims_seeds.csv"
if seeds_file.exists():
    seeds_table = pd.read_csv(seeds_file)
    seeds_html = claims.across_seeds_html(seeds_table)
    display(HTML(seeds_html))
    display(seeds_table)
else:
    seeds = " ".join(str(cfg.seed + i) for i in range(3))
    command = f"gendiv seeds --profile {cfg.profile} --seeds {seeds}"
    seeds_html = (
        f"<p>No seeds run for this profile yet ({seeds_file} does not exist): run "
        f"<code>{command}</code>; each further seed costs about the stage time "
        "below.</p>"
    )
    display(HTML(seeds_html))
glue("across_seeds", HTML(seeds_html), display=False)

# %% [markdown]
# ## Where the time went
#
# Wall time of every stage of this run (from the stage manifests), and per notebook.

# %%
times = runs.stage_times(cfg)
display(times)
per_notebook = times.groupby("notebook")["wall_time_s"].sum().round(1)
display(per_notebook.to_frame("wall time (s)"))
total, span = times["wall_time_s"].sum() / 60, runs.elapsed_s(times) / 60
display(
    Markdown(
        f"All stages together: {total:.1f} minutes on {times['device'].iloc[0]}; "
        f"from the first stage's start to the last one's end, {span:.1f} "
        "(stages that ran side by side overlap)."
    )
)
glue("run_info", HTML(runs.run_info_html(cfg)), display=False)
glue(
    "stage_times",
    HTML(per_notebook.to_frame("wall time (s)").to_html()),
    display=False,
)
