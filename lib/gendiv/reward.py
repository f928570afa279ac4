"""Reward model: comparisons, training with TRL's RewardTrainer, normalisation, scoring, accuracy.

Paper (Sec. 4 and its code): the RM is initialised from the SFT model with a scalar head read at
the last token, trained for one epoch (lr 1e-5) with the Bradley-Terry loss
-log sigmoid(r(x, y_chosen) - r(x, y_rejected)); afterwards its scores are normalised by the mean
and standard deviation of its outputs on about 500 held-out items, and PPO, Best-of-N and the
proxy scores all use the normalised RM.

``reward.body`` chooses what the RM starts from: the SFT model (the paper's form; TRL's
RewardTrainer) or a pretrained sentence encoder read as a cross-encoder of (prompt, response)
(:func:`train_cross_encoder_rm`; ``tiny``: the tiny SFT model cannot serve as a competent RM, see
the book's deviations page). Either way the loss, the normalisation and every use of the scores
are the same.

Comparisons in the miniature world are gathered as the real pipeline gathers them: two SFT samples
per ID prompt (one at T=1, one at a lower temperature, for varied pairs), labelled by the world's
noisy simulated labeller. For the paper's data they are the hub's human comparisons.
"""

from __future__ import annotations

import random
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as transformers_logging

from gendiv import artifacts, data, runs, stages, stats
from gendiv.config import Config
from gendiv.lm import completion_nll, left_truncate, sample_policy, tokenizer_sides
from gendiv.models import (CrossEncoderRewardModel, RewardModel, add_lora, autocast_bf16, freeze_bottom,
                           load_causal_lm, load_cross_encoder, load_tokenizer, normalisation, pick_device,
                           save_pretrained_atomic, trainer_device_args)

RM_ACCURACY_COLUMNS = ["split", "accuracy", "ci_low", "ci_high", "n"]


def train_reward_model(sft_path: Path, comparisons: list[dict], out_dir: Path, *, epochs: float, lr: float,
                       batch_size: int, max_length: int, seed: int, freeze_fraction: float = 0.0,
                       adapter: str = "none", lora_r: int = 16, lora_alpha: int = 32,
                       device: torch.device | None = None) -> pd.DataFrame:
    """Train an RM from the SFT checkpoint on (prompt, chosen, rejected) with TRL's RewardTrainer;
    save it to ``out_dir``; return the log history."""
    from datasets import Dataset  # slow to import; only training needs it
    from trl import RewardConfig, RewardTrainer  # heavy (~5 s): only training needs it, not cached reads
    device = device or pick_device()
    tok = load_tokenizer(sft_path)
    # The new score head is drawn from torch's generator: seeded here, the RM is the same however the
    # stage is run (its notebook after the comparisons' sampling, `gendiv stage reward`, or ahead of
    # the notebooks), not one that depends on what drew from the generator before it.
    torch.manual_seed(seed)
    # The new score head is reported as "missing" from the SFT checkpoint: expected, so not shown.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(sft_path), num_labels=1)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tok.pad_token_id
    if adapter == "lora":
        model = add_lora(model, lora_r, lora_alpha, task_type="SEQ_CLS")
    else:
        freeze_bottom(model, freeze_fraction)
        for p in model.score.parameters():
            p.requires_grad = True
    model.to(device)
    prompts = left_truncate(tok, [c["prompt"] for c in comparisons], max_length - 64)
    dataset = Dataset.from_dict({"prompt": prompts,
                                 "chosen": [data.sft_target(c["chosen"], tok.eos_token) for c in comparisons],
                                 "rejected": [data.sft_target(c["rejected"], tok.eos_token) for c in comparisons]})
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecation notices
        args = RewardConfig(output_dir=scratch, num_train_epochs=epochs, learning_rate=lr,
                            per_device_train_batch_size=batch_size, max_length=max_length,
                            **trainer_device_args(device),
                            logging_steps=5, logging_first_step=True, save_strategy="no", report_to="none",
                            seed=seed,
                            data_seed=seed, lr_scheduler_type="linear", warmup_steps=0,
                            dataloader_num_workers=0)
        with tokenizer_sides(tok, "right", tok.truncation_side):  # TRL pads its batches on the right
            trainer = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=dataset)
            trainer.train()
        log = pd.DataFrame(trainer.state.log_history)
    trained = trainer.model
    if adapter == "lora":
        trained = trained.merge_and_unload()
    save_pretrained_atomic(trained, tok, out_dir)
    return log


