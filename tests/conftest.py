"""Shared fixtures. The tests never reach the network: the hub is marked offline."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"


@pytest.fixture
def smoke_cfg(tmp_path):
    from gendiv.config import load_profile

    return load_profile("smoke", run_dir=str(tmp_path / "run"))
