"""Shared fixtures. The tests never reach the network: the hub is marked offline."""

import os
from pathlib import Path

import pytest
import torch
from gendiv import models
from transformers import AutoModelForSequenceClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: one thread each, or torch's threads oversubscribe the cores
    # and every job runs 2-3x slower. Notebook kernels and subprocesses inherit the variable.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"


def pytest_collection_modifyitems(items):
    """The slow tests (minutes each) first: with a worker per core they run side by side from the
    start instead of one after another at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def smoke_cfg(tmp_path):
    from gendiv.config import load_profile

    return load_profile("smoke", run_dir=str(tmp_path / "run"))


CORPUS = [f"SUBREDDIT: r/test\nTITLE: post {i}\nPOST: My landlord raised the rent and my roommate "
          f"stopped paying their share. Should I break the lease?\nTL;DR: landlord raised rent {i}"
          for i in range(60)]
"""A small corpus for the tokenizer and the micro models of the unit tests."""


@pytest.fixture(scope="session")
def tok():
    return models.train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny(tok):
    torch.manual_seed(0)
    return models.tiny_llama(tok, hidden_size=32, n_layers=4, n_heads=2, intermediate_size=64, max_length=128)


def micro_reward_model(tok, folder: Path) -> models.RewardModel:
    """A randomly headed micro RM (saved to ``folder`` and loaded as a sequence classifier)."""
    torch.manual_seed(0)
    base = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    models.save_pretrained_atomic(base, tok, folder / "base")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder / "base"), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    return models.RewardModel(model.eval(), tok, max_length=128)