CROSS_ENCODER_HEAD = ("classifier.",)
"""Parameter names of a BERT-family sequence classifier's new scalar head (the pooler in front of
it is the encoder's, pretrained, and trains with the blocks)."""


def cross_encoder_optimizer(model: torch.nn.Module, lr: float, head_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW (weight decay 0.01) over the trainable parameters of a cross-encoder RM: the head
    (:data:`CROSS_ENCODER_HEAD`) at ``lr * head_lr_scale``, the encoder's blocks at ``lr``."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in trained if n.startswith(CROSS_ENCODER_HEAD)]
    if not head:
        raise ValueError(f"{type(model).__name__} has no trainable head ({', '.join(CROSS_ENCODER_HEAD)}); "
                         "a cross-encoder RM is a BERT-family sequence classifier.")
    body = [p for n, p in trained if not n.startswith(CROSS_ENCODER_HEAD)]
    return torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_scale}],
                             lr=lr, weight_decay=0.01)


def train_cross_encoder_rm(encoder: str, comparisons: list[dict], out_dir: Path, *, epochs: float, lr: float,
                           batch_size: int, max_length: int, seed: int, warmup_share: float = 0.1,
                           head_lr_scale: float = 1.0, bf16: bool = False, freeze_fraction: float = 0.0,
                           device: torch.device | None = None) -> pd.DataFrame:
    """Train an RM on a sentence encoder read as a cross-encoder (:class:`CrossEncoderRewardModel`,
    ``reward.body``) on (prompt, chosen, rejected) with the paper's Bradley-Terry loss
    -log sigmoid(r(x, y_chosen) - r(x, y_rejected)); AdamW, the learning rate warmed up linearly
    over ``warmup_share`` of the steps and decayed linearly to zero, the head's at ``head_lr_scale``
    times it (:func:`cross_encoder_optimizer`), its forward passes under bf16 autocast if ``bf16``
    (the weights, gradients and optimiser in fp32), the bottom ``freeze_fraction`` of its blocks
    frozen with its embeddings (:func:`gendiv.models.load_cross_encoder`); save it to ``out_dir``;
    return the log (step, epoch, loss, accuracy on the batch, learning rate). ``batch_size``
    pairs a step, this process's share under a launcher (``accelerate``: gradients are averaged
    over processes; each takes its own slice of one shared order of pairs)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    if not comparisons:
        raise ValueError("No comparisons to train the RM on.")
    device = device or pick_device()
    torch.manual_seed(seed)
    model, tok = load_cross_encoder(encoder, device, freeze_fraction)
    optimizer = cross_encoder_optimizer(model, lr, head_lr_scale)
    acc = Accelerator(cpu=device.type == "cpu")
    model, optimizer = acc.prepare(model, optimizer)
    world, rank = acc.num_processes, acc.process_index
    step_pairs = batch_size * world
    per_epoch = -(-len(comparisons) // step_pairs)
    total = max(1, int(round(per_epoch * epochs)))
    warmup = int(warmup_share * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup if warmup else 1.0) * max(0.0, 1.0 - k / total))
    rm = CrossEncoderRewardModel(acc.unwrap_model(model), tok, max_length=max_length, bf16=bf16)
    # The frozen blocks' output, once per (prompt, response) before training: each step then runs
    # only the blocks that train (on tiny, four of MiniLM's six). Without dropout in the frozen
    # blocks, where a full forward pass in training mode would drop some of their activations.
    frozen, states = rm.frozen_blocks(), {}
    if frozen:
        keys = list(dict.fromkeys((c["prompt"], t) for c in comparisons for t in (c["chosen"], c["rejected"])))
        states = dict(zip(keys, rm.frozen_states([p for p, _ in keys], [t for _, t in keys], frozen)))
    else:
        rm.model = model  # the prepared (wrapped) model: its forward syncs gradients across processes
    rng, order, log = random.Random(seed), [], []
    model.train()
    for step in tqdm(range(total), desc="reward model", disable=not acc.is_main_process):
        runs.take_freed_cores()
        if len(order) < step_pairs:
            fresh = list(range(len(comparisons)))
            rng.shuffle(fresh)
            order += fresh
        batch = [comparisons[i] for i in order[:step_pairs][rank::world]]
        order = order[step_pairs:]
        prompts = [c["prompt"] for c in batch]
        texts = [c["chosen"] for c in batch] + [c["rejected"] for c in batch]
        if frozen:
            scores = rm.logits_from_states([states[k] for k in zip(prompts + prompts, texts)], frozen, model=model)
        else:
            scores = rm.logits(prompts + prompts, texts)
        margin = scores[:len(batch)] - scores[len(batch):]
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimizer.zero_grad()
        acc.backward(loss)
        optimizer.step()
        schedule.step()
        log.append({"step": step + 1, "epoch": (step + 1) / per_epoch, "loss": float(loss.detach()),
                    "accuracy": float((margin > 0).float().mean()), "learning_rate": schedule.get_last_lr()[0]})
    model.eval()
    save_pretrained_atomic(acc.unwrap_model(model), tok, out_dir)
    return pd.DataFrame(log)


class ScoredOnce:
    """An RM that scores each (prompt, response) once and remembers it: the reward stage reads
    the same held-out pairs for the normalisation, the accuracy, the agreement part by part and
    the scatter (on `tiny`, about 9,900 scorings of 3,600 distinct pairs). ``raw_scores`` and
    ``score`` as :class:`RewardModel`'s, whose ``mean`` and ``std`` it reads at each call."""

    def __init__(self, rm: RewardModel):
        self.rm, self._raw = rm, {}

    @property
    def mean(self) -> float:
        return self.rm.mean

    @mean.setter
    def mean(self, value: float) -> None:
        self.rm.mean = value

    @property
    def std(self) -> float:
        return self.rm.std

    @std.setter
    def std(self, value: float) -> None:
        self.rm.std = value

    def raw_scores(self, prompts: list[str], completions: list[str], batch_size: int = 32) -> np.ndarray:
        keys = list(zip(prompts, completions))
        todo = [k for k in dict.fromkeys(keys) if k not in self._raw]
        if todo:
            self._raw.update(zip(todo, self.rm.raw_scores([p for p, _ in todo], [c for _, c in todo], batch_size)))
        return np.array([self._raw[k] for k in keys], dtype=np.float32)

    def score(self, prompts: list[str], completions: list[str], batch_size: int = 32) -> np.ndarray:
        return (self.raw_scores(prompts, completions, batch_size) - self.rm.mean) / self.rm.std


