"""The claim rules: one interval's outcome, and how comparisons combine into a verdict."""

import pandas as pd
import pytest
from gendiv import claims


@pytest.mark.parametrize("low,high,sign,expected", [
    (0.1, 0.3, +1, "supports"), (-0.3, -0.1, +1, "contradicts"), (-0.1, 0.1, +1, "inconclusive"),
    (-0.3, -0.1, -1, "supports"), (0.1, 0.3, -1, "contradicts"), (float("nan"), 1, -1, "inconclusive")])
def test_claim_rule_for_one_interval(low, high, sign, expected):
    assert claims.outcome(low, high, sign) == expected


def test_claim_rule_combines_comparisons():
    assert claims.combine(["supports", "supports"]) == "supported"
    assert claims.combine(["supports", "inconclusive"]) == "inconclusive"
    assert claims.combine(["supports", "contradicts"]) == "not supported"
    assert claims.combine([]) == "inconclusive"
    # "on some metrics": one support is enough; all contradicting is a no
    assert claims.combine(["inconclusive", "supports", "contradicts"], any_supports=True) == "supported"
    assert claims.combine(["contradicts", "contradicts"], any_supports=True) == "not supported"
    assert claims.combine(["inconclusive", "contradicts"], any_supports=True) == "inconclusive"


def test_each_verdict_names_the_failed_checks_it_rests_on():
    card = pd.DataFrame({"claim": ["C1", "C4", "C6"]})
    checks = pd.DataFrame([
        {"check": "SFT win rate", "split": "id", "passed": False, "claims": claims.POLICY_CLAIMS},
        {"check": "SFT win rate", "split": "ood_far", "passed": True, "claims": claims.POLICY_CLAIMS},
        {"check": "diversity inputs", "split": "id", "passed": False, "claims": claims.DIVERSITY_CLAIMS}])
    assert claims.caveats(card, checks) == {"C1": ["SFT win rate (id)"], "C4": ["diversity inputs (id)"],
                                            "C6": ["SFT win rate (id)", "diversity inputs (id)"]}
    html = claims.scorecard_html(card.assign(statement="s", evidence="e", verdict="supported"), checks)
    assert "1 of 3 checks pass" in html and html.count("Not yet a finding") == 3
