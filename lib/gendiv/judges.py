"""Pairwise judges and win rates: the world's gold judge and an LLM judge.

Paper (Sec. 5): GPT-4 at temperature 0 through alpaca_eval judges pairs of summaries: which one
captures the most important points of the post, precisely and concisely (for instructions:
which output follows the instruction better, alpaca_eval's pairwise question). The main metric is the
win rate against the dataset's reference; ties count one half. Here:

* :class:`WorldJudge` -- the miniature world's deterministic judge (exact, free); the default.
* :class:`LLMJudge` -- a pairwise prompt in the spirit of the paper's, asked in both orders so
  position bias cancels, over one of two backends: :class:`ChatEndpoint` (any OpenAI-compatible
  ``/chat/completions`` endpoint; key from an environment variable; retries with exponential
  backoff; every response cached on disk so a rerun costs nothing) or :class:`LocalChatModel`
  (a transformers causal LM, greedy).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from gendiv import data, runs
from gendiv.models import SMOLLM2, load_causal_lm, load_tokenizer, pick_device, smollm2_path

JUDGE_PROMPT = """Which of the following summaries does a better job of summarizing the most \
important points in the given {kind}, without including unimportant or irrelevant details? \
A good summary is both precise and concise.

{kind_title}:
{source}

Summary (a):
{a}

Summary (b):
{b}

Answer with exactly one of "Output (a)" or "Output (b)"."""

INSTRUCTION_JUDGE_PROMPT = """Select the output, (a) or (b), that best follows the given instruction: \
the one a careful person who wrote the instruction would prefer. Judge how well each output does \
what is asked, and whether it is accurate and helpful; not its length.

## Instruction:
{instruction}

## Input:
{input}

## Output (a):
{a}

## Output (b):
{b}

Answer with exactly one of "Output (a)" or "Output (b)"."""
"""The pairwise prompt for instruction following, in the spirit of AlpacaFarm's and AlpacaEval's
pairwise annotators (the paper judges its instruction-following outputs through alpaca_eval)."""


class JudgeUnavailableError(RuntimeError):
    """The LLM judge cannot run (no key, no endpoint, no model); the message says what to set."""


class Judge(Protocol):
    name: str

    def compare(self, record: dict, a: str, b: str) -> float:
        """The verdict for ``a`` against ``b`` on ``record``, in [0, 1]: 1 if ``a`` is better, 0 if
        ``b`` is, 0.5 on a tie; an LLM judge asked in both orders can also give 0.25 or 0.75 (one
        order decided, the other unparsed)."""


class WorldJudge:
    """A miniature world's deterministic gold judge (:meth:`gendiv.world.World.judge`, or the
    instruction world's)."""

    name = "world"

    def __init__(self, world):
        self.world = world

    def compare(self, record: dict, a: str, b: str) -> float:
        return self.world.judge(a, b, data.example_from(record))


class ChatBackend(Protocol):
    def complete(self, prompt: str) -> str:
        """The model's reply to one user message (temperature 0)."""


def parse_verdict(reply: str) -> float | None:
    """1.0 for "Output (a)", 0.0 for "Output (b)", None when the reply names neither or both."""
    text = reply.lower()
    a = re.search(r"output\s*\(?a\)?", text) or re.fullmatch(r"\W*\(?a\)?\W*", text)
    b = re.search(r"output\s*\(?b\)?", text) or re.fullmatch(r"\W*\(?b\)?\W*", text)
    if bool(a) == bool(b):
        return None
    return 1.0 if a else 0.0