def describe_body(cfg: Config) -> str:
    """One sentence for chapter 3: what this run's RM starts from and how it is trained."""
    r = cfg.reward
    schedule = f"{r.epochs:g} epochs at learning rate {r.lr:g}, {r.batch_size} pairs a step"
    if r.body == SFT_BODY:
        return ("This run's RM starts from the SFT model, as the paper's: a scalar head read at the last "
                f"token, trained with TRL's `RewardTrainer` ({schedule}, linear decay).")
    return (f"This run's RM is not the paper's: it starts from the pretrained sentence encoder `{r.body}`, "
            "read as a cross-encoder of the prompt and the response with a new scalar head on its first "
            "token and its embeddings frozen"
            + (f", with its bottom blocks (a share of {r.freeze_fraction:g}, rounded down; their output "
               "computed once per input)" if r.freeze_fraction > 0 else "")
            + ", trained with the paper's Bradley-Terry loss by gendiv's own "
            f"loop ({schedule}, linear warm-up over {r.warmup_share:.0%} of the steps, then linear decay"
            + (f"; the head at {r.head_lr_scale:g} times that learning rate" if r.head_lr_scale != 1 else "")
            + ("; forward passes in bf16 autocast, weights in fp32"
               if autocast_bf16(r.precision, pick_device(cfg.model.device)) else "; in fp32")
            + "). "
            "The deviations page says why.")


PLATEAU_WINDOW, PLATEAU_MARGIN = 20, 0.05
"""The RM's training log is read over running means of this many steps; the loss has left log 2
once such a mean is this far below it."""


