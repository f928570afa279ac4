"""Policy outputs on the test splits, with the world's gold utility and the RM's proxy score.

Every method is evaluated on the same inputs: the first ``sampling.n_eval_inputs`` test examples
of each split, in the split's fixed order (the paper evaluates on the first 500 of each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gendiv import data, runs, stats
from gendiv.config import Config
from gendiv.models import load_causal_lm, load_tokenizer, pick_device

GOLD_UTILITY_COLUMNS = ["method", "split", "mean_utility", "ci_low", "ci_high", "n"]


def test_records(cfg: Config, n_inputs: int | None = None) -> dict[str, list[dict]]:
    """{split: the first ``n_inputs`` (default sampling.n_eval_inputs) test records}."""
    n = cfg.sampling.n_eval_inputs if n_inputs is None else n_inputs
    return {s: data.load_split(cfg, s, "test")[:n] for s in data.available_splits(cfg)}


def gold_utilities(world, records: list[dict], outputs: list[str]) -> list[float]:
    """The world's gold utility of each output for its record's post."""
    return [world.utility(o, data.Example.from_dict(r)).total for r, o in zip(records, outputs)]


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
    from gendiv.sft import sample_policy

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


def expected_utilities(rows: list[dict]) -> list[float]:
    """Each sampled row's estimate of the policy's gold utility on its input: ``mean_utility``
    over ``sampling.utility_samples`` samples, or the one sample's ``utility`` in runs written
    before that field existed."""
    return [r.get("mean_utility", r["utility"]) for r in rows]


def gold_utility_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=GOLD_UTILITY_COLUMNS)


# ------------------------------------------------------------------ does the model read the post?
CONTEXT_RELIANCE_COLUMNS = ["method", "split", "nll_own", "nll_other", "gain", "ci_low", "ci_high", "n"]


@torch.no_grad()
def completion_nll(model, tokenizer, prompts: list[str], completions: list[str], max_prompt_tokens: int,
                   batch_size: int = 32) -> np.ndarray:
    """Mean negative log-likelihood per token (nats) of each completion, written as SFT trains on
    it (a space, the text, EOS), given its prompt cut to its last ``max_prompt_tokens`` tokens.
    The rows are laid out as PPO scores its episodes: left-padded prompt, then the completion."""
    from gendiv.ppo import gather_logprobs, response_outputs

    if len(prompts) != len(completions):
        raise ValueError(f"completion_nll got {len(prompts)} prompts and {len(completions)} completions.")
    targets = [data.sft_target(c, tokenizer.eos_token) for c in completions]
    device = next(model.parameters()).device
    tokenizer.truncation_side = "left"
    out = []
    for i in range(0, len(prompts), batch_size):
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_prompt_tokens, add_special_tokens=False).to(device)
        tokenizer.padding_side = "right"
        comp = tokenizer(targets[i:i + batch_size], return_tensors="pt", padding=True,
                         add_special_tokens=False).to(device)
        response, mask = comp["input_ids"], comp["attention_mask"].float()
        logits, _ = response_outputs(model, torch.cat([enc["input_ids"], response], dim=1),
                                     torch.cat([enc["attention_mask"], comp["attention_mask"]], dim=1),
                                     response.shape[1])
        out.append((-(gather_logprobs(logits, response) * mask).sum(1) / mask.sum(1)).cpu())
    tokenizer.padding_side = "left"
    return torch.cat(out).numpy() if out else np.zeros(0)


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


# ------------------------------------------------------------------ Best-of-N (notebook 05)
BON_SECTIONS = ("world", "data", "model", "pretrain", "sft", "reward", "sampling", "bon")
BON_SCALING_COLUMNS = ["split", "n", "measure", "value", "ci_low", "ci_high", "n_inputs", "tokens_per_output"]


def score_candidates(cfg: Config, rm, records: list[dict], texts: list[list[str]]) -> np.ndarray:
    """Normalised RM scores of ``texts[i][j]`` for ``records[i]``, as an (inputs x candidates) array."""
    prompts = [r["prompt"] for r, row in zip(records, texts) for _ in row]
    flat = [t for row in texts for t in row]
    return np.asarray(rm.score(prompts, flat, batch_size=cfg.sampling.batch_size)).reshape(len(texts), -1)


def build_best_of_n(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``bon`` (notebook 05): ``bon.n`` SFT samples per test input, scored by the normalised
    RM (and the gold utility); Best-of-N keeps the highest-scoring one. Writes every candidate
    (``samples/sft_candidates_{split}.jsonl``, reused by the diversity chapter), the kept outputs
    (``samples/bon_{split}.jsonl``) and how the kept output improves with N
    (``results/bon_scaling.csv``, N = 1, 2, 4, ... taking the first N candidates)."""
    from gendiv.reward import load_reward_model
    from gendiv.sampling import best_of_n, n_grid
    from gendiv.sft import sample_policy, sft_path

    def body(root: Path) -> dict[str, Path]:
        world = data.make_world(cfg) if cfg.data.source == "world" else None
        model, tok = load_causal_lm(sft_path(cfg), pick_device(cfg.model.device)), load_tokenizer(sft_path(cfg))
        rm = load_reward_model(cfg)
        paths, scaling = {}, []
        for split, records in test_records(cfg).items():
            samples = sample_policy(cfg, model, tok, records, cfg.seed + 101, f"{cfg.bon.n} SFT samples on {split}",
                                    n_samples=cfg.bon.n, temperature=cfg.bon.temperature)
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

    return runs.run_stage(cfg, "bon", BON_SECTIONS, body, force=force)


