"""Run by tests/test_ppo.py under `accelerate launch --multi_gpu --num_processes 2` on the CPU
(gloo): a tiny PPO run whose every process writes what it sampled, its final weights and its
learning rates to OUT/rank<i>.json, for the test to compare."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gendiv import models, ppo
from gendiv.config import PPOConfig

CORPUS = [f"Post {i}: the cat sat on the mat and the dog ate {i} eggs." for i in range(80)]


class CountingReward:
    def score(self, prompts, texts):
        return np.array([t.count("e") / max(len(t), 1) * 10 for t in texts], dtype=float)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tok = models.train_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)  # the same initial weights on every process
    lm = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=64)
    models.freeze_bottom(lm, 0.5)  # as the profiles: the frozen block's output computed once per rollout
    torch.manual_seed(0)
    ref = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=64)
    sampled = []
    rollout = ppo.rollout

    def recording_rollout(*args, **kwargs):
        batch = rollout(*args, **kwargs)
        sampled.append(batch.texts)
        return batch

    ppo.rollout = recording_rollout
    cfg = PPOConfig(steps=3, rollout_batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-3, kl_coef=0.05,
                    log_samples_every=0, checkpoint_every=0)
    trainer = ppo.PPOTrainer(lm, ref, CountingReward(), tok, [f"Post {i}:" for i in range(12)], cfg,
                             max_new_tokens=8, max_prompt_tokens=16, seed=3)
    log = trainer.train()
    weights = trainer.unwrapped.state_dict()
    digest = hashlib.sha256(b"".join(weights[k].cpu().numpy().tobytes() for k in sorted(weights))).hexdigest()
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": trainer.accelerator.num_processes, "sampled": sampled, "weights": digest,
        "lr": [row["lr"] for row in log], "updates": trainer.n_updates,
        "optimiser_steps": int(trainer.scheduler.last_epoch), "proxy_reward": [row["proxy_reward"] for row in log]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
