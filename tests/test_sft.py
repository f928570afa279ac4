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
