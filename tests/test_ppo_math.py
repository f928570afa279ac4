"""PPO formulas against hand-worked numbers and invariants."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gendiv import ppo


def test_response_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask = ppo.response_mask(ids, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_a_sampled_pad_token_is_an_ordinary_token_before_eos():
    # [t, PAD, t2, EOS, PAD] with PAD = 0 and EOS = 2: the mask is positional up to the first EOS,
    # so the score lands on EOS; a response that starts with PAD keeps its tokens and its score.
    ids = torch.tensor([[5, 0, 7, 2, 0], [0, 6, 2, 0, 0]])
    mask = ppo.response_mask(ids, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    rewards, _ = ppo.token_rewards(torch.tensor([1.0, 3.0]), torch.zeros(2, 5), torch.zeros(2, 5), mask, 0.1)
    assert rewards.tolist() == [[0, 0, 0, 1.0, 0], [0, 0, 3.0, 0, 0]]


def test_whitening_over_processes_equals_whitening_the_whole_batch():
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    whole = ppo.whiten(x, mask)
    parts = [(x[:3], mask[:3]), (x[3:], mask[3:])]  # two processes' shares of the batch
    mean = (x * mask).sum() / mask.sum()
    # What accelerate's reduce(sum) returns to each process, in the order whiten asks for them:
    # the count, the sum and the sum of squared deviations, each over both shares.
    totals = [mask.sum(), (x * mask).sum(), (((x - mean) ** 2) * mask).sum()]
    for rows, (xs, ms) in zip((slice(0, 3), slice(3, 6)), parts):
        answers = iter(totals)
        reduced = ppo.whiten(xs, ms, reduce=lambda t, answers=answers: next(answers).reshape(1))
        torch.testing.assert_close(reduced, whole[rows])
    assert not torch.allclose(ppo.whiten(*parts[0]), whole[:3])  # per-process whitening differs


def test_kl_estimators():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    assert torch.all(ppo.kl_estimate(logp, logp, "log_ratio") == 0)
    assert torch.all(ppo.kl_estimate(logp, logp, "squared") == 0)
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.9]]))
    sq = ppo.kl_estimate(logp, ref, "squared")
    assert torch.all(sq >= 0)
    assert sq[0, 0].item() == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item() ** 2)
    lr = ppo.kl_estimate(logp, ref, "log_ratio")
    assert lr[0, 1].item() < 0  # a single token's log ratio can be negative
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        ppo.kl_estimate(logp, ref, "k9")


def test_log_ratio_is_non_negative_in_expectation():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(50), 0)
    q = torch.softmax(torch.randn(50), 0)
    samples = torch.multinomial(p, 200_000, replacement=True)
    est = ppo.kl_estimate(torch.log(p[samples]), torch.log(q[samples]), "log_ratio").mean().item()
    exact = (p * (p.log() - q.log())).sum().item()
    assert est >= 0 and est == pytest.approx(exact, rel=0.05)


def test_token_rewards_put_the_score_on_the_last_response_token():
    logp = torch.zeros(2, 4)
    ref = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]])
    rewards, kl = ppo.token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([0.0, -0.05, 2.0, 0.0])  # 0.5 * 1^2 * 0.1
    assert rewards[1].tolist() == pytest.approx([0.0, 0.0, 0.0, -1.0])
    assert kl[0, 3] == 0


def test_gae_against_hand_worked_numbers():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta = [0 + 0.2 - 0.5, 0 + 0.4 - 0.2, 1 - 0.4] = [-0.3, 0.2, 0.6]
    # A2 = 0.6; A1 = 0.2 + 0.95 * 0.6 = 0.77; A0 = -0.3 + 0.95 * 0.77 = 0.4315
    assert adv[0].tolist() == pytest.approx([0.4315, 0.77, 0.6])
    assert ret[0].tolist() == pytest.approx([0.9315, 0.97, 1.0])
    # lambda = 1, gamma = 1: returns are the sum of future rewards
    _, ret1 = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert ret1[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_gae_ignores_tokens_after_the_response():
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.2, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert adv[0, 2] == 0 and ret[0, 2] == 0
    assert adv[0, 1].item() == pytest.approx(1.0 - 0.2)  # V after the last token is 0


def test_whitening():
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 3 + 2
    mask = torch.ones(4, 6)
    mask[0, 4:] = 0
    w = ppo.whiten(x, mask)
    assert ppo.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.masked_mean(w ** 2, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(w[mask == 0] == 0)


def test_clipped_objective_has_no_gradient_outside_the_clip_range():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    # ratio e^0.5 > 1.2 with A > 0, and e^-0.5 < 0.8 with A < 0: both clipped, no gradient.
    new = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss, info = ppo.policy_loss(new, old, adv, mask, clip=0.2)
    loss.backward()
    assert torch.all(new.grad == 0) and info["clip_fraction"] == 1.0
    # inside the range the gradient is -A * ratio / n
    inside = torch.tensor([[0.1, -0.1]], requires_grad=True)
    loss, info = ppo.policy_loss(inside, old, adv, mask, clip=0.2)
    loss.backward()
    expected = torch.tensor([[-1.0 * torch.exp(torch.tensor(0.1)) / 2, 1.0 * torch.exp(torch.tensor(-0.1)) / 2]])
    torch.testing.assert_close(inside.grad, expected)
    assert info["clip_fraction"] == 0.0 and info["approx_kl"] > 0


def test_value_loss_clips_large_updates():
    old = torch.tensor([[0.0]])
    ret = torch.tensor([[1.0]])
    mask = torch.ones(1, 1)
    far = torch.tensor([[0.9]], requires_grad=True)
    loss, info = ppo.value_loss(far, old, ret, mask, clip=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)  # the clipped value 0.2 is further from R
    assert far.grad.item() == 0 and info["value_clip_fraction"] == 1.0


def test_explained_variance_and_adaptive_kl():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    assert ppo.explained_variance(r, r, mask) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.zeros(1, 3), r, mask) == pytest.approx(0.0)
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 100) > 0.1 and ppo.AdaptiveKLController(0.1, 6.0, 10000).update(1.0, 100) < 0.1


def test_reward_trend_tells_a_plateau_from_a_climb():
    steps = np.arange(100)
    saturating = pd.DataFrame({"proxy_reward": 1 - np.exp(-steps / 12)})
    climbing = pd.DataFrame({"proxy_reward": steps / 100})
    flat = ppo.reward_trend(saturating)
    assert flat["flattened"] and flat["rise"] == pytest.approx(flat["last"] - flat["first"])
    line = ppo.reward_trend(climbing)
    assert not line["flattened"]
    assert line["last_rise"] == pytest.approx(line["rise"] / 4)  # five equal parts of a line
    assert not ppo.reward_trend(pd.DataFrame({"proxy_reward": -steps / 100.0}))["flattened"]  # a fall is no plateau
    with pytest.raises(ValueError, match="at least 5 steps"):
        ppo.reward_trend(saturating.head(3))


def test_k3_penalty_by_hand():
    """k3 = (r - 1) - log r with r = pi_ref / pi: for log pi = log 0.5 and log pi_ref = log 0.25,
    r = 0.5, so k3 = -0.5 + log 2 = 0.1931; it is 0 where the policies agree and never negative."""
    import math

    lp, ref = torch.tensor([math.log(0.5), math.log(0.3)]), torch.tensor([math.log(0.25), math.log(0.3)])
    k3 = ppo.kl_estimate(lp, ref, "k3")
    assert k3[0].item() == pytest.approx(-0.5 + math.log(2), abs=1e-6) and k3[1].item() == pytest.approx(0.0)
    assert (ppo.kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()


def penalty_flow(estimator: str, logits: torch.Tensor, ref: torch.Tensor, steps: int = 300, lr: float = 5.0):
    """Exact expected policy-gradient ascent on the KL penalty alone, used as PPO uses it: as a
    per-token reward (:func:`gendiv.ppo.token_rewards`, score 0, one-token responses), so the
    gradient is E_pi[grad log pi(a) * r(a)] with r held fixed. Returns the KL(pi || ref) after each
    step and the last pi."""
    kls = []
    for _ in range(steps):
        logits = logits.detach().requires_grad_(True)
        pi = torch.softmax(logits, -1)
        log_pi = torch.log(pi).detach()[:, None]
        reward, _ = ppo.token_rewards(torch.zeros(len(pi)), log_pi, torch.log(ref)[:, None],
                                      torch.ones(len(pi), 1), kl_coef=1.0, estimator=estimator)
        (grad,) = torch.autograd.grad((pi * reward[:, 0]).sum(), logits)
        logits = logits + lr * grad
        p = torch.softmax(logits, -1).detach()
        kls.append(float((p * (p.log() - ref.log())).sum()))
    return kls, torch.softmax(logits, -1).detach()


def test_the_k2_penalty_as_a_reward_pulls_a_sharpened_policy_further_from_the_reference():
    """Why the paper's k2 penalty does not hold PPO near SFT (the deviations page, the KL sweep).
    As a per-token reward, k1's policy gradient is the gradient of -KL(pi || pi_ref): first order in
    the log-ratio d, so a policy near the reference is pulled back to it. k2 = d^2 / 2 gives
    E[grad log pi * d^2 / 2]: second order, with no first-order pull, and it lowers every token
    whose d^2 is above its mean under pi, including those the policy already made rarer than the reference
    (d < 0), which then grow rarer. From a sharpened reference the flow ends on the reference
    truncated to its likeliest tokens (pi / pi_ref constant there, zero elsewhere): a fixed point
    of k2 with a larger KL and less entropy than where it started."""
    torch.manual_seed(0)
    ref = torch.softmax(torch.randn(20), -1)
    # Near the reference k1's pull is first order in d and k2's second: shrink d tenfold and k2's
    # pull shrinks about tenfold relative to k1's (0.0062 -> 0.0007 here).
    ratios = []
    for d_scale in (1e-2, 1e-3):
        d = d_scale * torch.randn(20)
        pulls = {}
        for est in ("log_ratio", "squared"):
            logits = (ref.log() + d).requires_grad_(True)
            pi = torch.softmax(logits, -1)
            r, _ = ppo.token_rewards(torch.zeros(20), torch.log(pi).detach()[:, None], ref.log()[:, None],
                                     torch.ones(20, 1), 1.0, est)
            pulls[est] = torch.autograd.grad((pi * r[:, 0]).sum(), logits)[0].norm().item()
        ratios.append(pulls["squared"] / pulls["log_ratio"])
    assert 0 < ratios[1] < ratios[0] / 5 and ratios[0] < 0.05

    sharpened = 1.5 * ref.log()  # the reference at temperature 2/3: KL 0.053 nats
    start = torch.softmax(sharpened, -1)
    start_kl = float((start * (start.log() - ref.log())).sum())
    kls, pi = penalty_flow("log_ratio", sharpened, ref)
    assert all(b < a for a, b in zip([start_kl] + kls, kls[:50]))  # pulled back at every step
    assert kls[-1] < 1e-4
    kls, pi = penalty_flow("squared", sharpened, ref)
    assert kls[-1] > 5 * start_kl
    entropy = lambda p: float(-(p * p.log()).sum())  # noqa: E731
    assert entropy(pi) < entropy(start) - 0.3
    kept = pi > 1e-3
    ratio = pi[kept] / ref[kept]
    assert ratio.max() / ratio.min() == pytest.approx(1.0, abs=0.02)  # the reference, renormalised on its support
    assert kls[-1] == pytest.approx(-math.log(ref[kept].sum().item()), rel=0.02)
    order = torch.argsort(ref, descending=True)
    assert kept[order].tolist() == sorted(kept[order].tolist(), reverse=True)  # its likeliest tokens
