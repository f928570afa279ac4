"""Supervised fine-tuning: the loss falls on the completion only."""

from conftest import CORPUS
from gendiv import sft


def test_sft_loss_is_on_the_completion_only(tok, tiny):
    records = [{"prompt": CORPUS[0].rsplit("\nTL;DR:", 1)[0] + "\nTL;DR:", "reference": "landlord raised rent"}]
    trainer = sft.make_trainer(tiny, tok, records, [], epochs=1, lr=1e-3, batch_size=1, scheduler="cosine",
                               max_length=128, max_prompt_tokens=112, seed=0, output_dir="/tmp/gendiv-sft-test")
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    assert row["completion"] == " landlord raised rent" + tok.eos_token  # TRL appended EOS
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    context = [i for i, lab in zip(ids, labels) if lab == -100]
    assert tok.decode(trained) == " landlord raised rent" + tok.eos_token
    assert tok.decode(context) == records[0]["prompt"]
    assert labels[: len(context)] == [-100] * len(context)  # the prompt comes first and is masked
    batch = trainer.data_collator([row])
    assert batch["labels"][0].tolist() == labels
    # TRL turns gradient checkpointing on by default: on these models it only repeats forward passes
    assert trainer.args.gradient_checkpointing is False


def test_a_mixed_pretraining_document_is_trained_on_every_token(tok, tiny):
    document = CORPUS[1]
    demo = {"prompt": CORPUS[0].rsplit("\nTL;DR:", 1)[0] + "\nTL;DR:", "reference": "landlord raised rent"}
    trainer = sft.make_trainer(tiny, tok, [demo, {"prompt": "", "document": document}], [], epochs=1, lr=1e-3,
                               batch_size=1, scheduler="cosine", max_length=128, max_prompt_tokens=112, seed=0,
                               output_dir="/tmp/gendiv-sft-test")
    rows = {r["completion"]: r for r in trainer.train_dataset}
    row = rows[document + tok.eos_token]
    assert all(lab != -100 for lab in row["labels"])  # no prompt: the loss covers the whole document
    assert tok.decode(row["input_ids"]) == document + tok.eos_token
    demo_row = rows[" landlord raised rent" + tok.eos_token]
    assert sum(lab != -100 for lab in demo_row["labels"]) < len(demo_row["labels"]) / 2  # demo: prompt masked


def test_the_mix_is_its_share_of_rows_from_another_stream(smoke_cfg):
    from dataclasses import replace

    from gendiv import data
    world = data.make_world(smoke_cfg)
    cfg = replace(smoke_cfg, sft=replace(smoke_cfg.sft, pretrain_mix=0.25))
    mixed = data.sft_mix_records(world, cfg, 30)
    assert len(mixed) == 10  # a quarter of 40 rows
    assert all(r["prompt"] == "" for r in mixed)
    own = data.pretraining_corpus(world, cfg, 10)
    assert [r["document"] for r in mixed] != own  # not the base's own documents
    assert sum("TL;DR:" in r["document"] for r in mixed) >= 1  # the same kinds of document
    assert data.sft_mix_records(world, smoke_cfg, 30) == []  # smoke: no mix


def test_a_mix_outside_the_world_is_refused():
    import pytest

    from gendiv.config import ConfigError, load_profile
    with pytest.raises(ConfigError, match=r"sft.pretrain_mix must lie in \[0, 1\), got 1.0"):
        load_profile("smoke", **{"sft.pretrain_mix": 1.0})
    with pytest.raises(ConfigError, match=r"data.source 'tldr' has none: set sft.pretrain_mix: 0"):
        load_profile("smoke", **{"data.source": "tldr", "sft.pretrain_mix": 0.3})