def left_log2_at(steps, loss, window: int = PLATEAU_WINDOW, margin: float = PLATEAU_MARGIN) -> int | None:
    """The first logged step at which the Bradley-Terry loss's mean over the last ``window`` steps
    (the rows logged at steps in (step - window, step], once ``window`` steps have passed; TRL logs
    every few steps, gendiv's own loop every step) is ``margin`` below log 2, the loss of an RM that
    gives both responses of every pair one score; None if it never is. An RM that stays there long
    has learnt little: on `tiny` with three epochs, seed 2's loss left it at step 214 of 300 and the
    RM agreed with the judge on 62% of held-out pairs (seed 0: step 84, 72%), and PPO on it wrote to
    the length cap."""
    if window < 1:
        raise ValueError(f"window must be at least 1 step, got {window}.")
    s, v = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
    s, v = s[~np.isnan(v)], v[~np.isnan(v)]  # TRL's last row: the run's summary, no loss
    for k in range(len(s)):
        if s[k] >= window and v[(s > s[k] - window) & (s <= s[k])].mean() < np.log(2.0) - margin:
            return int(s[k])
    return None


def describe_plateau(log: pd.DataFrame) -> str:
    """One sentence for chapter 3: when the RM's loss left log 2 (:func:`left_log2_at`)."""
    if "loss" not in log or not log["loss"].notna().any():
        return "The RM's training log holds no loss, so when it left log 2 cannot be read."
    at, total = left_log2_at(log["step"], log["loss"]), int(log["step"].max())
    head = (f"The loss's mean over {PLATEAU_WINDOW} steps {'never' if at is None else 'first'} fell "
            f"{PLATEAU_MARGIN:g} below log 2 ({np.log(2.0):.3f}, the loss of an RM that scores both responses "
            "of a pair alike)")
    if at is None:
        return f"{head} in {total} steps: this RM has learnt little, and Best-of-N and PPO have little to follow."
    return f"{head} at step {at} of {total} ({at / total:.0%} of the way through training)."


def _judged(pairs: list[dict]) -> list[dict]:
    """The pairs on which the judge is not tied (``preferred`` 0: a is better, 1: b)."""
    return [p for p in pairs if p["preferred"] in (0, 1)]


def _correct(score_a, score_b, pairs: list[dict]) -> np.ndarray:
    """Per pair, 1 if the higher score falls on the side the judge prefers, 0 if not, one half
    on a tie."""
    return np.array([float((b > a) == bool(p["preferred"])) if a != b else 0.5
                     for a, b, p in zip(score_a, score_b, pairs)])


def _accuracy_row(correct: np.ndarray, seed: int) -> dict:
    """Mean agreement with a bootstrap CI over pairs (NaNs and n = 0 when there are none)."""
    acc, lo, hi = stats.bootstrap_ci(correct, seed=seed)
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi, "n": len(correct)}


def rm_correct(rm: RewardModel, pairs: list[dict]) -> np.ndarray:
    """Per pair the judge does not tie (:func:`_judged`): whether the RM prefers the side the
    judge prefers (1, 0, one half on equal scores)."""
    kept = _judged(pairs)
    prompts = [p["prompt"] for p in kept]
    return _correct(rm.raw_scores(prompts, [p["a"] for p in kept]), rm.raw_scores(prompts, [p["b"] for p in kept]),
                    kept)


def rm_accuracy(rm: RewardModel, pairs: list[dict], seed: int) -> dict:
    """Share of pairs where the RM prefers the summary that the reference preference prefers
    (``preferred`` = 0 for a, 1 for b; ties in the reference are left out), with a bootstrap CI."""
    return _accuracy_row(rm_correct(rm, pairs), seed)


def likelihood_correct(model, tokenizer, pairs: list[dict], max_prompt_tokens: int) -> np.ndarray:
    """A yardstick for the RM that needs no comparisons: per pair the judge does not tie, whether
    the summary a language model (the SFT model) finds more likely given the post, per token (a
    higher mean log-likelihood, :func:`gendiv.lm.completion_nll`), is the one the judge prefers
    (1, 0, one half on equal likelihoods), in the order of :func:`rm_correct`. An RM that agrees
    with the judge less often than this has learnt less from its comparisons than its
    initialisation already knew."""
    kept = _judged(pairs)
    if not kept:
        return np.zeros(0)
    prompts = [p["prompt"] for p in kept]
    with torch.no_grad():
        nll_a = completion_nll(model, tokenizer, prompts, [p["a"] for p in kept], max_prompt_tokens)
        nll_b = completion_nll(model, tokenizer, prompts, [p["b"] for p in kept], max_prompt_tokens)
    return _correct(-nll_a, -nll_b, kept)