class LLMJudge:
    """Pairwise LLM judge asked in both orders: the verdict is the mean of P(a) over the two
    presentations, so a judge that always picks the first slot scores every pair a tie.
    An unparseable reply counts as a tie for that order (counted in ``unparsed``)."""

    def __init__(self, backend: ChatBackend, name: str = "llm"):
        self.backend, self.name, self.unparsed = backend, name, 0

    def prompt(self, record: dict, a: str, b: str) -> str:
        """The pairwise prompt for the record's task: an instruction (its instruction and input)
        or a post or article to summarise."""
        if "instruction" in record:
            instruction, given = record["instruction"], record.get("input", "")
            if "situation" in record:  # the miniature world's: the situation, then what is asked
                instruction, given = instruction.split("\n\n", 1)[-1], record["situation"]
            return INSTRUCTION_JUDGE_PROMPT.format(instruction=instruction.strip(), input=given.strip() or "(none)",
                                                   a=a.strip(), b=b.strip())
        source = record.get("body") or record.get("post") or record.get("article") or record["prompt"]
        kind = "article" if record.get("genre") == "news" or "article" in record else "post"
        return JUDGE_PROMPT.format(kind=kind, kind_title=kind.upper(), source=source.strip(), a=a.strip(),
                                   b=b.strip())

    def _ask(self, record: dict, a: str, b: str) -> float:
        verdict = parse_verdict(self.backend.complete(self.prompt(record, a, b)))
        if verdict is None:
            self.unparsed += 1
            return 0.5
        return verdict

    def compare(self, record: dict, a: str, b: str) -> float:
        return 0.5 * (self._ask(record, a, b) + (1.0 - self._ask(record, b, a)))


class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint (temperature 0), with retries and a disk cache.

    The key is read from the environment variable ``api_key_env`` and never stored; the cache
    (one JSON file per request, named by the hash of model and prompt) holds replies only."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", cache_dir: Path | None = None,
                 max_retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.max_retries = model, api_key_env, max_retries
        self.backoff_s, self.timeout_s, self.cache_dir = backoff_s, timeout_s, cache_dir
        self.requests = 0

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise JudgeUnavailableError(f"The LLM judge needs an API key in the environment variable "
                                        f"{self.api_key_env!r}; set it, or set judge.llm_backend: none.")
        return key

    def complete(self, prompt: str) -> str:
        digest = hashlib.sha256(json.dumps([self.url, self.model, prompt]).encode()).hexdigest()[:32]
        cached = self.cache_dir / f"{digest}.json" if self.cache_dir is not None else None
        if cached is not None and cached.exists():
            return json.loads(cached.read_text())["reply"]
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 16,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self._key()}"})
        for attempt in range(self.max_retries + 1):
            try:
                self.requests += 1
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read())["choices"][0]["message"]["content"]
                break
            except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as err:
                status = getattr(err, "code", None)
                if status in (400, 401, 403, 404) or attempt == self.max_retries:
                    raise JudgeUnavailableError(f"The judge endpoint {self.url} failed ({err}) after "
                                                f"{attempt + 1} attempt(s); check judge.base_url, judge.model "
                                                f"and the key in ${self.api_key_env}.") from err
                time.sleep(self.backoff_s * 2 ** attempt)
        if cached is not None:
            runs.write_json(cached, {"model": self.model, "reply": reply})
        return reply


class LocalChatModel:
    """A transformers causal LM as the judge's backend: chat template when the tokenizer has one,
    greedy decoding of a short reply."""

    def __init__(self, model_path: str | Path, device=None, max_new_tokens: int = 8):
        self.model = load_causal_lm(model_path, device or pick_device()).eval()
        self.tokenizer = load_tokenizer(model_path)
        self.max_new_tokens = max_new_tokens

    def complete(self, prompt: str) -> str:
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt + "\n"
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def make_llm_judge(judge_cfg, cache_dir: Path | None = None) -> LLMJudge | None:
    """The LLM judge the config asks for, or None for ``llm_backend: none``."""
    if judge_cfg.llm_backend == "none":
        return None
    if judge_cfg.llm_backend == "http":
        backend = ChatEndpoint(judge_cfg.base_url, judge_cfg.model, judge_cfg.api_key_env, cache_dir,
                               judge_cfg.max_retries)
        backend._key()  # fail now, with the fix, rather than after sampling
        return LLMJudge(backend, name=f"llm:{judge_cfg.model}")
    path = smollm2_path() if judge_cfg.model == SMOLLM2 else judge_cfg.model
    return LLMJudge(LocalChatModel(path), name=f"llm:{judge_cfg.model}")


def verdicts(judge: Judge, records: list[dict], outputs: list[str], opponents: list[str]) -> np.ndarray:
    """judge.compare(record, output, opponent) for each input: 1 win, 0 loss, 0.5 tie."""
    return np.array([judge.compare(r, o, p) for r, o, p in zip(records, outputs, opponents)], dtype=float)
