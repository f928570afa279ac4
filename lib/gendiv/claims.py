"""The claims scorecard (notebook 08): a verdict on each of the paper's claims C1-C6, computed
from this run's ``results/*.csv`` and per-input logs by stated rules, never written by hand.

The rule for every comparison: a 95% bootstrap interval of a difference (paired over inputs
wherever the two sides share inputs) that excludes zero in the claimed direction supports the
claim; one that excludes zero in the other direction contradicts it; otherwise the evidence is
inconclusive. A claim made of several comparisons is supported when all of them support it, not
supported when any contradicts it, and inconclusive otherwise.

C1-C3 use the head-to-head verdicts against SFT where the paper's wording allows (a small policy
beats a human reference rarely, on the far shift hardly ever, and win rates near the floor have
little power to show a difference); the win rates against the reference and the generalisation
gaps are reported beside them. For the same
reason C6 measures performance by the judge's gold utility of each output (paired over inputs),
not by the win rate against the reference.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from gendiv import artifacts, data, ppo, runs, stats
from gendiv.config import Config
from gendiv.outputs import expected_utilities

CLAIMS_COLUMNS = ["claim", "statement", "evidence", "verdict"]
METHOD_NAMES = {"ppo": "PPO", "bon": "BoN"}
STATEMENTS = {
    "C1": "RLHF (PPO) beats SFT in distribution and out of distribution, judged by the simulated human.",
    "C2": "RLHF's advantage over SFT grows as the distribution shift grows.",
    "C3": "Best-of-N (the RM picks among N SFT samples) performs best, at N times the inference cost.",
    "C4": "RLHF reduces per-input diversity against SFT on EAD and Sentence-BERT.",
    "C5": "RLHF reduces across-input diversity against SFT on some metrics.",
    "C6": "Raising the KL coefficient lowers performance and also lowers per-input diversity.",
}


def outcome(low: float, high: float, sign: int) -> str:
    """'supports', 'contradicts' or 'inconclusive' for an interval and the claimed sign (+1 / -1)."""
    claimed, opposite = ("higher", "lower") if sign > 0 else ("lower", "higher")
    side = stats.direction(low, high)
    return "supports" if side == claimed else "contradicts" if side == opposite else "inconclusive"


def combine(results: list[str], any_supports: bool = False) -> str:
    """All support -> supported (or any, for an "on some metrics" claim); any contradicts ->
    not supported; else inconclusive. No evidence at all is inconclusive."""
    if not results:
        return "inconclusive"
    if (any_supports and "supports" in results) or (not any_supports and all(r == "supports" for r in results)):
        return "supported"
    if "contradicts" in results and not any_supports:
        return "not supported"
    if any_supports and all(r == "contradicts" for r in results):
        return "not supported"
    return "inconclusive"


def _fmt(name: str, d: float, lo: float, hi: float, outcome: str) -> str:
    return f"{name}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({outcome})"


def scorecard(cfg: Config) -> pd.DataFrame:
    """The six claims with their evidence and verdicts (``CLAIMS_COLUMNS``)."""
    splits = data.available_splits(cfg)
    ood = [s for s in splits if s != "id"]
    verdicts = pd.read_csv(runs.artifact(cfg, "evaluation", "verdicts"))
    judge = "world" if "world" in set(verdicts["judge"]) else sorted(set(verdicts["judge"]))[0]
    winrates = pd.read_csv(runs.artifact(cfg, "evaluation", "winrates"))
    rows = []

    def beats_sft(method: str, split: str, ev: list[str], res: list[str]) -> None:
        """The head-to-head win rate of ``method`` against SFT (winrates.csv): above one half?"""
        w = winrates[(winrates["method"] == method) & (winrates["opponent"] == "sft") & (winrates["split"] == split)
                     & (winrates["judge"] == judge)]
        if len(w):
            r = w.iloc[0]
            res.append(outcome(r["ci_low"] - 0.5, r["ci_high"] - 0.5, +1))
            ev.append(f"{split} {METHOD_NAMES[method]} vs SFT win rate {r['win_rate']:.3f} "
                      f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({res[-1]})")

    # C1: head-to-head PPO vs SFT above one half on every split.
    ev, res = [], []
    for split in splits:
        beats_sft("ppo", split, ev, res)
    rows.append(("C1", "; ".join(ev) + f" (winrates.csv, judge {judge}; rule: interval above 0.5)", combine(res)))

    def head_to_head(method: str, split: str) -> pd.Series:
        v = verdicts[(verdicts["method"] == method) & (verdicts["opponent"] == "sft") & (verdicts["split"] == split)
                     & (verdicts["judge"] == judge)]
        return v.set_index("uid")["verdict"]

    # C2: PPO's head-to-head advantage over SFT on the biggest shift minus in distribution.
    # Head to head rather than against the reference: a small policy rarely beats a reference, and
    # win rates near the floor have little power to show a growing advantage.
    ev, res = [], []
    if ood:
        far = ood[-1]
        d, lo, hi = stats.difference_ci(head_to_head("ppo", far).to_numpy(), head_to_head("ppo", "id").to_numpy(),
                                        seed=cfg.seed)
        res.append(outcome(lo, hi, +1))
        ev.append(_fmt(f"PPO's win rate against SFT on {far} minus on id", d, lo, hi, res[-1]))
        gaps = pd.read_csv(runs.artifact(cfg, "evaluation", "gaps"))
        g = gaps[(gaps["split"] == far) & (gaps["judge"] == judge)]
        ev.append("generalisation gaps (win rate vs reference) id - " + far + ": " + ", ".join(
            f"{r.method} {r.gap:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" for r in g.itertuples()) + " (gaps.csv)")
    rows.append(("C2", "; ".join(ev), combine(res)))

    # C3: BoN beats SFT head to head, and beats PPO (paired: BoN's verdict against SFT minus PPO's
    # on the same input), on every split.
    ev, res = [], []
    for split in splits:
        beats_sft("bon", split, ev, res)
        bon, ppo = head_to_head("bon", split), head_to_head("ppo", split)
        common = bon.index.intersection(ppo.index)
        d, lo, hi = stats.paired_difference(bon[common].to_numpy(), ppo[common].to_numpy(), seed=cfg.seed)
        res.append(outcome(lo, hi, +1))
        ev.append(_fmt(f"{split} BoN minus PPO win rate against SFT", d, lo, hi, res[-1]))
    rows.append(("C3", "; ".join(ev) + f" (N = {cfg.bon.n}: {cfg.bon.n} samples per output)", combine(res)))

    diffs = pd.read_csv(runs.artifact(cfg, "diversity", "diversity_vs_sft"))

    def diversity_evidence(scope: str, metrics: tuple[str, ...]):
        ev, res = [], []
        sub = diffs[(diffs["method"] == "ppo") & (diffs["scope"] == scope) & (diffs["metric"].isin(metrics))]
        for r in sub.itertuples():
            res.append(outcome(r.ci_low, r.ci_high, -1))
            ev.append(_fmt(f"{r.split} {r.metric} PPO - SFT", r.difference, r.ci_low, r.ci_high, res[-1]))
        return ev, res

    ev, res = diversity_evidence("per_input", ("ead", "sbert"))
    rows.append(("C4", "; ".join(ev) + " (diversity_vs_sft.csv, paired over inputs)", combine(res)))
    ev, res = diversity_evidence("across_input", ("ead", "sbert", "nli", "oracle"))
    rows.append(("C5", "; ".join(ev) + " (diversity_vs_sft.csv, paired bootstrap over inputs)",
                 combine(res, any_supports=True)))

    # C6: the largest kl_coef against the smallest, paired over inputs, on every split.
    per_input = pd.read_csv(runs.artifact(cfg, "kl_sweep", "per_input"))
    lo_k, hi_k = min(cfg.ppo.kl_grid), max(cfg.ppo.kl_grid)
    ev, res = [], []
    for split in splits:
        for measure, label in (("gold_utility", "performance (gold utility)"), ("per_input_ead", "per-input EAD"),
                               ("per_input_sbert", "per-input Sentence-BERT")):
            v = per_input[(per_input["split"] == split) & (per_input["measure"] == measure)]
            wide = v.pivot_table(index="uid", columns="kl_coef", values="value")
            if lo_k not in wide or hi_k not in wide:
                continue
            d, lo, hi = stats.paired_difference(wide[hi_k].to_numpy(), wide[lo_k].to_numpy(), seed=cfg.seed)
            res.append(outcome(lo, hi, -1))
            ev.append(_fmt(f"{split} {label} at kl_coef {hi_k:g} - at {lo_k:g}", d, lo, hi, res[-1]))
    rows.append(("C6", "; ".join(ev) + " (logs/kl_sweep_per_input.csv)", combine(res)))
    return pd.DataFrame([{"claim": c, "statement": STATEMENTS[c], "evidence": e, "verdict": v} for c, e, v in rows],
                        columns=CLAIMS_COLUMNS)


# ------------------------------------------------------------------ can this run carry the claims?
COMPETENCE_COLUMNS = ["check", "split", "value", "threshold", "passed", "claims"]
SFT_WIN_RATE = {"id": 0.20, "ood": 0.10}
"""Least win rate of SFT against the reference, in distribution and on each shift: a policy that
rarely beats a human summary cannot show how RLHF moves that rate (the paper's LLaMA-7B SFT is
far above these)."""
RM_ACCURACY_ID, RM_ACCURACY_FLOOR = 0.70, 0.60
"""Least RM accuracy against the judge in distribution, and least lower end of its interval on
every split: an RM near chance gives PPO and Best-of-N nothing to optimise."""
MIN_EVAL_INPUTS, MIN_DIVERSITY_INPUTS, MIN_K = 200, 50, 8
"""Least inputs per split for the evaluation (paper: 500), inputs per split and samples per input
for per-input diversity."""
KL_SPREAD = 2.0
"""The KL sweep's runs end at clearly different KL: each larger coefficient ends at a lower KL to
SFT, and the smallest coefficient's KL is at least this many times the largest's."""
POLICY_CLAIMS, DIVERSITY_CLAIMS, ALL_CLAIMS = "C1 C2 C3 C6", "C4 C5 C6", "C1 C2 C3 C4 C5 C6"
"""The claims a check carries: a policy check those that compare performance, a diversity check
those that compare diversity; every claim rests on PPO (C3 compares Best-of-N with it)."""


def competence(cfg: Config) -> pd.DataFrame:
    """Can this run's models and samples carry the paper's measurements? Checks computed from the
    run's results (``COMPETENCE_COLUMNS``: the claims each check carries in ``claims``): SFT's win
    rate against the reference, SFT against the base model in gold utility (paired over inputs,
    interval above zero), the RM's accuracy, whether PPO's proxy reward flattened, whether the KL
    sweep's runs end apart, and the sample sizes. A verdict that rests on a failed check is not a
    finding: it may be an artefact of a model that cannot summarise or a sample too small."""
    splits = data.available_splits(cfg)
    rows = []

    def check(name: str, split: str, value: float, threshold: str, passed: bool, carries: str) -> None:
        rows.append({"check": name, "split": split, "value": round(float(value), 4), "threshold": threshold,
                     "passed": bool(passed), "claims": carries})

    winrates = pd.read_csv(runs.artifact(cfg, "evaluation", "winrates"))
    judge = "world" if "world" in set(winrates["judge"]) else sorted(set(winrates["judge"]))[0]
    sft = winrates[(winrates["method"] == "sft") & (winrates["opponent"] == "reference") & (winrates["judge"] == judge)]
    for r in sft.itertuples():
        least = SFT_WIN_RATE["id" if r.split == "id" else "ood"]
        check("SFT win rate against the reference", r.split, r.win_rate, f">= {least:.2f}", r.win_rate >= least,
              POLICY_CLAIMS)
    outputs = artifacts.method_outputs(cfg)
    if cfg.data.source == "world":
        for split in splits:  # both sample the same inputs in the same order (artifacts.method_outputs)
            _, lo, _ = stats.paired_difference(expected_utilities(outputs["sft"][split]),
                                               expected_utilities(outputs["base"][split]), seed=cfg.seed)
            check("SFT minus base gold utility (interval's lower end)", split, lo, "> 0", lo > 0, POLICY_CLAIMS)
    rm = pd.read_csv(runs.artifact(cfg, "reward", "rm_accuracy"))
    for r in rm.itertuples():
        if r.split == "id":
            check("RM accuracy against the judge", r.split, r.accuracy, f">= {RM_ACCURACY_ID:.2f}",
                  r.accuracy >= RM_ACCURACY_ID, POLICY_CLAIMS)
        check("RM accuracy, interval's lower end", r.split, r.ci_low, f"> {RM_ACCURACY_FLOOR:.2f}",
              r.ci_low > RM_ACCURACY_FLOOR, POLICY_CLAIMS)
    log = pd.read_csv(runs.artifact(cfg, "ppo", "log"))
    if len(log) >= 5:
        trend = ppo.reward_trend(log)
        check("PPO proxy reward: last fifth's rise over the whole rise", "id",
              trend["last_rise"] / trend["rise"] if trend["rise"] > 0 else float("nan"),
              "< 0.20 (flattened)", trend["flattened"], ALL_CLAIMS)
    sweep = pd.read_csv(runs.artifact(cfg, "kl_sweep", "kl_sweep"))
    kl = sweep[sweep["measure"] == "train_kl"].sort_values("kl_coef")["value"].to_numpy()
    if len(kl) >= 2:
        ratio = kl[0] / kl[-1] if kl[-1] > 0 else float("inf")
        check("KL sweep: KL at the smallest coefficient over KL at the largest", "id", ratio,
              f">= {KL_SPREAD:g}, falling as the coefficient rises",
              ratio >= KL_SPREAD and all(a > b for a, b in zip(kl, kl[1:])), "C6")
    for split in splits:
        n = len(outputs["sft"][split])
        check("evaluation inputs", split, n, f">= {MIN_EVAL_INPUTS}", n >= MIN_EVAL_INPUTS, POLICY_CLAIMS)
    div = pd.read_csv(runs.artifact(cfg, "diversity", "diversity"))
    per_input = div[(div["scope"] == "per_input") & (div["method"] == "sft")]
    for split, part in per_input.groupby("split", sort=False):
        n, k = int(part["n_inputs"].min()), int(part["k"].min())
        check("per-input diversity: inputs (K samples each)", split, n, f">= {MIN_DIVERSITY_INPUTS}, K >= {MIN_K}",
              n >= MIN_DIVERSITY_INPUTS and k >= MIN_K, DIVERSITY_CLAIMS)
    return pd.DataFrame(rows, columns=COMPETENCE_COLUMNS)


def caveats(card: pd.DataFrame, checks: pd.DataFrame) -> dict[str, list[str]]:
    """{claim: the failed checks its verdict rests on} ("check (split)")."""
    failed = checks[~checks["passed"]]
    return {c: [f"{r.check} ({r.split})" for r in failed.itertuples() if c in r.claims.split()]
            for c in card["claim"]}


def build_claims(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``claims``: ``results/claims.csv`` from the evaluation, diversity and sweep results,
    and ``results/competence.csv``, the checks of whether the run can carry them (:func:`competence`).
    Always recomputed (it takes milliseconds), so it can never lag behind the results it reads;
    ``force`` is accepted for the notebooks' uniform calls."""
    def body(root: Path) -> dict[str, Path]:
        return {"claims": runs.write_csv(runs.results_dir(cfg) / "claims.csv", scorecard(cfg)),
                "competence": runs.write_csv(runs.results_dir(cfg) / "competence.csv", competence(cfg))}

    return runs.run_stage(cfg, "claims", body, force=True)


