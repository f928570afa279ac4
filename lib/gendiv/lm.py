"""Language-model helpers every stage shares: tokenizer sides set for one block, left truncation,
batched sampling (many prompts, K samples each, left padding and the KV cache), the response
logits and values of a prompt-then-response batch, log-probabilities and entropies.

The paper's sampling (its code): temperature 1, top-k 0, top-p 1, at most 48 new tokens; prompts
are truncated on the left so the end of the post and the "TL;DR:" cue survive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, StaticCache

from gendiv import data, runs
from gendiv.config import Config


@contextlib.contextmanager
def tokenizer_sides(tokenizer, padding: str = "left", truncation: str = "left") -> Iterator:
    """Set the tokenizer's padding and truncation sides for one block and restore them after it,
    so no caller depends on what the previous one left behind."""
    before = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = padding, truncation
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = before


def left_truncate(tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Cut each prompt to its last ``max_tokens`` tokens (left truncation, paper's code)."""
    out = []
    for prompt, ids in zip(prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        out.append(prompt if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:]))
    return out


@dataclass(frozen=True)
class Samples:
    """``texts[i][k]`` is sample k for prompt i; ``n_tokens`` counts the new tokens of each."""

    texts: list[list[str]]
    n_tokens: list[list[int]]

    def first(self) -> list[str]:
        return [t[0] for t in self.texts]


def _chunks(order: list[int], n_samples: int, batch_size: int) -> list[tuple[list[int], int, int]]:
    """Split the work into batches of whole prompts: ``(prompt indices, first sample, samples
    each)``. ``batch_size // n_samples`` prompts share a batch; a prompt with more samples than
    ``batch_size`` is spread over several batches."""
    if n_samples <= batch_size:
        per = batch_size // n_samples
        return [(order[i:i + per], 0, n_samples) for i in range(0, len(order), per)]
    return [([i], k, min(batch_size, n_samples - k)) for i in order for k in range(0, n_samples, batch_size)]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as transformers' ``generate`` counts them for a
    left-padded batch (so a prefill, or scoring a sequence, sees the positions it is sampled with)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _shared_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int):
    """The KV cache of every prompt but its last token, computed once per prompt and repeated for
    its ``repeats`` samples (``generate`` then feeds only the last prompt token)."""
    cache = DynamicCache()
    mask = attention_mask[:, :-1]
    model(input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=position_ids(mask),
          cache=cache, use_cache=True)
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return cache


def static_cache(model, max_len: int, filled: DynamicCache | None = None) -> StaticCache:
    """A KV cache of ``max_len`` positions allocated once (``StaticCache``), holding ``filled``'s
    states if given. ``generate``'s default cache grows by concatenation at every new token,
    copying the whole cache each time: on the miniature's CPU runs a batch of 256 samples (48
    new tokens) takes 3.9 s with this cache and 6.5 s with that one, and the samples are the
    same token for token under the same seed (``tests/test_lm.py``)."""
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    if filled is not None:
        for i, layer in enumerate(filled.layers):
            cache.update(layer.keys, layer.values, i)
    return cache


