"""SFT's own adapter (``sft.adapter``): LoRA for SFT alone, whatever the later stages train."""

from dataclasses import replace

import pytest
from gendiv import models, sft
from gendiv.config import ConfigError, load_profile


def _trainable(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_sft_adapter_overrides_the_model_adapter(tmp_path, tok, tiny, smoke_cfg):
    models.save_pretrained_atomic(tiny, tok, tmp_path / "base")
    assert smoke_cfg.model.adapter == "none" and smoke_cfg.model.freeze_fraction == 0.5
    lora = replace(smoke_cfg, sft=replace(smoke_cfg.sft, adapter="lora"))
    assert sft.sft_adapter(lora) == "lora"
    model, _, counts = models.load_policy(lora, tmp_path / "base", sft.sft_adapter(lora))
    names = _trainable(model)
    assert names and all("lora_" in n for n in names)  # adapters only: no block, head or embedding
    # every block carries adapters, the bottom half too (which model.freeze_fraction keeps as is)
    assert any(".layers.0." in n for n in names) and any(".layers.3." in n for n in names)
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)

    model, _, _ = models.load_policy(smoke_cfg, tmp_path / "base", sft.sft_adapter(smoke_cfg))
    names = _trainable(model)  # left out: model.adapter's 'none', the top half of the blocks
    assert not any("lora_" in n for n in names)
    assert not any(".layers.0." in n or ".layers.1." in n for n in names)
    assert any(".layers.3." in n for n in names)

    both = replace(smoke_cfg, model=replace(smoke_cfg.model, adapter="lora"),
                   sft=replace(smoke_cfg.sft, adapter="none"))
    assert sft.sft_adapter(both) == "none"  # SFT's own choice wins over the policy stages'
    assert sft.sft_adapter(replace(both, sft=replace(both.sft, adapter=None))) == "lora"
    # chapter 2 says which: the adapter SFT used, not the policy stages'
    assert sft.describe_training(lora).startswith("LoRA adapters of rank 16")
    assert sft.describe_training(both) == "the blocks above the bottom 50%"


def test_an_unknown_sft_adapter_is_refused():
    with pytest.raises(ConfigError, match=r"sft.adapter must be 'none', 'lora' or left out .*'qlora'"):
        load_profile("smoke", **{"sft.adapter": "qlora"})


def test_the_sft_stage_merges_its_lora_adapters_into_a_plain_checkpoint(tmp_path):
    import json

    import torch
    import yaml
    from gendiv import artifacts, cli, config

    _, raw = config._read_profile("smoke")
    raw = {**raw, "sft": {**raw.get("sft", {}), "adapter": "lora"}}
    profile = tmp_path / "smoke_lora.yaml"
    profile.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    for name in ("data", "base", "sft"):
        cli.run_one_stage(name, str(profile), str(run))
    cfg = load_profile(profile, run_dir=str(run))
    folder = artifacts.sft_path(cfg)
    assert not (folder / "adapter_config.json").exists()  # merged: later stages load it as any model
    base = models.load_causal_lm(artifacts.base_path(cfg), torch.device("cpu")).state_dict()
    tuned = models.load_causal_lm(folder, torch.device("cpu")).state_dict()
    assert set(tuned) == set(base)  # no adapter weights left in the checkpoint
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    # LoRA reached the bottom blocks, which model.freeze_fraction (0.5 in smoke) would have kept
    assert any(".layers.0." in name and name.endswith("_proj.weight") for name in changed)
    assert not any("embed_tokens" in name or "norm" in name for name in changed)  # not adapted
    counts = json.loads((run / "logs" / "sft_parameters.json").read_text())
    assert 0 < counts["trainable"] < counts["total"] / 2

    # sft.interpolation: the same training, then half of the merged change kept, as the checkpoint
    half = tmp_path / "smoke_half.yaml"
    half.write_text(yaml.safe_dump({**raw, "sft": {**raw["sft"], "interpolation": 0.5}}))
    for name in ("data", "base", "sft"):
        cli.run_one_stage(name, str(half), str(tmp_path / "half"))
    halved = models.load_causal_lm(artifacts.sft_path(load_profile(half, run_dir=str(tmp_path / "half"))),
                                   torch.device("cpu")).state_dict()
    for name in changed:
        torch.testing.assert_close(halved[name], base[name] + 0.5 * (tuned[name] - base[name]),
                                   rtol=1e-4, atol=1e-5)
    assert all(torch.equal(halved[name], base[name]) for name in set(base) - changed)


def test_interpolation_keeps_its_share_of_the_change_by_hand(tok):
    import torch
    torch.manual_seed(1)
    base = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    tuned = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    with torch.no_grad():
        for p in base.parameters():
            p.fill_(1.0)
        for p in tuned.parameters():
            p.fill_(3.0)
        tuned.model.norm.weight[0] = -1.0  # one coordinate moved the other way
    sft.interpolate_toward_base(tuned, base, 0.75)
    # 1 + 0.75 x (3 - 1) = 2.5 and 1 + 0.75 x (-1 - 1) = -0.5, on every parameter
    assert all(torch.all(p == 2.5) for n, p in tuned.named_parameters() if n != "model.norm.weight")
    assert tuned.model.norm.weight[0] == -0.5 and torch.all(tuned.model.norm.weight[1:] == 2.5)
    assert all(torch.all(p == 1.0) for p in base.parameters())  # the base is read, not moved
    before = {n: p.clone() for n, p in tuned.named_parameters()}
    sft.interpolate_toward_base(tuned, base, 1.0)  # the model as trained
    assert all(torch.equal(before[n], p) for n, p in tuned.named_parameters())
    # chapter 2 says so
    assert sft.describe_training(load_profile("smoke", **{"sft.interpolation": 0.75})).endswith(
        "then 0.75 of the change is kept: weights = base + 0.75 x (SFT - base), weight-space ensembling (WiSE-FT)")

    wider = models.tiny_llama(tok, hidden_size=64, n_layers=2, n_heads=2, intermediate_size=64, max_length=128)
    with pytest.raises(ValueError, match=r"is \(\d+, 32\) here and \(\d+, 64\) in the base"):
        sft.interpolate_toward_base(tuned, wider, 0.5)
    deeper = models.tiny_llama(tok, hidden_size=32, n_layers=3, n_heads=2, intermediate_size=64, max_length=128)
    with pytest.raises(ValueError, match=r"other parameters .*layers\.2\."):
        sft.interpolate_toward_base(tuned, deeper, 0.5)


@pytest.mark.parametrize("bad", [0, 1.5, -0.25])
def test_an_interpolation_outside_its_range_is_refused(bad):
    with pytest.raises(ConfigError, match=rf"sft.interpolation must lie in \(0, 1\] .*got {bad}"):
        load_profile("smoke", **{"sft.interpolation": bad})
