"""Splits for the study: the miniature world's, or the paper's hub datasets in the same structure.

Every split is a list of records (one JSON object per line) with at least ``uid``, ``split``,
``genre``, ``prompt`` and ``reference``; world records also carry their latent facts.

Splits (the book's protocol page): ``id`` has the roles sft_train, sft_val, comparisons, rl and test;
``ood_near`` (held-out forum domains) and ``ood_far`` (news genre) have a test role only. Test
sets are the first ``n_test`` examples of each split, in a fixed order (paper: the first 500).

Prompt templates are the paper's code's (rlvsil/dataset/summarisation_formatting.py):
``SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:`` and
``ARTICLE: {article}\\nTL;DR:``; an SFT target is a space, the summary, then EOS.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gendiv import runs
from gendiv.config import Config
from gendiv.embeddings import sentence_model
from gendiv.instruct import Instruction, InstructionWorld
from gendiv.world import Example, World, words

SPLITS = ("id", "ood_near", "ood_far")
WORLD_SOURCES = ("world", "instruct")
"""The miniature worlds' sources (generated, with an exact judge); others come from the hub."""
ID_ROLES = ("sft_train", "sft_val", "comparisons", "rl", "test")
SPLITS_COLUMNS = ["split", "role", "n", "genre", "vocab_overlap_with_id", "type_overlap_with_id",
                  "embedding_distance_from_id", "predicate_overlap_with_id"]
JUDGE_CHECK_COLUMNS = ["split", "variant", "reference_preferred_rate", "n"]


class HubUnavailableError(RuntimeError):
    """A dataset could not be loaded from the Hugging Face hub (or a local copy)."""


# ---------------------------------------------------------------- prompt templates
def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """The paper's TL;DR prompt (rlvsil make_input_example_tldr)."""
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def cnndm_prompt(article: str) -> str:
    """The paper's CNN/DailyMail prompt (rlvsil make_input_example_cnndm)."""
    return f"ARTICLE: {article}\nTL;DR:"


ALPACA_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.",
                   "Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.")
"""Alpaca's opening sentence, with an input and without (``data.instruction_preamble``)."""


def alpaca_prompt(instruction: str, input_text: str = "", preamble: bool = True) -> str:
    """The Alpaca/AlpacaFarm instruction prompt (with or without an input); ``preamble=False``
    leaves out its fixed opening sentence (:data:`ALPACA_PREAMBLE`) and keeps the sections."""
    opening = ALPACA_PREAMBLE[0 if input_text else 1] + "\n\n" if preamble else ""
    if input_text:
        return f"{opening}### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:"
    return f"{opening}### Instruction:\n{instruction}\n\n### Response:"


def format_prompt(ex: Example | Instruction, preamble: bool = True) -> str:
    """The prompt of a world example in the paper's template for its genre: TL;DR for a forum
    post, CNN/DailyMail for a news report, Alpaca's for an instruction (what is asked as the
    instruction, the situation as its input; ``preamble`` as :func:`alpaca_prompt`)."""
    if isinstance(ex, Instruction):
        return alpaca_prompt(ex.ask, ex.situation, preamble)
    if ex.genre == "forum":
        return tldr_prompt(ex.subreddit, ex.title, ex.body)
    return cnndm_prompt(ex.body)


def sft_target(summary: str, eos_token: str) -> str:
    """A completion as SFT trains on it and the RM is trained and scored on it: a space, the
    summary, then EOS (paper's code). TRL appends EOS only when it is missing, so this form passes
    through its trainers unchanged."""
    return " " + summary.strip() + eos_token


