"""The base model (chapter 2's first stage): a tiny Llama pre-trained on the world's corpus,
shipped with the package or pre-trained in the run; or SmolLM2 / any hub model, recorded as is.

The paper starts from a pretrained LLaMA: pre-training is not part of its protocol. The `tiny`
profile likewise starts from a base model pre-trained once, for far longer than a book run can
afford, by a deterministic command::

    gendiv pretrain --profile tiny           # rewrites lib/gendiv/pretrained/tiny (about an hour on 2 cores)

and shipped as a small safetensors checkpoint with its tokenizer, its manifest (the recipe, the
world it was trained for, versions, wall time) and its loss curve (``pretrain_log.csv``). The
base stage checks that the shipped checkpoint matches the profile's architecture, pre-training
recipe and world (:func:`world_fingerprint`), and measures its held-out perplexity in the run.
``model.base: scratch`` pre-trains inside the run instead (the `smoke` profile, in seconds).

The pre-training corpus, tokenizer and run depend on ``pretrain.seed``, not on the run's seed:
every seed of the study starts from the same base model, as the paper's runs start from the
same LLaMA.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from gendiv import data, runs
from gendiv.config import Config, ConfigError
from gendiv.instruct import InstructionWorld
from gendiv.world import World, lexicon
from gendiv.models import (SCRATCH, load_causal_lm, load_tokenizer, pick_device, resolve_base,
                           save_pretrained_atomic, tiny_llama, train_tokenizer)
from gendiv.lm import generate

SHIPPED = ("tiny",)
"""Base models shipped with the package (``model.base`` names), each in ``gendiv/pretrained/<name>``."""
MANIFEST = "pretrain_manifest.json"
LOG = "pretrain_log.csv"
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "n_layers", "n_heads", "intermediate_size", "max_length")
CORPUS_KEYS = ("n_pretrain_docs", "pretrain_summary_share", "pretrain_comment_share")
OPTIONAL_CORPUS_KEYS = ("pretrain_instruction_share",)
"""Corpus settings that joined the recipe later: in it only when not 0, so that a base made before
they existed (their value then was 0) still matches its profile."""
OPTIONAL_PRETRAIN_KEYS = ("cased_openers",)
"""pretrain settings that joined the recipe later: in it only when set, as OPTIONAL_CORPUS_KEYS."""
NOT_RECIPE = ("probe_every", "probe_inputs", "checkpoint_every", "heldout_documents", "eval_every")
"""pretrain keys that do not change the weights (what is logged, saved or measured)."""


# ------------------------------------------------------------------ what a base model was made from
def world_fingerprint() -> str:
    """A hash of the world's text generator: fixed examples of every domain and genre, with their
    references. It changes whenever the lexicon, the templates or the generator do, and then a
    base model pre-trained on the old world no longer matches."""
    world = World(seed=0)
    rng = random.Random("fingerprint")
    texts = []
    for genre in ("forum", "news"):
        for domain in world.lex.domains:
            ex = world.make_example(rng, domain, genre, "f", "f")
            texts.append(data.format_prompt(ex) + "\n" + ex.reference + "\n" + world.comment(rng, ex))
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def instruction_fingerprint() -> str:
    """As :func:`world_fingerprint`, for the instruction world's generator (help threads of every
    kind): part of a recipe whose corpus holds help threads (``data.pretrain_instruction_share``)."""
    world = InstructionWorld(seed=0)
    rng = random.Random("fingerprint")
    texts = [data.help_thread(world.make_instruction(rng, domain, kind, "f"))
             for kind in data.INSTRUCTION_KINDS for domain in world.lex.domains]
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def recipe(cfg: Config) -> dict:
    """Everything a pre-trained base model depends on: the architecture, the corpus settings, the
    pre-training settings (with their seed) and the world's fingerprint (and the instruction
    world's, when the corpus holds help threads)."""
    corpus_keys = CORPUS_KEYS + tuple(k for k in OPTIONAL_CORPUS_KEYS if getattr(cfg.data, k))
    out = {"model": {k: getattr(cfg.model, k) for k in ARCHITECTURE_KEYS},
           "data": {k: getattr(cfg.data, k) for k in corpus_keys},
           "pretrain": {k: v for k, v in asdict(cfg.pretrain).items()
                        if k not in NOT_RECIPE and (v or k not in OPTIONAL_PRETRAIN_KEYS)},
           "world": world_fingerprint()}
    if cfg.data.pretrain_instruction_share:
        out["instruction_world"] = instruction_fingerprint()
    return out


