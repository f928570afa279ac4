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

import torch

KL_ESTIMATORS = ("log_ratio", "squared")


def response_mask(response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int | None = None) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it (and on padding).

    Tokens after EOS are never trained on, rewarded or valued.
    """
    is_eos = response_ids == eos_token_id
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    mask = ~after_eos
    if pad_token_id is not None and pad_token_id != eos_token_id:
        mask &= response_ids != pad_token_id
    return mask.float()


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "squared") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    * ``log_ratio`` (k1, Schulman 2020, "Approximating KL divergence"): log pi - log pi_ref;
      unbiased, but any single token can be negative.
    * ``squared`` (k2): 0.5 * (log pi_ref - log pi)^2, the estimator of the paper's code
      (rlvsil); never negative, low variance, biased for large divergences.

    The default is ``squared``, the paper's.
    """
    diff = logprobs - ref_logprobs
    if estimator == "log_ratio":
        return diff
    if estimator == "squared":
        return 0.5 * diff.pow(2)
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


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked entries (and zero mean if ``shift_mean``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
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