# ---------------------------------------------------------------- hub loaders
def load_hub_split(source: str, split: str, config_name: str | None = None) -> list[dict]:
    """Rows of ``split`` of a dataset, from the hub (id) or a local copy.

    A local copy is a folder holding ``<split>.jsonl`` (or .json/.parquet) or a single file.
    Failure to reach the hub raises :class:`HubUnavailableError`; there is never a silent
    fallback to other data.
    """
    import datasets  # only the hub loaders need it, and it is slow to import

    path = Path(source)
    try:
        if path.exists():
            if path.is_dir():
                files = sorted(path.glob(f"{split}.*"))
                if not files:
                    raise HubUnavailableError(
                        f"Local dataset folder {source!r} has no file for split {split!r} "
                        f"(expected {split}.jsonl); it has {sorted(p.name for p in path.iterdir())}.")
                file = files[0]
            else:
                file = path
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[file.suffix]
            ds = datasets.load_dataset(kind, data_files=str(file), split="train")
        else:
            ds = datasets.load_dataset(source, config_name, split=split)
    except HubUnavailableError:
        raise
    except Exception as err:  # datasets raises many types for an unreachable hub
        raise HubUnavailableError(
            f"Could not load split {split!r} of dataset {source!r}"
            f"{f' (config {config_name!r})' if config_name else ''}: {type(err).__name__}: {err}. "
            "This machine may be offline or the id may be wrong. Download the dataset where the hub "
            "is reachable and pass its local folder instead (e.g. data.tldr_source=/path/to/folder), "
            "or use the miniature world (data.source: world).") from err
    return [dict(r) for r in ds]


def _require(row: dict, keys: tuple[str, ...], source: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"Dataset {source!r} rows lack field(s) {missing}; they have {sorted(row)}. "
                         "Is this the right dataset for this loader?")


def tldr_records(source: str, split: str, split_name: str = "id") -> list[dict]:
    """Filtered Reddit TL;DR (UCL-DARK/openai-tldr-filtered): post, title, subreddit, summary."""
    rows = load_hub_split(source, split)
    out = []
    for i, r in enumerate(rows):
        _require(r, ("post", "title", "subreddit", "summary"), source)
        out.append({"uid": r.get("id", f"tldr-{split}-{i}"), "split": split_name, "genre": "forum",
                    "domain": r["subreddit"], "subreddit": r["subreddit"], "title": r["title"],
                    "body": r["post"], "prompt": tldr_prompt(r["subreddit"], r["title"], r["post"]),
                    "reference": r["summary"].strip()})
    return out


def cnndm_records(source: str, split: str, split_name: str = "ood_far") -> list[dict]:
    """CNN/DailyMail 3.0.0 (cnn_dailymail): article -> highlights."""
    rows = load_hub_split(source, split, "3.0.0" if source == "cnn_dailymail" else None)
    out = []
    for i, r in enumerate(rows):
        _require(r, ("article", "highlights"), source)
        out.append({"uid": r.get("id", f"cnndm-{split}-{i}"), "split": split_name, "genre": "news",
                    "domain": "news", "subreddit": "", "title": "", "body": r["article"],
                    "prompt": cnndm_prompt(r["article"]), "reference": r["highlights"].strip()})
    return out


def tldr_comparison_records(source: str, split: str) -> list[dict]:
    """Summarize-from-feedback comparisons (UCL-DARK/openai-tldr-summarisation-preferences):
    info{post,title,subreddit}, summaries[2].text, choice (index of the preferred summary)."""
    rows = load_hub_split(source, split)
    out = []
    for i, r in enumerate(rows):
        _require(r, ("info", "summaries", "choice"), source)
        info = r["info"]
        texts = [s["text"].strip() for s in r["summaries"]]
        choice = int(r["choice"])
        if choice not in (0, 1) or len(texts) != 2:
            raise ValueError(f"Comparison row {i} of {source!r} has choice={choice} and "
                             f"{len(texts)} summaries; expected 0/1 and 2.")
        out.append({"uid": f"cmp-{split}-{i}", "split": "id", "genre": "forum",
                    "prompt": tldr_prompt(info["subreddit"], info["title"], info["post"]),
                    "chosen": texts[choice], "rejected": texts[1 - choice]})
    return out


def _hub_config(source: str, hub_id: str, config_name: str) -> str | None:
    """A multi-config dataset's config name for its hub id; None for a local copy (whose folder
    holds that config's splits)."""
    return config_name if source == hub_id else None


