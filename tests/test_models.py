"""Tokenizer and model round trips, freezing, completion-only SFT loss, RM scoring."""

import numpy as np
import pytest
import torch
from gendiv import models, reward, sampling, sft

CORPUS = [f"SUBREDDIT: r/test\nTITLE: post {i}\nPOST: My landlord raised the rent and my roommate "
          f"stopped paying their share. Should I break the lease?\nTL;DR: landlord raised rent {i}"
          for i in range(60)]


@pytest.fixture(scope="module")
def tok():
    return models.train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def tiny(tok):
    torch.manual_seed(0)
    return models.tiny_llama(tok, hidden_size=32, n_layers=4, n_heads=2, intermediate_size=64, max_length=128)


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


def test_sft_loss_is_on_the_completion_only(tok, tiny):
    records = [{"prompt": CORPUS[0].rsplit("\nTL;DR:", 1)[0] + "\nTL;DR:", "reference": "landlord raised rent"}]
    trainer = sft.make_trainer(tiny, tok, records, [], epochs=1, lr=1e-3, batch_size=1, scheduler="cosine",
                               max_length=128, max_new_tokens=16, seed=0, output_dir="/tmp/gendiv-sft-test")
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    assert row["completion"] == " landlord raised rent" + tok.eos_token  # TRL appended EOS
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    context = [i for i, lab in zip(ids, labels) if lab == -100]
    assert tok.decode(trained) == " landlord raised rent" + tok.eos_token
    assert tok.decode(context) == records[0]["prompt"]
    assert labels[: len(context)] == [-100] * len(context)  # the prompt comes first and is masked
    batch = trainer.data_collator([row])
    assert batch["labels"][0].tolist() == labels


def test_left_truncation_keeps_the_end(tok):
    prompt = CORPUS[0]
    cut = sft.left_truncate(tok, [prompt], 10)[0]
    assert prompt.endswith(cut) and len(tok(cut)["input_ids"]) <= 10


