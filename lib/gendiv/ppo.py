"""PPO for RLHF: the formulas, as pure tensor functions (the training loop builds on them).

TRL >= 1.13 no longer ships a PPO trainer, so this module is ours. Each function cites the
formula it implements; shapes are (batch, response_length) with a 0/1 ``mask`` that is 1 on
response tokens up to and including the first EOS (:func:`response_mask`).

The paper's RL stage (Kirk et al. 2024, Sec. 4 and its code): reward = normalised RM score at the
last response token minus ``kl_coef`` times a per-token KL estimate against the frozen SFT policy
(``kl_coef`` = 0.05, fixed); GAE with gamma 1 and lambda 0.95; advantage whitening; clipped policy
and value losses (0.2 each).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from gendiv import artifacts, data, outputs, runs, stages
from gendiv.config import KL_ESTIMATORS, Config, ConfigError
from gendiv.lm import (block_input, entropy_from_logits, frozen_blocks, gather_logprobs, generate_kwargs,
                       response_outputs, tokenizer_sides)
from gendiv.models import load_causal_lm, load_policy, pick_device, save_pretrained_atomic


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on response positions up to and including the first EOS, 0 after it.

    The mask is positional: what ``generate`` writes after EOS (padding) is never trained on,
    rewarded or valued, while a pad token the policy samples before EOS is a token like any other
    (its log-probability counts, and the sequence's score still lands on its last real token).
    """
    is_eos = response_ids == eos_token_id
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    return (~after_eos).float()


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "squared") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    * ``log_ratio`` (k1, Schulman 2020, "Approximating KL divergence"): log pi - log pi_ref;
      unbiased, but any single token can be negative.
    * ``squared`` (k2): 0.5 * (log pi_ref - log pi)^2, the estimator of the paper's code
      (rlvsil); never negative, low variance, biased for large divergences. Used as a per-token
      reward (:func:`token_rewards`), its policy gradient is second order in the log-ratio, so
      near pi_ref it does not pull the policy back, and it pushes tokens the policy already made
      rarer than pi_ref rarer still: from a sharpened pi_ref it moves away, to pi_ref truncated
      to its likeliest tokens (``tests/test_ppo_math.py``). So a larger ``kl_coef`` need not
      mean a policy closer to SFT (the KL sweep, chapter 8).
    * ``k3``: (r - 1) - log r with r = pi_ref / pi; unbiased and never negative (the form GRPO
      uses as a loss).

    The default is ``squared``, the paper's.
    """
    diff = logprobs - ref_logprobs
    if estimator == "log_ratio":
        return diff
    if estimator == "squared":
        return 0.5 * diff.pow(2)
    if estimator == "k3":
        return torch.expm1(-diff) + diff  # (r - 1) - log r with r = pi_ref / pi
    raise ValueError(f"Unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}.")


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float, estimator: str = "squared"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * KL_t, plus the sequence score at the last response
    token (Ziegler et al. 2019; Stiennon et al. 2020, eq. 2). Returns (rewards, kl)."""
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last response token),
    A_t = delta_t + gamma * lam * A_{t+1}; returns R_t = A_t + V_t. Masked positions get 0.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        next_value = torch.where(m > 0, values[:, t], next_value * 0)
        next_adv = torch.where(m > 0, adv, next_adv * 0)
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           reduce=None) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked entries (and zero mean if ``shift_mean``).

    ``reduce`` sums a tensor over every process (data-parallel PPO): the mean and variance are
    then those of the whole rollout batch, not of one process's share."""
    total = (lambda t: t) if reduce is None else reduce
    count = total((mask.sum()).reshape(1)).clamp(min=1)
    mean = total((x * mask).sum().reshape(1)) / count
    var = total((((x - mean) ** 2) * mask).sum().reshape(1)) / count
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), to minimise:
    mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Also returns the clip fraction and the approximate KL between old and new policy
    (k3 = mean((ratio - 1) - log ratio), Schulman 2020).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask).item()
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask).item()
    return loss, {"clip_fraction": clipfrac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (the PPO2 baselines form): 0.5 * mean(max((V - R)^2, (V_clip - R)^2)),
    V_clip = V_old + clip(V - V_old, -eps, eps)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        frac = masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask).item()
    return loss, {"value_clip_fraction": frac}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens (1 is a perfect value function)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - values
    var_e = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float(1 - var_e / var_r.clamp(min=1e-8))