def _instruction_records(source: str, split: str, split_name: str, config_name: str | None = None,
                         uid_prefix: str | None = None, preamble: bool = True) -> list[dict]:
    """Instruction rows (instruction, optional input, output) as records in Alpaca's prompt
    (``preamble`` as :func:`alpaca_prompt`); the instruction and input stay on the record (the LLM
    judge shows them)."""
    rows = load_hub_split(source, split, config_name)
    out = []
    for i, r in enumerate(rows):
        _require(r, ("instruction", "output"), source)
        out.append({"uid": f"{uid_prefix or split_name}-{i}", "split": split_name, "genre": "instruction",
                    "domain": r.get("dataset", "instruction"), "instruction": r["instruction"],
                    "input": r.get("input") or "",
                    "prompt": alpaca_prompt(r["instruction"], r.get("input") or "", preamble),
                    "reference": r["output"].strip()})
    return out


ALPACA_FARM = "tatsu-lab/alpaca_farm"


def alpacafarm_instruction_records(source: str = ALPACA_FARM, split: str = "sft",
                                   preamble: bool = True) -> list[dict]:
    """AlpacaFarm's instructions (config alpaca_instructions; splits sft: 10k demonstrations,
    unlabeled: 20k prompts for RL, val: 2k, preference: 20k), as ID records."""
    return _instruction_records(source, split, "id", _hub_config(source, ALPACA_FARM, "alpaca_instructions"),
                                uid_prefix=f"alpaca-{split}", preamble=preamble)


def alpacafarm_preference_records(source: str = ALPACA_FARM, split: str = "preference",
                                  preamble: bool = True) -> list[dict]:
    """AlpacaFarm's human pairwise preferences (config alpaca_human_preference: instruction,
    input, output_1, output_2, preference = 1 or 2 for the preferred output) as comparison
    records (prompt, chosen, rejected)."""
    rows = load_hub_split(source, split, _hub_config(source, ALPACA_FARM, "alpaca_human_preference"))
    out = []
    for i, r in enumerate(rows):
        _require(r, ("instruction", "output_1", "output_2", "preference"), source)
        choice = int(r["preference"])
        if choice not in (1, 2):
            raise ValueError(f"Preference row {i} of {source!r} has preference={r['preference']!r}; "
                             "expected 1 or 2 (the preferred output).")
        texts = [r["output_1"].strip(), r["output_2"].strip()]
        out.append({"uid": f"alpaca-cmp-{split}-{i}", "split": "id", "genre": "instruction",
                    "instruction": r["instruction"], "input": r.get("input") or "",
                    "prompt": alpaca_prompt(r["instruction"], r.get("input") or "", preamble),
                    "chosen": texts[choice - 1], "rejected": texts[2 - choice]})
    return out


def alpacafarm_id_records(source: str = "UCL-DARK/alpaca-farm-id-test", split: str = "test",
                          preamble: bool = True) -> list[dict]:
    """AlpacaFarm's ID test set (instruction, input, output)."""
    return _instruction_records(source, split, "id", preamble=preamble)


def alpaca_eval_records(source: str = "tatsu-lab/alpaca_eval", split: str = "eval",
                        preamble: bool = True) -> list[dict]:
    """AlpacaEval (805 instructions; instruction, output, generator, dataset): OOD for AlpacaFarm."""
    return _instruction_records(source, split, "ood_near", _hub_config(source, "tatsu-lab/alpaca_eval",
                                                                       "alpaca_eval"), preamble=preamble)


def sequential_instructions_records(source: str = "UCL-DARK/sequential-instructions",
                                    split: str = "test", preamble: bool = True) -> list[dict]:
    """Sequential Instructions (533 multi-step instructions): the bigger shift for AlpacaFarm."""
    return _instruction_records(source, split, "ood_far", preamble=preamble)


# ---------------------------------------------------------------- world splits
def make_world(cfg: Config) -> World | InstructionWorld:
    """The profile's miniature world: summarisation (``data.source: world``) or instruction
    following (``data.source: instruct``)."""
    if cfg.data.source == "instruct":
        return InstructionWorld(seed=cfg.seed, labeller_temperature=cfg.world.labeller_temperature)
    return World(seed=cfg.seed, heldout_domains=cfg.world.heldout_domains,
                 labeller_temperature=cfg.world.labeller_temperature)


