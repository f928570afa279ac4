"""The claim rules: one interval's outcome, and how comparisons combine into a verdict."""

from pathlib import Path

import pandas as pd
import pytest
from gendiv import claims, sweep


@pytest.mark.parametrize("low,high,sign,expected", [
    (0.1, 0.3, +1, "supports"), (-0.3, -0.1, +1, "contradicts"), (-0.1, 0.1, +1, "inconclusive"),
    (-0.3, -0.1, -1, "supports"), (0.1, 0.3, -1, "contradicts"), (float("nan"), 1, -1, "inconclusive")])
def test_claim_rule_for_one_interval(low, high, sign, expected):
    assert claims.outcome(low, high, sign) == expected


def test_claim_rule_combines_comparisons():
    assert claims.combine(["supports", "supports"]) == "supported"
    assert claims.combine(["supports", "inconclusive"]) == "inconclusive"
    assert claims.combine(["contradicts", "inconclusive"]) == "not supported"
    assert claims.combine([]) == "inconclusive"
    # comparisons pointing in opposite directions are mixed, whichever the rule
    assert claims.combine(["supports", "contradicts"]) == "mixed"
    assert claims.combine(["inconclusive", "supports", "contradicts"], any_supports=True) == "mixed"
    # "on some metrics": one support is enough; all contradicting is a no
    assert claims.combine(["inconclusive", "supports"], any_supports=True) == "supported"
    assert claims.combine(["contradicts", "contradicts"], any_supports=True) == "not supported"
    assert claims.combine(["inconclusive", "contradicts"], any_supports=True) == "inconclusive"


def test_the_rules_in_words_match_the_code():
    assert "at least one comparison supports" in claims.rule_text("C5")
    assert all("every comparison supports" in claims.rule_text(c) for c in ("C1", "C2", "C3", "C4", "C6"))
    assert list(claims.rules_frame()["claim"]) == list(claims.STATEMENTS)


def evidence_rows(claim: str, value: float, half_width: float, sign: int = -1, null: float = 0.0,
                  comparison: str = "id ead PPO - SFT") -> pd.DataFrame:
    lo, hi = value - half_width, value + half_width
    return pd.DataFrame([{"claim": claim, "comparison": comparison, "value": value, "ci_low": lo, "ci_high": hi,
                          "null": null, "sign": sign, "outcome": claims.outcome(lo - null, hi - null, sign)}])


def test_pooling_over_seeds_averages_agreeing_seeds_and_widens_for_disagreeing_ones():
    # two seeds that agree, each with interval +-0.0392 (standard error 0.02): the pooled value is
    # their mean and the interval narrower than either seed's (two draws averaged)
    agree = {0: evidence_rows("C4", -0.10, 0.0392), 1: evidence_rows("C4", -0.12, 0.0392)}
    pooled = claims.pool_evidence(agree, n_boot=20000)
    row = pooled.iloc[0]
    assert row["value"] == pytest.approx(-0.11)
    assert row["outcome"] == "supports"
    assert 0.02 < row["ci_high"] - row["ci_low"] < 2 * 0.0392
    # seeds that each find a clear effect but in opposite directions pool to inconclusive
    disagree = {0: evidence_rows("C4", -0.10, 0.02), 1: evidence_rows("C4", +0.10, 0.02)}
    row = claims.pool_evidence(disagree, n_boot=20000).iloc[0]
    assert row["value"] == pytest.approx(0.0) and row["outcome"] == "inconclusive"
    assert row["ci_low"] < -0.08 and row["ci_high"] > 0.08  # the spread between seeds, not within
    # win rates pool around their null (0.5) and keep it
    wins = {0: evidence_rows("C1", 0.70, 0.05, +1, 0.5, "id PPO vs SFT win rate"),
            1: evidence_rows("C1", 0.66, 0.05, +1, 0.5, "id PPO vs SFT win rate")}
    row = claims.pool_evidence(wins).iloc[0]
    assert row["value"] == pytest.approx(0.68) and row["null"] == 0.5 and row["outcome"] == "supports"


