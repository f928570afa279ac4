"""Policy outputs on the test splits: averaged gold utilities and the context probe."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from gendiv import data, lm, models, outputs, runs
from gendiv.config import ConfigError, load_profile
from gendiv.world import words


def test_sample_outputs_averages_the_gold_utility_over_the_configured_samples(smoke_cfg, tmp_path):
    """Each row keeps the first sample as its output, with that sample's utility, and the mean
    over ``sampling.utility_samples`` samples; the split's row averages those means."""
    cfg = dataclasses.replace(smoke_cfg, sampling=dataclasses.replace(smoke_cfg.sampling, utility_samples=3,
                                                                       max_new_tokens=6))
    world = data.make_world(cfg)
    rng = random.Random(0)
    records = [data._record(world.make_example(rng, "cooking", "forum", f"u{i}", "test")) for i in range(5)]
    tok = models.train_tokenizer([r["prompt"] + " " + r["reference"] for r in records] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=256)
    models.save_pretrained_atomic(model, tok, tmp_path / "m")

    paths, rows = outputs.sample_outputs(cfg, tmp_path / "m", "m", {"id": records}, tmp_path / "out", world)
    out = runs.read_jsonl(paths["m_id"])
    again = lm.generate(model, tok, [r["prompt"] for r in records], n_samples=3, max_new_tokens=6,
                        batch_size=cfg.sampling.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                        seed=cfg.seed).texts
    for row, record, texts in zip(out, records, again):
        utilities = outputs.gold_utilities(world, [record] * 3, texts)
        assert row["output"] == texts[0] and row["utility"] == pytest.approx(utilities[0])
        assert row["mean_utility"] == pytest.approx(np.mean(utilities)) and row["utility_samples"] == 3
    assert rows[0]["n"] == 5
    assert rows[0]["mean_utility"] == pytest.approx(np.mean([r["mean_utility"] for r in out]))
    assert outputs.expected_utilities([{"utility": 0.25}]) == [0.25]   # runs from before the field


def test_utility_samples_below_one_is_refused(smoke_cfg):
    with pytest.raises(ConfigError, match="sampling.utility_samples"):
        load_profile("smoke", run_dir=str(smoke_cfg.run_dir), **{"sampling.utility_samples": 0})


def test_context_probe_swaps_posts_within_a_domain_and_gains_nothing_from_identical_prompts(tok, tiny):
    records = [{"domain": d, "prompt": f"POST: {d} story {i}\nTL;DR:", "reference": f"{d} summary {i}"}
               for i, d in enumerate(["a", "a", "a", "b", "b", "c"])]
    swap = outputs.other_input(records, seed=0)
    for i, j in enumerate(swap):
        assert j != i
        if records[i]["domain"] != "c":  # c has one input: any other input stands in
            assert records[j]["domain"] == records[i]["domain"]
    assert swap == outputs.other_input(records, seed=0)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        outputs.other_input(records[:1], seed=0)
    same = [{**r, "prompt": "POST: one post for all\nTL;DR:"} for r in records]
    row, = outputs.context_reliance(tiny, tok, "m", {"id": same}, max_prompt_tokens=100, seed=0)
    assert row["gain"] == pytest.approx(0.0, abs=1e-6) and row["n"] == len(same)
    assert row["nll_own"] == pytest.approx(row["nll_other"], abs=1e-6)
    assert list(row) == outputs.CONTEXT_RELIANCE_COLUMNS


def test_output_parts_count_invented_facts_and_broken_words_per_output():
    """Hand-worked on two posts: the reference (no invented fact, no broken word) and the same
    reference with its first word broken and an invented sentence added. A bug that read the
    parts off the wrong post, counted broken words in the vocabulary, or averaged over parts
    rather than outputs changes these numbers."""
    world = data.make_world(load_profile("smoke"))
    rng = random.Random(3)
    records = [data._record(world.make_example(rng, "cooking", "forum", f"u{i}", "test")) for i in range(2)]
    good = records[0]["reference"]
    ex1 = data.example_from(records[1])
    bad = "Zqxv " + records[1]["reference"] + " " + world.hallucinated_sentence(ex1, random.Random(0))
    assert world.foreign_words("Zqxv my landlord") == ["zqxv"] and world.foreign_words(good) == []
    rows = {r["part"]: r for r in outputs.output_parts(world, "m", "id", records, [good, bad], seed=0)}
    assert set(rows) == set(outputs.OUTPUT_PARTS) and all(r["n"] == 2 for r in rows.values())
    assert rows["opens_broken"]["mean"] == 0.5 and rows["any_broken"]["mean"] == 0.5
    assert rows["hallucinated"]["mean"] == 0.5   # one invented fact, on the second output only
    covered = [world.utility(good, data.example_from(records[0])).coverage, world.utility(bad, ex1).coverage]
    assert rows["coverage"]["mean"] == pytest.approx(np.mean(covered))
    assert rows["n_words"]["mean"] == pytest.approx((len(words(good)) + len(words(bad))) / 2)
    with pytest.raises(ValueError, match="1 outputs"):
        outputs.output_parts(world, "m", "id", records, [good], seed=0)
