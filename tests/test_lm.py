"""Language-model helpers: tokenizer sides, left truncation, batched sampling with a shared
prefill, response log-probs."""

import numpy as np
import pytest
import torch
from conftest import CORPUS
from gendiv import data, lm


def test_tokenizer_sides_are_set_for_the_block_and_restored(tok):
    tok.padding_side, tok.truncation_side = "left", "right"
    with lm.tokenizer_sides(tok, "right", "left"):
        assert (tok.padding_side, tok.truncation_side) == ("right", "left")
        enc = tok(["a", "a longer text"], padding=True, add_special_tokens=False)["attention_mask"]
        assert enc[0][0] == 1 and enc[0][-1] == 0  # padded on the right inside the block
    assert (tok.padding_side, tok.truncation_side) == ("left", "right")
    with pytest.raises(RuntimeError), lm.tokenizer_sides(tok, "right", "right"):
        raise RuntimeError("restored even when the block fails")
    assert (tok.padding_side, tok.truncation_side) == ("left", "right")
    tok.truncation_side = "left"


def test_generation_leaves_the_tokenizer_as_it_found_it(tok, tiny):
    tok.padding_side = "right"
    lm.generate(tiny, tok, ["POST: p\nTL;DR:", CORPUS[1]], max_new_tokens=2, seed=0)
    assert tok.padding_side == "right"
    tok.padding_side = "left"


def test_left_truncation_keeps_the_end(tok):
    prompt = CORPUS[0]
    cut = lm.left_truncate(tok, [prompt], 10)[0]
    assert prompt.endswith(cut) and len(tok(cut)["input_ids"]) <= 10


def test_generation_is_deterministic_and_ordered(tok, tiny):
    prompts = ["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2]]
    a = lm.generate(tiny, tok, prompts, n_samples=3, max_new_tokens=5, seed=1, batch_size=4)
    b = lm.generate(tiny, tok, prompts, n_samples=3, max_new_tokens=5, seed=1, batch_size=4)
    assert a == b and len(a.texts) == 2 and all(len(t) == 3 for t in a.texts)
    assert all(0 < n <= 5 for row in a.n_tokens for n in row)
    greedy = lm.generate(tiny, tok, prompts, n_samples=2, max_new_tokens=5, temperature=0)
    assert all(len(set(t)) == 1 for t in greedy.texts)
    single = lm.generate(tiny, tok, prompts[1:], n_samples=1, max_new_tokens=5, temperature=0)
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
        shared = lm.generate(tiny, tok, prompts, share_prefill=True, **kw)
        plain = lm.generate(tiny, tok, prompts, share_prefill=False, **kw)
        assert shared == plain


@pytest.mark.parametrize("n_samples,share", [(1, False), (3, True)])
def test_the_static_cache_samples_the_tokens_of_the_growing_one(tok, tiny, n_samples, share):
    """``generate`` samples into a cache allocated once (:func:`gendiv.lm.static_cache`), with or
    without a shared prefill copied into it: under the same seed every row is token for token
    what transformers' default cache (one that grows by concatenation) samples, prompts of
    different lengths left-padded in one batch. A misplaced copy (states at the wrong positions,
    a wrong count of positions filled) changes the logits, so the samples."""
    prompts = ["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2], CORPUS[5][:90]]
    with lm.tokenizer_sides(tok, "left", "left"):
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()
    kw = dict(do_sample=True, max_new_tokens=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              top_k=0, top_p=1.0)
    with torch.no_grad():
        cache = lm._shared_prefill(tiny, ids, mask, n_samples) if share else None
        rows, rmask = ids.repeat_interleave(n_samples, 0), mask.repeat_interleave(n_samples, 0)
        torch.manual_seed(11)
        static = tiny.generate(input_ids=rows, attention_mask=rmask, **kw,
                               **lm.generate_kwargs(tiny, rows, 8, cache))
        torch.manual_seed(11)
        growing = tiny.generate(input_ids=rows, attention_mask=rmask, **kw)
    assert isinstance(lm.generate_kwargs(tiny, rows, 8)["cache"], lm.StaticCache)
    assert static.shape == growing.shape and torch.equal(static, growing)


def test_chunks_cover_every_sample_once():
    for n, bs in [(1, 64), (16, 64), (48, 64), (5, 2), (7, 3)]:
        seen = [(i, first + r) for idx, first, reps in lm._chunks(list(range(5)), n, bs)
                for i in idx for r in range(reps)]
        assert sorted(seen) == [(i, k) for i in range(5) for k in range(n)]
        assert all(len(idx) * reps <= bs for idx, _, reps in lm._chunks(list(range(5)), n, bs))


def test_shared_prefill_cache_gives_the_full_forward_logits(tok, tiny):
    """The repeated cache plus the last prompt token gives each row the next-token logits of a
    full forward pass over its left-padded prompt (positions counted from the first real token)."""
    with lm.tokenizer_sides(tok, "left", "left"):
            enc = tok(["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", CORPUS[2]], return_tensors="pt", padding=True,
                  add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # the short prompt is padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate gives a left-padded row
    with torch.no_grad():
        full = tiny(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        cache = lm._shared_prefill(tiny, ids, mask, repeats=3)
        rep_mask = mask.repeat_interleave(3, dim=0)
        last = tiny(input_ids=ids[:, -1:].repeat_interleave(3, dim=0), attention_mask=rep_mask,
                    position_ids=positions.repeat_interleave(3, dim=0)[:, -1:], cache=cache).logits[:, -1]
    torch.testing.assert_close(last, full.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-4)


def test_completion_nll_matches_a_hand_computation_and_ignores_batching(tok, tiny):
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
    batched = lm.completion_nll(tiny, tok, prompts, refs, max_prompt_tokens=200, batch_size=2)
    alone = [lm.completion_nll(tiny, tok, [p], [c], max_prompt_tokens=200)[0] for p, c in zip(prompts, refs)]
    np.testing.assert_allclose(batched, expected, rtol=1e-4)
    np.testing.assert_allclose(alone, expected, rtol=1e-4)
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        lm.completion_nll(tiny, tok, prompts, refs[:1], max_prompt_tokens=200)
