"""Supervised fine-tuning with TRL's SFTTrainer (paper Sec. 4: 1 epoch, lr 3e-5, cosine).

Loss on the completion only (TRL's default for prompt-completion data); the completion is a space,
the reference summary and EOS (TRL appends EOS); prompts are left-truncated so the "TL;DR:" cue
and the end of the post survive, as in the paper's code.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pandas as pd

from gendiv import artifacts, data, outputs, runs
from gendiv.config import Config
from gendiv.lm import left_truncate, tokenizer_sides
from gendiv.models import (load_causal_lm, load_policy, load_tokenizer, pick_device, save_pretrained_atomic,
                           trainer_device_args)


def sft_dataset(tokenizer, records: list[dict], max_prompt_tokens: int):
    """A prompt-completion ``datasets.Dataset`` of the records' prompts and references; a record
    with a ``document`` (:func:`gendiv.data.sft_mix_records`) has an empty prompt and the document
    as its completion, so the loss covers all of it."""
    from datasets import Dataset  # slow to import; only training needs it
    prompts = left_truncate(tokenizer, [r["prompt"] for r in records], max_prompt_tokens)
    eos = tokenizer.eos_token
    completions = [r["document"] + eos if "document" in r else data.sft_target(r["reference"], eos)
                   for r in records]
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def _length_grouping(config_cls, on: bool) -> dict:
    """The trainer argument for length-grouped batches: transformers 5 names it
    ``train_sampling_strategy``, transformers 4 ``group_by_length``."""
    if "train_sampling_strategy" in config_cls.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def make_trainer(model, tokenizer, train_records: list[dict], val_records: list[dict], *, epochs: float,
                 lr: float, batch_size: int, scheduler: str, max_length: int, max_prompt_tokens: int,
                 seed: int, output_dir: str, group_by_length: bool = False):
    """A configured TRL SFTTrainer (completion-only loss, bf16 only on a GPU that has it); prompts
    are cut on the left to ``max_prompt_tokens``."""
    from trl import SFTConfig, SFTTrainer  # heavy (~5 s): only training needs it, not the notebooks' cached reads
    device = next(model.parameters()).device
    with warnings.catch_warnings():  # transformers' own deprecation notices, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        args = SFTConfig(output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr,
                         lr_scheduler_type=scheduler, warmup_steps=0, per_device_train_batch_size=batch_size,
                         per_device_eval_batch_size=batch_size, max_length=max_length,
                         completion_only_loss=True, **trainer_device_args(device),
                         logging_steps=5, logging_first_step=True, save_strategy="no",
                         eval_strategy="epoch" if val_records else "no", report_to="none", seed=seed,
                         data_seed=seed, disable_tqdm=False, dataloader_num_workers=0,
                         **_length_grouping(SFTConfig, group_by_length))
    return SFTTrainer(model=model, args=args, processing_class=tokenizer,
                      train_dataset=sft_dataset(tokenizer, train_records, max_prompt_tokens),
                      eval_dataset=sft_dataset(tokenizer, val_records, max_prompt_tokens) if val_records else None)


def train_sft(model, tokenizer, train_records: list[dict], val_records: list[dict], out_dir: Path,
              **kwargs) -> pd.DataFrame:
    """Fine-tune ``model`` on the records' references; save model and tokenizer to ``out_dir``
    (written beside it, then renamed); return TRL's log history as a DataFrame."""
    with tempfile.TemporaryDirectory() as scratch, tokenizer_sides(tokenizer, "right", tokenizer.truncation_side):
        trainer = make_trainer(model, tokenizer, train_records, val_records, output_dir=scratch, **kwargs)
        trainer.train()  # TRL pads its batches on the right
        log = pd.DataFrame(trainer.state.log_history)
    save_pretrained_atomic(trainer.model, tokenizer, out_dir)
    return log


def interpolate_toward_base(model, base, weight: float) -> None:
    """Move ``model``'s parameters in place to ``base + weight * (model - base)`` (WiSE-FT's
    weight-space ensemble; ``sft.interpolation``). Both models must have the same parameters, by
    name and shape; buffers (rotary frequencies) are left as they are. ``weight`` 1 leaves the model
    as it is, 0 would give the base back."""
    import torch
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"The interpolation weight must lie in [0, 1], got {weight}.")
    ours, theirs = dict(model.named_parameters()), dict(base.named_parameters())
    if ours.keys() != theirs.keys():
        odd = sorted(ours.keys() ^ theirs.keys())[:3]
        raise ValueError(f"Cannot interpolate toward a base with other parameters (for example {odd}): "
                         "the base must be the model SFT started from.")
    with torch.no_grad():
        for name, p in ours.items():
            b = theirs[name]
            if b.shape != p.shape:
                raise ValueError(f"Parameter {name} is {tuple(p.shape)} here and {tuple(b.shape)} in the base: "
                                 "the base must be the model SFT started from.")
            p.copy_(torch.lerp(b.to(p.device, p.dtype), p, weight))


# ------------------------------------------------------------------ stages
def sft_adapter(cfg: Config) -> str:
    """How SFT trains the base: ``sft.adapter`` when set, else ``model.adapter`` ('none': the
    unfrozen blocks, ``model.freeze_fraction``; 'lora': LoRA adapters on every block, merged)."""
    return cfg.sft.adapter or cfg.model.adapter