def likelihood_accuracy(model, tokenizer, pairs: list[dict], max_prompt_tokens: int, seed: int) -> dict:
    """:func:`likelihood_correct` as a share with its bootstrap CI, as :func:`rm_accuracy`."""
    return _accuracy_row(likelihood_correct(model, tokenizer, pairs, max_prompt_tokens), seed)


def by_kind_rows(split: str, pairs: list[dict], right: np.ndarray, seed: int) -> list[dict]:
    """Accuracy by kind of pair (:data:`PAIR_KINDS`) from the per-pair correctness ``right`` of
    :func:`rm_correct` on ``pairs`` (in the order of :func:`_judged`), without scoring again."""
    kinds = np.array([p.get("kind") for p in _judged(pairs)], dtype=object)
    return [{"split": split, "kind": kind, **_accuracy_row(right[kinds == kind], seed)} for kind in PAIR_KINDS]


def yardstick_rows(split: str, rm_right: np.ndarray, likelihood_right: np.ndarray, seed: int) -> list[dict]:
    """The rows of ``logs/rm_yardstick.csv`` for one split: the RM's accuracy, the SFT
    likelihood's, and on the likelihood's row the RM's accuracy minus it, paired over the same
    pairs, with its bootstrap interval (``rm_minus``, ``rm_minus_low``, ``rm_minus_high``)."""
    diff = stats.paired_difference(rm_right, likelihood_right, seed=seed) if len(rm_right) \
        else (float("nan"),) * 3
    return [{"split": split, "scorer": "reward model", **_accuracy_row(rm_right, seed)},
            {"split": split, "scorer": LIKELIHOOD_SCORER, **_accuracy_row(likelihood_right, seed),
             **dict(zip(("rm_minus", "rm_minus_low", "rm_minus_high"), diff))}]


UTILITY_PARTS = {"coverage": (1, "more key facts"),
                 "hallucinated": (-1, "fewer invented facts"),
                 "fluency": (1, "more fluent"),
                 "n_words": (1, "longer")}
"""Parts of the gold utility that both worlds' utilities carry (attribute: (the better way, in
words)), for :func:`agreement_by_part`. Length has no better way; "longer" is read as one, to
show how much the RM and the judge lean on it."""
RM_AGREEMENT_BY_PART_COLUMNS = ["split", "part", "who", "agreement", "ci_low", "ci_high", "n"]


def agreement_by_part(world, rm: RewardModel, pairs: list[dict], examples: dict, split: str,
                      seed: int) -> list[dict]:
    """What the RM rewards, set beside what the judge rewards: for each part of the gold utility
    (:data:`UTILITY_PARTS`), over the pairs whose two outputs differ in it, the share on which
    the judge prefers the output that is better in that part, and the share on which the RM does
    (RM ties count one half; judge ties are left out of both), with bootstrap intervals.
    ``examples``: {uid: the pair's example}. A part the judge follows and the RM does not is a
    part of the task the RM has not learnt, and a policy optimised on the RM will not learn it."""
    kept = [p for p in pairs if p["preferred"] in (0, 1)]
    if not kept:
        return []
    prompts = [p["prompt"] for p in kept]
    rm_b_better = rm.raw_scores(prompts, [p["b"] for p in kept]) - rm.raw_scores(prompts, [p["a"] for p in kept])
    parts = [(world.utility(p["a"], examples[p["uid"]]), world.utility(p["b"], examples[p["uid"]])) for p in kept]
    rows = []
    for part, (sign, _) in UTILITY_PARTS.items():
        judge, by_rm = [], []
        for p, (ua, ub), d_rm in zip(kept, parts, rm_b_better):
            d = sign * (float(getattr(ub, part)) - float(getattr(ua, part)))  # > 0: b better in this part
            if d == 0:
                continue
            judge.append(float((p["preferred"] == 1) == (d > 0)))
            by_rm.append(0.5 if d_rm == 0 else float((d_rm > 0) == (d > 0)))
        for who, values in (("judge", judge), ("reward model", by_rm)):
            if values:
                acc, lo, hi = stats.bootstrap_ci(values, seed=seed)
                rows.append({"split": split, "part": part, "who": who, "agreement": acc, "ci_low": lo,
                             "ci_high": hi, "n": len(values)})
    return rows