VERDICT_COLOURS = {"supported": "#1a7f37", "not supported": "#cf222e", "inconclusive": "#9a6700"}


def scorecard_html(card: pd.DataFrame, checks: pd.DataFrame | None = None) -> str:
    """The scorecard as HTML for the book's scorecard page: a summary table, then one paragraph
    per claim stating its verdict and the evidence, all generated from ``card``; with ``checks``
    (:func:`competence`), each claim also says which failed checks its verdict rests on."""
    counts = card["verdict"].value_counts()
    summary = ", ".join(f"{counts[v]} {v}" for v in VERDICT_COLOURS if v in counts)
    notes = caveats(card, checks) if checks is not None else {c: [] for c in card["claim"]}
    head = "<th>claim</th><th>statement</th><th>verdict</th>" + ("<th>rests on failed checks</th>" if checks is not None
                                                                 else "")
    rows = "".join(
        f"<tr><td><b>{escape(r.claim)}</b></td><td>{escape(r.statement)}</td>"
        f"<td style='color:{VERDICT_COLOURS.get(r.verdict, 'inherit')}'><b>{escape(r.verdict)}</b></td>"
        + (f"<td>{len(notes[r.claim]) or 'none'}</td>" if checks is not None else "") + "</tr>"
        for r in card.itertuples())
    paragraphs = "".join(
        f"<p><b>{escape(r.claim)} is {escape(r.verdict)}</b> in this run. {escape(r.statement)}<br>"
        f"<small>Evidence: {escape(r.evidence)}</small>"
        + (f"<br><small><i>Not yet a finding: the verdict rests on failed checks: "
           f"{escape('; '.join(notes[r.claim]))}.</i></small>" if notes[r.claim] else "") + "</p>"
        for r in card.itertuples())
    intro = ""
    if checks is not None:
        intro = (f"<p>Competence and power: {int(checks['passed'].sum())} of {len(checks)} checks pass "
                 f"(results/competence.csv). A verdict that rests on a failed check is reported, but it is not "
                 f"a finding.</p>")
    return (f"<p>Of the paper's {len(card)} claims, this run finds: {escape(summary)}.</p>{intro}"
            f"<table class='table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>{paragraphs}")