def world_or_none(cfg: Config) -> World | InstructionWorld | None:
    """The profile's miniature world, or None for the hub's data (no exact judge)."""
    return make_world(cfg) if cfg.data.source in WORLD_SOURCES else None


def example_from(record: dict) -> Example | Instruction:
    """A world record back as its example: an instruction (it has parts) or a post."""
    return Instruction.from_dict(record) if "parts" in record else Example.from_dict(record)


def _record(ex: Example | Instruction, preamble: bool = True) -> dict:
    d = ex.to_dict()
    d["prompt"] = format_prompt(ex, preamble)
    d["genre"] = ex.genre
    return d


def world_split(world: World | InstructionWorld, cfg: Config, split: str, role: str,
                n: int) -> list[Example | Instruction]:
    """``n`` examples of ``split``/``role``, deterministic given the seed, split and role. In the
    instruction world every split draws its situations from every domain: the shift is in what
    is asked (:mod:`gendiv.instruct`); a share of ID instructions (``data.instruction_pair_share``)
    ask for two things at once."""
    rng = random.Random(f"{cfg.seed}/{split}/{role}")
    if isinstance(world, InstructionWorld):
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; choose from {SPLITS}.")
        names, share = world.train_domains, cfg.data.instruction_pair_share if split == "id" else 0.0
        # With no pairs, no draw for them: the splits are those of a world without the option.
        return [world.make_instruction(rng, names[i % len(names)] if i % 2 else rng.choice(names), split,
                                       f"{split}-{role}-{i}", pair=bool(share) and rng.random() < share)
                for i in range(n)]
    if split == "id":
        domains, genre = world.train_domains, "forum"
    elif split == "ood_near":
        domains, genre = world.heldout_domains, "forum"
    elif split == "ood_far":
        domains, genre = tuple(world.lex.domains), "news"
    else:
        raise ValueError(f"Unknown split {split!r}; choose from {SPLITS}.")
    # Each block of len(domains) examples covers every domain once, in a fresh order. Example i depends
    # only on the rng stream before it, never on n, so test sets are prefixes (the paper's "first 500").
    out = []
    for i in range(n):
        if i % len(domains) == 0:
            block = list(domains)
            rng.shuffle(block)
        out.append(world.make_example(rng, block[i % len(domains)], genre, f"{split}-{role}-{i}", split))
    return out


PRETRAINING_KINDS = ("post", "tldr", "comment")
INSTRUCTION_KINDS = ("id", "ood_near", "ood_far")
"""What a help thread of the pre-training corpus asks (``data.pretrain_instruction_share``): an
instruction of any split's kind, drawn evenly: the training families, the held-out ones and
phrasings, chains of two or three. Out of distribution means outside fine-tuning, as for the
paper's LLaMA, which had seen people ask for headlines and for several things at once."""


def help_thread(ins: Instruction) -> str:
    """A pre-training document of the instruction world: the situation and what is asked, as a
    forum request, then its human-like reply (the reference). Laid out as a thread (REQUEST /
    REPLY), not in Alpaca's template, as a web corpus holds requests and answers but not the
    fine-tuning prompt."""
    return f"REQUEST: {ins.situation}\n{ins.ask}\nREPLY: {ins.reference}"


def pretraining_document(ex: Example, kind: str = "post", comment: str = "") -> str:
    """A pre-training document: the example in its prompt format, then (``kind``) nothing, its
    TL;DR, or a reader's comment quoting it (``comment``, from :meth:`World.comment`). The EOS
    between documents is added when the corpus is packed."""
    text = format_prompt(ex)
    post = text.rsplit("\n", 1)[0]
    if kind == "tldr":
        return text + sft_target(ex.reference, "")
    if kind == "comment":
        return f"{post}\nCOMMENT: {comment}"
    if kind == "post":
        return post
    raise ValueError(f"Unknown pre-training document kind {kind!r}; choose from {PRETRAINING_KINDS}.")


