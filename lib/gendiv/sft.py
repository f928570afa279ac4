"""Supervised fine-tuning with TRL's SFTTrainer (paper Sec. 4: 1 epoch, lr 3e-5, cosine).

Loss on the completion only (TRL's default for prompt-completion data); the completion is a space,
the reference summary and EOS (TRL appends EOS); prompts are left-truncated so the "TL;DR:" cue
and the end of the post survive, as in the paper's code.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from gendiv.models import use_bf16


def left_truncate(tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Cut each prompt to its last ``max_tokens`` tokens (left truncation, paper's code)."""
    out = []
    for prompt, ids in zip(prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        out.append(prompt if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:]))
    return out


def sft_dataset(tokenizer, records: list[dict], max_prompt_tokens: int):
    """A prompt-completion ``datasets.Dataset`` of the records' prompts and references."""
    from datasets import Dataset

    prompts = left_truncate(tokenizer, [r["prompt"] for r in records], max_prompt_tokens)
    return Dataset.from_dict({"prompt": prompts, "completion": [" " + r["reference"].strip() for r in records]})


def make_trainer(model, tokenizer, train_records: list[dict], val_records: list[dict], *, epochs: float,
                 lr: float, batch_size: int, scheduler: str, max_length: int, max_new_tokens: int,
                 seed: int, output_dir: str):
    """A configured TRL SFTTrainer (completion-only loss, bf16 only on a GPU that has it)."""
    from trl import SFTConfig, SFTTrainer

    device = next(model.parameters()).device
    args = SFTConfig(output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr,
                     lr_scheduler_type=scheduler, warmup_steps=0, per_device_train_batch_size=batch_size,
                     per_device_eval_batch_size=batch_size, max_length=max_length,
                     completion_only_loss=True, bf16=use_bf16(device), fp16=False,
                     use_cpu=device.type == "cpu", logging_steps=5, save_strategy="no",
                     eval_strategy="epoch" if val_records else "no", report_to="none", seed=seed,
                     data_seed=seed, disable_tqdm=False, dataloader_num_workers=0)
    max_prompt = max_length - max_new_tokens
    tokenizer.padding_side = "right"
    return SFTTrainer(model=model, args=args, processing_class=tokenizer,
                      train_dataset=sft_dataset(tokenizer, train_records, max_prompt),
                      eval_dataset=sft_dataset(tokenizer, val_records, max_prompt) if val_records else None)


def train_sft(model, tokenizer, train_records: list[dict], val_records: list[dict], out_dir: Path,
              **kwargs) -> pd.DataFrame:
    """Fine-tune ``model`` on the records' references; save model and tokenizer to ``out_dir``
    (written beside it, then renamed); return TRL's log history as a DataFrame."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(model, tokenizer, train_records, val_records, output_dir=scratch, **kwargs)
        trainer.train()
        log = pd.DataFrame(trainer.state.log_history)
    save_pretrained_atomic(trainer.model, tokenizer, out_dir)
    tokenizer.padding_side = "left"
    return log


def save_pretrained_atomic(model, tokenizer, out_dir: Path) -> Path:
    """save_pretrained into a sibling folder, then swap it in: no half-written checkpoint."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