def test_across_seeds_gives_each_seed_and_the_pool_a_verdict_per_claim():
    per_seed = {0: pd.concat([evidence_rows("C4", -0.10, 0.02), evidence_rows("C6", 0.1, 0.02, comparison="u"),
                              evidence_rows("C6", -0.1, 0.02, comparison="ead")]),
                1: pd.concat([evidence_rows("C4", -0.01, 0.05), evidence_rows("C6", 0.1, 0.02, comparison="u"),
                              evidence_rows("C6", -0.1, 0.02, comparison="ead")]),
                2: evidence_rows("C4", -0.12, 0.02)}  # seed 2 lacks C6's comparisons: not pooled
    table, pooled = claims.across_seeds(per_seed, n_boot=2000)
    assert list(table.columns) == claims.CLAIMS_SEEDS_COLUMNS
    verdict = table.set_index(["claim", "seed"])["verdict"]
    assert (verdict["C4", 0], verdict["C4", 1], verdict["C4", 2]) == ("supported", "inconclusive", "supported")
    assert verdict["C6", 0] == "mixed" and verdict["C6", claims.POOLED] == "inconclusive"
    assert set(pooled["claim"]) == {"C4"}
    assert verdict["C1", claims.POOLED] == "inconclusive"  # no evidence at all
    html = claims.across_seeds_html(table)
    assert "3 seeds" in html and "seed 2" in html and "pooled" in html


def test_seeds_runs_every_stage_per_seed_in_its_own_folder(tmp_path, monkeypatch):
    from gendiv import cli, stages
    from gendiv.config import load_profile

    calls = []

    def fake_stage(name, profile, run_dir="", force=False, seed=None):
        calls.append((name, run_dir, seed))
        if name == "claims":
            results = Path(run_dir) / "results"
            results.mkdir(parents=True, exist_ok=True)
            evidence_rows("C4", -0.1 * (seed + 1), 0.02).to_csv(results / "claims_evidence.csv", index=False)
        return {}

    monkeypatch.setattr(cli, "run_one_stage", fake_stage)
    out = cli.run_seeds("smoke", [0, 3], str(tmp_path / "run"))
    names = [row.name for row in stages.STAGES]
    assert [c[0] for c in calls] == names * 2
    assert {c[2] for c in calls[: len(names)]} == {0} and {c[2] for c in calls[len(names):]} == {3}
    # the profile's own seed is the book's run folder; the others sit in seeds/seed<k> inside it
    assert {c[1] for c in calls[: len(names)]} == {str(tmp_path / "run")}
    assert {c[1] for c in calls[len(names):]} == {str(tmp_path / "run" / "seeds" / "seed3")}
    table = pd.read_csv(out)
    assert out == claims.seeds_root(load_profile("smoke", run_dir=str(tmp_path / "run"))) / "claims_seeds.csv"
    assert set(table["seed"].astype(str)) == {"0", "3", claims.POOLED}


def test_each_verdict_names_the_failed_checks_it_rests_on():
    card = pd.DataFrame({"claim": ["C1", "C4", "C6"]})
    checks = pd.DataFrame([
        {"check": "SFT win rate", "split": "id", "passed": False, "claims": claims.POLICY_CLAIMS},
        {"check": "SFT win rate", "split": "ood_far", "passed": True, "claims": claims.POLICY_CLAIMS},
        {"check": "diversity inputs", "split": "id", "passed": False, "claims": claims.DIVERSITY_CLAIMS}])
    assert claims.caveats(card, checks) == {"C1": ["SFT win rate (id)"], "C4": ["diversity inputs (id)"],
                                            "C6": ["SFT win rate (id)", "diversity inputs (id)"]}
    # a sweep line's spread check carries C6 on its own line only; chapter 9's claims rest on their base's
    lines = pd.DataFrame([
        {"check": claims.spread_check("squared"), "split": "id", "passed": False, "claims": "C6 C7"},
        {"check": claims.spread_check("log_ratio"), "split": "id", "passed": True, "claims": "C6[log_ratio] C7"},
        {"check": "RM accuracy", "split": "id", "passed": False, "claims": claims.POLICY_CLAIMS}])
    assert claims.caveats(pd.DataFrame({"claim": ["C6", "C6[log_ratio]", "C7", "C1[dpo_beta0.1]"]}), lines) == {
        "C6": [f"{claims.spread_check('squared')} (id)", "RM accuracy (id)"], "C6[log_ratio]": ["RM accuracy (id)"],
        "C7": [f"{claims.spread_check('squared')} (id)"], "C1[dpo_beta0.1]": ["RM accuracy (id)"]}
    html = claims.scorecard_html(card.assign(statement="s", evidence="e", verdict="supported"), checks)
    assert "1 of 3 checks pass" in html and html.count("Not yet a finding") == 3
    # the scorecard names the task its verdicts are on
    html = claims.scorecard_html(card.assign(statement="s", evidence="e", verdict="supported",
                                             task="instruction following"), checks)
    assert "this run on instruction following finds: 3 supported" in html
    assert html.count("in this run on instruction following.") == 3


