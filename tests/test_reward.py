"""The reward-model stage: accuracy against the judge, and the kinds of comparison pairs."""

import random

import numpy as np
import pandas as pd

import pytest
from conftest import CORPUS, micro_reward_model
from gendiv import reward
from gendiv.config import load_profile


def test_rm_accuracy_counts_agreement_and_skips_ties(tok, tmp_path):
    rm = micro_reward_model(tok, tmp_path)
    pairs = [{"prompt": CORPUS[0], "a": "x", "b": "landlord raised rent", "preferred": p} for p in (0, 1, -1)]
    out = reward.rm_accuracy(rm, pairs, seed=0)
    assert out["n"] == 2 and out["accuracy"] == pytest.approx(0.5)


def test_likelihood_yardstick_prefers_the_more_likely_summary(monkeypatch):
    # Mean NLL per token of each summary: the judge's choice is the less surprising one in pairs 1
    # and 2, the more surprising one in pair 3; pair 4 is a tie (one half), pair 5 a judge tie
    # (left out). Right: (1 + 1 + 0 + 0.5) / 4; a scorer preferring the less likely: 0.375.
    nll = {"a1": 1.0, "b1": 2.0, "a2": 3.0, "b2": 0.5, "a3": 0.2, "b3": 0.9, "a4": 1.0, "b4": 1.0, "a5": 1.0,
           "b5": 2.0}
    monkeypatch.setattr(reward, "completion_nll",
                        lambda model, tok, prompts, texts, max_tokens: np.array([nll[t] for t in texts]))
    pairs = [{"prompt": "p", "a": f"a{i}", "b": f"b{i}", "preferred": pref}
             for i, pref in zip(range(1, 6), (0, 1, 1, 0, -1))]
    out = reward.likelihood_accuracy(None, None, pairs, 16, seed=0)
    assert out["n"] == 4 and out["accuracy"] == pytest.approx(0.625)
    none = reward.likelihood_accuracy(None, None, pairs[4:], 16, seed=0)
    assert none["n"] == 0 and np.isnan(none["accuracy"])


def test_yardstick_rows_pair_the_rm_with_the_likelihood_over_the_same_pairs():
    rm_right, likelihood_right = np.array([1, 1, 0, 0.5]), np.array([1, 0, 0, 1.0])
    rm_row, lk_row = reward.yardstick_rows("ood_far", rm_right, likelihood_right, seed=0)
    assert rm_row["scorer"] == "reward model" and rm_row["accuracy"] == pytest.approx(0.625)
    assert lk_row["scorer"] == reward.LIKELIHOOD_SCORER and lk_row["accuracy"] == pytest.approx(0.5)
    assert lk_row["rm_minus"] == pytest.approx(0.125)  # (0 + 1 + 0 - 0.5) / 4, not 0.5 - 0.625
    assert lk_row["rm_minus_low"] <= 0.125 <= lk_row["rm_minus_high"]
    assert set(lk_row) | set(rm_row) <= set(reward.RM_YARDSTICK_COLUMNS) | {"split"}


def test_by_kind_rows_align_the_kinds_with_the_pairs_the_judge_decides():
    # The judge tie (second pair) has no correctness entry: kinds must skip it as rm_correct does.
    pairs = [{"kind": k, "preferred": p} for k, p in
             (("sft_vs_sft", 0), ("sft_vs_base", -1), ("sft_vs_base", 1), ("sft_vs_sft", 1))]
    rows = {r["kind"]: r for r in reward.by_kind_rows("id", pairs, np.array([1.0, 0.0, 0.5]), seed=0)}
    assert rows["sft_vs_sft"]["n"] == 2 and rows["sft_vs_sft"]["accuracy"] == pytest.approx(0.75)
    assert rows["sft_vs_base"]["n"] == 1 and rows["sft_vs_base"]["accuracy"] == 0.0
    assert rows["sft_vs_reference"]["n"] == 0 and np.isnan(rows["sft_vs_reference"]["accuracy"])


def test_pair_kinds_follow_the_configured_shares():
    cfg = load_profile("smoke", **{"reward.base_pair_share": 0.2, "reward.reference_pair_share": 0.3})
    kinds = reward.pair_kinds(cfg, 4000, random.Random(0))
    assert set(kinds) == set(reward.PAIR_KINDS)
    assert kinds.count("sft_vs_base") / 4000 == pytest.approx(0.2, abs=0.03)
    assert kinds.count("sft_vs_reference") / 4000 == pytest.approx(0.3, abs=0.03)
    only_sft = load_profile("smoke")  # the defaults: SFT against SFT only
    assert set(reward.pair_kinds(only_sft, 50, random.Random(0))) == {"sft_vs_sft"}


