"""Policy outputs on the test splits, scored by the world's gold utility, and a probe of how much
a model reads its input. Chapters 2 and 4 sample their policies here; chapters 6 and 8 score
outputs with the same functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gendiv import data, runs, stats
from gendiv.config import Config
from gendiv.lm import completion_nll, sample_policy
from gendiv.models import load_causal_lm, load_tokenizer, pick_device
from gendiv.world import words

GOLD_UTILITY_COLUMNS = ["method", "split", "mean_utility", "ci_low", "ci_high", "n"]


def gold_utilities(world, records: list[dict], outputs: list[str]) -> list[float]:
    """The world's gold utility of each output for its record's post."""
    return [world.utility(o, data.example_from(r)).total for r, o in zip(records, outputs)]


def utility_row(method: str, split: str, utilities: list[float], seed: int) -> dict:
    """One row of ``GOLD_UTILITY_COLUMNS``: the mean with a bootstrap interval over inputs."""
    mean, lo, hi = stats.bootstrap_ci(utilities, seed=seed)
    return {"method": method, "split": split, "mean_utility": mean, "ci_low": lo, "ci_high": hi,
            "n": len(utilities)}


def sample_outputs(cfg: Config, model_path: Path, method: str, tests: dict[str, list[dict]], out_dir: Path,
                   world=None, seed: int | None = None) -> tuple[dict[str, Path], list[dict]]:
    """One sample of the model at ``model_path`` per test record and split, written to
    ``out_dir/{method}_{split}.jsonl``. With the ``world``, each row also holds the gold utility of
    that sample (``utility``) and ``mean_utility``, the mean over ``sampling.utility_samples``
    samples of the input (the first of them is the written one); the returned gold-utility rows
    average ``mean_utility`` over inputs. Returns the paths and those rows."""
    seed = cfg.seed if seed is None else seed
    k = cfg.sampling.utility_samples if world is not None else 1
    model, tok = load_causal_lm(model_path, pick_device(cfg.model.device)), load_tokenizer(model_path)
    paths, rows = {}, []
    for split, records in tests.items():
        samples = sample_policy(cfg, model, tok, records, seed, f"{method} on {split}", n_samples=k).texts
        out = [{"uid": r["uid"], "prompt": r["prompt"], "reference": r["reference"], "output": t[0]}
               for r, t in zip(records, samples)]
        if world is not None:
            references = gold_utilities(world, records, [r["reference"] for r in records])
            for row, record, texts, ru in zip(out, records, samples, references):
                utilities = gold_utilities(world, [record] * len(texts), texts)
                row.update(utility=utilities[0], mean_utility=float(np.mean(utilities)),
                           utility_samples=len(texts), reference_utility=ru)
            rows.append(utility_row(method, split, expected_utilities(out), cfg.seed))
        paths[f"{method}_{split}"] = runs.write_jsonl(out_dir / f"{method}_{split}.jsonl", out)
    return paths, rows


def sample_k(cfg: Config, model_path: Path, method: str, tests: dict[str, list[dict]], seed: int,
             out_dir: Path) -> dict[str, Path]:
    """``diversity.k`` samples of the model at ``model_path`` per test record and split, for
    per-input diversity (chapter 7; the KL sweep's PPO run at the profile's coefficient, chapter 8),
    written to ``out_dir/{method}_k{K}_{split}.jsonl`` as rows of ``uid``, ``prompt`` and
    ``outputs``. Returns the paths by ``{method}_k_{split}``."""
    k = cfg.diversity.k
    model, tok = load_causal_lm(model_path, pick_device(cfg.model.device)), load_tokenizer(model_path)
    paths = {}
    for split, records in tests.items():
        texts = sample_policy(cfg, model, tok, records, seed, f"{method}: {k} samples on {split}", n_samples=k).texts
        paths[f"{method}_k_{split}"] = write_k_samples(out_dir, method, split, records, texts)
    return paths


def write_k_samples(out_dir: Path, method: str, split: str, records: list[dict], texts: list[list[str]]) -> Path:
    """Write each record's samples (the same number each) as rows of ``uid``, ``prompt`` and
    ``outputs`` to ``out_dir/{method}_k{K}_{split}.jsonl``, the form :func:`sample_k` writes."""
    return runs.write_jsonl(out_dir / f"{method}_k{len(texts[0]) if texts else 0}_{split}.jsonl", [
        {"uid": r["uid"], "prompt": r["prompt"], "outputs": t} for r, t in zip(records, texts)])


def expected_utilities(rows: list[dict]) -> list[float]:
    """Each sampled row's estimate of the policy's gold utility on its input: ``mean_utility``
    over ``sampling.utility_samples`` samples, or the one sample's ``utility`` in runs written
    before that field existed."""
    return [r.get("mean_utility", r["utility"]) for r in rows]


def gold_utility_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=GOLD_UTILITY_COLUMNS)


# ------------------------------------------------------------------ where the gold utility comes from
OUTPUT_PARTS = {"coverage": "salient facts stated (coverage)",
                "hallucinated": "invented facts (not in the input)",
                "n_words": "words",
                "opens_broken": "opens with a broken word (share)",
                "any_broken": "has a broken word (share)"}
"""What :func:`output_parts` measures per output (column: how the book names it). A broken word is
one the world's language never uses (:meth:`gendiv.world.Judged.foreign_words`): a word a model
garbled across sub-word pieces."""
OUTPUT_PARTS_COLUMNS = ["method", "split", "part", "mean", "ci_low", "ci_high", "n"]


def output_parts(world, method: str, split: str, records: list[dict], texts: list[str], seed: int) -> list[dict]:
    """Where one model's gold utility on a split comes from: the mean of each of
    :data:`OUTPUT_PARTS` over its outputs (one per record, for the record's post), with a
    bootstrap interval over inputs; rows of ``OUTPUT_PARTS_COLUMNS``. Coverage, invented facts and
    length are the utility's own terms; the broken-word shares say how often a model fails to
    spell what it copies."""
    if len(records) != len(texts):
        raise ValueError(f"{len(records)} records but {len(texts)} outputs for {method} on {split}; "
                         "pass one output per record.")
    per_part: dict[str, list[float]] = {part: [] for part in OUTPUT_PARTS}
    for record, text in zip(records, texts):
        u = world.utility(text, data.example_from(record))
        foreign = set(world.foreign_words(text))
        first = words(text)[:1]
        per_part["coverage"].append(float(u.coverage))
        per_part["hallucinated"].append(float(u.hallucinated))
        per_part["n_words"].append(float(u.n_words))
        per_part["opens_broken"].append(float(bool(first) and first[0] in foreign))
        per_part["any_broken"].append(float(bool(foreign)))
    rows = []
    for part, values in per_part.items():
        mean, lo, hi = stats.bootstrap_ci(values, seed=seed)
        rows.append({"method": method, "split": split, "part": part, "mean": mean, "ci_low": lo, "ci_high": hi,
                     "n": len(values)})
    return rows


# ------------------------------------------------------------------ does the model read the post?
CONTEXT_RELIANCE_COLUMNS = ["method", "split", "nll_own", "nll_other", "gain", "ci_low", "ci_high", "n"]


def other_input(records: list[dict], seed: int) -> list[int]:
    """For each record, the index of another record of the same ``domain`` (any other record
    when it has none), drawn with ``seed``: the post changes, the subreddit and the task stay."""
    if len(records) < 2:
        raise ValueError(f"The context probe needs at least 2 inputs per split, got {len(records)}.")
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_domain.setdefault(r.get("domain", ""), []).append(i)
    out = []
    for i, r in enumerate(records):
        pool = [j for j in by_domain[r.get("domain", "")] if j != i] or [j for j in range(len(records)) if j != i]
        out.append(int(pool[rng.integers(len(pool))]))
    return out


def context_reliance(model, tokenizer, method: str, tests: dict[str, list[dict]], max_prompt_tokens: int,
                     seed: int) -> list[dict]:
    """How much a model reads the post: the NLL of each reference given its own prompt and given
    the prompt of another input of the same domain (:func:`other_input`). ``gain`` = other - own,
    in nats per token, with a bootstrap interval over inputs: 0 for a model that ignores the
    post, positive for one that copies from it. Rows of ``CONTEXT_RELIANCE_COLUMNS``."""
    rows = []
    for split, records in tests.items():
        refs = [r["reference"] for r in records]
        own = completion_nll(model, tokenizer, [r["prompt"] for r in records], refs, max_prompt_tokens)
        swap = other_input(records, seed)
        other = completion_nll(model, tokenizer, [records[j]["prompt"] for j in swap], refs, max_prompt_tokens)
        gain, lo, hi = stats.bootstrap_ci(list(other - own), seed=seed)
        rows.append({"method": method, "split": split, "nll_own": float(own.mean()),
                     "nll_other": float(other.mean()), "gain": gain, "ci_low": lo, "ci_high": hi,
                     "n": len(records)})
    return rows
