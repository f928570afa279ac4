"""The claims scorecard (notebook 10): a verdict on each of the paper's claims C1-C6 (and C7), computed
from this run's ``results/*.csv`` and per-input logs by stated rules, never written by hand.

The rule for every comparison: a 95% bootstrap interval of a difference (paired over inputs
wherever the two sides share inputs) that excludes zero in the claimed direction supports the
claim; one that excludes zero in the other direction contradicts it; otherwise the evidence is
inconclusive. A claim made of several comparisons is mixed when some support it and some
contradict it, supported when all of them support it (C5, "on some metrics": when one does), not
supported when one contradicts it (C5: when all do), and inconclusive otherwise (:data:`RULES`,
:func:`combine`). Every comparison is kept in ``results/claims_evidence.csv``; several seeds'
evidence is pooled by :func:`across_seeds`.

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

import numpy as np
import pandas as pd

from gendiv import align, artifacts, data, ppo, runs, stats, sweep
from gendiv.config import Config, task_name
from gendiv.diversity import EFFECTIVE
from gendiv.outputs import expected_utilities

CLAIMS_COLUMNS = ["claim", "statement", "evidence", "verdict", "task"]
"""One row per claim; ``task`` (summarisation, instruction following) keeps two tasks' scorecards
apart when they are read side by side."""
EVIDENCE_COLUMNS = ["claim", "comparison", "value", "ci_low", "ci_high", "null", "sign", "outcome"]
"""One row per comparison a verdict rests on (``results/claims_evidence.csv``): the estimate and
its 95% interval, the value of no effect (``null``: 0 for a difference, 0.5 for a head-to-head
win rate), the claimed direction (``sign`` +1 / -1) and the outcome."""
METHOD_NAMES = {"ppo": "PPO", "bon": "BoN"}
VERDICT_COLOURS = {"supported": "#1a7f37", "not supported": "#cf222e", "mixed": "#8250df", "inconclusive": "#9a6700"}
STATEMENTS = {
    "C1": "RLHF (PPO) beats SFT in distribution and out of distribution, judged by the simulated human.",
    "C2": "RLHF's advantage over SFT grows as the distribution shift grows.",
    "C3": "Best-of-N (the RM picks among N SFT samples) performs best, at N times the inference cost.",
    "C4": "RLHF reduces per-input diversity against SFT on EAD and Sentence-BERT.",
    "C5": "RLHF reduces across-input diversity against SFT on some metrics.",
    "C6": "Raising the KL coefficient lowers performance and also lowers per-input diversity.",
    "C7": "The paper's k2 KL penalty costs per-input diversity beyond what its KL explains: at equal true KL "
          "to SFT, a policy trained with k2 is less diverse than one trained with k1 (not a claim of the paper: "
          "a question its choice of estimator leaves open).",
}
METHOD_CLAIMS = {
    "C1": "{label} beats SFT in distribution and out of distribution, judged by the simulated human (C1 with "
          "{label} in place of PPO; not a claim of the paper).",
    "C4": "{label} reduces per-input diversity against SFT on EAD and Sentence-BERT (C4 with {label} in place of "
          "PPO; not a claim of the paper).",
}
"""The claims asked of each other alignment method of chapter 9 (``C1[<method>]``, ``C4[<method>]``):
does it generalise better than SFT, does it reduce per-input diversity against SFT?"""
RULES = {"C1": "all", "C2": "all", "C3": "all", "C4": "all", "C5": "any", "C6": "all", "C7": "all"}
"""How each claim's comparisons combine: 'all' must support it, or 'any' one ("on some metrics")."""
VERDICTS = ("supported", "not supported", "mixed", "inconclusive")


ESTIMATOR_LABELS = {"squared": "k2", "log_ratio": "k1", "k3": "k3"}
LINE_CLAIM = ("C6 with the {label} penalty in place of the paper's k2: raising {label}'s coefficient lowers "
              "performance and also lowers per-input diversity (not a claim of the paper: k2, used as PPO uses it, "
              "as a per-token reward, does not pull the policy back toward SFT, so its coefficient need not set "
              "how far the policy goes; the deviations page).")
"""C6 asked of another estimator's line of the KL sweep (``C6[<estimator>]``, :func:`gendiv.sweep.lines`)."""


def line_claim(cfg: Config, estimator: str) -> str:
    """C6's id on one line of the sweep: 'C6' on the profile's estimator, 'C6[log_ratio]' on another."""
    return "C6" if estimator == cfg.ppo.kl_estimator else f"C6[{estimator}]"


def base_claim(claim: str) -> str:
    """The paper's claim a claim id follows: 'C1' for 'C1' and for 'C1[dpo_beta0.1]'."""
    return claim.split("[", 1)[0]


def method_claim(claim: str, method_id: str) -> str:
    """The id of ``claim`` (C1 or C4) asked of an alignment method of chapter 9: 'C1[rloo]'."""
    return f"{claim}[{method_id}]"


