"""The miniature instruction world: the paper's second task (instruction following, AlpacaFarm ->
AlpacaEval -> Sequential Instructions) with an exact judge, built on the summarisation world's
language.

Each instruction describes the user's situation in the first person (facts of one of the world's
domains: a problem, its cause, details and asides, rendered as the forum posts are) and then asks
for something about it. What is asked is a **part** with latent requirements that the judge checks
on free text:

* **content**: the facts of the situation the response must state (and nothing the situation
  does not contain: invented facts cost, as in the summarisation world);
* **form**: one sentence, a list of exactly n items ("- " lines), a note addressed to a person,
  a word to avoid, an order of events, a headline of at most k words.

The shift is graded by what is asked, not by the situation: **ID** instructions come from the
training families in their training phrasings (with ``data.instruction_pair_share``, a share of
them ask for two such things at once, as Alpaca's data holds compound requests); **OOD-near**
instructions are held-out families (headline, ordered) and held-out phrasings of the training
families (AlpacaEval's role); **OOD-far** instructions chain two or three parts of any family, held-out
phrasings too, in one prompt, each with its own requirements, to be answered in order, one
paragraph each (Sequential Instructions' role).

A response's gold utility (:meth:`InstructionWorld.utility`) averages its parts' utilities
(paragraph i answers part i): coverage of the required facts, minus invented facts, off-task
facts, each failed form requirement, words past the part's budget, the share of the part's
instruction copied back, and repetition; coverage is scaled by fluency as in the summarisation
world, and every word costs a little (of two responses that do what was asked, the judge prefers the
more concise, as the paper's judge asks for precision and concision). References are human-like:
good, and imperfect as people's are, at the summarisation world's rates (a required fact left out,
an unasked detail added, a friendly closing sentence); the labeller is Bradley-Terry on the utility
and the judge its deterministic version; the oracle's unit is a response's set of asserted facts
and its shape.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field

from gendiv.world import (FORUM_SENTENCES, Example as _PostExample, Fact, Judged, World, _cap,
                          lexicon, shuffled, truncated, words)

ID_FAMILIES = ("recap", "list", "note", "avoid")
"""Instruction families of the training distribution (and of the ID test)."""
NEAR_FAMILIES = ("headline", "ordered")
"""Held-out families: only in OOD-near (and as parts of OOD-far) instructions."""
FAMILIES = ID_FAMILIES + NEAR_FAMILIES
NAMES = ["Sam", "Alex", "Jordan", "Robin", "Casey", "Morgan", "Jamie", "Taylor", "Riley", "Avery"]
_STOP = {"the", "and", "for", "with", "that", "this", "from", "into", "over", "about", "they", "them",
         "their", "have", "been", "were", "what", "when", "your", "mine", "just", "than", "then"}

# Task phrasings per family: [training phrasings], [held-out phrasings]. {n}, {name}, {w}, {k} fill in.
TASKS = {
    "recap": (["In one sentence, tell me what went wrong and why.",
               "Sum up my problem and its cause in a single sentence.",
               "Give me a one-sentence recap of what happened and what caused it."],
              ["Can you put the problem and the reason for it into just one sentence?",
               "Describe, in exactly one sentence, the trouble I am in and where it came from."]),
    "list": (["List the {n} things that went wrong, one per line, each starting with a dash.",
              "Make a list of {n} items, one line each starting with a dash, of what happened.",
              "Write {n} dash points, one per line, covering what went wrong."],
             ["Break what happened into {n} separate lines, every line beginning with a dash.",
              "I need {n} short dash lines, one per line, that capture the situation."]),
    "note": (["Write a short note to {name} explaining what went wrong and why.",
              "Draft a quick message to {name} telling them about the problem and its cause.",
              "Send {name} a short note about what happened and what caused it."],
             ["Compose a brief message addressed to {name} that explains the problem and the reason.",
              "Let {name} know, in a short note, what the trouble is and how it started."]),
    "avoid": (["Explain my main problem without using the word \"{w}\".",
               "Tell me what my main problem is, but do not use the word \"{w}\".",
               "Describe the main problem in your own words and avoid the word \"{w}\"."],
              ["Say what the main problem is while steering clear of the word \"{w}\".",
               "Restate the main issue; the word \"{w}\" must not appear."]),
    "headline": ([], ["Give my situation a headline of at most {k} words.",
                      "Write a title for this, no longer than {k} words.",
                      "Sum the main problem up as a headline of {k} words or fewer."]),
    "ordered": ([], ["Tell me what happened in order: first the cause, then the problem.",
                     "Put the events in order, starting with what came first and ending with the problem.",
                     "Walk me through it in order, the cause first and the problem after it."]),
}
PAIR_INTROS = ["Two things, please, one paragraph each:",
               "I need help with two things; answer each in its own paragraph:"]
"""How an ID instruction asks for two things at once (``data.instruction_pair_share``): the training
distribution's compound requests, worded apart from OOD-far's :data:`SEQUENTIAL_INTROS`."""
SEQUENTIAL_INTROS = ["Please do the following, in order, each in its own paragraph:",
                     "Answer these in order, one paragraph each:",
                     "I have a few requests; handle them in order, one paragraph per request:"]
REFERENCE_TAILS = ["Hope this helps.", "Let me know if you need anything else.", "I hope that makes sense.",
                   "Good luck with it."]
"""Friendly closing sentences people add to an answer (a slip in a one-sentence answer)."""
REFERENCE_SLIPS = {"omit": 0.15, "detail": 0.12, "tail": 0.15}
"""How often a reference part slips as people's answers do: a required fact left out (parts of
two or more facts, not lists), an unasked detail added, a closing sentence from
:data:`REFERENCE_TAILS` (prose parts). The summarisation world's references leave out a salient fact
7-28% of the time, add a detail 12% and a tail 15%; with rarer slips (8% and 5%, no tails) nine in
ten instruction references sat at the utility's ceiling, and a policy could tie them but not beat
them."""
SITUATION_OPENERS = ["Here is my situation.", "Some context first.", "Okay, so this is what is going on.",
                     "I could use some help with something.", ""]


@dataclass(frozen=True)
class Part:
    """One thing an instruction asks for, with the requirements the judge checks."""

    family: str
    task: str
    """The sentence of the instruction that asks for it (copying it back is penalised)."""
    facts: tuple[tuple[str, str], ...]
    """The (entity, predicate) facts of the situation the response must state, in order."""
    one_sentence: bool = False
    n_items: int | None = None
    addressee: str | None = None
    avoid: str | None = None
    ordered: bool = False
    max_words: int | None = None
    """A hard length limit (a headline); otherwise ``budget`` words, each further word costing."""
    budget: int = 30

    def to_dict(self) -> dict:
        return {"family": self.family, "task": self.task, "facts": [list(f) for f in self.facts],
                "one_sentence": self.one_sentence, "n_items": self.n_items, "addressee": self.addressee,
                "avoid": self.avoid, "ordered": self.ordered, "max_words": self.max_words, "budget": self.budget}

    @classmethod
    def from_dict(cls, d: dict) -> Part:
        return cls(**{**d, "facts": tuple(tuple(f) for f in d["facts"])})


@dataclass
class Instruction:
    """One instruction of the world: the situation's facts, the parts asked for, the prompt text
    and a human-like reference response."""

    uid: str
    split: str
    domain: str
    situation: str
    parts: list[Part]
    instruction: str
    reference: str
    facts: list[Fact] = field(default_factory=list)

    @property
    def ask(self) -> str:
        """What the instruction asks, without the situation (the Alpaca template's instruction;
        the situation is its input)."""
        return self.instruction.split("\n\n", 1)[1]

    @property
    def genre(self) -> str:
        """'instruction' or, for a chained one, 'sequential' (the splits table's genre column)."""
        return "instruction" if len(self.parts) == 1 else "sequential"

    @property
    def family(self) -> str:
        """The family, or 'sequential:<a>+<b>[+<c>]' for a chained instruction."""
        names = [p.family for p in self.parts]
        return names[0] if len(names) == 1 else "sequential:" + "+".join(names)

    def to_dict(self) -> dict:
        return {"uid": self.uid, "split": self.split, "domain": self.domain, "family": self.family,
                "situation": self.situation, "instruction": self.instruction, "reference": self.reference,
                "parts": [p.to_dict() for p in self.parts],
                "facts": [{"entity": f.entity, "predicate": f.predicate, "role": f.role} for f in self.facts]}

    @classmethod
    def from_dict(cls, d: dict) -> Instruction:
        return cls(d["uid"], d["split"], d["domain"], d["situation"], [Part.from_dict(p) for p in d["parts"]],
                   d["instruction"], d["reference"], [Fact(**f) for f in d.get("facts", [])])


@dataclass(frozen=True)
class PartUtility:
    """The terms of one part's utility (see :meth:`InstructionWorld.utility`)."""

    coverage: float
    hallucinated: int
    off_task: int
    failed: tuple[str, ...]
    n_words: int
    echo: float
    fluency: float
    total: float


@dataclass(frozen=True)
class InstructionUtility:
    """A response's gold utility (``total``) with its parts' terms; ``coverage``, ``hallucinated``,
    ``fluency`` and ``n_words`` summarise them as the summarisation world's :class:`Utility` does."""

    total: float
    parts: tuple[PartUtility, ...]
    extra_paragraphs: int

    @property
    def coverage(self) -> float:
        return sum(p.coverage for p in self.parts) / len(self.parts)

    @property
    def hallucinated(self) -> int:
        return sum(p.hallucinated for p in self.parts)

    @property
    def fluency(self) -> float:
        return min(p.fluency for p in self.parts)

    @property
    def n_words(self) -> int:
        return sum(p.n_words for p in self.parts)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(f for p in self.parts for f in p.failed)


@dataclass(frozen=True)
class InstructionWeights:
    """Weights of the instruction world's gold utility (in the spirit of AlpacaEval's judge: does
    the response do what was asked, correctly and without padding?)."""

    hallucination_cost: float = 0.35
    """Per fact the situation does not contain."""
    off_task_cost: float = 0.1
    """Per fact of the situation the part did not ask for."""
    form_cost: float = 0.3
    """Per failed form requirement (one sentence, item count, addressee, avoided word, order, limit)."""
    excess_word_cost: float = 0.03
    """Per word past the part's budget."""
    echo_cost: float = 1.0
    """Times the share of the part's instruction-sentence word trigrams the response repeats."""
    repetition_cost: float = 1.0
    """Times the share of repeated word trigrams."""
    extra_paragraph_cost: float = 0.2
    """Per paragraph beyond the parts asked for."""
    word_cost: float = 0.005
    """Per word of the part, within its budget too: of two responses that state what was asked in
    the asked form, the more concise wins (a 20-word answer pays 0.1). Without it, every complete
    answer scored exactly the same and the judge called a tie where a reader would prefer one."""
    empty_utility: float = -0.1
    """The utility of an empty part."""
    fluency_floor: float = 0.85
    """As the summarisation world's: coverage scaled by min(1, fluency / floor)^2."""


_SENTENCE = re.compile(r"[^.!?]*[.!?]+|[^.!?]+$")
_PARAGRAPHS = re.compile(r"\n\s*\n")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` that hold a word."""
    return [s for s in _SENTENCE.findall(text.strip()) if words(s)]


def paragraphs(text: str) -> list[str]:
    """The blank-line separated paragraphs of ``text`` that hold a word."""
    return [p.strip() for p in _PARAGRAPHS.split(text.strip()) if words(p)]


def items(text: str) -> list[str]:
    """The list items of ``text``: its lines that start with a dash and hold a word."""
    return [ln for ln in text.splitlines() if ln.strip().startswith(("- ", "-\t")) and words(ln)]


class InstructionWorld(Judged):
    """Generator, labeller and judge of the instruction world, deterministic given ``seed``."""

    def __init__(self, seed: int = 0, labeller_temperature: float = 0.1,
                 weights: InstructionWeights | None = None) -> None:
        self.seed = seed
        self.labeller_temperature = labeller_temperature
        self.weights = weights or InstructionWeights()
        self.posts = World(seed)  # the language, the lexicon and the fluency measure
        self.lex = lexicon()

    @property
    def judge_variants(self) -> tuple[str, ...]:
        """The worse responses the judge checks run (:data:`CORRUPTIONS`; no extractive baseline:
        copying the instruction back is one of them)."""
        return CORRUPTIONS

    @property
    def train_domains(self) -> tuple[str, ...]:
        return tuple(self.lex.domains)

    def judge_terms(self) -> list[dict[str, str]]:
        """What the gold utility rewards and punishes, with this world's weights (as the
        summarisation world's, for the book's world page)."""
        w = self.weights
        return [
            {"term": "required facts stated (coverage)", "effect": "rewards",
             "weight": "up to +1 per part: the stated share of the facts the part asks for"},
            {"term": "facts the situation does not contain", "effect": "punishes",
             "weight": f"-{w.hallucination_cost:g} each"},
            {"term": "facts of the situation not asked for", "effect": "punishes",
             "weight": f"-{w.off_task_cost:g} each"},
            {"term": "each failed form requirement", "effect": "punishes",
             "weight": f"-{w.form_cost:g} (one sentence, n items, addressee, avoided word, order, word limit)"},
            {"term": "every word (concision)", "effect": "punishes", "weight": f"-{w.word_cost:g} a word"},
            {"term": "words past the part's budget", "effect": "punishes", "weight": f"-{w.excess_word_cost:g} a word"},
            {"term": "the instruction copied back", "effect": "punishes",
             "weight": f"-{w.echo_cost:g} x the share of its trigrams repeated"},
            {"term": "repeated word trigrams", "effect": "punishes", "weight": f"-{w.repetition_cost:g} x their share"},
            {"term": "word salad", "effect": "punishes",
             "weight": f"coverage scaled by min(1, fluency / {w.fluency_floor:g})^2"},
            {"term": "paragraphs beyond the parts asked for", "effect": "punishes",
             "weight": f"-{w.extra_paragraph_cost:g} each"},
            {"term": "empty part", "effect": "punishes", "weight": f"utility {w.empty_utility:g}"},
        ]

    def utility_formula(self) -> str:
        """The gold utility as a LaTeX display equation, with this world's weights."""
        w = self.weights
        return (rf"u = \frac{{1}}{{|P|}} \sum_{{p \in P}} \big(\text{{coverage}}_p\, f_p"
                rf" - {w.hallucination_cost:g}\, n_\text{{invented}} - {w.off_task_cost:g}\, n_\text{{off-task}}"
                rf" - {w.form_cost:g}\, n_\text{{failed forms}}"
                rf" - {w.word_cost:g}\, n_\text{{words}} - {w.excess_word_cost:g} \max(0, n_\text{{words}} - B_p)"
                rf" - {w.echo_cost:g}\, e_p - {w.repetition_cost:g}\, r_p\big)"
                rf" - {w.extra_paragraph_cost:g}\, n_\text{{extra paragraphs}}")

    # ---- generation ----
    def _situation(self, rng: random.Random, domain: str) -> tuple[list[Fact], str, dict]:
        sampled = [f for f in self.posts._sample_facts(rng, domain, "forum") if f.role != "ask"]
        facts = [f for f in sampled if f.role in ("problem", "cause")]  # short: a prompt fits the
        facts += [next(f for f in sampled if f.role == role) for role in ("minor", "distractor")]  # tiny model
        order = facts[:]
        rng.shuffle(order)
        wording: dict = {}
        text = " ".join(self.posts._fill(rng, rng.choice(FORUM_SENTENCES[f.role]), f, "forum", wording)
                        for f in order)
        opener = rng.choice(SITUATION_OPENERS) if rng.random() < 0.25 else ""
        return facts, (opener + " " + text).strip(), wording

    def _avoid_word(self, rng: random.Random, fact: Fact, wording: dict) -> str | None:
        """A content word of the problem as the situation words it, when the lexicon has another
        phrase for the same predicate without that word (so the problem can still be stated)."""
        said = words(wording[fact][1])
        phrases = self.lex.predicate_phrases[fact.predicate]
        options = [w for w in said if len(w) > 3 and w not in _STOP
                   and any(w not in words(p) for p in phrases)]
        return rng.choice(options) if options else None

    def _part(self, rng: random.Random, family: str, facts: list[Fact], wording: dict, held_out: bool) -> Part:
        role = {f.role: f for f in facts}
        problem, cause = role["problem"].key, role["cause"].key
        minors = [f.key for f in facts if f.role == "minor"]
        if family not in TASKS:
            raise ValueError(f"Unknown instruction family {family!r}; choose from {FAMILIES}.")
        train, held = TASKS[family]
        phrasings = held if (held_out or not train) else train
        template = rng.choice(phrasings)
        if family == "recap":
            return Part(family, template, (problem, cause), one_sentence=True, budget=30)
        if family == "list":
            n = 3 if minors and rng.random() < 0.4 else 2
            return Part(family, template.replace("{n}", str(n)), (problem, cause, *minors[: n - 2]), n_items=n,
                        budget=12 * n)
        if family == "note":
            name = rng.choice(NAMES)
            return Part(family, template.replace("{name}", name), (problem, cause), addressee=name, budget=34)
        if family == "avoid":
            w = self._avoid_word(rng, role["problem"], wording)
            if w is None:  # no synonym avoids any of its words: ask for a recap instead
                return self._part(rng, "recap", facts, wording, held_out)
            return Part(family, template.replace("{w}", w), (problem,), avoid=w, budget=24)
        if family == "headline":  # room for the problem as the situation words it, and a little more
            said = wording.get(role["problem"]) or ("my x", self.lex.predicate_phrases[problem[1]][0])
            k = len(words(" ".join(said))) + rng.choice((1, 2, 4))
            return Part(family, template.replace("{k}", str(k)), (problem,), max_words=k, budget=k)
        if family == "ordered":
            return Part(family, template, (cause, problem), ordered=True, budget=34)
        raise ValueError(f"Unknown instruction family {family!r}; choose from {FAMILIES}.")

    def _distinct_parts(self, rng: random.Random, families: list[str], want: int, facts: list[Fact], wording: dict,
                        held_out_share: float | None = None) -> list[Part]:
        """``want`` parts of distinct families drawn from ``families`` in a random order (a family
        may turn into another, avoid into a recap, so a drawn family is kept only if it is new).
        ``held_out_share``: each part's chance of a held-out phrasing (None: training phrasings,
        without a draw)."""
        parts = []
        for fam in rng.sample(families, len(families)):
            held_out = held_out_share is not None and rng.random() < held_out_share
            part = self._part(rng, fam, facts, wording, held_out=held_out)
            if part.family not in {p.family for p in parts}:
                parts.append(part)
            if len(parts) == want:
                break
        return parts

    def make_instruction(self, rng: random.Random, domain: str, split: str, uid: str,
                         pair: bool = False) -> Instruction:
        """One instruction of ``split`` ('id', 'ood_near' or 'ood_far') about a situation in ``domain``.

        ``pair`` (ID only): ask for two things at once, two distinct training families in their
        training phrasings, one paragraph each (:data:`PAIR_INTROS`): the compound requests of the
        training distribution (``data.instruction_pair_share``), as Alpaca's data holds requests for
        two things; OOD-far chains two or three parts of any family, held-out phrasings too."""
        if pair and split != "id":
            raise ValueError(f"pair=True asks for an ID instruction of two training families; split is {split!r}.")
        facts, situation, wording = self._situation(rng, domain)
        if pair:
            parts = self._distinct_parts(rng, ID_FAMILIES, 2, facts, wording)
        elif split == "id":
            parts = [self._part(rng, rng.choice(ID_FAMILIES), facts, wording, held_out=False)]
        elif split == "ood_near":
            if rng.random() < 0.5:
                parts = [self._part(rng, rng.choice(NEAR_FAMILIES), facts, wording, held_out=True)]
            else:
                parts = [self._part(rng, rng.choice(ID_FAMILIES), facts, wording, held_out=True)]
        elif split == "ood_far":
            parts = self._distinct_parts(rng, FAMILIES, rng.choice((2, 2, 3)), facts, wording, held_out_share=0.5)
        else:
            raise ValueError(f"Unknown split {split!r}: 'id', 'ood_near' or 'ood_far'.")
        if len(parts) == 1:
            ask = parts[0].task
        else:
            intro = rng.choice(PAIR_INTROS if pair else SEQUENTIAL_INTROS)
            ask = intro + " " + " ".join(f"{i}) {p.task}" for i, p in enumerate(parts, 1))
        ins = Instruction(uid, split, domain, situation, parts, f"{situation}\n\n{ask}", "", facts)
        ins.reference = self.reference(rng, ins, wording)
        return ins

    # ---- references: good, imperfect as people are ----
    def _say(self, rng: random.Random, key: tuple[str, str], facts: list[Fact], wording: dict | None,
             avoid: str | None = None) -> str:
        """A clause stating fact ``key`` (entity and predicate), mostly in the situation's words."""
        fact = next(f for f in facts if f.key == key)
        text = self.posts._fill(rng, "{E} {P}", fact, "forum", wording, 0.75)
        if avoid and avoid in words(text):
            for _ in range(20):
                text = self.posts._fill(rng, "{E} {P}", fact, "forum")
                if avoid not in words(text):
                    break
        return text[:1].lower() + text[1:]

    def render(self, rng: random.Random, part: Part, facts: list[Fact], wording: dict | None = None,
               keys: tuple[tuple[str, str], ...] | None = None) -> str:
        """A response to ``part`` stating ``keys`` (default: the facts it asks for) in its form."""
        keys = part.facts if keys is None else keys
        clauses = [self._say(rng, k, facts, wording, part.avoid) for k in keys]
        if not clauses:
            return ""
        if part.family == "list":
            return "\n".join(f"- {_cap(c)}." for c in clauses)
        if part.family == "note":
            return f"{part.addressee}, " + " and ".join(clauses) + ". " + rng.choice(
                ["Just wanted you to know.", "Talk soon.", "Thanks for understanding."])
        if part.family == "headline":
            return _cap(clauses[0])
        if part.family == "ordered":
            first, *rest = clauses
            return f"First, {first}. " + " ".join(f"Then {c}." for c in rest)
        if part.family == "recap" and len(clauses) == 2:
            return _cap(f"{clauses[0]} because {clauses[1]}.")
        return _cap(" and ".join(clauses) + ".")

    def reference(self, rng: random.Random, ins: Instruction, wording: dict | None = None) -> str:
        """A human-like reference: each part answered in its form, one paragraph each, and now and
        then slipping as people do (:data:`REFERENCE_SLIPS`): a required fact left out, an unasked
        detail added, a friendly closing sentence."""
        out = []
        for part in ins.parts:
            keys = list(part.facts)
            if len(keys) > 1 and part.family != "list" and rng.random() < REFERENCE_SLIPS["omit"]:
                keys.pop()
            text = self.render(rng, part, ins.facts, wording, tuple(keys))
            prose = part.family not in ("list", "headline")
            minors = [f for f in ins.facts if f.role == "minor"]
            if prose and minors and rng.random() < REFERENCE_SLIPS["detail"]:
                text += " " + _cap(self._say(rng, rng.choice(minors).key, ins.facts, wording)) + "."
            if prose and part.family != "note" and rng.random() < REFERENCE_SLIPS["tail"]:
                text += " " + rng.choice(REFERENCE_TAILS)
            out.append(text)
        return "\n\n".join(out)

    # ---- the gold utility, labeller and judge ----
    @functools.cached_property
    def _bigrams(self) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
        """Word bigrams and vocabulary of the world's language: the summarisation world's, and a
        fixed large sample of instructions and their references."""
        bigrams, vocab = (set(x) for x in self.posts._bigrams)
        rng = random.Random(54321)
        names = list(self.lex.domains)
        for i in range(1500):
            ins = self.make_instruction(rng, names[i % len(names)], ("id", "ood_near", "ood_far")[i % 3], "b")
            for text in (ins.instruction, ins.reference, self.reference(rng, ins)):
                for para in paragraphs(text):
                    for line in para.splitlines():
                        w = words(line)
                        vocab.update(w)
                        bigrams.update(zip(w, w[1:]))
        return frozenset(bigrams), frozenset(vocab)

    def fluency(self, text: str) -> float:
        """Share of adjacent word pairs (within a line) of the world's words that occur in its
        language; pairs with a word it never uses are skipped (as the summarisation world's)."""
        bigrams, vocab = self._bigrams
        judged = [(a, b) for line in text.splitlines() for w in [words(line)] for a, b in zip(w, w[1:])
                  if a in vocab and b in vocab]
        return sum(p in bigrams for p in judged) / len(judged) if judged else 1.0

    def _part_utility(self, text: str, part: Part, ins: Instruction) -> PartUtility:
        w = self.weights
        toks = words(text)
        if not toks:
            return PartUtility(0.0, 0, 0, ("empty",), 0, 0.0, 0.0, w.empty_utility)
        situation = {f.key: f for f in ins.facts}
        by_pred = {f.predicate: f.key for f in ins.facts}
        required = list(part.facts)
        stated, first_seen, hallucinated, off_task = set(), {}, 0, 0
        for position, (subject, ident) in enumerate(self.lex.assertions(text)):
            key = (subject, ident)
            if key not in situation and subject is None and ident in by_pred:
                key = by_pred[ident]
            if key in situation:
                if key not in stated:
                    stated.add(key)
                    first_seen[key] = position
                    off_task += key not in required
            else:
                hallucinated += 1
        coverage = sum(k in stated for k in required) / len(required)
        failed = []
        if part.one_sentence and len(sentences(text)) != 1:
            failed.append("one sentence")
        if part.n_items is not None and len(items(text)) != part.n_items:
            failed.append(f"{part.n_items} items")
        if part.addressee and not re.match(rf"\s*(?:dear |hi |hello )?{re.escape(part.addressee.lower())}\b",
                                           text.lower()):
            failed.append(f"addressed to {part.addressee}")
        if part.avoid and part.avoid in toks:
            failed.append(f"avoids {part.avoid!r}")
        if part.ordered:
            seen = [first_seen.get(k) for k in required]
            if None not in seen and seen != sorted(seen):
                failed.append("in order")
        if part.max_words is not None and len(toks) > part.max_words:
            failed.append(f"at most {part.max_words} words")
        task = words(part.task)
        task_trigrams = set(zip(task, task[1:], task[2:]))
        mine = set(zip(toks, toks[1:], toks[2:]))
        echo = len(task_trigrams & mine) / len(task_trigrams) if task_trigrams else 0.0
        trigrams = list(zip(toks, toks[1:], toks[2:]))
        repetition = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
        flu = self.fluency(text)
        flu_factor = min(1.0, flu / w.fluency_floor) ** 2
        total = (coverage * flu_factor - w.hallucination_cost * hallucinated - w.off_task_cost * off_task
                 - w.form_cost * len(failed) - w.word_cost * len(toks)
                 - w.excess_word_cost * max(0, len(toks) - part.budget)
                 - w.echo_cost * echo - w.repetition_cost * repetition)
        return PartUtility(coverage, hallucinated, off_task, tuple(failed), len(toks), echo, flu, total)

    def part_utilities(self, response: str, ins: Instruction) -> list[PartUtility]:
        """Each part's utility: paragraph i answers part i (one part: the whole response)."""
        if len(ins.parts) == 1:
            return [self._part_utility(response, ins.parts[0], ins)]
        paras = paragraphs(response)
        return [self._part_utility(paras[i] if i < len(paras) else "", p, ins) for i, p in enumerate(ins.parts)]

    def utility(self, response: str, ins: Instruction) -> InstructionUtility:
        """Gold utility of ``response`` to ``ins`` (about 1 is ideal): the mean of its parts'
        utilities, each

            u = coverage * f - 0.35 n_invented - 0.1 n_off_task - 0.3 n_failed_forms
                - 0.005 n_words - 0.03 max(0, n_words - budget) - 1.0 echo - 1.0 repetition

        (weights :class:`InstructionWeights`), minus ``extra_paragraph_cost`` per paragraph
        beyond the parts of a chained instruction."""
        parts = self.part_utilities(response, ins)
        extra = max(0, len(paragraphs(response)) - len(ins.parts)) if len(ins.parts) > 1 else 0
        total = sum(p.total for p in parts) / len(parts) - self.weights.extra_paragraph_cost * extra
        return InstructionUtility(total, tuple(parts), extra)

    def fact_set(self, text: str) -> frozenset:
        """The oracle diversity unit: the facts a response asserts and its shape (list or prose,
        and its number of paragraphs)."""
        shape = ("shape", f"{'list' if items(text) else 'prose'}/{len(paragraphs(text))}")
        return frozenset(self.lex.parse(text)) | {shape}

    # ---- corrupted responses (the judge's checks) ----
    def corrupt(self, variant: str, ins: Instruction, other: Instruction, rng: random.Random) -> str:
        """A worse response than the reference, of kind ``variant`` (:data:`CORRUPTIONS`)."""
        ref = ins.reference
        if variant == "truncated":
            return truncated(ref)
        if variant == "empty":
            return ""
        if variant == "shuffled":
            return shuffled(ref, rng)
        if variant == "other_instruction":
            return other.reference
        if variant == "instruction_echo":
            return ins.instruction
        if variant == "off_task":  # the right facts, in the form of another family
            out = []
            for part in ins.parts:
                fam = rng.choice([f for f in FAMILIES if f != part.family and f != "avoid"])
                out.append(self.render(rng, self._part(rng, fam, ins.facts, {}, False), ins.facts))
            return "\n\n".join(out)
        if variant == "violating":  # each part's content, its form broken
            return "\n\n".join(self._violate(rng, p, ins) for p in ins.parts)
        if variant == "hallucinated":
            return ref + " " + self.posts.hallucinated_sentence(_as_post(ins), rng)
        raise ValueError(f"Unknown judge-check variant {variant!r}; choose from {CORRUPTIONS}.")

    def _violate(self, rng: random.Random, part: Part, ins: Instruction) -> str:
        clauses = [self._say(rng, k, ins.facts, None) for k in part.facts]
        if part.family == "list":  # one item short, or the items run together as prose
            return "\n".join(f"- {_cap(c)}." for c in clauses[:-1]) if rng.random() < 0.5 else \
                _cap(" and ".join(clauses)) + "."
        if part.family == "recap":
            return " ".join(_cap(c) + "." for c in clauses)  # two sentences
        if part.family == "note":
            return _cap(" and ".join(clauses)) + "."  # nobody addressed
        if part.family == "avoid":
            fact = next(f for f in ins.facts if f.key == part.facts[0])
            phrases = [p for p in self.lex.predicate_phrases[fact.predicate] if part.avoid in words(p)]
            entity = self.posts._entity(rng, fact.entity, "forum")
            return _cap(f"{entity} {rng.choice(phrases)}.") if phrases else _cap(clauses[0]) + f" {part.avoid}."
        if part.family == "headline":
            filler = " ".join(["really"] * (part.max_words or 6))
            return _cap(f"{clauses[0]} and it is {filler} bad")
        if part.family == "ordered":
            return " ".join(f"{_cap(c)}." for c in reversed(clauses))  # the problem before its cause
        raise ValueError(part.family)


def _as_post(ins: Instruction) -> _PostExample:
    """The instruction's situation as a summarisation-world example (for its fact helpers)."""
    return _PostExample(ins.uid, ins.split, "forum", ins.domain, "", "", ins.situation, ins.reference, ins.facts)


CORRUPTIONS = ("truncated", "empty", "shuffled", "other_instruction", "instruction_echo", "off_task", "violating",
               "hallucinated")
"""Worse responses than the reference: the judge should prefer the reference to each on nearly every
instruction (tested), and to a copy of the instruction on at least 95%."""
