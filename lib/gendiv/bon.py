"""Best-of-N (notebook 05; paper Sec. 4): N samples of the SFT policy per input, the normalised
RM keeps the highest-scoring one, at N times the sampling cost of one output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gendiv import artifacts, data, runs, stages, stats
from gendiv.config import Config
from gendiv.lm import sample_policy
from gendiv.models import load_causal_lm, load_tokenizer, pick_device
from gendiv.outputs import gold_utilities


def best_of_n(scores) -> np.ndarray:
    """Index of the best candidate per row of ``scores`` (inputs x candidates): Best-of-N keeps
    the candidate with the highest normalised RM score (the first one on a tie)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"best_of_n needs an (inputs x candidates) array, got shape {scores.shape}.")
    return np.argmax(scores, axis=1)


def n_grid(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n`` (and ``n`` itself): the N of the Best-of-N scaling curve."""
    out = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return out if out[-1] == n else out + [n]


BON_SCALING_COLUMNS = ["split", "n", "measure", "value", "ci_low", "ci_high", "n_inputs", "tokens_per_output"]


def score_candidates(cfg: Config, rm, records: list[dict], texts: list[list[str]]) -> np.ndarray:
    """Normalised RM scores of ``texts[i][j]`` for ``records[i]``, as an (inputs x candidates) array."""
    prompts = [r["prompt"] for r, row in zip(records, texts) for _ in row]
    flat = [t for row in texts for t in row]
    return np.asarray(rm.score(prompts, flat, batch_size=cfg.reward.score_batch_size)).reshape(len(texts), -1)


def build_best_of_n(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``bon`` (notebook 05): ``bon.n`` SFT samples per test input, scored by the normalised
    RM (and the gold utility); Best-of-N keeps the highest-scoring one. Writes every candidate
    (``samples/sft_candidates_{split}.jsonl``, reused by the diversity chapter), the kept outputs
    (``samples/bon_{split}.jsonl``) and how the kept output improves with N
    (``results/bon_scaling.csv``, N = 1, 2, 4, ... taking the first N candidates)."""
    def body(root: Path) -> dict[str, Path]:
        world = data.world_or_none(cfg)
        sft = artifacts.sft_path(cfg)
        model, tok = load_causal_lm(sft, pick_device(cfg.model.device)), load_tokenizer(sft)
        rm = artifacts.load_reward_model(cfg)
        paths, scaling = {}, []
        for split, records in artifacts.test_records(cfg).items():
            samples = sample_policy(cfg, model, tok, records, stages.seed(cfg, "bon"),
                                    f"{cfg.bon.n} SFT samples on {split}", n_samples=cfg.bon.n,
                                    temperature=cfg.bon.temperature)
            scores = score_candidates(cfg, rm, records, samples.texts)
            utilities = np.array([gold_utilities(world, [r] * len(c), c) for r, c in zip(records, samples.texts)]) \
                if world is not None else np.full(scores.shape, np.nan)
            tokens = np.asarray(samples.n_tokens, dtype=float)
            candidates, kept = [], []
            best = best_of_n(scores)
            for i, r in enumerate(records):
                base = {"uid": r["uid"], "prompt": r["prompt"], "reference": r["reference"]}
                if world is not None:
                    base["reference_utility"] = gold_utilities(world, [r], [r["reference"]])[0]
                candidates.append({**base, "outputs": samples.texts[i], "rm_scores": scores[i].tolist(),
                                   "utilities": utilities[i].tolist(), "n_tokens": samples.n_tokens[i]})
                j = int(best[i])
                kept.append({**base, "output": samples.texts[i][j], "rm_score": float(scores[i, j]),
                             "utility": float(utilities[i, j]), "candidates": cfg.bon.n,
                             "generated_tokens": int(tokens[i].sum())})
            for n in n_grid(cfg.bon.n):
                pick = best_of_n(scores[:, :n])
                rows = np.arange(len(records))
                for measure, values in (("rm_score", scores[rows, pick]), ("gold_utility", utilities[rows, pick])):
                    mean, lo, hi = stats.bootstrap_ci(values, seed=cfg.seed)
                    scaling.append({"split": split, "n": n, "measure": measure, "value": mean, "ci_low": lo,
                                    "ci_high": hi, "n_inputs": len(records),
                                    "tokens_per_output": float(tokens[:, :n].sum(1).mean())})
            paths[f"sft_candidates_{split}"] = runs.write_jsonl(root / "samples" / f"sft_candidates_{split}.jsonl",
                                                                candidates)
            paths[f"bon_{split}"] = runs.write_jsonl(root / "samples" / f"bon_{split}.jsonl", kept)
        paths["bon_scaling"] = runs.write_csv(runs.results_dir(cfg) / "bon_scaling.csv",
                                              pd.DataFrame(scaling, columns=BON_SCALING_COLUMNS))
        return paths

    return runs.run_stage(cfg, "bon", body, force=force)