class AdaptiveKLController:
    """Ziegler et al. (2019): kl_coef *= 1 + clip((KL / target - 1), -0.2, 0.2) * n_steps / horizon.
    Off by default, as in the paper (fixed kl_coef)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = max(min(current_kl / self.target - 1, 0.2), -0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


# ------------------------------------------------------------------ the model
class PolicyWithValueHead(torch.nn.Module):
    """The policy LM with a scalar value head on its trunk's last hidden state.

    Paper (its code): the value function shares the policy's trunk and its head is newly
    initialised; here with N(0, 1/(hidden+1)) weights and zero bias (the summarize_from_feedback
    details' layer_init). ``lm`` is any transformers causal LM (``lm.base_model`` is its trunk)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.value_head.weight, std=1 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                temperature: float = 1.0, start: tuple[int, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability logits and values for the last ``n_response`` tokens of each row
        (``start``: from the input of a block on, :func:`gendiv.lm.response_outputs`)."""
        return response_outputs(self.lm, input_ids, attention_mask, n_response, temperature, self.value_head,
                                start=start)


# ------------------------------------------------------------------ rollouts
@dataclass
class Rollout:
    """One batch of episodes: prompt and response tokens, and everything PPO needs about them."""

    input_ids: torch.Tensor        # (B, Lq + Lr) prompt (left-padded) then response
    attention_mask: torch.Tensor   # (B, Lq + Lr): real prompt tokens and response up to EOS
    response: torch.Tensor         # (B, Lr)
    mask: torch.Tensor             # (B, Lr) response tokens up to and including the first EOS
    logprobs: torch.Tensor         # (B, Lr) under the policy that sampled them
    ref_logprobs: torch.Tensor     # (B, Lr) under the frozen SFT policy
    values: torch.Tensor           # (B, Lr)
    entropy: torch.Tensor          # (B, Lr)
    scores: torch.Tensor           # (B,) normalised RM score (after any missing-EOS penalty)
    prompts: list[str]
    texts: list[str]
    generation_s: float
    scoring_s: float
    frozen: int = 0                # bottom blocks that train nothing (0: none, the model runs whole)
    block_input: torch.Tensor | None = None  # (B, Lq + Lr, hidden) entering block ``frozen``


@torch.no_grad()
def rollout(policy: PolicyWithValueHead, ref_lm, reward_model, tokenizer, prompts: list[str], *,
            max_new_tokens: int, max_prompt_tokens: int, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, seed: int = 0, missing_eos_penalty: float | None = None,
            frozen: int = 0) -> Rollout:
    """Sample one response per prompt from the policy (KV cache, left padding), then score it
    with the policy (log-probs, values, entropy), the reference and the normalised RM. With
    ``frozen`` > 0 bottom blocks that train nothing, the policy's pass keeps the input of the
    first block that trains, so that PPO's updates start there (same numbers, less compute)."""
    device = next(policy.parameters()).device
    with tokenizer_sides(tokenizer, "left", "left"):
        enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                        add_special_tokens=False).to(device)
    was_training = policy.training
    policy.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    out = policy.lm.generate(**enc, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             **generate_kwargs(policy.lm, enc["input_ids"], max_new_tokens))
    generation_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    response = out[:, enc["input_ids"].shape[1]:]
    mask = response_mask(response, eos)
    attention_mask = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    n = response.shape[1]
    below = block_input(policy.lm, out, attention_mask, frozen) if frozen else None
    logits, values = policy(out, attention_mask, n, temperature, start=(frozen, below) if frozen else None)
    ref_logits, _ = response_outputs(ref_lm, out, attention_mask, n, temperature)
    logprobs, ref_logprobs = gather_logprobs(logits, response), gather_logprobs(ref_logits, response)
    entropy = entropy_from_logits(logits)
    texts = [tokenizer.decode(r[: int(m.sum())], skip_special_tokens=True).strip()
             for r, m in zip(response.tolist(), mask.cpu())]
    scores = torch.as_tensor(reward_model.score(prompts, texts), dtype=torch.float32, device=device)
    if missing_eos_penalty is not None:
        has_eos = (response == eos).any(dim=1)
        scores = torch.where(has_eos, scores, scores - missing_eos_penalty)
    policy.train(was_training)
    return Rollout(out, attention_mask, response, mask, logprobs, ref_logprobs, values, entropy, scores,
                   prompts, texts, generation_s, time.perf_counter() - t0, frozen, below)