def pretraining_corpus(world: World, cfg: Config, n: int | None = None, stream: str = "pretrain") -> list[str]:
    """Documents over all domains and both genres (2 forum : 1 news): a share
    (``data.pretrain_summary_share``) ends in a TL;DR, a share (``data.pretrain_comment_share``)
    in a comment that quotes the post, the rest is the bare post or report.

    The base model thus sees the OOD language, as a pretrained LLM has, and text that rewards
    reading a post back (as quoting replies do in a real forum corpus). A share
    (``data.pretrain_instruction_share``, default 0) are instead help threads of the instruction
    world (:func:`help_thread`, of every kind in :data:`INSTRUCTION_KINDS`), whatever the task.
    ``n`` documents (default ``data.n_pretrain_docs``) from the random stream ``stream``: another
    stream draws other documents from the same distribution (SFT's mix, ``sft.pretrain_mix``).
    With no help threads, no draw of the instruction world is made: the corpus is the same
    document for document as before the share existed (the shipped base's).
    """
    rng = random.Random(f"{cfg.seed}/{stream}")
    d = cfg.data
    helper = world if isinstance(world, InstructionWorld) else None
    world = world.posts if helper is not None else world  # the base's language
    names = list(world.lex.domains)
    summary, comment = d.pretrain_summary_share, d.pretrain_summary_share + d.pretrain_comment_share
    help_ = comment + d.pretrain_instruction_share
    docs = []
    for i in range(d.n_pretrain_docs if n is None else n):
        genre = "news" if i % 3 == 2 else "forum"
        ex = world.make_example(rng, rng.choice(names), genre, f"pre-{i}", "pretrain")
        u = rng.random()
        if u < summary:
            docs.append(pretraining_document(ex, "tldr"))
        elif u < comment:
            docs.append(pretraining_document(ex, "comment", world.comment(rng, ex)))
        elif u < help_:
            helper = helper or InstructionWorld(world.seed, world.labeller_temperature)
            ins = helper.make_instruction(rng, rng.choice(names), rng.choice(INSTRUCTION_KINDS), f"pre-{i}")
            docs.append(help_thread(ins))
        else:
            docs.append(pretraining_document(ex, "post"))
    return docs


def sft_mix_records(world: World, cfg: Config, n_demonstrations: int) -> list[dict]:
    """The pre-training documents mixed into SFT (``sft.pretrain_mix`` of the rows, so
    ``n * mix / (1 - mix)`` for ``n`` demonstrations), as records with an empty prompt and the
    document as the completion, so every token is trained. Drawn from the stream "sft-mix" of the
    run's seed: not the base's own documents, the same distribution."""
    mix = cfg.sft.pretrain_mix
    if not mix:
        return []
    n = round(n_demonstrations * mix / (1.0 - mix))
    return [{"prompt": "", "document": doc} for doc in pretraining_corpus(world, cfg, n, stream="sft-mix")]


def split_sizes(cfg: Config) -> dict[tuple[str, str], int]:
    d = cfg.data
    sizes = {("id", "sft_train"): d.n_sft_train, ("id", "sft_val"): d.n_sft_val,
             ("id", "comparisons"): d.n_comparison_prompts, ("id", "rl"): d.n_rl_prompts,
             ("id", "test"): d.n_test}
    sizes.update({(s, "test"): d.n_test for s in SPLITS[1:]})
    return sizes