# ------------------------------------------------------------------ evaluation (notebook 06)
METHODS = ("base", "sft", "bon", "ppo")
WINRATE_COLUMNS = ["method", "split", "opponent", "judge", "win_rate", "ci_low", "ci_high", "n"]
GAP_COLUMNS = ["method", "split", "judge", "gap", "ci_low", "ci_high"]
SCORE_COLUMNS = ["method", "split", "measure", "value", "ci_low", "ci_high", "n"]
EVALUATION_SECTIONS = BON_SECTIONS + ("ppo", "judge")


def method_outputs(cfg: Config) -> dict[str, dict[str, list[dict]]]:
    """{method: {split: rows}} of one output per test input for base, SFT (chapter 2), BoN
    (chapter 5) and PPO (chapter 4): the same inputs in the same order for every method."""
    sources = {"base": ("sft_eval", "base"), "sft": ("sft_eval", "sft"), "bon": ("bon", "bon"),
               "ppo": ("ppo_eval", "ppo")}
    splits = data.available_splits(cfg)
    return {method: {s: runs.read_jsonl(runs.artifact(cfg, stage, f"{prefix}_{s}")) for s in splits}
            for method, (stage, prefix) in sources.items()}


def build_evaluation(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``evaluation`` (notebook 06): win rates against the reference and against SFT for
    every method and split, by the world's gold judge (and the LLM judge when configured);
    generalisation gaps ID minus each OOD split; proxy RM scores beside gold utilities.
    Writes ``results/winrates.csv``, ``results/gaps.csv``, ``results/scores.csv`` and the
    per-input verdicts (``logs/verdicts.csv``, which the claims scorecard pairs across methods)."""
    from gendiv import judges
    from gendiv.reward import load_reward_model

    def body(root: Path) -> dict[str, Path]:
        outputs = method_outputs(cfg)
        tests = test_records(cfg)
        judge_list = []
        if cfg.data.source == "world":
            judge_list.append((judges.WorldJudge(data.make_world(cfg)), None))
        llm = judges.make_llm_judge(cfg.judge, root / "cache" / "judge")
        if llm is not None:
            judge_list.append((llm, cfg.judge.n_inputs))
        verdict_rows = []
        for judge, limit in judge_list:
            for method, by_split in outputs.items():
                for split, rows in by_split.items():
                    rows, records = rows[:limit], tests[split][:limit]
                    mine = [r["output"] for r in rows]
                    opponents = {"reference": [r["reference"] for r in records]}
                    if method != "sft":
                        opponents["sft"] = [r["output"] for r in outputs["sft"][split][:limit]]
                    for opponent, theirs in opponents.items():
                        v = judges.verdicts(judge, records, mine, theirs)
                        verdict_rows += [{"method": method, "split": split, "opponent": opponent, "judge": judge.name,
                                          "uid": r["uid"], "verdict": x} for r, x in zip(records, v)]
        verdicts = pd.DataFrame(verdict_rows, columns=["method", "split", "opponent", "judge", "uid", "verdict"])
        winrates = []
        for (method, split, opponent, judge), g in verdicts.groupby(["method", "split", "opponent", "judge"],
                                                                      sort=False):
            mean, lo, hi = stats.bootstrap_ci(g["verdict"], seed=cfg.seed)
            winrates.append({"method": method, "split": split, "opponent": opponent, "judge": judge,
                             "win_rate": mean, "ci_low": lo, "ci_high": hi, "n": len(g)})
        gaps = []
        vs_ref = verdicts[verdicts["opponent"] == "reference"]
        for (method, judge), g in vs_ref.groupby(["method", "judge"], sort=False):
            ident = g[g["split"] == "id"]["verdict"].to_numpy()
            for split in [s for s in data.available_splits(cfg) if s != "id"]:
                gap, lo, hi = stats.difference_ci(ident, g[g["split"] == split]["verdict"].to_numpy(), seed=cfg.seed)
                gaps.append({"method": method, "split": split, "judge": judge, "gap": gap, "ci_low": lo, "ci_high": hi})
        rm = load_reward_model(cfg)
        scores = []
        for method, by_split in outputs.items():
            for split, rows in by_split.items():
                proxy = [r["rm_score"] for r in rows] if "rm_score" in rows[0] else \
                    rm.score([r["prompt"] for r in rows], [r["output"] for r in rows], cfg.sampling.batch_size)
                measures = {"rm_score": proxy}
                if "utility" in rows[0]:
                    measures["gold_utility"] = [r["utility"] for r in rows]
                for measure, values in measures.items():
                    mean, lo, hi = stats.bootstrap_ci(values, seed=cfg.seed)
                    scores.append({"method": method, "split": split, "measure": measure, "value": mean,
                                   "ci_low": lo, "ci_high": hi, "n": len(values)})
        res = runs.results_dir(cfg)
        return {"winrates": runs.write_csv(res / "winrates.csv", pd.DataFrame(winrates, columns=WINRATE_COLUMNS)),
                "gaps": runs.write_csv(res / "gaps.csv", pd.DataFrame(gaps, columns=GAP_COLUMNS)),
                "scores": runs.write_csv(res / "scores.csv", pd.DataFrame(scores, columns=SCORE_COLUMNS)),
                "verdicts": runs.write_csv(root / "logs" / "verdicts.csv", verdicts)}

    return runs.run_stage(cfg, "evaluation", EVALUATION_SECTIONS, body, force=force, ignore=("ppo.kl_grid",))