def _rm(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    models.save_pretrained_atomic(base, tok, tmp_path / "base")
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    return reward.RewardModel(model.eval(), tok, max_length=128)


def test_rm_score_is_read_at_the_last_real_token_whatever_the_padding(tok, tmp_path):
    rm = _rm(tok, tmp_path)
    prompts = ["SUBREDDIT: r/a\nPOST: short\nTL;DR:", CORPUS[1]]
    completions = ["short one", "a much longer summary of the landlord and the rent"]
    left = rm.raw_scores(prompts, completions, padding_side="left")
    right = rm.raw_scores(prompts, completions, padding_side="right")
    alone = np.array([rm.raw_scores([p], [c])[0] for p, c in zip(prompts, completions)])
    np.testing.assert_allclose(left, alone, atol=1e-5)
    np.testing.assert_allclose(right, alone, atol=1e-5)
    # The score depends on the EOS-terminated text: the last token read is EOS.
    assert rm.texts(["p"], [" c "])[0] == "p c" + tok.eos_token


def test_rm_needs_a_pad_distinct_from_eos(tok, tmp_path):
    rm = _rm(tok, tmp_path)
    rm.model.config.pad_token_id = tok.eos_token_id
    with pytest.raises(ValueError, match="distinct from EOS"):
        rm.raw_scores(["p"], ["c"])


def test_normalisation(tok, tmp_path):
    raw = np.array([1.0, 2.0, 3.0, 4.0])
    norm = reward.normalisation(raw)
    assert norm["mean"] == pytest.approx(2.5) and norm["std"] == pytest.approx(np.std(raw))
    rm = _rm(tok, tmp_path)
    rm.mean, rm.std = 0.0, 1.0
    prompts, outs = [CORPUS[0]] * 5, ["a", "b c", "landlord", "rent", "lease now"]
    raw_scores = rm.raw_scores(prompts, outs)
    norm = reward.normalisation(raw_scores)
    rm.mean, rm.std = norm["mean"], norm["std"]
    scores = rm.score(prompts, outs)
    assert abs(scores.mean()) < 1e-5 and scores.std() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        reward.normalisation(np.array([1.0]))


def test_folded_normalisation_gives_the_normalised_score(tok, tmp_path):
    rm = _rm(tok, tmp_path)
    prompts, outs = [CORPUS[0]] * 3, ["a", "landlord", "rent now"]
    rm.mean, rm.std = 0.0, 1.0
    raw = rm.raw_scores(prompts, outs)
    mean, std = 0.3, 2.5
    reward.fold_normalisation(rm.model, mean, std)
    np.testing.assert_allclose(rm.raw_scores(prompts, outs), (raw - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="std must be > 0"):
        reward.fold_normalisation(rm.model, 0.0, 0.0)
    with pytest.raises(ValueError, match="one-label"):
        reward.fold_normalisation(torch.nn.Module(), 0.0, 1.0)


def test_rm_accuracy_counts_agreement_and_skips_ties(tok, tmp_path):
    rm = _rm(tok, tmp_path)
    pairs = [{"prompt": CORPUS[0], "a": "x", "b": "landlord raised rent", "preferred": p} for p in (0, 1, -1)]
    out = reward.rm_accuracy(rm, pairs, seed=0)
    assert out["n"] == 2 and out["accuracy"] == pytest.approx(0.5)


def test_generation_is_deterministic_and_ordered(tok, tiny):
    prompts = ["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2]]
    a = sampling.generate(tiny, tok, prompts, n_samples=3, max_new_tokens=5, seed=1, batch_size=4)
    b = sampling.generate(tiny, tok, prompts, n_samples=3, max_new_tokens=5, seed=1, batch_size=4)
    assert a == b and len(a.texts) == 2 and all(len(t) == 3 for t in a.texts)
    assert all(0 < n <= 5 for row in a.n_tokens for n in row)
    greedy = sampling.generate(tiny, tok, prompts, n_samples=2, max_new_tokens=5, temperature=0)
    assert all(len(set(t)) == 1 for t in greedy.texts)
    single = sampling.generate(tiny, tok, prompts[1:], n_samples=1, max_new_tokens=5, temperature=0)
    assert single.texts[0][0] == greedy.texts[1][0]  # left padding does not change a greedy output


@pytest.mark.parametrize("n_samples,batch_size", [(2, 6), (5, 2)])
def test_shared_prefill_gives_the_samples_of_the_plain_path(tok, tiny, n_samples, batch_size):
    """Prefilling a prompt once and repeating its cache changes no sample: greedy outputs and
    seeded samples match the path that runs every row's prompt, also when a prompt's samples
    span several batches (5 samples, batches of 2) and when prompts of different lengths share
    one (2 samples, batches of 6: left padding)."""
    prompts = ["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2], CORPUS[5][:90]]
    for temperature in (0.0, 1.0):
        kw = dict(n_samples=n_samples, max_new_tokens=6, seed=3, batch_size=batch_size, temperature=temperature)
        shared = sampling.generate(tiny, tok, prompts, share_prefill=True, **kw)
        plain = sampling.generate(tiny, tok, prompts, share_prefill=False, **kw)
        assert shared == plain


def test_chunks_cover_every_sample_once():
    for n, bs in [(1, 64), (16, 64), (48, 64), (5, 2), (7, 3)]:
        seen = [(i, first + r) for idx, first, reps in sampling._chunks(list(range(5)), n, bs)
                for i in idx for r in range(reps)]
        assert sorted(seen) == [(i, k) for i in range(5) for k in range(n)]
        assert all(len(idx) * reps <= bs for idx, _, reps in sampling._chunks(list(range(5)), n, bs))


def test_shared_prefill_cache_gives_the_full_forward_logits(tok, tiny):
    """The repeated cache plus the last prompt token gives each row the next-token logits of a
    full forward pass over its left-padded prompt (positions counted from the first real token)."""
    tok.padding_side = "left"
    enc = tok(["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2]], return_tensors="pt", padding=True,
              add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # the short prompt is padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate gives a left-padded row
    with torch.no_grad():
        full = tiny(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        cache = sampling._shared_prefill(tiny, ids, mask, repeats=3)
        rep_mask = mask.repeat_interleave(3, dim=0)
        last = tiny(input_ids=ids[:, -1:].repeat_interleave(3, dim=0), attention_mask=rep_mask,
                    position_ids=positions.repeat_interleave(3, dim=0)[:, -1:], past_key_values=cache).logits[:, -1]
    torch.testing.assert_close(last, full.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-4)


def test_completion_nll_matches_a_hand_computation_and_ignores_batching(tok, tiny):
    from gendiv import data, evaluation

    prompts = ["SUBREDDIT: r/test\nTITLE: post 1\nPOST: My landlord raised the rent.\nTL;DR:", "POST: hi\nTL;DR:"]
    refs = ["landlord raised rent", "my roommate stopped paying their share and it is getting worse"]
    tiny.eval()
    expected = []
    for p, c in zip(prompts, refs):  # one unpadded forward pass, log-softmax by hand
        pid = tok(p, add_special_tokens=False)["input_ids"]
        cid = tok(data.sft_target(c, tok.eos_token), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pid + cid])
        with torch.no_grad():
            logp = torch.log_softmax(tiny(ids).logits[0, :-1], -1)
        tokens = ids[0, 1:]
        expected.append(-logp[torch.arange(len(tokens)), tokens][len(pid) - 1:].mean().item())
    batched = evaluation.completion_nll(tiny, tok, prompts, refs, max_prompt_tokens=200, batch_size=2)
    alone = [evaluation.completion_nll(tiny, tok, [p], [c], max_prompt_tokens=200)[0] for p, c in zip(prompts, refs)]
    np.testing.assert_allclose(batched, expected, rtol=1e-4)
    np.testing.assert_allclose(alone, expected, rtol=1e-4)
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        evaluation.completion_nll(tiny, tok, prompts, refs[:1], max_prompt_tokens=200)


def test_context_probe_swaps_posts_within_a_domain_and_gains_nothing_from_identical_prompts(tok, tiny):
    from gendiv import evaluation

    records = [{"domain": d, "prompt": f"POST: {d} story {i}\nTL;DR:", "reference": f"{d} summary {i}"}
               for i, d in enumerate(["a", "a", "a", "b", "b", "c"])]
    swap = evaluation.other_input(records, seed=0)
    for i, j in enumerate(swap):
        assert j != i
        if records[i]["domain"] != "c":  # c has one input: any other input stands in
            assert records[j]["domain"] == records[i]["domain"]
    assert swap == evaluation.other_input(records, seed=0)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        evaluation.other_input(records[:1], seed=0)
    same = [{**r, "prompt": "POST: one post for all\nTL;DR:"} for r in records]
    row, = evaluation.context_reliance(tiny, tok, "m", {"id": same}, max_prompt_tokens=100, seed=0)
    assert row["gain"] == pytest.approx(0.0, abs=1e-6) and row["n"] == len(same)
    assert row["nll_own"] == pytest.approx(row["nll_other"], abs=1e-6)
    assert list(row) == evaluation.CONTEXT_RELIANCE_COLUMNS