def test_the_scorecard_across_tasks_gives_each_claims_verdict_per_task():
    summ = pd.DataFrame({"claim": ["C1", "C2", "C1[dpo]"], "verdict": ["supported", "mixed", "inconclusive"]})
    inst = pd.DataFrame({"claim": ["C1", "C2"], "verdict": ["not supported", "supported"]})
    checks = pd.DataFrame({"passed": [True, False, True]})
    text = claims.tasks_markdown({"summarisation (tiny)": summ, "instruction following (tiny-instruct)": inst},
                                 {"summarisation (tiny)": checks, "instruction following (tiny-instruct)": None})
    assert text.splitlines() == [
        "| claim | summarisation (tiny) | instruction following (tiny-instruct) |", "|---|---|---|",
        "| C1 | supported | not supported |", "| C2 | mixed | supported |", "| C1[dpo] | inconclusive | not run |",
        "| competence checks passed | 2 of 3 | not computed |"]
    assert "No task's claims" in claims.tasks_markdown({}, {})


def test_each_profile_names_its_task():
    from gendiv.config import load_profile, task_name
    assert {p: task_name(load_profile(p)) for p in ("tiny", "tldr", "tiny-instruct", "alpacafarm")} == {
        "tiny": "summarisation", "tldr": "summarisation", "tiny-instruct": "instruction following",
        "alpacafarm": "instruction following"}


