"""Output diversity (paper Sec. 6, Figs. 5-6): EAD, Sentence-BERT, NLI and the world's oracle.

Each metric is a function of a list of texts (higher = more diverse). Per-input diversity is the
metric over K samples for one input, averaged over inputs; across-input diversity is the metric
over one output per input (paper, Sec. 6.1).

Two defects of the paper's public code are deliberately not copied (see the book's protocol page): its NLI step
compares single characters instead of whole outputs, and its aggregation reports 1 - mean score,
which counts entailment as diversity. Here NLI compares whole outputs and reports the plain mean
pair score, which is what the paper's reported values fit.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from gendiv import artifacts, data, outputs, runs, stages, stats
from gendiv.bon import best_of_n, score_candidates
from gendiv.config import Config
from gendiv.embeddings import sentence_model
from gendiv.lm import sample_policy
from gendiv.models import load_causal_lm, load_tokenizer, pick_device
from gendiv.outputs import gold_utilities

EFFECTIVE = ("sbert_effective", "oracle_effective")
"""The quality-thresholded ("effective") metrics: Sentence-BERT and the oracle among good outputs."""
METRICS = ("ead", "sbert", "nli", "oracle", *EFFECTIVE)


def effective_pairwise(distances: np.ndarray, quality: np.ndarray, threshold: float,
                       idx: np.ndarray | None = None) -> float:
    """Effective diversity (Shypula et al. 2025, "Evaluating the diversity and quality of LLM
    generated content"): the mean over pairs of the pair's distance if both outputs' quality
    reaches ``threshold``, else 0. All outputs good: the plain mean distance; none: 0."""
    good = (np.asarray(quality) >= threshold).astype(float)
    return mean_pairwise(distances * np.outer(good, good), idx)
SENSITIVITY_COLUMNS = ["method", "split", "metric", "threshold", "value", "ci_low", "ci_high", "good_share"]
DIVERSITY_COLUMNS = ["method", "split", "scope", "metric", "value", "ci_low", "ci_high", "n_inputs", "k", "note"]
METHODS = ("base", "sft", "bon", "ppo", "all")
"""The methods chapter 7 measures ('all': a metric's row when it is unavailable for every method)."""
DIFFERENCE_COLUMNS = ["method", "split", "scope", "metric", "difference", "ci_low", "ci_high"]
PER_INPUT_COLUMNS = ["method", "split", "uid", "metric", "value"]


# ------------------------------------------------------------------ EAD
def ead_tokens(text: str) -> list[str]:
    """The paper's tokenisation for EAD: remove "." and newlines, split on whitespace."""
    return text.replace(".", "").replace("\n", " ").split()


def ngram_counts(texts: list[str], n: int) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        toks = ead_tokens(text)
        counts.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    return counts


def ead_n(texts: list[str], n: int, vocab_size: int = 50257) -> float:
    """Expectation-adjusted distinct n-grams (Liu et al. 2022, "Rethinking and refining the
    distinct metric", eq. 3): N / (V * (1 - ((V - 1) / V) ** C)) with N distinct n-grams out of C
    in all, pooled over ``texts``; the denominator is the expected number of distinct n-grams in
    C uniform draws from V. NaN when the texts hold no n-gram of this order."""
    counts = ngram_counts(texts, n)
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    expected = vocab_size * (1.0 - ((vocab_size - 1) / vocab_size) ** total)
    return len(counts) / expected


def ead(texts: list[str], vocab_size: int = 50257, max_n: int = 5) -> tuple[float, dict[int, float]]:
    """(mean over n = 1..max_n of EAD_n, {n: EAD_n}); orders with no n-gram are left out of the mean."""
    per_n = {n: ead_n(texts, n, vocab_size) for n in range(1, max_n + 1)}
    values = [v for v in per_n.values() if not np.isnan(v)]
    return (float(np.mean(values)) if values else float("nan")), per_n


# ------------------------------------------------------------------ Sentence-BERT
def embed(texts: list[str], model_name: str) -> np.ndarray:
    """Unit-norm sentence embeddings (sentence-transformers), each distinct text embedded once."""
    unique = list(dict.fromkeys(texts))
    vectors = sentence_model(model_name).encode(unique, batch_size=128, normalize_embeddings=True,
                                                convert_to_numpy=True, show_progress_bar=False)
    index = {t: i for i, t in enumerate(unique)}
    return vectors[[index[t] for t in texts]] if texts else np.zeros((0, 1))


def mean_pairwise(matrix: np.ndarray, idx: np.ndarray | None = None) -> float:
    """Mean of ``matrix[i, j]`` over unordered pairs i < j of ``idx`` (default: all rows), leaving
    out pairs that are the same item drawn twice (so bootstrap resamples do not fake similarity)."""
    idx = np.arange(len(matrix)) if idx is None else np.asarray(idx)
    sub = matrix[np.ix_(idx, idx)]
    iu = np.triu_indices(len(idx), k=1)
    keep = idx[iu[0]] != idx[iu[1]]
    return float(sub[iu][keep].mean()) if keep.any() else float("nan")


def sbert_diversity(embeddings: np.ndarray, idx: np.ndarray | None = None) -> float:
    """1 - mean cosine similarity over unordered pairs (paper: bert-large-nli-stsb-mean-tokens)."""
    return 1.0 - mean_pairwise(embeddings @ embeddings.T, idx)


# ------------------------------------------------------------------ NLI
NLI_SCORES = {"contradiction": 1.0, "neutral": 0.0, "entailment": -1.0}


class NLIScorer:
    """An MNLI-style sequence classifier (paper: roberta-large-mnli); the label order is read from
    the model's own ``id2label``."""

    def __init__(self, model_path: str, device=None, batch_size: int = 32):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
        self.device = device or pick_device()
        self.model.to(self.device)
        self.labels = label_scores(self.model.config.id2label)
        self.batch_size = batch_size

    def __call__(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        """Label probabilities, (pairs x labels) in the model's label order."""
        out = []
        for i in range(0, len(premises), self.batch_size):
            enc = self.tokenizer(premises[i:i + self.batch_size], hypotheses[i:i + self.batch_size],
                                 return_tensors="pt", padding=True, truncation=True).to(self.device)
            with torch.no_grad():
                out.append(torch.softmax(self.model(**enc).logits.float(), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))


def label_scores(id2label: dict) -> np.ndarray:
    """The score of each label index: contradiction +1, neutral 0, entailment -1 (by name)."""
    scores = []
    for i in range(len(id2label)):
        name = str(id2label[i] if i in id2label else id2label[str(i)]).lower()
        match = [v for k, v in NLI_SCORES.items() if name.startswith(k[:7])]
        if not match:
            raise ValueError(f"NLI label {name!r} is not contradiction, neutral or entailment; "
                             "use an MNLI-style classifier.")
        scores.append(match[0])
    return np.array(scores)


def nli_pair_scores(texts: list[str], scorer, scores: np.ndarray) -> np.ndarray:
    """Score of every unordered pair: for each direction, the predicted label's score (+1, 0, -1)
    times its probability; the two directions summed (so each pair lies in [-2, 2]). All ordered
    pairs go to ``scorer`` in one batched call."""
    pairs = list(itertools.combinations(range(len(texts)), 2))
    if not pairs:
        return np.zeros(0)
    premises = [texts[i] for i, j in pairs] + [texts[j] for i, j in pairs]
    hypotheses = [texts[j] for i, j in pairs] + [texts[i] for i, j in pairs]
    probs = scorer(premises, hypotheses)
    top = probs.argmax(1)
    directional = scores[top] * probs[np.arange(len(probs)), top]
    return directional[: len(pairs)] + directional[len(pairs):]


def nli_diversity(texts: list[str], scorer, scores: np.ndarray) -> float:
    """Mean pair score over unordered pairs, in [-2, 2]; higher = more contradiction = more diverse."""
    pair = nli_pair_scores(texts, scorer, scores)
    return float(pair.mean()) if len(pair) else float("nan")


# ------------------------------------------------------------------ oracle
def jaccard_distance(a: frozenset, b: frozenset) -> float:
    """1 - |a & b| / |a | b|; two outputs that assert no fact are identical (distance 0)."""
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


def jaccard_matrix(fact_sets: list[frozenset]) -> np.ndarray:
    n = len(fact_sets)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = jaccard_distance(fact_sets[i], fact_sets[j])
    return out


def oracle_diversity(fact_sets: list[frozenset], idx: np.ndarray | None = None) -> float:
    """Mean pairwise Jaccard distance between the fact sets the outputs assert (world only)."""
    return mean_pairwise(jaccard_matrix(fact_sets), idx)


# ------------------------------------------------------------------ the protocol
class Metrics:
    """The configured metrics over lists of texts, with each text embedded once and the time
    each metric takes recorded (``seconds``)."""

    def __init__(self, cfg: Config, world=None):
        self.cfg, self.world = cfg, world
        self.nli = NLIScorer(cfg.diversity.nli_model) if cfg.diversity.nli_model else None
        self.nli_scores = self.nli.labels if self.nli else None
        self.seconds: Counter = Counter()

    def available(self) -> dict[str, str]:
        """{metric: '' if it can be computed, else the reason it cannot}."""
        world = "" if self.world is not None else "needs the miniature world's fact parser"
        quality = "" if self.world is not None else "needs the world's gold utility of every output"
        return {"ead": "", "sbert": "",
                "nli": "" if self.nli else "no NLI model configured (diversity.nli_model); none ships offline",
                "oracle": world, **dict.fromkeys(EFFECTIVE, quality)}

    def prepare(self, texts: list[str]) -> dict:
        """Per-text features: embeddings and fact sets."""
        return self.prepare_many([texts])[0]

    def prepare_many(self, groups: list[list[str]], records: list[list[dict]] | None = None) -> list[dict]:
        """:meth:`prepare` for many lists of texts, with one embedding call for all of them
        (one call per input costs the encoder's fixed overhead each time). With ``records`` (each
        text's input, group by group) and the world, each text's gold utility too, for the
        effective metrics."""
        t = time.perf_counter()
        emb = embed([x for g in groups for x in g], self.cfg.diversity.sbert_model)
        self.seconds["sbert"] += time.perf_counter() - t
        out, start = [], 0
        for g, texts in enumerate(groups):
            distances = quality = None
            if self.world is not None:
                t = time.perf_counter()
                distances = jaccard_matrix([self.world.fact_set(x) for x in texts])
                self.seconds["oracle"] += time.perf_counter() - t
                if records is not None:
                    t = time.perf_counter()
                    quality = np.array(gold_utilities(self.world, records[g], texts))
                    self.seconds["quality"] += time.perf_counter() - t
            out.append({"texts": texts, "embeddings": emb[start:start + len(texts)], "jaccard": distances,
                        "quality": quality})
            start += len(texts)
        return out

    def compute(self, features: dict, idx: np.ndarray | None = None) -> dict[str, float]:
        """Every available metric over the texts ``idx`` of ``features`` (default: all)."""
        texts = features["texts"]
        idx = np.arange(len(texts)) if idx is None else np.asarray(idx)
        out = {}
        t = time.perf_counter()
        out["ead"] = ead([texts[i] for i in dict.fromkeys(idx.tolist())], self.cfg.diversity.ead_vocab)[0]
        self.seconds["ead"] += time.perf_counter() - t
        t = time.perf_counter()
        out["sbert"] = sbert_diversity(features["embeddings"], idx)
        self.seconds["sbert"] += time.perf_counter() - t
        if self.nli is not None:
            t = time.perf_counter()
            out["nli"] = nli_diversity([texts[i] for i in idx], self.nli, self.nli_scores)
            self.seconds["nli"] += time.perf_counter() - t
        if features["jaccard"] is not None:
            t = time.perf_counter()
            out["oracle"] = mean_pairwise(features["jaccard"], idx)
            self.seconds["oracle"] += time.perf_counter() - t
        if features.get("quality") is not None:
            out.update(self.effective(features, self.cfg.diversity.quality_threshold, idx))
        return out

    def effective(self, features: dict, threshold: float, idx: np.ndarray | None = None) -> dict[str, float]:
        """The effective metrics (:func:`effective_pairwise`) at ``threshold``."""
        emb = features["embeddings"]
        return {"sbert_effective": effective_pairwise(1.0 - emb @ emb.T, features["quality"], threshold, idx),
                "oracle_effective": effective_pairwise(features["jaccard"], features["quality"], threshold, idx)}



def per_input_samples(cfg: Config, root: Path) -> dict[str, dict[str, list[dict]]]:
    """{method: {split: rows with K 'outputs'}} on the first diversity.n_inputs test inputs.

    Base is sampled here (:func:`gendiv.outputs.sample_k`), PPO in chapter 4 (``ppo_eval``, with
    the same seed, diversity's). SFT's K samples are the first K of Best-of-N's candidates (chapter
    5) when they were drawn at the sampling temperature, else sampled here. Each of BoN's ``bon_k``
    outputs is the best of ``bon.n`` SFT samples: the first is chapter 5's own output (the best of
    its candidates, scored there), the others the best of fresh samples (drawn with diversity's
    seed plus Best-of-N's offset). Every group is an independent draw of ``bon.n`` SFT samples.
    Chapter 5's candidates cover the first ``sampling.n_eval_inputs`` inputs; with more diversity
    inputs than that, every group is fresh."""
    dv, k = cfg.diversity, cfg.diversity.k
    tests = artifacts.test_records(cfg, dv.n_inputs)
    seed, samples = stages.seed(cfg, "diversity"), root / "samples"
    covered = dv.n_inputs <= cfg.sampling.n_eval_inputs  # chapter 5's candidates cover these inputs
    chapter5 = {s: runs.read_jsonl(runs.artifact(cfg, "bon", f"sft_candidates_{s}"))[: len(r)]
                for s, r in tests.items()} if covered else {}
    reuse = covered and cfg.bon.temperature == cfg.sampling.temperature and k <= cfg.bon.n
    drawn = outputs.sample_k(cfg, artifacts.base_path(cfg), "base", tests, seed, samples)
    if reuse:
        drawn.update({f"sft_k_{s}": outputs.write_k_samples(samples, "sft", s, rs,
                                                            [c["outputs"][:k] for c in chapter5[s]])
                      for s, rs in tests.items()})
    else:
        drawn.update(outputs.sample_k(cfg, artifacts.sft_path(cfg), "sft", tests, seed, samples))
    drawn.update({f"ppo_k_{s}": runs.artifact(cfg, "ppo_eval", f"ppo_k_{s}") for s in tests})
    n, fresh = cfg.bon.n, dv.bon_k - (1 if covered else 0)
    if fresh:
        sft = artifacts.sft_path(cfg)
        model, tok = load_causal_lm(sft, pick_device(cfg.model.device)), load_tokenizer(sft)
        rm = artifacts.load_reward_model(cfg)
    for split, records in tests.items():
        texts = [list(c["outputs"]) for c in chapter5[split]] if covered else [[] for _ in records]
        scores = [list(c["rm_scores"]) for c in chapter5[split]] if covered else [[] for _ in records]
        if fresh:
            new = sample_policy(cfg, model, tok, records, seed + stages.stage("bon").seed_offset,
                                f"BoN: {fresh} x {n} SFT samples on {split}", n_samples=fresh * n,
                                temperature=cfg.bon.temperature).texts
            for i, row in enumerate(score_candidates(cfg, rm, records, new)):
                texts[i] += new[i]
                scores[i] += row.tolist()
        kept = [[texts[i][g * n + int(j)] for g, j in enumerate(best_of_n(np.reshape(scores[i], (dv.bon_k, n))))]
                for i in range(len(records))]
        drawn[f"bon_k_{split}"] = outputs.write_k_samples(samples, "bon", split, records, kept)
    return {m: {s: runs.read_jsonl(drawn[f"{m}_k_{s}"]) for s in tests} for m in ("base", "sft", "ppo", "bon")}


def measure_per_input(cfg: Config, metrics: Metrics, samples: dict[str, dict[str, list[dict]]],
                      tests: dict[str, list[dict]]) -> tuple[list[dict], dict, list[dict], list[dict]]:
    """Per-input diversity of K samples per input for each method and split of ``samples``
    (:func:`per_input_samples`' shape). Returns (``DIVERSITY_COLUMNS`` rows, {(method, split,
    metric): per-input values}, long per-input rows, the effective metrics' threshold rows)."""
    rows, per_input, per_input_rows, sensitivity = [], {}, [], []
    for method, by_split in samples.items():
        for split, recs in by_split.items():
            by_uid = {r["uid"]: r for r in tests[split]}
            feats = metrics.prepare_many([r["outputs"] for r in recs],
                                         [[by_uid[r["uid"]]] * len(r["outputs"]) for r in recs])
            values = [metrics.compute(f) for f in feats]
            if feats and feats[0]["quality"] is not None:
                for threshold in cfg.diversity.quality_thresholds:
                    at = [metrics.effective(f, threshold) for f in feats]
                    for metric in at[0]:
                        mean, lo, hi = stats.bootstrap_ci([a[metric] for a in at], seed=cfg.seed)
                        sensitivity.append({"method": method, "split": split, "metric": metric,
                                            "threshold": threshold, "value": mean, "ci_low": lo, "ci_high": hi,
                                            "good_share": float(np.mean([(f["quality"] >= threshold).mean()
                                                                         for f in feats]))})
            per_input_rows += [{"method": method, "split": split, "uid": r["uid"], "metric": m, "value": v}
                               for r, one in zip(recs, values) for m, v in one.items()]
            for metric in values[0]:
                arr = np.array([v[metric] for v in values])
                per_input[method, split, metric] = arr
                mean, lo, hi = stats.bootstrap_ci(arr, seed=cfg.seed)
                rows.append({"method": method, "split": split, "scope": "per_input", "metric": metric,
                             "value": mean, "ci_low": lo, "ci_high": hi, "n_inputs": len(arr),
                             "k": len(recs[0]["outputs"]), "note": ""})
    return rows, per_input, per_input_rows, sensitivity


def measure_across_input(cfg: Config, metrics: Metrics, outputs: dict[str, dict[str, list[dict]]],
                         splits: list[str]) -> tuple[list[dict], dict]:
    """Across-input diversity of one output per evaluation input for each method of ``outputs``
    (which must include SFT), with ``diversity.n_boot`` bootstrap resamples of the inputs, the
    same draws for every method (so differences pair); the draws depend only on the seed and the
    inputs, so two calls with the same SFT outputs draw alike. Returns (``DIVERSITY_COLUMNS``
    rows, {(method, split, metric): the point value followed by the resampled ones})."""
    rows, boot_values = [], {}
    rng = np.random.default_rng(cfg.seed)
    eval_tests = artifacts.test_records(cfg)
    for split in splits:
        n = len(outputs["sft"][split])
        draws = rng.integers(0, n, size=(cfg.diversity.n_boot, n))  # the same draws for every method
        by_uid = {r["uid"]: r for r in eval_tests[split]}
        for method in outputs:
            rows_out = outputs[method][split]
            feats = metrics.prepare_many([[r["output"] for r in rows_out]], [[by_uid[r["uid"]] for r in rows_out]])[0]
            point = metrics.compute(feats)
            boots = [metrics.compute(feats, d) for d in draws]
            for metric, value in point.items():
                b = np.array([x[metric] for x in boots])
                boot_values[method, split, metric] = np.concatenate([[value], b])
                rows.append({"method": method, "split": split, "scope": "across_input", "metric": metric,
                             "value": value, "ci_low": float(np.nanquantile(b, 0.025)),
                             "ci_high": float(np.nanquantile(b, 0.975)), "n_inputs": n, "k": 1, "note": ""})
    return rows, boot_values


def differences_from_sft(methods, per_input: dict, boot_values: dict, seed: int) -> list[dict]:
    """Each method's diversity minus SFT's: per-input paired over inputs, across-input over the
    shared bootstrap draws (:func:`measure_across_input`). ``per_input`` and ``boot_values`` must
    hold SFT's values under the same keys."""
    diffs = []
    for method in methods:
        for (m, split, metric), arr in per_input.items():
            if m == method:
                d, lo, hi = stats.paired_difference(arr, per_input["sft", split, metric], seed=seed)
                diffs.append({"method": method, "split": split, "scope": "per_input", "metric": metric,
                              "difference": d, "ci_low": lo, "ci_high": hi})
        for (m, split, metric), b in boot_values.items():
            if m == method:
                delta = b - boot_values["sft", split, metric]
                diffs.append({"method": method, "split": split, "scope": "across_input", "metric": metric,
                              "difference": float(delta[0]), "ci_low": float(np.nanquantile(delta[1:], 0.025)),
                              "ci_high": float(np.nanquantile(delta[1:], 0.975))})
    return diffs


def build_diversity(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``diversity`` (notebook 07): per-input diversity (K samples per input, averaged over
    inputs, bootstrap over inputs) and across-input diversity (one output per evaluation input,
    bootstrap over inputs) for base, SFT, BoN and PPO on every split. Writes
    ``results/diversity.csv``, the differences from SFT (``results/diversity_vs_sft.csv``), the
    per-input values (``logs/diversity_per_input.csv``) and each metric's time; rows of chapter
    9's methods in those files are kept."""
    def body(root: Path) -> dict[str, Path]:
        world = data.world_or_none(cfg)
        metrics = Metrics(cfg, world)
        unavailable = {m: why for m, why in metrics.available().items() if why}
        samples = per_input_samples(cfg, root)
        tests = artifacts.test_records(cfg, cfg.diversity.n_inputs)
        rows, per_input, per_input_rows, sensitivity = measure_per_input(cfg, metrics, samples, tests)
        outputs = artifacts.method_outputs(cfg)
        across, boot_values = measure_across_input(cfg, metrics, outputs, data.available_splits(cfg))
        rows += across
        diffs = differences_from_sft(("base", "bon", "ppo"), per_input, boot_values, cfg.seed)
        for metric, why in unavailable.items():
            for scope in ("per_input", "across_input"):
                rows.append({"method": "all", "split": "all", "scope": scope, "metric": metric, "value": float("nan"),
                             "ci_low": float("nan"), "ci_high": float("nan"), "n_inputs": 0, "k": 0, "note": why})
        res = runs.results_dir(cfg)
        timing = pd.DataFrame([{"metric": m, "seconds": s} for m, s in metrics.seconds.items()])
        mine = [*outputs, "all"]
        return {"diversity": runs.merge_csv(res / "diversity.csv", pd.DataFrame(rows, columns=DIVERSITY_COLUMNS),
                                            "method", mine),
                "diversity_vs_sft": runs.merge_csv(res / "diversity_vs_sft.csv",
                                                   pd.DataFrame(diffs, columns=DIFFERENCE_COLUMNS), "method", mine),
                "per_input": runs.merge_csv(root / "logs" / "diversity_per_input.csv", pd.DataFrame(
                    per_input_rows, columns=PER_INPUT_COLUMNS), "method", mine),
                "timing": runs.write_csv(root / "logs" / "diversity_timing.csv", timing),
                "effective_sensitivity": runs.merge_csv(root / "logs" / "effective_diversity_thresholds.csv",
                                                        pd.DataFrame(sensitivity, columns=SENSITIVITY_COLUMNS),
                                                        "method", mine),
                **{f"{m}_{s}": root / "samples" / f"{m}_k{len(r[0]['outputs'])}_{s}.jsonl"
                   for m, by in samples.items() for s, r in by.items()}}

    return runs.run_stage(cfg, "diversity", body, force=force)