def cased_openers() -> list[str]:
    """The capitalised first word of every entity phrase of the summarisation world, sorted: how
    a summary sentence opens when it drops the article ("Contractor grew black mould."), for
    ``pretrain.cased_openers``."""
    return sorted({p.split()[0][:1].upper() + p.split()[0][1:] for phrases in lexicon().entity_phrases.values()
                   for p in phrases if p.split()})


def recipe_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(recipe(cfg), sort_keys=True).encode()).hexdigest()[:16]


def corpus(cfg: Config) -> list[str]:
    """The pre-training corpus of the recipe (drawn with ``pretrain.seed``)."""
    return data.pretraining_corpus(data.make_world(cfg), replace(cfg, seed=cfg.pretrain.seed))


def heldout_documents(cfg: Config, n: int) -> list[str]:
    """``n`` documents of the corpus's kinds and shares that the pre-training never saw (their own
    random stream), for measuring a base model's perplexity in the run."""
    return data.pretraining_corpus(data.make_world(cfg), replace(cfg, seed=cfg.pretrain.seed + 1_000_003), n)


# ------------------------------------------------------------------ packing and the loop
def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Rows of ``seq_len`` tokens holding whole documents (each ended by EOS), padded at the end
    with the pad token: a document is never cut across rows, so a TL;DR is always trained beside
    the post it summarises and a quote beside what it quotes (cut into rows of packed text, a
    TL;DR usually lost its post, and the model learnt to write one without reading it). Each
    document goes to the fullest row it fits in (best fit, deterministic), so little is padding.
    A document longer than ``seq_len`` keeps its last ``seq_len`` tokens (the summary end)."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens still free, row index), sorted
    chunks = (texts[i:i + 10_000] for i in range(0, len(texts), 10_000))  # bounded memory for big corpora
    for ids in (ids for chunk in chunks for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]):
        doc = (ids + [tokenizer.eos_token_id])[-seq_len:]
        at = bisect.bisect_left(free, (len(doc), -1))
        if at == len(free):
            rows.append([])
            room, row = seq_len, len(rows) - 1
        else:
            room, row = free.pop(at)
        rows[row] += doc
        if room - len(doc) > 0:
            bisect.insort(free, (room - len(doc), row))
    if not rows:
        raise ValueError("The corpus is empty: no document to pre-train on.")
    out = torch.full((len(rows), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def lm_labels(rows: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Next-token labels of packed rows: the tokens themselves, with padding left out (-100)."""
    return rows.masked_fill(rows == pad_token_id, -100)


@torch.no_grad()
def perplexity(model, rows: torch.Tensor, pad_token_id: int, batch_size: int = 16) -> float:
    """exp(mean next-token loss per real token) over packed rows (padding left out)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        x = rows[i:i + batch_size].to(device)
        labels = lm_labels(x, pad_token_id)
        n = int((labels[:, 1:] != -100).sum())
        total += model(input_ids=x, labels=labels).loss.item() * n
        count += n
    model.train(was_training)
    return math.exp(total / max(count, 1))


class SummaryProbe:
    """How well the base model writes a TL;DR at a point of pre-training: the mean gold utility
    and coverage of its samples (T = 1) on fixed posts of the ID and OOD kinds (not the run's test
    sets), and the share on which it beats the post's reference (ties one half)."""

    def __init__(self, cfg: Config, n_per_split: int, max_new_tokens: int):
        self.world = data.make_world(cfg)
        probe_cfg = replace(cfg, seed=cfg.pretrain.seed + 2_000_003)
        self.examples = {s: data.world_split(self.world, probe_cfg, s, "probe", n_per_split) for s in data.SPLITS}
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = cfg.model.max_length - max_new_tokens

    def __call__(self, model, tokenizer) -> dict[str, float]:
        out = {}
        for split, examples in self.examples.items():
            texts = generate(model, tokenizer, [data.format_prompt(e) for e in examples],
                             max_new_tokens=self.max_new_tokens, batch_size=64, seed=1,
                             max_prompt_tokens=self.max_prompt_tokens, desc=f"probe {split}").first()
            utilities = [self.world.utility(t, e) for t, e in zip(texts, examples)]
            out[f"{split}_utility"] = float(np.mean([u.total for u in utilities]))
            out[f"{split}_coverage"] = float(np.mean([u.coverage for u in utilities]))
            out[f"{split}_win_rate"] = float(np.mean([self.world.judge(t, e.reference, e)
                                                      for t, e in zip(texts, examples)]))
        return out


def pretrain(model, train_rows: torch.Tensor, val_rows: torch.Tensor, *, pad_token_id: int, epochs: float,
             lr: float, batch_size: int, warmup_steps: int, seed: int, eval_every: int = 50,
             probe=None, probe_every: int = 0, tokenizer=None, checkpoint: Path | None = None,
             checkpoint_every: int = 0, run_id: str = "") -> pd.DataFrame:
    """Next-token pre-training with AdamW and a cosine schedule on rows from :func:`pack`;
    returns the loss curve (step, tokens, train_loss, seconds; val_perplexity and the
    ``probe``'s measures where evaluated).

    With ``checkpoint``, the state (weights, optimiser, schedule, step, curve) is saved every
    ``checkpoint_every`` steps and a run with the same ``run_id`` resumes from it: the order of
    rows depends only on ``seed``, so a resumed run continues as if it had not stopped."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, int(epochs * len(train_rows) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, min(warmup_steps, steps // 10 + 1), steps)
    order = torch.cat([torch.randperm(len(train_rows), generator=gen) for _ in range(math.ceil(epochs) + 1)])
    log, first, tokens, elapsed = [], 0, 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["run_id"] == run_id:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            log, first, tokens, elapsed = state["log"], state["step"], state["tokens"], state["seconds"]
            print(f"Resuming pre-training from step {first} of {steps} ({checkpoint}).")
    start = time.perf_counter() - elapsed
    bar = tqdm(range(first, steps), desc="pre-training", initial=first, total=steps, leave=False)
    for step in bar:
        model.train()
        x = train_rows[order[step * batch_size:(step + 1) * batch_size]].to(device)
        loss = model(input_ids=x, labels=lm_labels(x, pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int((x != pad_token_id).sum())
        row = {"step": step + 1, "tokens": tokens, "train_loss": loss.item(), "seconds": time.perf_counter() - start}
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            row["val_perplexity"] = perplexity(model, val_rows, pad_token_id)
        if probe is not None and probe_every and ((step + 1) % probe_every == 0 or step + 1 == steps):
            row.update(probe(model, tokenizer))
        log.append(row)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            torch.save({"run_id": run_id, "step": step + 1, "tokens": tokens, "seconds": row["seconds"],
                        "log": log, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict()}, tmp)
            tmp.replace(checkpoint)
    return pd.DataFrame(log)


def pretrain_base(cfg: Config, out_dir: Path, probe_every: int | None = None) -> Path:
    """Pre-train the tiny base model of ``cfg``'s recipe into ``out_dir``: the corpus (drawn with
    ``pretrain.seed``), a byte-level BPE tokenizer trained on it, the Llama, and beside the
    weights the loss curve (``pretrain_log.csv``) and the manifest (``pretrain_manifest.json``:
    the recipe, its hash, parameters, tokens, wall time, held-out perplexity, versions).
    Deterministic under ``pretrain.seed`` on a given machine and thread count. An interrupted run
    resumes from ``<out_dir>.checkpoint.pt``."""
    out_dir = Path(out_dir)
    m, p = cfg.model, cfg.pretrain
    start = time.perf_counter()
    torch.manual_seed(p.seed)
    docs = corpus(cfg)
    tok = train_tokenizer(docs, m.vocab_size, whole_words=cased_openers() if p.cased_openers else ())
    model = tiny_llama(tok, m.hidden_size, m.n_layers, m.n_heads, m.intermediate_size, m.max_length)
    model.to(pick_device(m.device))
    rows = pack(tok, docs, p.seq_len)
    n_val = max(1, min(p.val_rows, len(rows) // 20))
    every = p.probe_every if probe_every is None else probe_every
    probe = SummaryProbe(cfg, p.probe_inputs, 48) if every else None
    checkpoint = out_dir.with_name(out_dir.name + ".checkpoint.pt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    log = pretrain(model, rows[n_val:], rows[:n_val], pad_token_id=tok.pad_token_id, epochs=p.epochs, lr=p.lr,
                   batch_size=p.batch_size, warmup_steps=p.warmup_steps, seed=p.seed, eval_every=p.eval_every,
                   probe=probe,
                   probe_every=every, tokenizer=tok, checkpoint=checkpoint,
                   checkpoint_every=p.checkpoint_every, run_id=recipe_hash(cfg))
    save_pretrained_atomic(model, tok, out_dir)
    runs.write_csv(out_dir / LOG, log)
    final = log.dropna(subset=["val_perplexity"]).iloc[-1]
    runs.write_json(out_dir / MANIFEST, {
        "recipe": recipe(cfg), "recipe_hash": recipe_hash(cfg),
        "parameters": sum(q.numel() for q in model.parameters()), "documents": len(docs),
        "steps": int(log["step"].iloc[-1]), "tokens": int(log["tokens"].iloc[-1]),
        "val_perplexity": float(final["val_perplexity"]), "wall_time_s": round(time.perf_counter() - start, 1),
        "device": runs.device_name(), "threads": torch.get_num_threads(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": runs.package_versions(),
        "command": f"gendiv pretrain --profile {cfg.profile}"})
    checkpoint.unlink(missing_ok=True)
    return out_dir


# ------------------------------------------------------------------ shipped checkpoints
def shipped_dir(name: str) -> Path:
    """Where the package keeps the shipped base model ``name``."""
    return Path(str(resources.files("gendiv").joinpath("pretrained", name)))


def check_shipped(cfg: Config, folder: Path) -> dict:
    """The manifest of the shipped base in ``folder``, after checking that it was made by this
    profile's recipe for this world; else a ConfigError naming what differs and the fix."""
    path = folder / MANIFEST
    if not path.exists():
        raise ConfigError(f"The shipped base model {cfg.model.base!r} is missing ({path}). Reinstall gendiv, "
                          f"or make it with `gendiv pretrain --profile {cfg.profile}`.")
    manifest = json.loads(path.read_text())
    mine, theirs = recipe(cfg), manifest["recipe"]
    # a key absent on one side has its value of before it existed (0: OPTIONAL_CORPUS_KEYS)
    diffs = [f"{section}.{key}: profile {mine[section].get(key, 0)!r}, shipped {theirs.get(section, {}).get(key, 0)!r}"
             for section in ("model", "data", "pretrain")
             for key in dict.fromkeys([*mine[section], *theirs.get(section, {})])
             if theirs.get(section, {}).get(key, 0) != mine[section].get(key, 0)]
    for key, what in (("world", "world's"), ("instruction_world", "instruction world's")):
        if mine.get(key) != theirs.get(key) and mine.get(key) and theirs.get(key):
            diffs.append(f"the {what} text generator changed (fingerprint {mine[key]}, the shipped base was "
                         f"trained on {theirs[key]})")
    if diffs:
        raise ConfigError(
            f"The shipped base model {cfg.model.base!r} does not match profile {cfg.profile!r}: "
            + "; ".join(diffs) + f". Remake it with `gendiv pretrain --profile {cfg.profile}` (about "
            f"{manifest.get('wall_time_s', 0) / 60:.0f} min here), or set model.base: scratch to pre-train "
            "inside the run.")
    return manifest


# ------------------------------------------------------------------ the stage
def build_base(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``base`` (notebook 02). For a shipped base (``model.base: tiny``): check it against
    the profile and measure its held-out perplexity on documents it never saw; for
    ``model.base: scratch``: pre-train it in the run (``models/base``); for SmolLM2 or a hub
    model: record where the checkpoint lives. Writes ``logs/base.json`` (path, provenance,
    perplexity) and, for a tiny base, its loss curve ``logs/pretrain.csv``."""
    def body(root: Path) -> dict[str, Path]:
        m = cfg.model
        if m.base == SCRATCH:
            folder = pretrain_base(cfg, root / "models" / "base")
        elif m.base in SHIPPED:
            folder = shipped_dir(m.base)
            check_shipped(cfg, folder)
        else:
            path = resolve_base(m.base)
            return {"base_ref": runs.write_json(root / "logs" / "base.json", {"path": str(path)})}
        manifest = json.loads((folder / MANIFEST).read_text())
        tok = load_tokenizer(folder)
        model = load_causal_lm(folder, pick_device(m.device))
        held = pack(tok, heldout_documents(cfg, cfg.pretrain.heldout_documents), cfg.pretrain.seq_len)
        info = {"path": str(folder), "shipped": m.base in SHIPPED, "manifest": manifest,
                "heldout_perplexity": perplexity(model, held, tok.pad_token_id),
                "heldout_documents": cfg.pretrain.heldout_documents}
        return {"base_ref": runs.write_json(root / "logs" / "base.json", info),
                "pretrain_log": runs.write_csv(root / "logs" / "pretrain.csv", pd.read_csv(folder / LOG))}

    return runs.run_stage(cfg, "base", body, force=force)