def hub_splits(cfg: Config) -> dict[tuple[str, str], list[dict]]:
    """The paper's data in our split structure: summarisation (data.source = 'tldr': TL;DR,
    summarize-from-feedback's comparisons, CNN/DailyMail as the far shift; no OOD-near split) or
    instruction following ('alpacafarm': AlpacaFarm's demonstrations, unlabeled prompts and human
    preferences, its ID test, AlpacaEval as the near shift, Sequential Instructions as the far)."""
    d = cfg.data
    if d.source == "alpacafarm":
        pre = d.instruction_preamble
        return {("id", "sft_train"): alpacafarm_instruction_records(d.alpaca_instructions_source, "sft", pre)[
                    : d.n_sft_train],
                ("id", "rl"): alpacafarm_instruction_records(d.alpaca_instructions_source, "unlabeled", pre)[
                    : d.n_rl_prompts],
                ("id", "sft_val"): alpacafarm_instruction_records(d.alpaca_instructions_source, "val", pre)[
                    : d.n_sft_val],
                ("id", "comparisons"): alpacafarm_preference_records(d.alpaca_preferences_source, preamble=pre)[
                    : d.n_comparison_prompts],
                ("id", "test"): alpacafarm_id_records(d.alpaca_id_test_source, preamble=pre)[: d.n_test],
                ("ood_near", "test"): alpaca_eval_records(d.alpaca_eval_source, preamble=pre)[: d.n_test],
                ("ood_far", "test"): sequential_instructions_records(d.sequential_source, preamble=pre)[
                    : d.n_test]}
    train = tldr_records(d.tldr_source, "train")
    need = d.n_sft_train + d.n_rl_prompts
    if len(train) < need:
        raise ValueError(f"TL;DR train has {len(train)} rows; n_sft_train + n_rl_prompts = {need}. "
                         "Lower them in the profile.")
    out = {("id", "sft_train"): train[: d.n_sft_train],
           ("id", "rl"): train[d.n_sft_train: need],
           ("id", "sft_val"): tldr_records(d.tldr_source, "validation")[: d.n_sft_val],
           ("id", "comparisons"): tldr_comparison_records(d.comparisons_source, "train")[: d.n_comparison_prompts],
           ("id", "test"): tldr_records(d.tldr_source, "test")[: d.n_test],
           ("ood_far", "test"): cnndm_records(d.cnndm_source, "test")[: d.n_test]}
    return out


# ---------------------------------------------------------------- shift measures
def _embed_mean(texts: list[str], model_name: str) -> np.ndarray:
    emb = sentence_model(model_name).encode(texts, batch_size=32, normalize_embeddings=True,
                                           show_progress_bar=False)
    return emb.mean(axis=0)


def shift_measures(records: dict[tuple[str, str], list[dict]], cfg: Config) -> pd.DataFrame:
    """One row per split/role: size and, for test sets, how far each is from ID training data.

    * vocab_overlap_with_id: share of the split's running words whose type occurs in the ID
      training prompts (1 = no new words).
    * type_overlap_with_id: share of the split's word types that occur in the ID training prompts.
    * embedding_distance_from_id: cosine distance between the mean all-MiniLM-L6-v2 embedding of
      the split's test prompts and that of the ID training prompts (a sample of n_shift_sample).
    * predicate_overlap_with_id (world only): share of the split's gold facts whose predicate
      occurs among the facts of ID training posts.
    """
    train = records[("id", "sft_train")]
    id_vocab = Counter(w for r in train for w in words(r["prompt"]))
    id_preds = {f["predicate"] for r in train for f in r.get("facts", [])}
    k = cfg.data.n_shift_sample
    id_mean = _embed_mean([r["prompt"] for r in train[:k]], cfg.embedding_model)
    rows = []
    for (split, role), recs in records.items():
        row: dict[str, Any] = {"split": split, "role": role, "n": len(recs),
                               "genre": recs[0]["genre"] if recs else ""}
        if role == "test" and recs:
            toks = [w for r in recs for w in words(r["prompt"])]
            types = set(toks)
            row["vocab_overlap_with_id"] = sum(t in id_vocab for t in toks) / len(toks)
            row["type_overlap_with_id"] = sum(t in id_vocab for t in types) / len(types)
            mean = _embed_mean([r["prompt"] for r in recs[:k]], cfg.embedding_model)
            cos = float(mean @ id_mean / (np.linalg.norm(mean) * np.linalg.norm(id_mean)))
            row["embedding_distance_from_id"] = 1.0 - cos
            facts = [f["predicate"] for r in recs for f in r.get("facts", [])]
            row["predicate_overlap_with_id"] = (sum(p in id_preds for p in facts) / len(facts)
                                                if facts else np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=SPLITS_COLUMNS)


