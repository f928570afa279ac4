"""Best-of-N, bootstrap intervals, gaps and the claim rules."""

import numpy as np
import pytest
from gendiv import claims, sampling, stats


def test_best_of_n_picks_the_argmax_and_the_first_on_ties():
    scores = np.array([[0.1, 0.9, 0.3], [2.0, 2.0, -1.0]])
    assert sampling.best_of_n(scores).tolist() == [1, 0]
    with pytest.raises(ValueError, match="inputs x candidates"):
        sampling.best_of_n(np.zeros(3))


def test_n_grid():
    assert sampling.n_grid(16) == [1, 2, 4, 8, 16]
    assert sampling.n_grid(6) == [1, 2, 4, 6]
    assert sampling.n_grid(1) == [1]


def test_bootstrap_intervals_cover_the_truth_on_a_synthetic_case():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        x = rng.normal(0.3, 1.0, size=200)
        _, lo, hi = stats.bootstrap_ci(x, n_boot=300, seed=trial)
        covered += lo <= 0.3 <= hi
    assert 88 <= covered <= 100  # nominal 95%


def test_paired_difference_uses_the_pairing():
    a = np.arange(50, dtype=float)
    b = a - 1.0  # a is always exactly 1 higher, whatever the spread
    d, lo, hi = stats.paired_difference(a, b)
    assert d == lo == hi == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1, 2], [1])


def test_difference_ci_of_independent_samples():
    d, lo, hi = stats.difference_ci(np.ones(30), np.zeros(40))
    assert d == lo == hi == 1.0
    assert all(np.isnan(stats.difference_ci([], [1.0])))


@pytest.mark.parametrize("low,high,sign,expected", [
    (0.1, 0.3, +1, "supports"), (-0.3, -0.1, +1, "contradicts"), (-0.1, 0.1, +1, "inconclusive"),
    (-0.3, -0.1, -1, "supports"), (0.1, 0.3, -1, "contradicts"), (float("nan"), 1, -1, "inconclusive")])
def test_claim_rule_for_one_interval(low, high, sign, expected):
    assert claims.test(low, high, sign) == expected


def test_claim_rule_combines_comparisons():
    assert claims.combine(["supports", "supports"]) == "supported"
    assert claims.combine(["supports", "inconclusive"]) == "inconclusive"
    assert claims.combine(["supports", "contradicts"]) == "not supported"
    assert claims.combine([]) == "inconclusive"
    # "on some metrics": one support is enough; all contradicting is a no
    assert claims.combine(["inconclusive", "supports", "contradicts"], any_supports=True) == "supported"
    assert claims.combine(["contradicts", "contradicts"], any_supports=True) == "not supported"
    assert claims.combine(["inconclusive", "contradicts"], any_supports=True) == "inconclusive"


def test_sample_outputs_averages_the_gold_utility_over_the_configured_samples(smoke_cfg, tmp_path):
    """Each row keeps the first sample as its output, with that sample's utility, and the mean
    over ``sampling.utility_samples`` samples; the split's row averages those means."""
    import dataclasses
    import random

    import torch
    from gendiv import data, evaluation, models, runs

    cfg = dataclasses.replace(smoke_cfg, sampling=dataclasses.replace(smoke_cfg.sampling, utility_samples=3,
                                                                       max_new_tokens=6))
    world = data.make_world(cfg)
    rng = random.Random(0)
    records = [data._record(world.make_example(rng, "cooking", "forum", f"u{i}", "test")) for i in range(5)]
    tok = models.train_tokenizer([r["prompt"] + " " + r["reference"] for r in records] * 4, vocab_size=300)
    torch.manual_seed(0)
    lm = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=256)
    models.save_pretrained_atomic(lm, tok, tmp_path / "m")

    paths, rows = evaluation.sample_outputs(cfg, tmp_path / "m", "m", {"id": records}, tmp_path / "out", world)
    out = runs.read_jsonl(paths["m_id"])
    again = sampling.generate(lm, tok, [r["prompt"] for r in records], n_samples=3, max_new_tokens=6,
                              batch_size=cfg.sampling.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                              seed=cfg.seed).texts
    for row, record, texts in zip(out, records, again):
        utilities = evaluation.gold_utilities(world, [record] * 3, texts)
        assert row["output"] == texts[0] and row["utility"] == pytest.approx(utilities[0])
        assert row["mean_utility"] == pytest.approx(np.mean(utilities)) and row["utility_samples"] == 3
    assert rows[0]["n"] == 5
    assert rows[0]["mean_utility"] == pytest.approx(np.mean([r["mean_utility"] for r in out]))
    assert evaluation.expected_utilities([{"utility": 0.25}]) == [0.25]   # runs from before the field


def test_utility_samples_below_one_is_refused(smoke_cfg):
    from gendiv.config import ConfigError, load_profile

    with pytest.raises(ConfigError, match="sampling.utility_samples"):
        load_profile("smoke", run_dir=str(smoke_cfg.run_dir), **{"sampling.utility_samples": 0})