def statements(cfg: Config) -> dict[str, str]:
    """Every claim this run's scorecard judges: the paper's C1-C6 and C7 (:data:`STATEMENTS`), then
    C1 and C4 asked of each method of ``align.methods`` (:data:`METHOD_CLAIMS`)."""
    out = dict(STATEMENTS)
    for estimator in sweep.lines(cfg)[1:]:
        out[line_claim(cfg, estimator)] = LINE_CLAIM.format(label=ESTIMATOR_LABELS[estimator])
    for method_id in align.method_ids(cfg):
        for claim, text in METHOD_CLAIMS.items():
            out[method_claim(claim, method_id)] = text.format(label=align.label(method_id))
    return out


def claim_ids(evidence: pd.DataFrame) -> list[str]:
    """The paper's claims, then any other claim the evidence holds, in its order."""
    return list(dict.fromkeys([*STATEMENTS, *evidence["claim"]]))


def outcome(low: float, high: float, sign: int) -> str:
    """'supports', 'contradicts' or 'inconclusive' for an interval and the claimed sign (+1 / -1)."""
    claimed, opposite = ("higher", "lower") if sign > 0 else ("lower", "higher")
    side = stats.direction(low, high)
    return "supports" if side == claimed else "contradicts" if side == opposite else "inconclusive"


def combine(results: list[str], any_supports: bool = False) -> str:
    """The verdict from a claim's comparison outcomes: comparisons that point in opposite
    directions (some support, some contradict) -> mixed; else all support (or any, for an "on
    some metrics" claim) -> supported; any contradicts -> not supported (for an "on some
    metrics" claim: all contradict); else inconclusive. No evidence at all is inconclusive."""
    if not results:
        return "inconclusive"
    if "supports" in results and "contradicts" in results:
        return "mixed"
    if (any_supports and "supports" in results) or all(r == "supports" for r in results):
        return "supported"
    if "contradicts" in results and (not any_supports or all(r == "contradicts" for r in results)):
        return "not supported"
    return "inconclusive"


def rule_text(claim: str) -> str:
    """The combination rule of ``claim`` in words (the scorecard page shows it), from :data:`RULES`
    and :func:`combine`."""
    rule = RULES[base_claim(claim)]
    need = "at least one comparison" if rule == "any" else "every comparison"
    fail = ("every comparison contradicts it" if rule == "any" else "any comparison contradicts it")
    return (f"supported when {need} supports it and none contradicts it; mixed when some support it and some "
            f"contradict it; not supported when {fail} and none supports it; inconclusive otherwise")


def rules_frame(cfg: Config | None = None) -> pd.DataFrame:
    """Each claim with its statement and rule in words; with ``cfg``, also the claims asked of
    the run's other alignment methods (:func:`statements`)."""
    texts = STATEMENTS if cfg is None else statements(cfg)
    return pd.DataFrame([{"claim": c, "statement": t, "rule": rule_text(c)} for c, t in texts.items()])


def verdicts_from(evidence: pd.DataFrame, claims: list[str] | None = None) -> dict[str, str]:
    """{claim: verdict} from evidence rows (``EVIDENCE_COLUMNS``), by each claim's rule, for
    ``claims`` (default: :func:`claim_ids` of the evidence)."""
    return {c: combine(list(evidence.loc[evidence["claim"] == c, "outcome"]),
                       any_supports=RULES[base_claim(c)] == "any")
            for c in (claim_ids(evidence) if claims is None else claims)}


def _fmt(name: str, d: float, lo: float, hi: float, outcome: str) -> str:
    return f"{name}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({outcome})"


def describe_evidence(row) -> str:
    """One evidence row as the scorecard's text: a win rate with its interval, or a difference."""
    if row.null:
        return f"{row.comparison} {row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}] ({row.outcome})"
    return _fmt(row.comparison, row.value, row.ci_low, row.ci_high, row.outcome)