# ---------------------------------------------------------------- judge checks
def judge_checks(world: World | InstructionWorld, tests: dict[str, list[Example]], seed: int) -> pd.DataFrame:
    """How often the gold judge prefers the reference over each corrupted variant of it and each
    extractive baseline taken from the post (the world's ``judge_variants``; ties = 1/2)."""
    rows = []
    for split, exs in tests.items():
        for variant in world.judge_variants:
            rng = random.Random(f"{seed}/judge/{split}/{variant}")
            wins = []
            for i, ex in enumerate(exs):
                other = exs[(i + 1 + rng.randrange(len(exs) - 1)) % len(exs)] if len(exs) > 1 else ex
                wins.append(world.judge(ex.reference, world.corrupt(variant, ex, other, rng), ex))
            rows.append({"split": split, "variant": variant,
                         "reference_preferred_rate": float(np.mean(wins)), "n": len(wins)})
    return pd.DataFrame(rows, columns=JUDGE_CHECK_COLUMNS)


def judge_demo(world: World, ex: Example, other: Example, seed: int) -> pd.DataFrame:
    """The judge at work on one example: each variant's text and its utility breakdown
    (``other`` supplies the other-post summary)."""
    rng = random.Random(f"{seed}/demo")
    rows = [("reference", ex.reference)] + [(v, world.corrupt(v, ex, other, rng)) for v in world.judge_variants]
    out = []
    for name, text in rows:
        u = world.utility(text, ex)
        out.append({"variant": name, "text": text, "utility": round(u.total, 3),
                    "coverage": round(u.coverage, 2), "hallucinated": u.hallucinated,
                    "fluency": round(u.fluency, 2), "words": u.n_words})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the stage
def data_path(cfg: Config, split: str, role: str) -> Path:
    return runs.run_dir(cfg) / "data" / f"{split}_{role}.jsonl"


def build_splits(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``data`` (notebook 01): write every split, ``results/splits.csv`` and (world only)
    ``results/judge_checks.csv``. Cached by config. (The pre-training corpus belongs to the base
    model: gendiv.pretraining draws it.)"""

    def body(root: Path) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        if cfg.data.source in WORLD_SOURCES:
            world = make_world(cfg)
            examples = {}
            for (split, role), n in tqdm(split_sizes(cfg).items(), desc="splits", leave=False):
                examples[(split, role)] = world_split(world, cfg, split, role, n)
            records = {k: [_record(e, cfg.data.instruction_preamble) for e in v] for k, v in examples.items()}
            tests = {s: examples[(s, "test")] for s in SPLITS}
            paths["judge_checks"] = runs.write_csv(runs.results_dir(cfg) / "judge_checks.csv",
                                                   judge_checks(world, tests, cfg.seed))
        else:
            records = hub_splits(cfg)
        for (split, role), recs in records.items():
            paths[f"{split}_{role}"] = runs.write_jsonl(data_path(cfg, split, role), recs)
        paths["splits"] = runs.write_csv(runs.results_dir(cfg) / "splits.csv", shift_measures(records, cfg))
        return paths

    return runs.run_stage(cfg, "data", body, force=force)


def available_splits(cfg: Config, role: str = "test") -> list[str]:
    """The splits (in the order of SPLITS) that the built data has for ``role``: all three for the
    world, no OOD-near for the paper's TL;DR data."""
    artifacts = runs.require_stage(cfg, "data").artifacts
    return [s for s in SPLITS if f"{s}_{role}" in artifacts]


def load_split(cfg: Config, split: str, role: str = "test") -> list[dict]:
    """Records of a built split (raises StageMissingError if notebook 01 has not run)."""
    return runs.read_jsonl(runs.artifact(cfg, "data", f"{split}_{role}"))


def load_examples(cfg: Config, split: str, role: str = "test") -> list[Example | Instruction]:
    """World examples (posts or instructions) of a built split, with their latent facts."""
    return [example_from(r) for r in load_split(cfg, split, role)]