# ------------------------------------------------------------------ the loop
STEP_LOG_COLUMNS = [
    "step", "episodes", "proxy_reward", "kl", "kl_log_ratio", "total_reward", "kl_coef", "entropy",
    "response_length", "eos_share", "policy_loss", "value_loss", "clip_fraction", "value_clip_fraction",
    "approx_kl", "explained_variance", "lr", "rollout_tokens_per_s", "update_tokens_per_s", "wall_s"]


class PPOTrainer:
    """PPO for RLHF on ``accelerate`` (one process, or several with ``accelerate launch``).

    Each step: a batch of prompts (a seeded permutation of ``prompts``, epoch after epoch) is
    rolled out, rewarded (:func:`token_rewards`), advantages are estimated with GAE and whitened,
    and ``ppo_epochs`` passes of clipped policy and value updates run over minibatches, with the
    learning rate decayed linearly to zero. Every random draw is derived from (seed, step), so a
    run resumed from a checkpoint continues exactly as if it had not stopped.

    With several processes (``accelerate launch``) the sizes keep their global meaning, as TRL's
    and OpenRLHF's configs define them: ``rollout_batch_size`` prompts a step and
    ``minibatch_size`` rollouts a gradient step in all, each process taking its equal share (both
    must divide by the number of processes). Each process samples with its own seed; advantages
    are whitened over the whole batch and the logged statistics are means over every process; the
    learning rate decays to zero exactly at the last optimiser step.
    """

    def __init__(self, policy_lm, ref_lm, reward_model, tokenizer, prompts: list[str], ppo, *,
                 max_new_tokens: int, max_prompt_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, checkpoint_path: Path | None = None, run_id: str = "",
                 reuse_frozen: bool = True):
        if not prompts:
            raise ValueError("PPO needs at least one prompt.")
        self.ppo, self.seed, self.prompts, self.tokenizer = ppo, seed, prompts, tokenizer
        self.sampling = dict(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p)
        device = next(policy_lm.parameters()).device
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        world = self.accelerator.num_processes
        for name in ("rollout_batch_size", "minibatch_size"):
            if getattr(ppo, name) % world:
                raise ConfigError(f"ppo.{name} ({getattr(ppo, name)}) must divide by the {world} processes that "
                                  f"share it; set it to a multiple of {world} (the sizes are global).")
        torch.manual_seed(seed)
        policy = PolicyWithValueHead(policy_lm).to(device)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=ppo.lr, eps=1e-5)
        # The schedule counts real optimiser steps: it is stepped once per step, on every process
        # (accelerate's prepared scheduler would step once per process at each call).
        self.n_updates = ppo.steps * ppo.ppo_epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1 - i / self.n_updates))
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.ref_lm = ref_lm.eval().requires_grad_(False)
        # The bottom blocks that train nothing (model.freeze_fraction) give the same input to the
        # first block that trains at every PPO epoch: computed once per rollout, not per pass.
        self.frozen = frozen_blocks(policy_lm) if reuse_frozen else 0
        self.reward_model = reward_model
        self.kl_controller = AdaptiveKLController(ppo.kl_coef, ppo.kl_target, ppo.kl_horizon) \
            if ppo.adaptive_kl else None
        self.kl_coef = ppo.kl_coef
        self.step, self.log, self.samples = 0, [], []
        self.checkpoint_path, self.run_id = checkpoint_path, run_id
        if checkpoint_path is not None and checkpoint_path.exists():
            self.load_checkpoint()

    @property
    def unwrapped(self) -> PolicyWithValueHead:
        return self.accelerator.unwrap_model(self.policy)

    def prompts_for_step(self, step: int) -> list[str]:
        """This process's share of the step's prompts: consecutive slices of a per-epoch seeded
        permutation, dealt out to the processes in turn."""
        n, size = len(self.prompts), self.ppo.rollout_batch_size
        out = []
        for i in range(step * size, (step + 1) * size):
            epoch, pos = divmod(i, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(self.prompts[int(perm[pos])])
        acc = self.accelerator
        return out[acc.process_index::acc.num_processes]

    def train_step(self) -> dict[str, float]:
        """One rollout and its PPO updates; returns the step's log row."""
        c, step, t_start = self.ppo, self.step, time.perf_counter()
        acc = self.accelerator
        batch = rollout(self.unwrapped, self.ref_lm, self.reward_model, self.tokenizer, self.prompts_for_step(step),
                        seed=self.seed * 1_000_003 + step + acc.process_index * 7_919_993,
                        missing_eos_penalty=c.missing_eos_penalty, frozen=self.frozen, **self.sampling)
        mask = batch.mask
        with torch.no_grad():
            rewards, kl = token_rewards(batch.scores, batch.logprobs, batch.ref_logprobs, mask, self.kl_coef,
                                        c.kl_estimator)
            advantages, returns = gae(rewards, batch.values, mask, c.gamma, c.lam)
            advantages = whiten(advantages, mask, reduce=self._sum if acc.num_processes > 1 else None)
        t_update = time.perf_counter()
        n_rows, n = len(batch.texts), batch.response.shape[1]
        losses: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_fraction",
                                                          "value_clip_fraction", "approx_kl")}
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        mb = c.minibatch_size // acc.num_processes  # this process's share of a minibatch
        self.policy.train()
        for _ in range(c.ppo_epochs):
            for idx in torch.randperm(n_rows, generator=generator).split(mb):
                idx = idx.to(mask.device)
                start = (batch.frozen, batch.block_input[idx]) if batch.frozen else None
                logits, values = self.policy(batch.input_ids[idx], batch.attention_mask[idx], n,
                                             self.sampling["temperature"], start=start)
                logprobs = gather_logprobs(logits, batch.response[idx])
                pg, pg_stats = policy_loss(logprobs, batch.logprobs[idx], advantages[idx], mask[idx], c.clip)
                vf, vf_stats = value_loss(values, batch.values[idx], returns[idx], mask[idx], c.value_clip)
                loss = pg + c.vf_coef * vf
                self.accelerator.backward(loss)
                if c.max_grad_norm is not None:
                    self.accelerator.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                for k, v in {"policy_loss": pg.item(), "value_loss": vf.item(), **pg_stats, **vf_stats}.items():
                    losses[k].append(v)
        update_s = time.perf_counter() - t_update
        kl_seq = self._mean(kl.sum(1).mean().item())
        if self.kl_controller is not None:
            self.kl_coef = self.kl_controller.update(kl_seq, c.rollout_batch_size)
        lengths = mask.sum(1)
        row = {
            "step": step + 1, "episodes": (step + 1) * c.rollout_batch_size,
            "proxy_reward": self._mean(batch.scores.mean().item()), "kl": kl_seq,
            "kl_log_ratio": self._mean(((batch.logprobs - batch.ref_logprobs) * mask).sum(1).mean().item()),
            "total_reward": self._mean((batch.scores - self.kl_coef * kl.sum(1)).mean().item()),
            "kl_coef": self.kl_coef,
            "entropy": self._mean(masked_mean(batch.entropy, mask).item()),
            "response_length": self._mean(lengths.mean().item()),
            "eos_share": self._mean((batch.response == self.tokenizer.eos_token_id).any(1).float().mean().item()),
            **{k: self._mean(sum(v) / len(v)) for k, v in losses.items()},
            "explained_variance": self._mean(explained_variance(batch.values, returns, mask)),
            "lr": self.scheduler.get_last_lr()[0],
            "rollout_tokens_per_s": lengths.sum().item() / max(batch.generation_s, 1e-9),
            "update_tokens_per_s": c.ppo_epochs * int(batch.attention_mask.sum()) / max(update_s, 1e-9),
            "wall_s": time.perf_counter() - t_start,
        }
        self.log.append(row)
        if c.log_samples_every and (step == 0 or (step + 1) % c.log_samples_every == 0):
            self.samples += [{"step": step + 1, "prompt": p, "response": t, "proxy_reward": float(s)}
                             for p, t, s in zip(batch.prompts[:2], batch.texts[:2], batch.scores.tolist()[:2])]
        self.step += 1
        return row

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every process."""
        return self.accelerator.reduce(t, reduction="sum")

    def _mean(self, value: float) -> float:
        """A per-process statistic as the mean over every process (equal shares of the batch)."""
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="mean").item())

    def train(self, steps: int | None = None, desc: str = "PPO") -> list[dict[str, float]]:
        """Train up to ``steps`` (default: the config's), checkpointing as configured; returns the log."""
        steps = self.ppo.steps if steps is None else steps
        bar = tqdm(total=steps, initial=self.step, desc=desc, disable=not self.accelerator.is_main_process)
        while self.step < steps:
            runs.take_freed_cores()
            row = self.train_step()
            bar.update(1)
            bar.set_postfix(reward=f"{row['proxy_reward']:.2f}", kl=f"{row['kl']:.2f}")
            if self.checkpoint_path is not None and self.ppo.checkpoint_every \
                    and self.step % self.ppo.checkpoint_every == 0 and self.step < self.ppo.steps:
                self.save_checkpoint()
        bar.close()
        return self.log

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        """Everything needed to continue: weights, optimiser, schedule, step, logs (atomic)."""
        if not self.accelerator.is_main_process:
            return
        state = {"run_id": self.run_id, "step": self.step, "kl_coef": self.kl_coef, "log": self.log,
                 "samples": self.samples, "policy": self.unwrapped.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("run_id") != self.run_id:
            print(f"Ignoring checkpoint {self.checkpoint_path}: it belongs to another configuration.")
            return
        self.unwrapped.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.kl_coef = state["step"], state["kl_coef"]
        self.log, self.samples = state["log"], state["samples"]
        print(f"Resuming PPO from step {self.step} ({self.checkpoint_path}).")


def reward_trend(log: pd.DataFrame, column: str = "proxy_reward", windows: int = 5,
                 flat_share: float = 0.2) -> dict[str, float | bool]:
    """Has the rise of ``column`` flattened? The steps are cut into ``windows`` consecutive parts;
    ``rise`` is the last part's mean minus the first's, ``last_rise`` the last part's mean minus
    the one before it, and the curve counts as flattened when it rose and its last part added less
    than ``flat_share`` of the rise (with 5 parts, a straight line adds a quarter)."""
    if len(log) < windows:
        raise ValueError(f"reward_trend needs at least {windows} steps, got {len(log)}.")
    means = [float(part.mean()) for part in np.array_split(log[column].to_numpy(dtype=float), windows)]
    rise, last_rise = means[-1] - means[0], means[-1] - means[-2]
    return {"first": means[0], "last": means[-1], "before_last": means[-2], "rise": rise, "last_rise": last_rise,
            "flattened": bool(rise > 0 and last_rise < flat_share * rise)}


# ------------------------------------------------------------------ stages
def build_ppo(cfg: Config, force: bool = False, kl_coef: float | None = None,
              estimator: str | None = None) -> dict[str, Path]:
    """Stage ``ppo`` (notebook 04; ``ppo_kl<value>[_<estimator>]`` for the sweep of notebook 08): PPO from the
    SFT policy against the normalised RM on the ID RL prompts. Saves the policy as an ordinary
    transformers checkpoint (``models/<stage>``, with ``value_head.pt`` beside it), the step log
    (``logs/<stage>.csv``) and logged samples; checkpoints every ``ppo.checkpoint_every`` steps
    under ``checkpoints/<stage>`` and resumes from there after an interruption."""
    name = artifacts.ppo_stage(cfg, kl_coef, estimator)
    run_cfg = cfg if name == "ppo" else artifacts.with_kl_coef(cfg, cfg.ppo.kl_coef if kl_coef is None else kl_coef,
                                                                estimator)

    def body(root: Path) -> dict[str, Path]:
        sft = artifacts.sft_path(cfg)
        policy_lm, tok, _ = load_policy(cfg, sft)
        ref_lm = load_causal_lm(sft, pick_device(cfg.model.device))
        rm = artifacts.load_reward_model(cfg)
        prompts = [r["prompt"] for r in data.load_split(cfg, "id", "rl")]
        s = cfg.sampling
        trainer = PPOTrainer(policy_lm, ref_lm, rm, tok, prompts, run_cfg.ppo, max_new_tokens=s.max_new_tokens,
                             max_prompt_tokens=cfg.max_prompt_tokens,
                             temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=cfg.seed,
                             checkpoint_path=root / "checkpoints" / name / "state.pt",
                             run_id=runs.stage_hash(run_cfg, name))
        trainer.train(desc=f"PPO (kl_coef={run_cfg.ppo.kl_coef:g})")
        policy = trainer.unwrapped
        lm = policy.lm.merge_and_unload() if cfg.model.adapter == "lora" else policy.lm
        out = save_pretrained_atomic(lm, tok, root / "models" / name)
        torch.save(policy.value_head.state_dict(), out / "value_head.pt")
        log = pd.DataFrame(trainer.log, columns=STEP_LOG_COLUMNS)
        paths = {"policy": out, "log": runs.write_csv(root / "logs" / f"{name}.csv", log),
                 "samples": runs.write_jsonl(root / "logs" / f"{name}_samples.jsonl", trainer.samples)}
        (root / "checkpoints" / name / "state.pt").unlink(missing_ok=True)
        return paths

    return runs.run_stage(run_cfg, name, body, force=force)


def evaluate_ppo(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``ppo_eval`` (notebook 04): PPO samples on the same test inputs as chapter 2's SFT
    samples, with gold utilities averaged over ``sampling.utility_samples`` samples per input as
    there (``logs/ppo_gold_utility.csv``); the first sample is the one chapter 6 judges. And
    ``diversity.k`` samples on each of the first ``diversity.n_inputs`` (with diversity's seed), the
    ones chapter 7 measures and chapter 8's sweep reuses for this run: drawn here, the sweep need not
    wait for chapter 7 (:func:`gendiv.outputs.sample_k`)."""
    def body(root: Path) -> dict[str, Path]:
        world = data.world_or_none(cfg)
        paths, rows = outputs.sample_outputs(cfg, artifacts.ppo_path(cfg), "ppo", artifacts.test_records(cfg),
                                             root / "samples", world)
        paths["gold_utility"] = runs.write_csv(root / "logs" / "ppo_gold_utility.csv",
                                               outputs.gold_utility_frame(rows))
        paths.update(outputs.sample_k(cfg, artifacts.ppo_path(cfg), "ppo",
                                      artifacts.test_records(cfg, cfg.diversity.n_inputs),
                                      stages.seed(cfg, "diversity"), root / "samples"))
        return paths

    return runs.run_stage(cfg, "ppo_eval", body, force=force)