# ------------------------------------------------------------------ stages
PAIR_KINDS = ("sft_vs_sft", "sft_vs_base", "sft_vs_reference")
OOD_PAIRS_SEED_OFFSET = 7
"""The OOD accuracy pairs draw from the comparisons' seed plus this (the ID pairs from the seed itself)."""
RM_ACCURACY_BY_KIND_COLUMNS = ["split", "kind", "accuracy", "ci_low", "ci_high", "n"]
RM_YARDSTICK_COLUMNS = ["split", "scorer", "accuracy", "ci_low", "ci_high", "n", "rm_minus", "rm_minus_low",
                        "rm_minus_high"]
SFT_BODY = "sft"
"""``reward.body`` of the paper's RM: the SFT model with a scalar head (else a sentence encoder)."""
LIKELIHOOD_SCORER = "SFT likelihood (no comparisons)"
"""The yardstick's name in ``logs/rm_yardstick.csv`` (:func:`likelihood_accuracy`)."""


def pair_kinds(cfg: Config, n: int, rng: random.Random) -> list[str]:
    """The kind of pair of each of ``n`` prompts, drawn with the profile's shares
    (reward.base_pair_share, reward.reference_pair_share; the rest SFT against SFT)."""
    r = cfg.reward
    out = []
    for _ in range(n):
        u = rng.random()
        out.append("sft_vs_base" if u < r.base_pair_share else
                   "sft_vs_reference" if u < r.base_pair_share + r.reference_pair_share else "sft_vs_sft")
    return out


def _sample_pairs(cfg: Config, sft_model, base_model, tok, records: list[dict], kinds: list[str], seed: int,
                  desc: str, rng: random.Random) -> list[tuple[str, str]]:
    """A pair per record, of its kind: an SFT sample at sampling.temperature (paper: 1) against a
    second SFT sample (at a temperature drawn from reward.second_temperatures), a base-model
    sample, or the record's reference."""
    first = sample_policy(cfg, sft_model, tok, records, seed, f"{desc}: SFT (T={cfg.sampling.temperature})").first()
    second: list[str] = [""] * len(records)
    temperatures = [rng.choice(cfg.reward.second_temperatures) for _ in records]
    groups: dict[tuple[str, float], list[int]] = {}
    for i, (kind, t) in enumerate(zip(kinds, temperatures)):
        if kind == "sft_vs_reference":
            second[i] = records[i]["reference"]
        else:
            groups.setdefault((kind, t if kind == "sft_vs_sft" else cfg.sampling.temperature), []).append(i)
    for n, ((kind, t), idx) in enumerate(sorted(groups.items())):
        model, who = (sft_model, "SFT") if kind == "sft_vs_sft" else (base_model, "base")
        texts = sample_policy(cfg, model, tok, [records[i] for i in idx], seed + 1 + n, f"{desc}: {who} (T={t:g})",
                              temperature=t).first()
        for i, text in zip(idx, texts):
            second[i] = text
    return list(zip(first, second))


def _judged_pairs(world, records: list[dict], pairs: list[tuple[str, str]], kinds: list[str], rng: random.Random,
                  label: bool) -> list[dict]:
    """Pairs with their kind, gold utilities, the judge's preference and (``label``) the labeller's
    choice. Which side of a pair is ``a`` is drawn at random, so position says nothing."""
    rows = []
    for rec, (sft_text, other), kind in zip(records, pairs, kinds):
        sft_side = "a" if rng.random() < 0.5 else "b"
        a, b = (sft_text, other) if sft_side == "a" else (other, sft_text)
        ex = data.example_from(rec)
        ua, ub = world.utility(a, ex).total, world.utility(b, ex).total
        judge = world.judge(a, b, ex)
        row = {"uid": rec["uid"], "split": rec["split"], "prompt": rec["prompt"], "kind": kind, "a": a, "b": b,
               "sft_side": sft_side, "utility_a": ua, "utility_b": ub, "preferred": {1.0: 0, 0.0: 1}.get(judge, -1)}
        if label:
            row["label"] = 1 - world.label(a, b, ex, rng)  # 0: labeller prefers a, 1: prefers b
            row["chosen"], row["rejected"] = (a, b) if row["label"] == 0 else (b, a)
        rows.append(row)
    return rows