def test_agreement_by_part_sets_the_rm_beside_the_judge_part_by_part():
    """Hand-worked: three judged pairs (and one judge tie, left out). Outputs spell their parts:
    'c<coverage> h<invented facts> n<words>'; the fake RM scores each output by a table."""
    from types import SimpleNamespace

    class World:
        def utility(self, text, ex):
            c, h, n = (float(t[1:]) for t in text.split())
            return SimpleNamespace(coverage=c, hallucinated=h, fluency=1.0, n_words=n)

    class RM:
        scores = {"c1 h0 n5": 0.0, "c2 h0 n9": 1.0, "c1 h1 n5": 1.0, "c1 h0 n6": 0.0, "c2 h0 n8": 2.0,
                  "c1 h0 n3": 2.0}

        def raw_scores(self, prompts, texts):
            return np.array([self.scores[t] for t in texts])

    pairs = [{"uid": "u", "prompt": "p", "a": "c1 h0 n5", "b": "c2 h0 n9", "preferred": 1},  # RM right
             {"uid": "u", "prompt": "p", "a": "c1 h1 n5", "b": "c1 h0 n6", "preferred": 1},  # RM for the invented fact
             {"uid": "u", "prompt": "p", "a": "c2 h0 n8", "b": "c1 h0 n3", "preferred": 0},  # RM tie
             {"uid": "u", "prompt": "p", "a": "c2 h0 n8", "b": "c1 h0 n9", "preferred": -1}]  # judge tie
    rows = reward.agreement_by_part(World(), RM(), pairs, {"u": None}, "id", seed=0)
    got = {(r["part"], r["who"]): (r["agreement"], r["n"]) for r in rows}
    assert got == {("coverage", "judge"): (1.0, 2), ("coverage", "reward model"): (0.75, 2),
                   ("hallucinated", "judge"): (1.0, 1), ("hallucinated", "reward model"): (0.0, 1),
                   # length: the longer won all three for the judge; for the RM one, lost one, tied one
                   ("n_words", "judge"): (1.0, 3), ("n_words", "reward model"): (0.5, 3)}
    # fluency never differs: no rows for it
    assert all(r["split"] == "id" for r in rows)


def test_scored_once_scores_each_pair_once_and_normalises_with_the_current_stats():
    class Counting:
        mean, std, seen = 0.0, 1.0, []

        def raw_scores(self, prompts, completions, batch_size=32):
            self.seen += list(zip(prompts, completions))
            return np.array([len(p) + 10 * len(c) for p, c in zip(prompts, completions)], dtype=float)

    inner = Counting()
    rm = reward.ScoredOnce(inner)
    first = rm.raw_scores(["p", "pp", "p"], ["a", "bb", "a"])
    np.testing.assert_allclose(first, [11, 22, 11])
    assert inner.seen == [("p", "a"), ("pp", "bb")]  # the repeated pair scored once
    np.testing.assert_allclose(rm.raw_scores(["pp", "q"], ["bb", "c"]), [22, 11])
    assert inner.seen[2:] == [("q", "c")]
    rm.mean, rm.std = 11.0, 2.0  # the stage sets the normalisation after the first scores
    assert (inner.mean, inner.std) == (11.0, 2.0)
    np.testing.assert_allclose(rm.score(["p", "pp"], ["a", "bb"]), [0.0, 5.5])
    assert len(inner.seen) == 3


def test_left_log2_at_reads_the_running_mean_over_steps_not_rows():
    log2 = np.log(2.0)
    # one row a step: the mean over steps 1-4 first falls 0.05 below log 2 at step 4 (0.4 drop / 4 = 0.1)
    assert reward.left_log2_at([1, 2, 3, 4, 5], [log2, log2, log2, log2 - 0.4, log2], window=4) == 4
    # a single low step whose window mean is only 0.04 below: not yet (the margin is 0.05)
    assert reward.left_log2_at([1, 2, 3, 4], [log2, log2, log2, log2 - 0.16], window=4) is None
    # TRL logs every 5 steps: a 10-step window holds two rows; the summary row (no loss) is skipped
    steps, loss = [5, 10, 15, 20, 20], [log2, log2, log2 - 0.08, log2 - 0.2, np.nan]
    assert reward.left_log2_at(steps, loss, window=10) == 20  # step 15's window (rows 10, 15): 0.04 below
    assert reward.left_log2_at([1, 2, 3], [0.1, 0.1, 0.1], window=5) is None  # fewer steps than the window
    with pytest.raises(ValueError, match="window"):
        reward.left_log2_at([1], [0.1], window=0)
    frame = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [log2] * 4})
    assert "never fell" in reward.describe_plateau(frame) and "in 4 steps" in reward.describe_plateau(frame)


def test_the_sft_body_rm_is_the_same_whatever_drew_from_the_generator_before(tok, tmp_path):
    """The RM's new head is drawn from torch's generator: the stage seeds it, so the RM trained in
    its notebook (after the comparisons' sampling), by `gendiv stage` and ahead of the notebooks
    are one RM."""
    import torch
    from gendiv import models
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    models.save_pretrained_atomic(models.tiny_llama(tok, 32, 2, 2, 64, 128), tok, tmp_path / "sft")
    pairs = [{"prompt": "the cat sat on the mat", "chosen": "a cat sat", "rejected": "a dog ran"}] * 4
    heads = []
    for before in (1, 2):
        torch.manual_seed(before)
        reward.train_reward_model(tmp_path / "sft", pairs, tmp_path / f"rm{before}", epochs=1, lr=1e-3,
                                  batch_size=2, max_length=64, seed=0, device=torch.device("cpu"))
        heads.append(AutoModelForSequenceClassification.from_pretrained(str(tmp_path / f"rm{before}")).score.weight)
    assert torch.equal(heads[0], heads[1])