def test_c7_reads_each_estimators_runs_on_the_others_line_and_pools_across_seeds():
    """k2 runs at kl_coef 0, 0.05, 1 end at true KL 10, 4, 1 nats; k1 at 0.05 ends at 6. k2 at 6
    nats is 1/3 of the way from its run at 4 to its run at 10: per-input EAD 0.6 + (0.9 - 0.6) / 3
    = 0.7 against k1's 0.8, so k2 is 0.1 less diverse at equal KL."""
    from gendiv.config import load_profile

    cfg = load_profile("smoke", **{"ppo.sweep_estimators": ["log_ratio"]})
    rows = []
    for beta, est, kl, ead in ((0.0, "squared", 10.0, 0.9), (0.05, "squared", 4.0, 0.6), (1.0, "squared", 1.0, 0.3),
                               (0.05, "log_ratio", 6.0, 0.8)):
        for uid in ("a", "b"):
            rows.append({"kl_coef": beta, "estimator": est, "split": "id", "measure": "true_kl", "uid": uid,
                         "value": kl})
            rows.append({"kl_coef": beta, "estimator": est, "split": "id", "measure": "per_input_ead", "uid": uid,
                         "value": ead})
    out = claims.estimator_comparisons(cfg, pd.DataFrame(rows), ["id"], metrics=("ead",))
    assert len(out) == 1
    assert out[0]["value"] == pytest.approx(-0.1)
    # one row per split and metric whatever the runs' KL (so that seeds pool it); the note says where
    assert out[0]["comparison"] == "id per-input ead: k2 minus k1 at equal true KL"
    assert claims.estimator_point_notes(cfg, pd.DataFrame(rows), ["id"]) == [
        "id: k1 at 0.05 (6.00 nats) on k2's line"]
    # a second seed whose k1 run ends elsewhere (5 nats) makes the same comparison, and the two pool
    other_seed = [dict(r, value=5.0) if r["estimator"] == "log_ratio" and r["measure"] == "true_kl" else r
                  for r in rows]
    out_b = claims.estimator_comparisons(cfg, pd.DataFrame(other_seed), ["id"], metrics=("ead",))
    as_evidence = [pd.DataFrame([{"claim": "C7", **o, "null": 0.0, "sign": -1, "outcome": "supports"}])
                   for o in (out[0], out_b[0])]
    pooled = claims.pool_evidence({0: as_evidence[0], 1: as_evidence[1]})
    assert list(pooled["comparison"]) == ["id per-input ead: k2 minus k1 at equal true KL"]
    # a k1 run beyond k2's range of KL gives no comparison; without the estimator axis, none at all
    beyond = [dict(r, value=20.0) if r["estimator"] == "log_ratio" and r["measure"] == "true_kl" else r for r in rows]
    assert claims.estimator_comparisons(cfg, pd.DataFrame(beyond), ["id"]) == []
    assert claims.estimator_comparisons(load_profile("tldr"), pd.DataFrame(rows), ["id"]) == []
    assert claims.estimator_uncompared(cfg, pd.DataFrame(rows), ["id"]) == []
    # k1 at 0.05 ends at 2 nats, below every k2 run (10, 8, 7; EAD 0.9, 0.6, 0.4; k1's 0.5): k2's
    # runs are read on k1's line from 0 (10 nats, 0.9) to 0.05 (2 nats, 0.5). k2 at 0.05 (8 nats)
    # is 3/4 of the way from 2 to 10: k1 there 0.5 + 0.75 x 0.4 = 0.8, so k2 minus k1 = -0.2; k2 at
    # 1 (7 nats): 0.5 + 5/8 x 0.4 = 0.75 against 0.4, -0.35; C7's row is their mean, -0.275
    below = []
    for beta, est, kl, ead in ((0.0, "squared", 10.0, 0.9), (0.05, "squared", 8.0, 0.6), (1.0, "squared", 7.0, 0.4),
                               (0.05, "log_ratio", 2.0, 0.5)):
        for uid in ("a", "b"):
            below += [{"kl_coef": beta, "estimator": est, "split": "id", "measure": m, "uid": uid, "value": v}
                      for m, v in (("true_kl", kl), ("per_input_ead", ead))]
    out = claims.estimator_comparisons(cfg, pd.DataFrame(below), ["id"], metrics=("ead",))
    assert len(out) == 1 and out[0]["value"] == pytest.approx(-0.275)
    assert claims.estimator_point_notes(cfg, pd.DataFrame(below), ["id"]) == [
        "id: k2 at 1 (7.00 nats) on k1's line, k2 at 0.05 (8.00 nats) on k1's line"]
    # with no run inside the other's range (k1 at 0.05 ends above the shared run at 0, every k2 run
    # below it), C7 has no row there and names the split with both estimators' runs
    apart = [dict(r, value=12.0) if r["estimator"] == "log_ratio" and r["measure"] == "true_kl" else r for r in below]
    assert claims.estimator_comparisons(cfg, pd.DataFrame(apart), ["id"]) == []
    assert claims.estimator_uncompared(cfg, pd.DataFrame(apart), ["id"]) == [
        "id: no run of one estimator ends within the other's range of true KL (k2 7.00 at 1, 8.00 at 0.05, "
        "10.00 at 0; k1 10.00 at 0, 12.00 at 0.05; nats at kl_coef)"]
    assert claims.estimator_uncompared(load_profile("tldr"), pd.DataFrame(apart), ["id"]) == []


def test_c6_is_asked_of_each_estimator_whose_runs_span_the_grid():
    """C6 compares the grid's largest coefficient with its smallest; an estimator of the sweep's
    estimator axis has a line of its own only where it ran at both (the run at 0 serves all)."""
    from gendiv.config import load_profile

    tiny = load_profile("tiny-full")
    assert sweep.lines(tiny) == ["squared", "log_ratio"]
    assert "C6[log_ratio]" in claims.statements(tiny)
    assert sweep.lines(load_profile("tiny-full", **{"ppo.sweep_estimator_betas": [0.05]})) == ["squared"]
    assert sweep.lines(load_profile("tiny")) == ["squared"]  # the book's tiny leaves the axis out (budget)
    assert "C6[log_ratio]" not in claims.statements(load_profile("tiny"))
    assert sweep.lines(load_profile("smoke", **{"ppo.sweep_estimator_betas": [0.5]})) == ["squared"]
    assert sweep.lines(load_profile("smoke", **{"ppo.sweep_estimator_betas": []})) == ["squared", "log_ratio"]
    assert sweep.lines(load_profile("smol")) == ["squared", "log_ratio"]  # the GPU profile asks C6[log_ratio] too
    assert sweep.lines(load_profile("tldr")) == ["squared"]
    assert [claims.line_claim(tiny, e) for e in sweep.lines(tiny)] == ["C6", "C6[log_ratio]"]