def build_comparisons(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``comparisons`` (notebook 03): a pair per ID comparison prompt (SFT against SFT,
    against the base model or against the reference, in the profile's shares: :func:`pair_kinds`)
    labelled by the simulated labeller (or the hub's human comparisons for data.source 'tldr');
    plus unlabelled judged pairs of the same kinds on OOD test prompts, for measuring RM accuracy
    out of distribution."""
    def body(root: Path) -> dict[str, Path]:
        records = data.load_split(cfg, "id", "comparisons")
        n_held = max(1, int(round(cfg.reward.heldout_share * len(records))))
        paths: dict[str, Path] = {}
        if cfg.data.source not in data.WORLD_SOURCES:
            rows = [{**r, "a": r["chosen"], "b": r["rejected"], "preferred": 0, "label": 0} for r in records]
            paths["comparisons_train"] = runs.write_jsonl(root / "data" / "comparisons_train.jsonl", rows[:-n_held])
            paths["comparisons_heldout"] = runs.write_jsonl(root / "data" / "comparisons_heldout.jsonl",
                                                            rows[-n_held:])
            return paths
        world = data.make_world(cfg)
        device = pick_device(cfg.model.device)
        sft = artifacts.sft_path(cfg)
        model, tok = load_causal_lm(sft, device), load_tokenizer(sft)
        base = load_causal_lm(artifacts.base_path(cfg), device) if cfg.reward.base_pair_share > 0 else None
        for split in data.SPLITS:
            recs = records if split == "id" else data.load_split(cfg, split, "test")[: cfg.reward.n_eval_ood]
            rng = random.Random(f"{cfg.seed}/pairs/{split}")
            kinds = pair_kinds(cfg, len(recs), rng)
            seed = stages.seed(cfg, "comparisons") + (0 if split == "id" else OOD_PAIRS_SEED_OFFSET)
            pairs = _sample_pairs(cfg, model, base, tok, recs, kinds, seed,
                                  f"{split} pairs", rng)
            rows = _judged_pairs(world, recs, pairs, kinds, random.Random(f"{cfg.seed}/labeller/{split}"),
                                 label=split == "id")
            if split == "id":
                paths["comparisons_train"] = runs.write_jsonl(root / "data" / "comparisons_train.jsonl",
                                                              rows[:-n_held])
                paths["comparisons_heldout"] = runs.write_jsonl(root / "data" / "comparisons_heldout.jsonl",
                                                                rows[-n_held:])
            else:
                paths[f"pairs_{split}"] = runs.write_jsonl(root / "data" / f"rm_eval_pairs_{split}.jsonl", rows)
        return paths

    return runs.run_stage(cfg, "comparisons", body, force=force)


def _examples(cfg: Config, split: str, kind: str) -> dict:
    """{uid: example} of a split's records of ``kind`` (comparisons, test), for the world's utility."""
    return {r["uid"]: data.example_from(r) for r in data.load_split(cfg, split, kind)}


def build_reward(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``reward`` (notebook 03): train the RM, normalise it, measure its accuracy ID and OOD
    against the judge (``results/rm_accuracy.csv``; by kind of pair in
    ``logs/rm_accuracy_by_kind.csv``; beside the SFT model's own likelihood as a preference in
    ``logs/rm_yardstick.csv``: :func:`likelihood_accuracy`; what it rewards beside what the judge
    rewards, part by part of the gold utility, in ``logs/rm_agreement_by_part.csv``:
    :func:`agreement_by_part`) and score held-out samples for the RM-vs-gold scatter."""
    def body(root: Path) -> dict[str, Path]:
        train = runs.read_jsonl(runs.artifact(cfg, "comparisons", "comparisons_train"))
        heldout = runs.read_jsonl(runs.artifact(cfg, "comparisons", "comparisons_heldout"))
        out = root / "models" / "rm"
        device = pick_device(cfg.model.device)
        bf16 = autocast_bf16(cfg.reward.precision, device)  # a sentence-encoder RM's arithmetic
        batch_size = runs.per_process(cfg.reward.batch_size, "reward.batch_size")
        if cfg.reward.body == SFT_BODY:
            log = train_reward_model(artifacts.sft_path(cfg), train, out, epochs=cfg.reward.epochs, lr=cfg.reward.lr,
                                     batch_size=batch_size, max_length=cfg.model.max_length,
                                     seed=cfg.seed, freeze_fraction=cfg.model.freeze_fraction,
                                     adapter=cfg.model.adapter, lora_r=cfg.model.lora_r,
                                     lora_alpha=cfg.model.lora_alpha, device=device)
        else:
            log = train_cross_encoder_rm(cfg.reward.body, train, out, epochs=cfg.reward.epochs, lr=cfg.reward.lr,
                                         batch_size=batch_size, max_length=cfg.model.max_length, seed=cfg.seed,
                                         warmup_share=cfg.reward.warmup_share,
                                         head_lr_scale=cfg.reward.head_lr_scale,
                                         bf16=bf16, freeze_fraction=cfg.reward.freeze_fraction, device=device)
        rm = ScoredOnce(RewardModel.load(out, device, cfg.model.max_length, bf16=bf16))
        norm_prompts = [r["prompt"] for r in heldout for _ in (0, 1)][: cfg.reward.n_normalisation]
        norm_texts = [t for r in heldout for t in (r["a"], r["b"])][: cfg.reward.n_normalisation]
        norm = normalisation(rm.raw_scores(norm_prompts, norm_texts))
        runs.write_json(out / "normalisation.json", norm)
        rm.mean, rm.std = norm["mean"], norm["std"]
        world = data.world_or_none(cfg)  # None for the hub's data: no judge, so no parts to set beside the RM
        by_part = [] if world is None else agreement_by_part(world, rm, heldout, _examples(cfg, "id", "comparisons"),
                                                             "id", cfg.seed)
        right = {"id": rm_correct(rm, heldout)}
        rows = [{"split": "id", **_accuracy_row(right["id"], cfg.seed)}]
        by_kind = by_kind_rows("id", heldout, right["id"], cfg.seed)
        scatter, measured = [], {"id": heldout}
        for split in data.SPLITS[1:]:
            try:
                pairs = runs.read_jsonl(runs.artifact(cfg, "comparisons", f"pairs_{split}"))
            except KeyError:  # hub data: no judge out of distribution
                rows.append({"split": split, "accuracy": float("nan"), "ci_low": float("nan"),
                             "ci_high": float("nan"), "n": 0})
                continue
            measured[split], right[split] = pairs, rm_correct(rm, pairs)
            rows.append({"split": split, **_accuracy_row(right[split], cfg.seed)})
            by_kind += by_kind_rows(split, pairs, right[split], cfg.seed)
            scatter += [(split, p) for p in pairs]
            if world is not None:
                by_part += agreement_by_part(world, rm, pairs, _examples(cfg, split, "test"), split, cfg.seed)
        sft_lm = load_causal_lm(artifacts.sft_path(cfg), device).eval()
        sft_tok = load_tokenizer(artifacts.sft_path(cfg))  # the RM's own may be a sentence encoder's
        yardstick = [row for split, pairs in measured.items() for row in yardstick_rows(
            split, right[split], likelihood_correct(sft_lm, sft_tok, pairs, cfg.max_prompt_tokens), cfg.seed)]
        del sft_lm
        scatter = [("id", p) for p in heldout] + scatter
        if all("utility_a" in p for _, p in scatter):  # each pair's SFT sample (T = 1)
            prompts = [p["prompt"] for _, p in scatter]
            scores = rm.score(prompts, [p[p["sft_side"]] for _, p in scatter])
            frame = pd.DataFrame({"split": [s for s, _ in scatter], "rm_score": scores,
                                  "gold_utility": [p[f"utility_{p['sft_side']}"] for _, p in scatter]})
        else:
            frame = pd.DataFrame(columns=["split", "rm_score", "gold_utility"])
        return {"rm": out,
                "rm_log": runs.write_csv(root / "logs" / "reward.csv", log),
                "rm_accuracy": runs.write_csv(runs.results_dir(cfg) / "rm_accuracy.csv",
                                              pd.DataFrame(rows, columns=RM_ACCURACY_COLUMNS)),
                "rm_vs_gold": runs.write_csv(root / "logs" / "rm_vs_gold.csv", frame),
                "rm_accuracy_by_kind": runs.write_csv(root / "logs" / "rm_accuracy_by_kind.csv", pd.DataFrame(
                    [r for r in by_kind if r["n"] > 0], columns=RM_ACCURACY_BY_KIND_COLUMNS)),
                "rm_yardstick": runs.write_csv(root / "logs" / "rm_yardstick.csv", pd.DataFrame(
                    yardstick, columns=RM_YARDSTICK_COLUMNS)),
                "rm_agreement_by_part": runs.write_csv(root / "logs" / "rm_agreement_by_part.csv", pd.DataFrame(
                    by_part, columns=RM_AGREEMENT_BY_PART_COLUMNS))}

    return runs.run_stage(cfg, "reward", body, force=force)