def describe_training(cfg: Config) -> str:
    """What of the base SFT trains (:func:`sft_adapter`), in words: for the stage's log and chapter 2."""
    if sft_adapter(cfg) == "lora":
        what = f"LoRA adapters of rank {cfg.model.lora_r} on every block, merged afterwards"
    else:
        what = f"the blocks above the bottom {cfg.model.freeze_fraction:.0%}"
    a = cfg.sft.interpolation
    if a < 1:
        what += (f"; then {a:g} of the change is kept: weights = base + {a:g} x (SFT - base), "
                 "weight-space ensembling (WiSE-FT)")
    return what


def build_sft(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``sft`` (notebook 02): fine-tune the base model on the ID demonstrations; LoRA
    adapters are merged so every later stage loads an ordinary transformers checkpoint."""
    def body(root: Path) -> dict[str, Path]:
        adapter = sft_adapter(cfg)
        model, tok, counts = load_policy(cfg, artifacts.base_path(cfg), adapter)
        print(f"SFT trains {counts}: {describe_training(cfg)}")
        train = data.load_split(cfg, "id", "sft_train")
        val = data.load_split(cfg, "id", "sft_val")
        s = cfg.sft
        if s.pretrain_mix:
            mixed = data.sft_mix_records(data.make_world(cfg), cfg, len(train))
            print(f"SFT mixes {len(mixed)} pre-training documents into {len(train)} demonstrations "
                  f"(sft.pretrain_mix {s.pretrain_mix}).")
            train = train + mixed
        log = train_sft(model, tok, train, val, root / "models" / "sft", epochs=s.epochs, lr=s.lr,
                        batch_size=runs.per_process(s.batch_size, "sft.batch_size"), scheduler=s.scheduler,
                        max_length=cfg.model.max_length,
                        max_prompt_tokens=cfg.max_prompt_tokens, seed=cfg.seed, group_by_length=s.group_by_length)
        if adapter == "lora":  # merge the adapters: later stages load a plain checkpoint
            model = model.merge_and_unload()
        if s.interpolation < 1:
            base = load_causal_lm(artifacts.base_path(cfg), next(model.parameters()).device)
            interpolate_toward_base(model, base, s.interpolation)
            print(f"SFT keeps {s.interpolation:g} of its change to the base (sft.interpolation).")
        if adapter == "lora" or s.interpolation < 1:
            save_pretrained_atomic(model, tok, root / "models" / "sft")
        return {"sft_model": root / "models" / "sft", "sft_log": runs.write_csv(root / "logs" / "sft.csv", log),
                "trainable": runs.write_json(root / "logs" / "sft_parameters.json",
                                             {"trainable": counts.trainable, "total": counts.total})}

    return runs.run_stage(cfg, "sft", body, force=force)


def evaluate_sft(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``sft_eval`` (notebook 02): samples from the base and the SFT model on the first
    ``sampling.n_eval_inputs`` test inputs of every split, with gold utilities (world only) averaged
    over ``sampling.utility_samples`` samples per input (the first sample is the one chapter 6
    judges); ``results/gold_utility.csv`` holds the means with bootstrap intervals over inputs,
    ``logs/output_parts.csv`` where they come from (world only: :func:`gendiv.outputs.output_parts`,
    on the first sample) and ``logs/context_reliance.csv`` how much each model reads the post
    (:func:`gendiv.outputs.context_reliance`)."""
    def body(root: Path) -> dict[str, Path]:
        world = data.world_or_none(cfg)
        tests = artifacts.test_records(cfg)
        policies = (("base", artifacts.base_path(cfg)), ("sft", artifacts.sft_path(cfg)))
        paths, rows = {}, []
        for method, path in policies:
            p, r = outputs.sample_outputs(cfg, path, method, tests, root / "samples", world)
            paths.update(p)
            rows += r
        if world is not None:
            parts = []
            for split, records in tests.items():
                rows.append(outputs.utility_row("reference", split, outputs.gold_utilities(
                    world, records, [r["reference"] for r in records]), cfg.seed))
                for method, _ in policies:
                    texts = [r["output"] for r in runs.read_jsonl(paths[f"{method}_{split}"])]
                    parts += outputs.output_parts(world, method, split, records, texts, cfg.seed)
                parts += outputs.output_parts(world, "reference", split, records,
                                              [r["reference"] for r in records], cfg.seed)
            paths["output_parts"] = runs.write_csv(root / "logs" / "output_parts.csv", pd.DataFrame(
                parts, columns=outputs.OUTPUT_PARTS_COLUMNS))
        reliance, device = [], pick_device(cfg.model.device)
        for method, path in policies:
            model, tok = load_causal_lm(path, device), load_tokenizer(path)
            reliance += outputs.context_reliance(model, tok, method, tests, cfg.max_prompt_tokens, cfg.seed)
        paths["context_reliance"] = runs.write_csv(root / "logs" / "context_reliance.csv", pd.DataFrame(
            reliance, columns=outputs.CONTEXT_RELIANCE_COLUMNS))
        paths["gold_utility"] = runs.write_csv(runs.results_dir(cfg) / "gold_utility.csv",
                                               outputs.gold_utility_frame(rows))
        return paths

    return runs.run_stage(cfg, "sft_eval", body, force=force)