def evidence(cfg: Config) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every comparison behind the claims (``EVIDENCE_COLUMNS``), and for each claim a note
    naming its sources (and for C2 the generalisation gaps, reported beside the comparison)."""
    splits = data.available_splits(cfg)
    ood = [s for s in splits if s != "id"]
    verdicts = pd.read_csv(runs.artifact(cfg, "evaluation", "verdicts"))
    judge = "world" if "world" in set(verdicts["judge"]) else sorted(set(verdicts["judge"]))[0]
    winrates = pd.read_csv(runs.artifact(cfg, "evaluation", "winrates"))
    rows, notes = [], {}

    def add(claim: str, comparison: str, value: float, lo: float, hi: float, sign: int, null: float = 0.0) -> None:
        rows.append({"claim": claim, "comparison": comparison, "value": value, "ci_low": lo, "ci_high": hi,
                     "null": null, "sign": sign, "outcome": outcome(lo - null, hi - null, sign)})

    def beats_sft(claim: str, method: str, split: str) -> None:
        """The head-to-head win rate of ``method`` against SFT (winrates.csv): above one half?"""
        w = winrates[(winrates["method"] == method) & (winrates["opponent"] == "sft") & (winrates["split"] == split)
                     & (winrates["judge"] == judge)]
        if len(w):
            r = w.iloc[0]
            add(claim, f"{split} {METHOD_NAMES.get(method) or align.label(method)} vs SFT win rate", r["win_rate"],
                r["ci_low"], r["ci_high"], +1, null=0.5)

    # C1: head-to-head PPO vs SFT above one half on every split.
    for split in splits:
        beats_sft("C1", "ppo", split)
    notes["C1"] = f"winrates.csv, judge {judge}; rule: interval above 0.5"

    def head_to_head(method: str, split: str) -> pd.Series:
        v = verdicts[(verdicts["method"] == method) & (verdicts["opponent"] == "sft") & (verdicts["split"] == split)
                     & (verdicts["judge"] == judge)]
        return v.set_index("uid")["verdict"]

    # C2: PPO's head-to-head advantage over SFT on the biggest shift minus in distribution.
    # Head to head rather than against the reference: a small policy rarely beats a reference, and
    # win rates near the floor have little power to show a growing advantage.
    notes["C2"] = ""
    if ood:
        far = ood[-1]
        d, lo, hi = stats.difference_ci(head_to_head("ppo", far).to_numpy(), head_to_head("ppo", "id").to_numpy(),
                                        seed=cfg.seed)
        add("C2", f"PPO's win rate against SFT on {far} minus on id", d, lo, hi, +1)
        gaps = pd.read_csv(runs.artifact(cfg, "evaluation", "gaps"))
        g = gaps[(gaps["split"] == far) & (gaps["judge"] == judge)]
        notes["C2"] = "generalisation gaps (win rate vs reference) id - " + far + ": " + ", ".join(
            f"{r.method} {r.gap:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" for r in g.itertuples()) + " (gaps.csv)"

    # C3: BoN beats SFT head to head, and beats PPO (paired: BoN's verdict against SFT minus PPO's
    # on the same input), on every split.
    for split in splits:
        beats_sft("C3", "bon", split)
        bon, ppo_v = head_to_head("bon", split), head_to_head("ppo", split)
        common = bon.index.intersection(ppo_v.index)
        d, lo, hi = stats.paired_difference(bon[common].to_numpy(), ppo_v[common].to_numpy(), seed=cfg.seed)
        add("C3", f"{split} BoN minus PPO win rate against SFT", d, lo, hi, +1)
    notes["C3"] = f"N = {cfg.bon.n}: {cfg.bon.n} samples per output"

    diffs = pd.read_csv(runs.artifact(cfg, "diversity", "diversity_vs_sft"))

    def less_diverse(claim: str, method: str, scope: str, metrics: tuple[str, ...]) -> None:
        """``method``'s diversity minus SFT's (diversity_vs_sft.csv): below zero?"""
        sub = diffs[(diffs["method"] == method) & (diffs["scope"] == scope) & (diffs["metric"].isin(metrics))]
        name = METHOD_NAMES.get(method) or align.label(method)
        for r in sub.itertuples():
            add(claim, f"{r.split} {r.metric} {name} - SFT", r.difference, r.ci_low, r.ci_high, -1)

    less_diverse("C4", "ppo", "per_input", ("ead", "sbert"))
    less_diverse("C5", "ppo", "across_input", ("ead", "sbert", "nli", "oracle"))
    effective = diffs[(diffs["method"] == "ppo") & (diffs["scope"] == "per_input")
                      & (diffs["metric"].isin(EFFECTIVE))]
    notes["C4"] = "diversity_vs_sft.csv, paired over inputs" + ("; beside them, not in the verdict, diversity "
                                                                "among good outputs: " + ", ".join(
        f"{r.split} {r.metric} PPO - SFT {r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        for r in effective.itertuples()) if len(effective) else "")
    notes["C5"] = "diversity_vs_sft.csv, paired bootstrap over inputs"

    # C6: the largest kl_coef against the smallest, paired over inputs, on every split; on the
    # profile's estimator (the paper's), then on each other estimator's line that spans the grid.
    sweep_per_input = pd.read_csv(runs.artifact(cfg, "kl_sweep", "per_input"))
    lo_k, hi_k = min(cfg.ppo.kl_grid), max(cfg.ppo.kl_grid)
    for estimator in sweep.lines(cfg):
        claim = line_claim(cfg, estimator)
        for split in splits:
            for measure, label in (("gold_utility", "performance (gold utility)"),
                                   ("per_input_ead", "per-input EAD"), ("per_input_sbert", "per-input Sentence-BERT")):
                v = sweep_per_input[(sweep_per_input["split"] == split) & (sweep_per_input["measure"] == measure)]
                hi_v, lo_v = _run_values(v, estimator, hi_k), _run_values(v, estimator, lo_k)
                common = hi_v.index.intersection(lo_v.index)
                if not len(common):
                    continue
                d, lo, hi = stats.paired_difference(hi_v[common].to_numpy(), lo_v[common].to_numpy(), seed=cfg.seed)
                add(claim, f"{split} {label} at kl_coef {hi_k:g} - at {lo_k:g}", d, lo, hi, -1)
        notes[claim] = "logs/kl_sweep_per_input.csv" + (
            "" if claim == "C6" else f"; {ESTIMATOR_LABELS[estimator]}'s runs, from the shared run at 0")

    # C7: k2 against k1 at equal true KL to SFT, on every split and per-input diversity metric.
    for e in estimator_comparisons(cfg, sweep_per_input, splits):
        add("C7", e["comparison"], e["value"], e["ci_low"], e["ci_high"], -1)
    uncompared = estimator_uncompared(cfg, sweep_per_input, splits)
    notes["C7"] = ("logs/kl_sweep_per_input.csv; each row is the mean over the runs of one estimator whose "
                   "true KL lies between two runs of the other, that other read at the run's KL by linear "
                   "interpolation, paired over inputs with the weights held fixed: "
                   + "; ".join(estimator_point_notes(cfg, sweep_per_input, splits))
                   + ("; not compared: " + "; ".join(uncompared) if uncompared else "")
                   if cfg.ppo.sweep_estimators else
                   "not measured: the sweep ran one estimator (ppo.sweep_estimators is empty)")

    # C1 and C4 asked of each other alignment method (chapter 9), as of PPO above.
    for method_id in align.method_ids(cfg):
        c1, c4 = method_claim("C1", method_id), method_claim("C4", method_id)
        for split in splits:
            beats_sft(c1, method_id, split)
        notes[c1] = notes["C1"]
        less_diverse(c4, method_id, "per_input", ("ead", "sbert"))
        notes[c4] = "diversity_vs_sft.csv, paired over inputs"
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS), notes


def _run_values(values: pd.DataFrame, estimator: str, kl_coef: float) -> pd.Series:
    """Per-input values (by uid) of the sweep run (kl_coef, estimator); the run at 0 serves every estimator."""
    sel = values[(values["kl_coef"] == kl_coef) & ((values["estimator"] == estimator) | (values["kl_coef"] == 0))]
    return sel.drop_duplicates("uid").set_index("uid")["value"]


def _runs_by_estimator(cfg: Config, per_input: pd.DataFrame, split: str) -> dict[str, list[tuple[float, float]]]:
    """On ``split``: {"squared": [(true KL, kl_coef), ...], "log_ratio": [...]}, each estimator's
    sweep runs sorted by their true KL to SFT (the mean over inputs), the run at 0 (no penalty,
    shared) in both."""
    part = per_input[(per_input["split"] == split) & (per_input["measure"] == "true_kl")]
    kl = part.groupby(["estimator", "kl_coef"])["value"].mean()
    return {e: sorted({(k, beta) for (est, beta), k in kl.items() if est == e or beta == 0})
            for e in ("squared", "log_ratio")}


def _bracket(frontier: list[tuple[float, float]], k: float) -> tuple[float, float, float] | None:
    """(kl_coef below, kl_coef above, weight of the one above) of the two runs of ``frontier``
    whose true KL brackets ``k`` (the nearest on each side), or None outside its range."""
    below = [f for f in frontier if f[0] <= k]
    above = [f for f in frontier if f[0] >= k]
    if not below or not above:
        return None
    (k_a, b_a), (k_b, b_b) = below[-1], above[0]
    return b_a, b_b, 0.0 if k_b == k_a else (k - k_a) / (k_b - k_a)


def _has_estimator_axis(cfg: Config) -> bool:
    """Does the sweep train both k2 and k1 (the main estimator or the estimator axis)?"""
    return {cfg.ppo.kl_estimator, *cfg.ppo.sweep_estimators} >= {"squared", "log_ratio"}


def estimator_points(cfg: Config, per_input: pd.DataFrame,
                     split: str) -> list[tuple[str, float, float, str, tuple[float, float, float]]]:
    """On ``split``, the points where k2's and k1's lines of the sweep overlap in true KL to SFT:
    (estimator of a penalised run, its kl_coef, its true KL, the estimator read at that KL, and
    where on that estimator's line: :func:`_bracket`), for every run of either estimator whose
    true KL lies between two runs of the other (the run at 0, no penalty, is on both lines).
    Sorted by true KL."""
    if not _has_estimator_axis(cfg):
        return []
    runs_of = _runs_by_estimator(cfg, per_input, split)
    points = [(probe, beta, k, read, where) for probe, read in (("log_ratio", "squared"), ("squared", "log_ratio"))
              for k, beta in runs_of[probe]
              if beta != 0 and (where := _bracket(runs_of[read], k)) is not None]
    return sorted(points, key=lambda p: p[2])


def estimator_comparisons(cfg: Config, per_input: pd.DataFrame, splits: list[str],
                          metrics: tuple[str, ...] = ("ead", "sbert")) -> list[dict]:
    """k2 minus k1 in per-input diversity at equal true KL to SFT (claim C7), one row per split
    and metric. At each point of :func:`estimator_points` a run of one estimator sits at true KL
    K and the other estimator is read at K by linear interpolation between its two runs whose
    true KL brackets K; the row is the mean of k2 minus k1 over those points, paired over the
    diversity inputs (the interpolation weights held fixed). Where k1 at the paper's coefficient
    ends closer to SFT than every k2 run (`tiny`), the points are k2's runs read on k1's line. One
    row per split and metric whatever the runs' KL, so several seeds pool it (:func:`pool_evidence`);
    :func:`estimator_point_notes` says which runs and KL each row averages."""
    out = []
    for split in splits:
        part = per_input[per_input["split"] == split]
        points = estimator_points(cfg, per_input, split)
        for metric in metrics:
            values = part[part["measure"] == f"per_input_{metric}"]
            k2s, k1s = [], []
            for probe, beta, _, read, (b_a, b_b, w) in points:
                at_k = (1 - w) * _run_values(values, read, b_a) + w * _run_values(values, read, b_b)
                theirs = _run_values(values, probe, beta)
                k2s.append(theirs if probe == "squared" else at_k)
                k1s.append(at_k if probe == "squared" else theirs)
            if not k2s:
                continue
            k2, k1 = pd.concat(k2s, axis=1).dropna(), pd.concat(k1s, axis=1).dropna()
            common = k2.index.intersection(k1.index)
            if not len(common):
                continue
            d, lo, hi = stats.paired_difference(k2.loc[common].mean(axis=1).to_numpy(),
                                                k1.loc[common].mean(axis=1).to_numpy(), seed=cfg.seed)
            out.append({"comparison": f"{split} per-input {metric}: k2 minus k1 at equal true KL",
                        "value": d, "ci_low": lo, "ci_high": hi})
    return out


def estimator_point_notes(cfg: Config, per_input: pd.DataFrame, splits: list[str]) -> list[str]:
    """For each split with points (:func:`estimator_points`), which runs C7's row averages over,
    at which true KL, on which estimator's line."""
    out = []
    for split in splits:
        points = estimator_points(cfg, per_input, split)
        if points:
            out.append(f"{split}: " + ", ".join(
                f"{ESTIMATOR_LABELS[probe]} at {beta:g} ({k:.2f} nats) on {ESTIMATOR_LABELS[read]}'s line"
                for probe, beta, k, read, _ in points))
    return out


def estimator_uncompared(cfg: Config, per_input: pd.DataFrame, splits: list[str]) -> list[str]:
    """The splits on which no run of either estimator lies inside the other's range of true KL to
    SFT (no :func:`estimator_points`), one phrase each with both lines' runs, so that C7 says why
    it has no evidence there rather than reading nothing as no evidence."""
    if not _has_estimator_axis(cfg):
        return []
    out = []
    for split in splits:
        runs_of = _runs_by_estimator(cfg, per_input, split)
        if not all(runs_of.values()) or estimator_points(cfg, per_input, split):
            continue
        k2, k1 = (", ".join(f"{k:.2f} at {beta:g}" for k, beta in runs_of[e]) for e in ("squared", "log_ratio"))
        out.append(f"{split}: no run of one estimator ends within the other's range of true KL "
                   f"(k2 {k2}; k1 {k1}; nats at kl_coef)")
    return out


def scorecard(cfg: Config, ev: pd.DataFrame | None = None, notes: dict[str, str] | None = None) -> pd.DataFrame:
    """The claims (the paper's C1-C6, and C7) with their evidence and verdicts (``CLAIMS_COLUMNS``),
    from :func:`evidence`."""
    if ev is None or notes is None:
        ev, notes = evidence(cfg)
    texts = statements(cfg)
    verdict = verdicts_from(ev, list(texts))
    rows = []
    for claim, statement in texts.items():
        text = "; ".join(describe_evidence(r) for r in ev[ev["claim"] == claim].itertuples())
        note = notes.get(claim, "")
        if claim == "C2":  # the gaps are reported beside the comparison, as evidence of their own
            text = "; ".join(t for t in (text, note) if t)
        elif note:
            text = f"{text} ({note})" if text else note
        rows.append({"claim": claim, "statement": statement, "evidence": text, "verdict": verdict[claim],
                     "task": task_name(cfg)})
    return pd.DataFrame(rows, columns=CLAIMS_COLUMNS)


# ------------------------------------------------------------------ across seeds
CLAIMS_SEEDS_COLUMNS = ["claim", "seed", "verdict", "supports", "contradicts", "inconclusive"]
POOLED = "pooled"


def pool_evidence(per_seed: dict[int, pd.DataFrame], n_boot: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Evidence pooled over seeds (``EVIDENCE_COLUMNS``), for the comparisons every seed made.

    A two-level bootstrap: each replicate draws the seeds with replacement, then for each drawn
    seed a fresh estimate from its own interval (normal, with the standard error its 95% bootstrap
    interval implies: (high - low) / 3.92, standing in for resampling that seed's inputs), and
    averages them. The pooled value is the mean over seeds; its interval the replicates' 2.5% and
    97.5% quantiles. So a pooled interval is wide when the seeds disagree, even if each seed's own
    interval is narrow."""
    frames = list(per_seed.values())
    if not frames:
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    keys = [tuple(k) for k in frames[0][["claim", "comparison"]].to_numpy()]
    keys = [k for k in keys if all(((f["claim"] == k[0]) & (f["comparison"] == k[1])).any() for f in frames)]
    rng = np.random.default_rng(seed)
    rows = []
    for claim, comparison in keys:
        picked = [f[(f["claim"] == claim) & (f["comparison"] == comparison)].iloc[0] for f in frames]
        null, sign = float(picked[0]["null"]), int(picked[0]["sign"])
        d = np.array([p["value"] - null for p in picked], dtype=float)
        se = np.array([(p["ci_high"] - p["ci_low"]) / (2 * 1.959964) for p in picked], dtype=float)
        if np.isnan(d).any() or np.isnan(se).any():
            lo = hi = value = float("nan")
        else:
            idx = rng.integers(0, len(d), size=(n_boot, len(d)))
            draws = (d[idx] + se[idx] * rng.standard_normal(idx.shape)).mean(axis=1)
            lo, hi = (float(q) for q in np.quantile(draws, [0.025, 0.975]))
            value = float(d.mean())
        rows.append({"claim": claim, "comparison": comparison, "value": value + null, "ci_low": lo + null,
                     "ci_high": hi + null, "null": null, "sign": sign, "outcome": outcome(lo, hi, sign)})
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


def across_seeds(per_seed: dict[int, pd.DataFrame], n_boot: int = 4000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``claims_seeds.csv``, pooled evidence): each seed's verdict on each claim, with how many of
    its comparisons support, contradict or are inconclusive, then the pooled verdict
    (:func:`pool_evidence`) by the same rules."""
    pooled = pool_evidence(per_seed, n_boot=n_boot)
    rows = []
    every = list(dict.fromkeys(c for ev in per_seed.values() for c in claim_ids(ev)))
    for label, ev in [*per_seed.items(), (POOLED, pooled)]:
        verdict = verdicts_from(ev, every)
        for claim in every:
            outcomes = list(ev.loc[ev["claim"] == claim, "outcome"])
            rows.append({"claim": claim, "seed": label, "verdict": verdict[claim],
                         **{o: outcomes.count(o) for o in ("supports", "contradicts", "inconclusive")}})
    return pd.DataFrame(rows, columns=CLAIMS_SEEDS_COLUMNS), pooled


def seeds_root(cfg: Config) -> Path:
    """Where ``gendiv seeds`` puts the runs of the other seeds (``seed<k>/``) and the pooled
    tables: ``seeds/`` in the run folder (the profile's own seed is the run folder itself)."""
    return runs.run_dir(cfg) / "seeds"


def seed_run_dir(cfg: Config, seed: int) -> Path:
    return runs.run_dir(cfg) if seed == cfg.seed else seeds_root(cfg) / f"seed{seed}"


def write_across_seeds(cfg: Config, seeds: list[int]) -> dict[str, Path]:
    """Pool the finished runs of ``seeds`` (each one's ``results/claims_evidence.csv``) into
    ``claims_seeds.csv`` and ``claims_seeds_evidence.csv`` under :func:`seeds_root`."""
    per_seed = {}
    for k in seeds:
        path = seed_run_dir(cfg, k) / "results" / "claims_evidence.csv"
        if not path.exists():
            raise runs.StageMissingError(f"Seed {k} has no {path}; run `gendiv seeds --profile {cfg.profile} "
                                         f"--seeds {' '.join(map(str, seeds))}` to finish it.")
        per_seed[k] = pd.read_csv(path)
    table, pooled = across_seeds(per_seed)
    root = seeds_root(cfg)
    return {"claims_seeds": runs.write_csv(root / "claims_seeds.csv", table),
            "evidence": runs.write_csv(root / "claims_seeds_evidence.csv", pooled)}


def across_seeds_html(table: pd.DataFrame) -> str:
    """The across-seeds table for the book: one row per claim, a column per seed and the pooled
    verdict, coloured as the scorecard."""
    wide = table.pivot(index="claim", columns="seed", values="verdict")
    seeds = [c for c in table["seed"].drop_duplicates() if c != POOLED] + [POOLED]
    head = "".join(f"<th>{'pooled' if s == POOLED else f'seed {s}'}</th>" for s in seeds)
    body = "".join(
        f"<tr><td><b>{escape(c)}</b></td>" + "".join(
            f"<td style='color:{VERDICT_COLOURS.get(wide.loc[c, s], 'inherit')}'>{escape(str(wide.loc[c, s]))}</td>"
            for s in seeds) + "</tr>" for c in wide.index)
    agree = sum(len(set(wide.loc[c, [s for s in seeds if s != POOLED]])) == 1 for c in wide.index)
    return (f"<p>{len(seeds) - 1} seeds; the per-seed verdicts agree on {agree} of {len(wide)} claims.</p>"
            f"<table class='table'><thead><tr><th>claim</th>{head}</tr></thead><tbody>{body}</tbody></table>")


# ------------------------------------------------------------------ can this run carry the claims?
COMPETENCE_COLUMNS = ["check", "split", "value", "threshold", "passed", "claims"]
SFT_WIN_RATE = {"id": 0.20, "ood": 0.10}
"""Least win rate of SFT against the reference, in distribution and on each shift: a policy that
rarely beats a human summary cannot show how RLHF moves that rate (the paper's LLaMA-7B SFT is
far above these)."""
RM_ACCURACY_ID, RM_ACCURACY_FLOOR = 0.70, 0.60
"""Least RM accuracy against the judge in distribution, and least lower end of its interval on
every split: an RM near chance gives PPO and Best-of-N nothing to optimise."""
RM_RANKS_SFT = 0.50
"""Least lower end of the interval of the RM's accuracy on pairs of two SFT samples: those are
what Best-of-N and PPO rank. The overall accuracy mixes in pairs against the base model and the
reference, which an RM can get right by telling the models apart; on SFT's own samples it may
still be at chance, and then nothing it ranks is a finding about RLHF."""
MIN_EVAL_INPUTS, MIN_DIVERSITY_INPUTS, MIN_K = 200, 50, 8
"""Least inputs per split for the evaluation (paper: 500), inputs per split and samples per input
for per-input diversity."""
KL_SPREAD = 2.0
"""The KL sweep's runs end at clearly different KL: on each line of the sweep (:func:`gendiv.sweep.lines`),
each larger coefficient ends at a lower KL to SFT, and the smallest coefficient's KL is at least
this many times the largest's. The KL is the true sequence KL measured on the ID test outputs
(:func:`gendiv.sweep.true_kl`), not the penalty's own estimate at the end of training: the paper's
k2 reads low where a policy sharpens its distribution (in the book of 421edf4 the runs at 0.05 and 1
read 4.23 and 2.51 by k2, 4.20 and 4.06 in true KL). On `tiny` k2's line fails it on every seed
tried: k2, as a per-token reward, has no first-order pull back toward SFT and pushes tokens the
policy already made rarer rarer still (``tests/test_ppo_math.py``), so its coefficient does not set how
far PPO goes; hence the k1 line and C6 asked of it (``C6[log_ratio]``)."""
PPO_OVER_SFT = "PPO minus SFT gold utility in distribution (interval's lower end)"
"""PPO beats SFT in the judge's gold utility on the inputs it was trained for, paired over the ID
test inputs: a PPO that does not has optimised the proxy and nothing else (on `tiny` with three RM
epochs, seed 2's RM sat near chance for most of its training and its PPO wrote to the length cap:
-0.150 [-0.188, -0.113]), and what its outputs show about generalisation or diversity is about a
failed optimisation. In distribution only: out of distribution is what C1 asks."""
POLICY_CLAIMS, DIVERSITY_CLAIMS, ALL_CLAIMS = "C1 C2 C3 C6", "C4 C5 C6 C7", "C1 C2 C3 C4 C5 C6 C7"
"""The claims a check carries: a policy check those that compare performance, a diversity check
those that compare diversity; every claim rests on PPO (C3 compares Best-of-N with it)."""


def competence(cfg: Config) -> pd.DataFrame:
    """Can this run's models and samples carry the paper's measurements? Checks computed from the
    run's results (``COMPETENCE_COLUMNS``: the claims each check carries in ``claims``): SFT's win
    rate against the reference, SFT against the base model in gold utility (paired over inputs,
    interval above zero), the RM's accuracy (overall, and on pairs of two SFT samples: what
    Best-of-N and PPO rank), whether PPO beats SFT in gold utility in distribution (paired over
    inputs, interval above zero), whether PPO's proxy reward flattened, whether the KL
    sweep's runs end apart, and the sample sizes. A verdict that rests on a failed check is not a
    finding: it may be an artefact of a model that cannot do the task or a sample too small."""
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
    world = cfg.data.source in data.WORLD_SOURCES  # the gold judge scores every output

    def gold_gain_low(method: str, over: str, split: str) -> float:
        """Lower end of ``method`` minus ``over`` in gold utility, paired over the inputs (both sample
        the same inputs in the same order: :func:`gendiv.artifacts.method_outputs`)."""
        return stats.paired_difference(expected_utilities(outputs[method][split]),
                                       expected_utilities(outputs[over][split]), seed=cfg.seed)[1]

    if world:
        for split in splits:
            lo = gold_gain_low("sft", "base", split)
            check("SFT minus base gold utility (interval's lower end)", split, lo, "> 0", lo > 0, POLICY_CLAIMS)
    rm = pd.read_csv(runs.artifact(cfg, "reward", "rm_accuracy"))
    for r in rm.itertuples():
        if r.split == "id":
            check("RM accuracy against the judge", r.split, r.accuracy, f">= {RM_ACCURACY_ID:.2f}",
                  r.accuracy >= RM_ACCURACY_ID, POLICY_CLAIMS)
        check("RM accuracy, interval's lower end", r.split, r.ci_low, f"> {RM_ACCURACY_FLOOR:.2f}",
              r.ci_low > RM_ACCURACY_FLOOR, POLICY_CLAIMS)
    by_kind = pd.read_csv(runs.artifact(cfg, "reward", "rm_accuracy_by_kind"))
    if len(by_kind):  # hub data has no kinds of pair; a world split without SFT-SFT pairs fails
        ranks = by_kind[by_kind["kind"] == "sft_vs_sft"].set_index("split")["ci_low"]
        for split in rm["split"]:
            low = float(ranks.get(split, float("nan")))
            check("RM accuracy on two SFT samples (what BoN and PPO rank), interval's lower end", split, low,
                  f"> {RM_RANKS_SFT:.2f}", low > RM_RANKS_SFT, POLICY_CLAIMS)
    if world:
        lo = gold_gain_low("ppo", "sft", "id")
        check(PPO_OVER_SFT, "id", lo, "> 0", lo > 0, ALL_CLAIMS)
    log = pd.read_csv(runs.artifact(cfg, "ppo", "log"))
    if len(log) >= 5:
        trend = ppo.reward_trend(log)
        check("PPO proxy reward: last fifth's rise over the whole rise", "id",
              trend["last_rise"] / trend["rise"] if trend["rise"] > 0 else float("nan"),
              "< 0.20 (flattened)", trend["flattened"], ALL_CLAIMS)
    sweep_frame = sweep.load(runs.artifact(cfg, "kl_sweep", "kl_sweep"))
    for estimator in sweep.lines(cfg):
        kl = sweep.line_true_kl(sweep_frame, cfg, estimator)
        if len(kl) >= 2:
            ratio, falling = sweep.spread(kl)
            check(spread_check(estimator), "id", ratio, f">= {KL_SPREAD:g}, falling as the coefficient rises",
                  ratio >= KL_SPREAD and falling, f"{line_claim(cfg, estimator)} C7")
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


SPREAD_CHECK = "KL sweep ({label}): true KL to SFT at the smallest coefficient over at the largest"


def spread_check(estimator: str) -> str:
    """The name of the check that one estimator's line of the KL sweep ends apart (:data:`KL_SPREAD`)."""
    return SPREAD_CHECK.format(label=ESTIMATOR_LABELS[estimator])


def carries(check: str, carried: str, claim: str) -> bool:
    """Does a verdict on ``claim`` rest on ``check``, which carries the claims ``carried``? A check
    carries the claims it names and the claims asked in their place (chapter 9's ``C1[dpo]`` rests
    on what ``C1`` rests on), except that a sweep line's spread check (:func:`spread_check`) carries
    only the claims it names: C6 on k2's line does not rest on k1's line ending apart."""
    named = carried.split()
    return claim in named or (base_claim(claim) in named and not check.startswith(SPREAD_CHECK.split("{")[0]))


def caveats(card: pd.DataFrame, checks: pd.DataFrame) -> dict[str, list[str]]:
    """{claim: the failed checks its verdict rests on} ("check (split)", :func:`carries`)."""
    failed = checks[~checks["passed"]]
    return {c: [f"{r.check} ({r.split})" for r in failed.itertuples() if carries(r.check, r.claims, c)]
            for c in card["claim"]}


def build_claims(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``claims``: ``results/claims.csv`` from the evaluation, diversity and sweep results
    (each comparison in ``results/claims_evidence.csv``), and ``results/competence.csv``, the
    checks of whether the run can carry them (:func:`competence`). Always recomputed (it takes
    milliseconds), so it can never lag behind the results it reads; ``force`` is accepted for
    the notebooks' uniform calls."""
    def body(root: Path) -> dict[str, Path]:
        ev, notes = evidence(cfg)
        return {"claims": runs.write_csv(runs.results_dir(cfg) / "claims.csv", scorecard(cfg, ev, notes)),
                "evidence": runs.write_csv(runs.results_dir(cfg) / "claims_evidence.csv", ev),
                "competence": runs.write_csv(runs.results_dir(cfg) / "competence.csv", competence(cfg))}

    return runs.run_stage(cfg, "claims", body, force=True)




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
        f"<p><b>{escape(r.claim)} is {escape(r.verdict)}</b> in this run"
        f"{' on ' + escape(r.task) if 'task' in card else ''}. {escape(r.statement)}<br>"
        f"<small>Evidence: {escape(r.evidence)}</small>"
        + (f"<br><small><i>Not yet a finding: the verdict rests on failed checks: "
           f"{escape('; '.join(notes[r.claim]))}.</i></small>" if notes[r.claim] else "") + "</p>"
        for r in card.itertuples())
    intro = ""
    if checks is not None:
        intro = (f"<p>Competence and power: {int(checks['passed'].sum())} of {len(checks)} checks pass "
                 f"(results/competence.csv). A verdict that rests on a failed check is reported, but it is not "
                 f"a finding.</p>")
    tasks = sorted(set(card["task"])) if "task" in card else []
    on = f" on {escape(' and '.join(tasks))}" if tasks else ""
    return (f"<p>Of the {len(card)} claims, this run{on} finds: {escape(summary)}.</p>{intro}"
            f"<table class='table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>{paragraphs}")


def tasks_markdown(cards: dict[str, pd.DataFrame], checks: dict[str, pd.DataFrame | None]) -> str:
    """One table of every claim's verdict on each task (the columns: ``cards``' keys, each a run's
    ``results/claims.csv``), then each task's competence checks passed: the book's scorecard
    across tasks, as Markdown. A claim a task's run does not make reads "not run"."""
    if not cards:
        return "No task's claims have been computed in this copy of the book."
    order = list(dict.fromkeys(c for card in cards.values() for c in card["claim"]))
    verdict = {label: dict(zip(card["claim"], card["verdict"])) for label, card in cards.items()}
    lines = ["| claim | " + " | ".join(cards) + " |", "|---|" + "---|" * len(cards)]
    for claim in order:
        lines.append(f"| {claim} | " + " | ".join(verdict[label].get(claim, "not run") for label in cards) + " |")
    passed = []
    for label in cards:
        table = checks.get(label)
        passed.append("not computed" if table is None else f"{int(table['passed'].sum())} of {len(table)}")
    lines.append("| competence checks passed | " + " | ".join(passed) + " |")
    return "\n".join(lines) + "\n"
