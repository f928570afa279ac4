"""The PPO loop: log-probs at the positions generation used, learning on a toy reward,
determinism under a seed, and resumption from a checkpoint."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gendiv import models, ppo
from gendiv.lm import gather_logprobs
from gendiv.config import ConfigError, PPOConfig

CORPUS = [f"Post {i}: the cat sat on the mat and the dog ate {i} eggs." for i in range(80)]
TIMING = {"rollout_tokens_per_s", "update_tokens_per_s", "wall_s"}


class CountingReward:
    """A stand-in RM: the share of 'e' characters in the response (a reward PPO can climb)."""

    def score(self, prompts, texts):
        return np.array([t.count("e") / max(len(t), 1) * 10 for t in texts], dtype=float)


@pytest.fixture(scope="module")
def tok():
    return models.train_tokenizer(CORPUS, vocab_size=300)


def make_lm(tok, seed=0):
    torch.manual_seed(seed)
    return models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=64)


def trainer(tok, lm, ref, steps=4, checkpoint_path=None, reuse_frozen=True, **overrides):
    cfg = PPOConfig(**{**dict(steps=steps, rollout_batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-3,
                              kl_coef=0.05, log_samples_every=1, checkpoint_every=2), **overrides})
    prompts = [f"Post {i}:" for i in range(12)]
    return ppo.PPOTrainer(lm, ref, CountingReward(), tok, prompts, cfg, max_new_tokens=8, max_prompt_tokens=16,
                          seed=3, checkpoint_path=checkpoint_path, run_id="test", reuse_frozen=reuse_frozen)


def test_frozen_bottom_blocks_run_once_per_rollout_with_the_same_numbers(tok):
    """With the bottom blocks and embeddings frozen (model.freeze_fraction), PPO computes their
    output once per rollout and its updates start from there: the run is the one that passes the
    whole model every time, to the last bit, with fewer block passes."""
    def run(reuse):
        torch.manual_seed(0)
        lm = models.tiny_llama(tok, hidden_size=32, n_layers=4, n_heads=2, intermediate_size=64, max_length=64)
        models.freeze_bottom(lm, 0.5)
        calls = {"bottom": 0}
        lm.model.layers[0].register_forward_hook(lambda *a: calls.__setitem__("bottom", calls["bottom"] + 1))
        t = trainer(tok, lm, make_lm(tok), steps=3, reuse_frozen=reuse)
        t.train()
        return t, calls["bottom"]

    whole, whole_calls = run(False)
    reused, reused_calls = run(True)
    assert (whole.frozen, reused.frozen) == (0, 2)
    assert strip_timing(whole.log) == strip_timing(reused.log)
    for a, b in zip(whole.unwrapped.parameters(), reused.unwrapped.parameters()):
        assert torch.equal(a, b)
    # block 0 ran in generation and the rollout's pass either way; in each of the 2 epochs x 2
    # minibatches of a step only without reuse
    assert whole_calls - reused_calls == 3 * 2 * 2


def test_nothing_is_reused_when_the_bottom_trains(tok):
    lm = make_lm(tok)
    assert ppo.frozen_blocks(lm) == 0  # every block trains
    models.freeze_bottom(lm, 0.5)
    assert ppo.frozen_blocks(lm) == 1
    lm.get_input_embeddings().weight.requires_grad = True  # an embedding that trains: its blocks' input moves
    assert ppo.frozen_blocks(lm) == 0


def strip_timing(log):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in log]


def test_rollout_logprobs_match_generation_under_left_padding(tok):
    lm = make_lm(tok)
    policy = ppo.PolicyWithValueHead(lm)
    prompts = ["Post 1:", "Post 22: the cat sat on the mat"]  # different lengths: left padding
    batch = ppo.rollout(policy, lm, CountingReward(), tok, prompts, max_new_tokens=6, max_prompt_tokens=32, seed=1)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(1)
    out = lm.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=6,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, batch.input_ids)
    gen_logprobs = gather_logprobs(torch.stack(out.logits, dim=1).float(), batch.response)
    torch.testing.assert_close(batch.logprobs * batch.mask, gen_logprobs * batch.mask, atol=1e-4, rtol=1e-4)
    # the reference is the same network here, so every KL estimate is zero
    torch.testing.assert_close(batch.ref_logprobs, batch.logprobs)
    assert batch.values.shape == batch.response.shape


def test_ppo_raises_the_reward_with_finite_kl(tok):
    lm, ref = make_lm(tok), make_lm(tok)
    t = trainer(tok, lm, ref, steps=16)
    log = t.train()
    rewards = [r["proxy_reward"] for r in log]
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.3, rewards
    kls = [r["kl"] for r in log]
    assert all(np.isfinite(k) and k >= 0 for k in kls)
    assert kls[-1] > 0  # the policy moved away from the reference
    assert set(ppo.STEP_LOG_COLUMNS) == set(log[0])
    assert t.samples and {"step", "prompt", "response", "proxy_reward"} <= set(t.samples[0])


def test_frozen_reference_is_untouched(tok):
    lm, ref = make_lm(tok), make_lm(tok)
    before = copy.deepcopy(ref.state_dict())
    trainer(tok, lm, ref, steps=2).train()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_same_seed_same_result(tok):
    logs, params = [], []
    for _ in range(2):
        lm = make_lm(tok)
        t = trainer(tok, lm, make_lm(tok), steps=3)
        logs.append(strip_timing(t.train()))
        params.append(torch.cat([p.detach().flatten() for p in t.unwrapped.parameters()]))
    assert logs[0] == logs[1]
    assert torch.equal(params[0], params[1])


def test_resume_continues_where_it_stopped(tok, tmp_path):
    straight = trainer(tok, make_lm(tok), make_lm(tok), steps=4)
    straight.train()
    ckpt = tmp_path / "state.pt"
    first = trainer(tok, make_lm(tok), make_lm(tok), steps=4, checkpoint_path=ckpt)
    first.train(steps=2)  # "interrupted" after the checkpoint at step 2
    assert ckpt.exists()
    resumed = trainer(tok, make_lm(tok, seed=99), make_lm(tok), steps=4, checkpoint_path=ckpt)
    assert resumed.step == 2
    resumed.train()
    assert strip_timing(resumed.log) == strip_timing(straight.log)
    for a, b in zip(resumed.unwrapped.parameters(), straight.unwrapped.parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_configuration_is_ignored(tok, tmp_path):
    ckpt = tmp_path / "state.pt"
    trainer(tok, make_lm(tok), make_lm(tok), steps=4, checkpoint_path=ckpt).train(steps=2)
    t = ppo.PPOTrainer(make_lm(tok), make_lm(tok), CountingReward(), tok, ["Post 1:"],
                       PPOConfig(steps=2, rollout_batch_size=2, minibatch_size=2), max_new_tokens=4,
                       max_prompt_tokens=8, checkpoint_path=ckpt, run_id="other")
    assert t.step == 0


BANDIT_WORDS = ["apple", "banana", "cherry", "dog", "egg", "fig", "grape"]
BANDIT_REWARD = {"apple": 3.0, "banana": 1.5, "cherry": -1.0}


class Bandit:
    """A one-step bandit: the reward of the one-token answer to "Q:" (0 for any other token)."""

    def score(self, prompts, texts):
        return np.array([BANDIT_REWARD.get(t.strip(), 0.0) for t in texts])


def test_ppo_with_the_k1_penalty_finds_the_kl_regularised_optimum_of_a_bandit():
    """On a one-step bandit, max E[r] - beta KL(pi || pi_ref) is solved by
    pi*(y) = pi_ref(y) exp(r(y) / beta) / Z; PPO with the k1 estimator must land on it, for every
    beta, and its expected reward must rise as beta falls."""
    tok = models.train_tokenizer([f"Q: {w}" for w in BANDIT_WORDS] * 30, vocab_size=300)
    enc = tok(["Q:"], return_tensors="pt", add_special_tokens=False)
    reward = torch.zeros(len(tok))
    for word, value in BANDIT_REWARD.items():
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, ids)  # one token, one arm
        reward[ids[0]] = value

    def answer_distribution(lm):
        with torch.no_grad():
            return torch.softmax(lm(**enc).logits[0, -1].float(), -1)

    expected = []
    for beta in (0.5, 1.0, 2.0):
        lm = make_lm(tok)
        ref = copy.deepcopy(lm)
        optimum = answer_distribution(ref) * torch.exp(reward / beta)
        optimum /= optimum.sum()
        cfg = PPOConfig(steps=150, rollout_batch_size=64, minibatch_size=64, ppo_epochs=4, lr=3e-3, kl_coef=beta,
                        kl_estimator="log_ratio", log_samples_every=0, checkpoint_every=0)
        trainer = ppo.PPOTrainer(lm, ref, Bandit(), tok, ["Q:"], cfg, max_new_tokens=1, max_prompt_tokens=8, seed=1)
        trainer.train()
        learned = answer_distribution(trainer.unwrapped.lm)
        total_variation = 0.5 * (learned - optimum).abs().sum().item()
        assert total_variation < 0.05, (beta, total_variation)
        expected.append((learned * reward).sum().item())
    assert expected[0] > expected[1] > expected[2]


def test_data_parallel_ppo_on_two_cpu_processes(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs two processes on a CPU (gloo); with
    --cpu it would silently start one. Both must finish with identical weights, having drawn
    different samples, and the learning rate must reach zero exactly at the last optimiser step."""
    script = Path(__file__).parent / "multiprocess" / "ppo_data_parallel.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                             "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged: one model
    for step_0, step_1 in zip(ranks[0]["sampled"], ranks[1]["sampled"]):
        assert len(step_0) == len(step_1) == 4  # each process takes half of the 8 prompts
        assert step_0 != step_1
    # 3 steps x 2 PPO epochs x (8 // 4) minibatches = 12 optimiser steps, counted once each
    assert ranks[0]["updates"] == ranks[0]["optimiser_steps"] == 12
    assert ranks[0]["lr"][-1] == 0.0 and ranks[0]["lr"][-2] > 0.0
    assert ranks[0]["proxy_reward"] == ranks[1]["proxy_reward"]  # logged as means over both processes


def test_sizes_that_do_not_split_over_the_processes_are_refused(monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "num_processes", property(lambda self: 2))
    tok = models.train_tokenizer(CORPUS, vocab_size=300)
    lm = make_lm(tok)
    with pytest.raises(ConfigError, match=r"ppo.rollout_batch_size \(5\) must divide by the 2 processes"):
        trainer(tok, lm, make_lm(tok), rollout_batch_size=5, minibatch_size=5)
