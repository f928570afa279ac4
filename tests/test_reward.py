"""The reward-model stage: accuracy against the judge, and the kinds of comparison pairs."""

import random

import pytest
from conftest import CORPUS, micro_reward_model
from gendiv import reward
from gendiv.config import load_profile


def test_rm_accuracy_counts_agreement_and_skips_ties(tok, tmp_path):
    rm = micro_reward_model(tok, tmp_path)
    pairs = [{"prompt": CORPUS[0], "a": "x", "b": "landlord raised rent", "preferred": p} for p in (0, 1, -1)]
    out = reward.rm_accuracy(rm, pairs, seed=0)
    assert out["n"] == 2 and out["accuracy"] == pytest.approx(0.5)


def test_pair_kinds_follow_the_configured_shares():
    cfg = load_profile("smoke", **{"reward.base_pair_share": 0.2, "reward.reference_pair_share": 0.3})
    kinds = reward.pair_kinds(cfg, 4000, random.Random(0))
    assert set(kinds) == set(reward.PAIR_KINDS)
    assert kinds.count("sft_vs_base") / 4000 == pytest.approx(0.2, abs=0.03)
    assert kinds.count("sft_vs_reference") / 4000 == pytest.approx(0.3, abs=0.03)
    only_sft = load_profile("smoke")  # the defaults: SFT against SFT only
    assert set(reward.pair_kinds(only_sft, 50, random.Random(0))) == {"sft_vs_sft"}
