"""Tokenizers, tiny models, freezing, LoRA, and the reward model's scoring and normalisation."""

import numpy as np
import pytest
import torch
from conftest import CORPUS, micro_reward_model
from gendiv import models


def test_tokenizer_has_distinct_special_tokens_and_round_trips(tok, tmp_path):
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    text = "My landlord raised the rent."
    assert tok.decode(tok(text)["input_ids"]) == text
    tok.save_pretrained(tmp_path)
    again = models.load_tokenizer(tmp_path)
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token_id == tok.pad_token_id != again.eos_token_id


def test_tiny_model_round_trips_through_save_and_load(tok, tiny, tmp_path):
    models.save_pretrained_atomic(tiny, tok, tmp_path / "m")
    loaded = models.load_causal_lm(tmp_path / "m", torch.device("cpu"))
    x = torch.tensor([tok("My landlord raised the rent")["input_ids"]])
    torch.testing.assert_close(loaded(x).logits, tiny(x).logits)
    assert not (tmp_path / "m.partial").exists()


def test_freezing_counts(tiny):
    total = models.count_parameters(tiny).total
    counts = models.freeze_bottom(tiny, 0.5)
    layers = models.decoder_layers(tiny)
    per_layer = sum(p.numel() for p in layers[0].parameters())
    embed = tiny.get_input_embeddings().weight.numel()  # tied with the LM head: counted once
    assert counts.total == total
    assert counts.trainable == total - 2 * per_layer - embed
    assert not any(p.requires_grad for p in layers[1].parameters())
    assert all(p.requires_grad for p in layers[2].parameters())
    assert models.freeze_bottom(tiny, 0.0).trainable == total
    with pytest.raises(ValueError, match="must lie in"):
        models.freeze_bottom(tiny, 1.5)


def test_lora_trains_only_adapters(tok):
    model = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    wrapped = models.add_lora(model, r=4, alpha=8)
    counts = models.count_parameters(wrapped)
    assert 0 < counts.trainable < 0.5 * counts.total
    assert all("lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)


def test_rm_score_is_read_at_the_last_real_token_whatever_the_padding(tok, tmp_path):
    rm = micro_reward_model(tok, tmp_path)
    prompts = ["SUBREDDIT: r/a\nPOST: short\nTL;DR:", CORPUS[1]]
    completions = ["short one", "a much longer summary of the landlord and the rent"]
    left = rm.raw_scores(prompts, completions, padding_side="left")
    right = rm.raw_scores(prompts, completions, padding_side="right")
    alone = np.array([rm.raw_scores([p], [c])[0] for p, c in zip(prompts, completions)])
    np.testing.assert_allclose(left, alone, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)
    # batched in order of length: the scores of texts of many lengths, in any batch size, in input order
    many_p = [prompts[i % 2] for i in range(7)]
    many_c = [" ".join(["word"] * (1 + 3 * i)) if i % 3 else "x" for i in range(7)]
    one_by_one = np.array([rm.raw_scores([p], [c])[0] for p, c in zip(many_p, many_c)])
    assert len(set(np.round(one_by_one, 4))) > 3  # distinct scores: a misplaced one would show
    for batch_size in (2, 3, 64):
        np.testing.assert_allclose(rm.raw_scores(many_p, many_c, batch_size=batch_size), one_by_one, atol=1e-5)
    assert rm.raw_scores([], []).shape == (0,)
    # The score depends on the EOS-terminated text: the last token read is EOS.
    assert rm.texts(["p"], [" c "])[0] == "p c" + tok.eos_token


def test_rm_needs_a_pad_distinct_from_eos(tok, tmp_path):
    rm = micro_reward_model(tok, tmp_path)
    rm.model.config.pad_token_id = tok.eos_token_id
    with pytest.raises(ValueError, match="distinct from EOS"):
        rm.raw_scores(["p"], ["c"])


def test_normalisation(tok, tmp_path):
    raw = np.array([1.0, 2.0, 3.0, 4.0])
    norm = models.normalisation(raw)
    assert norm["mean"] == pytest.approx(2.5) and norm["std"] == pytest.approx(np.std(raw))
    rm = micro_reward_model(tok, tmp_path)
    rm.mean, rm.std = 0.0, 1.0
    prompts, outs = [CORPUS[0]] * 5, ["a", "b c", "landlord", "rent", "lease now"]
    raw_scores = rm.raw_scores(prompts, outs)
    norm = models.normalisation(raw_scores)
    rm.mean, rm.std = norm["mean"], norm["std"]
    scores = rm.score(prompts, outs)
    assert abs(scores.mean()) < 1e-5 and scores.std() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        models.normalisation(np.array([1.0]))


def test_folded_normalisation_gives_the_normalised_score(tok, tmp_path):
    rm = micro_reward_model(tok, tmp_path)
    prompts, outs = [CORPUS[0]] * 3, ["a", "landlord", "rent now"]
    rm.mean, rm.std = 0.0, 1.0
    raw = rm.raw_scores(prompts, outs)
    mean, std = 0.3, 2.5
    models.fold_normalisation(rm.model, mean, std)
    np.testing.assert_allclose(rm.raw_scores(prompts, outs), (raw - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="std must be > 0"):
        models.fold_normalisation(rm.model, 0.0, 0.0)
    with pytest.raises(ValueError, match="one-label"):
        models.fold_normalisation(torch.nn.Module(), 0.0, 1.0)