def generate_kwargs(model, input_ids: torch.Tensor, max_new_tokens: int,
                    cache: DynamicCache | None = None) -> dict:
    """The cache arguments of a ``generate`` call for ``input_ids`` (a static cache long enough
    for ``max_new_tokens`` more, holding ``cache``'s states if given), and never a compiled
    forward pass (``generate`` compiles for a static cache on a GPU; the batches here change shape
    from call to call, so it would compile again and again)."""
    return dict(cache=static_cache(model, input_ids.shape[1] + max_new_tokens, cache), disable_compile=True)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, n_samples: int = 1, max_new_tokens: int = 48,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 32,
             max_prompt_tokens: int | None = None, seed: int = 0, desc: str = "sampling",
             share_prefill: bool = True) -> Samples:
    """Sample ``n_samples`` completions for each prompt; deterministic given ``seed`` and batch size.

    Prompts are sorted by length so each batch pads little; results come back in input order.
    ``temperature=0`` is greedy decoding. With ``share_prefill`` (and ``n_samples > 1``) the
    prompt is run through the model once and its KV cache repeated for the samples: the same
    samples up to float rounding, about a quarter less time at K=16 on the miniature. Turn it off for
    a model whose cache is not a plain ``DynamicCache`` (sliding-window or recurrent layers).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lengths = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    chunks = _chunks(order, n_samples, batch_size)
    texts = [[""] * n_samples for _ in prompts]
    counts = [[0] * n_samples for _ in prompts]
    eos = tokenizer.eos_token_id
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) \
        if temperature > 0 else dict(do_sample=False)
    bar = tqdm(total=len(prompts) * n_samples, desc=desc, leave=False)
    for b, (idx, first, repeats) in enumerate(chunks):
        runs.take_freed_cores()
        with tokenizer_sides(tokenizer, "left", "left"):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
                            add_special_tokens=False).to(device)
        shared = share_prefill and repeats > 1 and enc["input_ids"].shape[1] > 1
        cache = _shared_prefill(model, enc["input_ids"], enc["attention_mask"], repeats) if shared else None
        ids = enc["input_ids"].repeat_interleave(repeats, dim=0)
        mask = enc["attention_mask"].repeat_interleave(repeats, dim=0)
        torch.manual_seed(seed * 1_000_003 + b)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **sampling,
                             **generate_kwargs(model, ids, max_new_tokens, cache))
        rows = out[:, ids.shape[1]:].tolist()
        for j, i in enumerate(idx):
            for r in range(repeats):
                row = rows[j * repeats + r]
                if eos in row:
                    row = row[: row.index(eos) + 1]
                counts[i][first + r] = len(row)
                texts[i][first + r] = tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(idx) * repeats)
    bar.close()
    model.train(was_training)
    return Samples(texts, counts)


def sample_policy(cfg: Config, model, tokenizer, records: list[dict], seed: int, desc: str, n_samples: int = 1,
                  temperature: float | None = None) -> Samples:
    """Samples of ``model`` on ``records`` with the profile's sampling settings and prompt budget
    (``temperature`` overrides sampling.temperature)."""
    s = cfg.sampling
    temperature = s.temperature if temperature is None else temperature
    return generate(model, tokenizer, [r["prompt"] for r in records], n_samples=n_samples,
                    max_new_tokens=s.max_new_tokens, temperature=temperature, top_k=s.top_k, top_p=s.top_p,
                    batch_size=s.batch_size, max_prompt_tokens=cfg.max_prompt_tokens,
                    seed=seed, desc=desc)


# ------------------------------------------------------------------ log-probs of responses
def response_outputs(lm, input_ids, attention_mask, n_response, temperature=1.0, value_head=None, start=None):
    """Logits (divided by ``temperature``) predicting each of the last ``n_response`` tokens of
    each row, and the ``value_head``'s values there (None without one). Rows are a left-padded
    prompt followed by a response; positions count real tokens only.

    ``start`` = (k, hidden): run only blocks k and above, from ``hidden``, the input of block k
    that :func:`block_input` computed (the same result as the whole model, with less compute,
    when the bottom k blocks and the embeddings do not change between the two calls)."""
    trunk, positions = lm.base_model, position_ids(attention_mask)
    if start is None:
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                       use_cache=False).last_hidden_state
    else:
        k, below = start
        with _blocks(trunk, slice(k, None)):
            hidden = trunk(inputs_embeds=below, attention_mask=attention_mask, position_ids=positions,
                           use_cache=False).last_hidden_state
    # position t predicts token t+1: the response's tokens are predicted from the n_response
    # positions before them, so the LM head runs on those positions only.
    h = hidden[:, -n_response - 1:-1]
    logits = lm.get_output_embeddings()(h).float() / temperature
    values = value_head(h).squeeze(-1).float() if value_head is not None else None
    return logits, values


@contextlib.contextmanager
def _blocks(trunk, which: slice, norm: bool = True):
    """The trunk running only the blocks ``which`` (and no final norm unless ``norm``)."""
    layers, final = trunk.layers, trunk.norm
    trunk.layers = layers[which]
    if not norm:
        trunk.norm = torch.nn.Identity()
    try:
        yield trunk
    finally:
        trunk.layers, trunk.norm = layers, final


def frozen_blocks(lm) -> int:
    """How many bottom blocks of ``lm`` train nothing, with its input embeddings: the input of the
    first block that trains is then the same before and after any update, and
    :func:`block_input` can compute it once for several passes (PPO's epochs). 0 when the
    embeddings or the first block train, or the trunk is not a list of blocks (``layers``) with a
    final ``norm`` that takes ``inputs_embeds`` (Llama and its kin; others run whole)."""
    trunk = getattr(lm, "base_model", None)
    if not isinstance(getattr(trunk, "layers", None), torch.nn.ModuleList) or not hasattr(trunk, "norm"):
        return 0
    if any(p.requires_grad for p in lm.get_input_embeddings().parameters()):
        return 0
    n = 0
    for block in trunk.layers:
        if any(p.requires_grad for p in block.parameters()):
            break
        n += 1
    return n


@torch.no_grad()
def block_input(lm, input_ids, attention_mask, k: int) -> torch.Tensor:
    """The hidden states entering block ``k`` of ``lm`` (the embeddings for k = 0): what
    :func:`response_outputs` starts from with ``start=(k, hidden)``."""
    trunk = lm.base_model
    with _blocks(trunk, slice(0, k), norm=False):
        return trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                     use_cache=False).last_hidden_state


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical distribution softmax(logits), in nats."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def completion_nll(model, tokenizer, prompts: list[str], completions: list[str], max_prompt_tokens: int,
                   batch_size: int = 32, per_token: bool = True) -> np.ndarray:
    """Mean negative log-likelihood per token (nats) of each completion (``per_token=False``: its
    sum over the completion's tokens), written as SFT trains on it (a space, the text, EOS), given
    its prompt cut to its last ``max_prompt_tokens`` tokens. The rows are laid out as PPO scores
    its episodes: left-padded prompt, then the completion."""
    if len(prompts) != len(completions):
        raise ValueError(f"completion_nll got {len(prompts)} prompts and {len(completions)} completions.")
    targets = [data.sft_target(c, tokenizer.eos_token) for c in completions]
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        with tokenizer_sides(tokenizer, "left", "left"):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_prompt_tokens, add_special_tokens=False).to(device)
        with tokenizer_sides(tokenizer, "right", "left"):
            comp = tokenizer(targets[i:i + batch_size], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(device)
        response, mask = comp["input_ids"], comp["attention_mask"].float()
        logits, _ = response_outputs(model, torch.cat([enc["input_ids"], response], dim=1),
                                     torch.cat([enc["attention_mask"], comp["attention_mask"]], dim=1),
                                     response.shape[1])
        nll = -(gather_logprobs(logits, response) * mask).sum(1)
        out.append((nll / mask.sum(1) if per_token else nll).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
