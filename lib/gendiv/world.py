"""The miniature world: a small English summarisation task where the gold judge is exact.

The paper (Kirk et al. 2024, Sec. 3) needs real Reddit posts, human TL;DRs, human comparisons
and a GPT-4 judge. Offline and on a CPU we build a world where all four exist:

* **Forum posts** (subreddit, title, first-person body) over 16 topic domains, and **news
  reports** (third person) over the same domains for a far distribution shift. Every example
  carries its latent facts: salient ones (the problem, its cause, and the poster's ask -- or, in
  news, an authority's response), minor ones and distractors.
* **Human-like references**: TL;DRs rendered from the salient facts with varied wording, and
  imperfect as people are (a salient fact missing, a minor fact added, a long tail).
* **Gold utility** of any free-text summary given its example (:func:`utility`): weighted
  coverage of salient facts, penalties for facts the post does not contain, distractors,
  excess length, repetition and word salad.
* A **noisy simulated labeller** (Bradley-Terry on utility, :meth:`World.label`) and the
  **deterministic judge** (:meth:`World.judge`) that stands in for the paper's GPT-4.
* The **fact parser** (:meth:`Lexicon.parse`) behind the utility, which also gives each output's
  set of asserted facts: the oracle diversity metric.

A fact is a pair (entity id, predicate id). The parser scans lower-cased words left to right,
matching the longest lexicon phrase at each position; an entity mention becomes the current
subject, and each predicate mention asserts (current subject, predicate). Asks always bind to the
narrator. Every phrase maps to one id across the lexicon (checked on load), so facts round-trip
through text: ``parse(render(facts)) == facts`` (tested).
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import yaml

NARRATOR = "narrator"
SALIENT_ROLES = ("problem", "cause", "ask", "response")
SALIENT_WEIGHTS = {"problem": 1.0, "cause": 0.8, "ask": 0.6, "response": 0.8}
FIRST_PERSON = {"i", "me", "my", "mine", "myself", "i'm", "i've"}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters, digits, inner apostrophes)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Fact:
    """One latent fact of an example: ``entity`` did/is ``predicate``, playing ``role`` in the post."""

    entity: str
    predicate: str
    role: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.entity, self.predicate)


@dataclass(frozen=True)
class Domain:
    name: str
    subreddit: str
    entities: dict[str, list[str]]
    events: dict[str, list[str]]
    attributes: dict[str, list[str]]
    asks: dict[str, list[str]]


class Lexicon:
    """Entities and predicates of the world, with the phrase parser that reads facts from text."""

    def __init__(self) -> None:
        forum = yaml.safe_load(resources.files("gendiv.lexicon").joinpath("forum.yaml").read_text())
        shared = yaml.safe_load(resources.files("gendiv.lexicon").joinpath("shared.yaml").read_text())
        self.domains: dict[str, Domain] = {}
        self.entity_phrases: dict[str, list[str]] = {}
        self.predicate_phrases: dict[str, list[str]] = {}
        self.predicate_kind: dict[str, str] = {}
        for name, spec in forum.items():
            tables = {kind: {f"{name}/{k}": list(v) for k, v in spec[kind].items()}
                      for kind in ("entities", "events", "attributes", "asks")}
            dom = Domain(name, spec["subreddit"], **tables)
            self.domains[name] = dom
            self.entity_phrases.update(dom.entities)
            for kind in ("events", "attributes", "asks"):
                for pid, phrases in getattr(dom, kind).items():
                    self.predicate_phrases[pid] = phrases
                    self.predicate_kind[pid] = kind[:-1]
        self.asides: dict[str, list[tuple[str, str]]] = {}
        for genre in ("forum", "news"):
            pairs = []
            for row in shared[f"{genre}_asides"]:
                (eid, ephr), = row["entity"].items()
                (pid, pphr), = row["predicate"].items()
                eid, pid = f"aside/{eid}", f"aside/{pid}"
                self.entity_phrases[eid] = list(ephr)
                self.predicate_phrases[pid] = list(pphr)
                self.predicate_kind[pid] = "aside"
                pairs.append((eid, pid))
            self.asides[genre] = pairs
        self.authorities = {f"news/{k}": list(v) for k, v in shared["authorities"].items()}
        self.responses = {f"news/{k}": list(v) for k, v in shared["responses"].items()}
        self.entity_phrases.update(self.authorities)
        self.predicate_phrases.update(self.responses)
        self.predicate_kind.update({k: "response" for k in self.responses})
        self._trie = self._build_trie()

    def _build_trie(self) -> dict:
        trie: dict = {}
        owner: dict[tuple[str, ...], str] = {}
        for kind, table in (("entity", self.entity_phrases), ("predicate", self.predicate_phrases)):
            for ident, phrases in table.items():
                for phrase in phrases:
                    toks = tuple(words(phrase))
                    if not toks:
                        raise ValueError(f"Lexicon phrase {phrase!r} of {ident!r} has no words.")
                    if toks in owner and owner[toks] != ident:
                        raise ValueError(
                            f"Lexicon phrase {phrase!r} belongs to both {owner[toks]!r} and {ident!r}; "
                            "every phrase must name one entity or predicate. Reword one of them.")
                    owner[toks] = ident
                    node = trie
                    for t in toks:
                        node = node.setdefault(t, {})
                    node[None] = (kind, ident)
        return trie

    @functools.cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word that occurs in a lexicon phrase."""
        return frozenset(w for table in (self.entity_phrases, self.predicate_phrases)
                         for phrases in table.values() for p in phrases for w in words(p))

    def mentions(self, text: str) -> list[tuple[str, str]]:
        """(kind, id) of every lexicon phrase in ``text``, left to right, longest match first."""
        toks = words(text)
        out, i = [], 0
        while i < len(toks):
            node, j, best = self._trie, i, None
            while j < len(toks) and toks[j] in node:
                node = node[toks[j]]
                j += 1
                if None in node:
                    best = (j, node[None])
            if best is None:
                i += 1
            else:
                i = best[0]
                out.append(best[1])
        return out

    def assertions(self, text: str) -> list[tuple[str | None, str]]:
        """The facts a text asserts, in the order it asserts them (repeats kept), as (entity id or
        None, predicate id) pairs.

        A predicate binds to the most recent entity mention (simple anaphora: "my landlord raised
        the rent and ignored the repair requests" asserts two facts about the landlord); asks bind
        to the narrator; a predicate before any entity binds to None.
        """
        facts: list[tuple[str | None, str]] = []
        subject: str | None = None
        for kind, ident in self.mentions(text):
            if kind == "entity":
                subject = ident
            elif self.predicate_kind[ident] == "ask":
                facts.append((NARRATOR, ident))
            else:
                facts.append((subject, ident))
        return facts

    def parse(self, text: str) -> set[tuple[str | None, str]]:
        """The set of facts a text asserts (:meth:`assertions`)."""
        return set(self.assertions(text))


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The world's lexicon (loaded once per process)."""
    return Lexicon()


# --- Templates. Filler words here must never form a lexicon phrase (tested on many posts). ---
FORUM_OPENERS = [
    "Throwaway because people I know use this site.", "Sorry for the long post, I'm on mobile.",
    "First time posting here, so please bear with me.", "I need some outside perspective on this.",
    "Long time lurker, first post.", "Not sure if this is the right place to post this.",
    "I have been going back and forth on this for a while.", "Okay so here is what happened.",
]
FORUM_SENTENCES = {
    "problem": ["{E} {P}.", "So {E} {P} and I'm not sure how to handle it.",
                "The main issue is that {E} {P}.", "Long story short, {E} {P}.",
                "A few days ago {E} {P}.", "Basically {E} {P}, and it has been stressing me out.",
                "The problem is {E} {P}.", "Here is the thing: {E} {P}."],
    "cause": ["I think it started because {E} {P}.", "This all began when {E} {P}.",
              "Some background: {E} {P}.", "It probably happened because {E} {P}.",
              "Before all this, {E} {P}.", "It might be related to the fact that {E} {P}."],
    "ask": ["Should I {A}?", "Would it be wrong to {A}?", "I'm thinking I should {A}, is that reasonable?",
            "Is it time to {A}?", "Part of me wants to {A}.", "Do you think I should {A}?"],
    "minor": ["For context, {E} {P}.", "Also, {E} {P}.", "Not that it matters much, but {E} {P}.",
              "{E} {P}, if that helps.", "Worth mentioning that {E} {P}."],
    "distractor": ["{E} {P}.", "Unrelated, but {E} {P}.", "On a side note, {E} {P}.",
                   "In other news, {E} {P}.", "Funny enough, {E} {P}."],
}
FORUM_CLOSERS = ["Any advice is welcome.", "What would you do?", "Thanks for reading.",
                 "I really don't know what to do here.", "Please be kind.", "Edit: formatting.", ""]
FORUM_TITLES = ["{E} {P}", "{E} {P}, what now?", "Help: {E} {P}", "Need advice, {E} {P}",
                "{E} {P}. Should I {A}?", "Should I {A}?"]
SUMMARY_FACT = {
    "problem": ["{E} {P}.", "{E} {P}.", "{E} {P} and it is getting worse."],
    "cause": ["It started because {E} {P}.", "{E} {P} first.", "Background: {E} {P}."],
    "ask": ["Should I {A}?", "Not sure if I should {A}.", "Thinking about whether to {A}.", "Do I {A}?"],
    "minor": ["{E} {P}.", "Also {E} {P}."],
    "distractor": ["Also {E} {P}."],
    "response": ["{E} {P}.", "The {E} {P}."],
}
SUMMARY_TAILS = ["Any advice appreciated.", "Idk what to do.", "Please help, I'm lost.",
                 "Would love some advice from people who have been through this.",
                 "I feel like I'm going crazy here and could really use some help."]
COMMENT_REPLIES = {
    "forum": ["Same thing happened to me last year.", "That sounds really stressful, sorry.",
              "I would not wait on this one.", "Been there, it does get better.",
              "Have you talked to them about it yet?", "Honestly this is more common than you think.",
              "Write everything down, just in case.", "Take a breath first, then decide.",
              "You are not overreacting here.", "Sending good vibes your way."],
    "news": ["Hard to believe this is still happening.", "Someone should have seen this coming.",
             "Glad somebody finally reported on it.", "Curious to see how this one ends.",
             "This is the third story like it this month.", "Wow, what a week for everyone there."],
}
"""Replies of the comments that quote a post in the pre-training corpus (:meth:`World.comment`)."""
CITIES = ["LONDON", "LEEDS", "BRISTOL", "GLASGOW", "CARDIFF", "YORK", "NORWICH", "EXETER",
          "BOSTON", "DENVER", "PORTLAND", "AUSTIN"]
OUTLETS = ["Newswire", "The Ledger", "Daily Courier", "Evening Post"]
NEWS_SENTENCES = {
    "problem": ["The {E} {P}, according to witnesses.", "Neighbours say the {E} {P}.",
                "The {E} {P} earlier this week.", "Local reports say a {E} {P}.",
                "It emerged on Monday that the {E} {P}."],
    "cause": ["The trouble reportedly began when the {E} {P}.", "It came after the {E} {P}.",
              "Investigators believe it started because the {E} {P}.",
              "People close to the case said the {E} {P} first."],
    "response": ["The {E} {P}.", "In response, the {E} {P}.", "On Tuesday the {E} {P}.",
                 "Late on Wednesday the {E} {P}."],
    "minor": ["The {E} {P}, reports said.", "It is understood the {E} {P}.",
              "According to a statement, the {E} {P}."],
    "distractor": ["Separately, the {E} {P}.", "Elsewhere in the area, the {E} {P}.",
                   "Meanwhile, the {E} {P}."],
}
NEWS_QUOTES = ['"We are shocked and want answers," one resident said.',
               '"Nobody expected this," a local shopkeeper told reporters.',
               '"It has been a difficult week for everyone," said a woman who lives nearby.',
               "Several people gathered outside on Thursday evening.",
               "The story has been widely shared online."]
NEWS_TITLES = ["{E} {P}", "Local {E} {P}", "{E} {P} as {A} {R}"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


@dataclass
class Example:
    """One world example (a forum post or a news report) with its latent facts and reference."""

    uid: str
    split: str
    genre: str  # forum | news
    domain: str
    subreddit: str
    title: str
    body: str
    reference: str
    facts: list[Fact] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"uid": self.uid, "split": self.split, "genre": self.genre, "domain": self.domain,
                "subreddit": self.subreddit, "title": self.title, "body": self.body,
                "reference": self.reference,
                "facts": [{"entity": f.entity, "predicate": f.predicate, "role": f.role} for f in self.facts]}

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        facts = [Fact(**f) for f in d.get("facts", [])]
        return cls(d["uid"], d["split"], d["genre"], d["domain"], d["subreddit"], d["title"],
                   d["body"], d["reference"], facts)


@dataclass(frozen=True)
class Utility:
    """The parts of a summary's gold utility (see :func:`utility`)."""

    coverage: float
    minor: int
    distractors: int
    hallucinated: int
    fluency: float
    n_words: int
    repetition: float
    terminated: bool
    total: float


@dataclass(frozen=True)
class UtilityWeights:
    """Weights of the gold utility (:meth:`World.utility`); the book's world page shows them as
    chapter 1 reads them from here.

    The paper's GPT-4 judge is asked which summary "captures the most important points of the
    post, precisely and concisely". Coverage of the salient facts is the reward; facts the post
    does not contain, distractors and words past the length budget are the imprecision and
    verbosity it punishes. The length cost is set so that a verbatim copy of the whole post loses
    to the reference on nearly every post (at least 95%, tested): a copy states every salient
    fact, and only its length and its distractors can make it lose.
    """

    minor_bonus: float = 0.05
    """Added per minor fact stated (a detail that is true of the post but not its point)."""
    distractor_cost: float = 0.1
    """Subtracted per distractor stated (an aside unrelated to the post's problem)."""
    hallucination_cost: float = 0.35
    """Subtracted per fact the post does not contain."""
    length_budget_forum: int = 32
    """Words a forum summary may use before each further word costs ``excess_word_cost``."""
    length_budget_news: int = 36
    """The same budget for a news summary."""
    excess_word_cost: float = 0.03
    """Subtracted per word past the budget (a 64-word post copied in full loses about 1)."""
    repetition_cost: float = 1.0
    """Times the share of repeated word trigrams."""
    unterminated_cost: float = 0.05
    """Subtracted when the summary does not end in ., ! or ?."""
    empty_utility: float = -0.1
    """The utility of an empty summary."""
    fluency_floor: float = 0.85
    """Fluency (share of world bigrams) at or above which coverage counts in full; below it,
    coverage is scaled by (fluency / floor) squared."""


class Judged:
    """The labeller and the judge of a miniature world, from its gold utility (``utility(text,
    example).total``) and ``labeller_temperature``: shared by the summarisation and the
    instruction worlds."""

    labeller_temperature: float

    def judge(self, a: str, b: str, ex) -> float:
        """The deterministic gold judge: 1 if A is better, 0 if B is, 0.5 on a tie."""
        ua, ub = self.utility(a, ex).total, self.utility(b, ex).total
        if abs(ua - ub) < 1e-9:
            return 0.5
        return 1.0 if ua > ub else 0.0

    def preference_probability(self, a: str, b: str, ex) -> float:
        """P(labeller prefers A) = sigmoid((u_A - u_B) / tau), Bradley-Terry on gold utility."""
        d = (self.utility(a, ex).total - self.utility(b, ex).total) / self.labeller_temperature
        return 1.0 / (1.0 + math.exp(-max(min(d, 50.0), -50.0)))

    def label(self, a: str, b: str, ex, rng: random.Random) -> int:
        """The noisy simulated labeller: 1 if it prefers A, else 0 (a human-like noisy label)."""
        return int(rng.random() < self.preference_probability(a, b, ex))

    def foreign_words(self, text: str) -> list[str]:
        """The words of ``text`` that the world's language never uses (its vocabulary: the
        ``_bigrams`` sample's): in a policy's output, mostly words broken across sub-word pieces
        ("Smsts", "Recreased")."""
        vocab = self._bigrams[1]
        return [w for w in words(text) if w not in vocab]


def truncated(text: str) -> str:
    """The first third of a text's words (a corrupted reference)."""
    toks = text.split()
    return " ".join(toks[: max(1, len(toks) // 3)])


def shuffled(text: str, rng: random.Random) -> str:
    """A text's words in another order (a corrupted reference)."""
    toks = text.split()
    for _ in range(10):
        rng.shuffle(toks)
        if " ".join(toks) != text:
            break
    return " ".join(toks)


class World(Judged):
    """Generator, labeller and judge of the miniature world, deterministic given ``seed``."""

    def __init__(self, seed: int = 0, heldout_domains: Sequence[str] = (),
                 labeller_temperature: float = 0.1, weights: UtilityWeights | None = None) -> None:
        self.lex = lexicon()
        unknown = [d for d in heldout_domains if d not in self.lex.domains]
        if unknown:
            raise ValueError(f"Unknown held-out domain(s) {unknown}; choose from {sorted(self.lex.domains)}.")
        self.seed = seed
        self.heldout_domains = tuple(heldout_domains)
        self.train_domains = tuple(d for d in self.lex.domains if d not in self.heldout_domains)
        self.labeller_temperature = labeller_temperature
        self.weights = weights or UtilityWeights()

    # ---- rendering ----
    def _entity(self, rng: random.Random, eid: str, genre: str) -> str:
        phrases = self.lex.entity_phrases[eid]
        if genre == "news":
            formal = [p for p in phrases if len(p) > 3 and not FIRST_PERSON & set(words(p))]
            return rng.choice(formal or phrases)
        noun = rng.choice(phrases)
        if eid.startswith("news/"):
            return "the " + noun
        return ("the " if eid == "aside/weather" else "my ") + noun

    def _predicate(self, rng: random.Random, pid: str, genre: str) -> str:
        phrases = self.lex.predicate_phrases[pid]
        if genre == "news":
            neutral = [p for p in phrases if not FIRST_PERSON & set(words(p))]
            phrases = neutral or phrases
        return rng.choice(phrases)

    def _fill(self, rng: random.Random, template: str, fact: Fact, genre: str,
              wording: dict | None = None, reuse: float = 0.0) -> str:
        """Render ``fact`` into ``template``. ``wording`` remembers each fact's phrases as first
        written; with probability ``reuse`` they are written the same way again (people's TL;DRs
        mostly reuse the post's words), else a synonym is drawn afresh."""
        if wording is not None and fact in wording and rng.random() < reuse:
            ent, pred = wording[fact]
        else:
            ent = "" if fact.role == "ask" else self._entity(rng, fact.entity, genre)
            pred = self._predicate(rng, fact.predicate, genre)
            if wording is not None and fact not in wording:
                wording[fact] = (ent, pred)
        if fact.role == "ask":
            return template.replace("{A}", pred)
        if template.startswith("{E}"):
            ent = _cap(ent)
        return template.replace("{E}", ent).replace("{P}", pred)

    def _news_usable(self, pid: str) -> bool:
        return any(not FIRST_PERSON & set(words(p)) for p in self.lex.predicate_phrases[pid])

    # ---- sampling latent facts ----
    def _sample_facts(self, rng: random.Random, domain: str, genre: str) -> list[Fact]:
        dom = self.lex.domains[domain]
        ents = list(dom.entities)
        events = [e for e in dom.events if genre == "forum" or self._news_usable(e)]
        attrs = [a for a in dom.attributes if genre == "forum" or self._news_usable(a)]
        problem, cause = rng.sample(events, 2)
        e_problem, e_cause = rng.choice(ents), rng.choice(ents)
        facts = [Fact(e_problem, problem, "problem"), Fact(e_cause, cause, "cause")]
        if genre == "forum":
            facts.append(Fact(NARRATOR, rng.choice(list(dom.asks)), "ask"))
        else:
            facts.append(Fact(rng.choice(list(self.lex.authorities)), rng.choice(list(self.lex.responses)),
                              "response"))
        used_e = {e_problem, e_cause}
        for attr in rng.sample(attrs, rng.randint(1, 2)):
            facts.append(Fact(rng.choice(sorted(used_e) if rng.random() < 0.7 else ents), attr, "minor"))
        for eid, pid in rng.sample(self.lex.asides[genre], rng.randint(1, 2)):
            facts.append(Fact(eid, pid, "distractor"))
        return facts

    def make_example(self, rng: random.Random, domain: str, genre: str, uid: str, split: str) -> Example:
        """One post (forum) or report (news) in ``domain``, with its facts and a human-like reference."""
        facts = self._sample_facts(rng, domain, genre)
        by_role = {f.role: f for f in facts if f.role in SALIENT_ROLES}
        minors = [f for f in facts if f.role == "minor"]
        asides = [f for f in facts if f.role == "distractor"]
        if genre == "forum":
            table = FORUM_SENTENCES
            middle = [("cause", by_role["cause"])] + [("minor", f) for f in minors] + \
                     [("distractor", f) for f in asides]
            rng.shuffle(middle)
            order = [("problem", by_role["problem"])] + middle + [("ask", by_role["ask"])]
            if rng.random() < 0.3:  # sometimes the problem comes after some context
                order[0], order[1] = order[1], order[0]
            wording: dict = {}
            sentences = [self._fill(rng, rng.choice(table[role]), f, genre, wording) for role, f in order]
            opener = rng.choice(FORUM_OPENERS) if rng.random() < 0.6 else ""
            closer = rng.choice(FORUM_CLOSERS)
            body = " ".join(s for s in [opener] + sentences + [closer] if s)
            problem, ask = wording[by_role["problem"]], wording[by_role["ask"]]
            title_t = rng.choice(FORUM_TITLES)
            title = _cap(title_t.replace("{E}", problem[0]).replace("{P}", problem[1]).replace("{A}", ask[1]))
            subreddit = self.lex.domains[domain].subreddit
        else:
            table = NEWS_SENTENCES
            middle = [("minor", f) for f in minors] + [("distractor", f) for f in asides]
            rng.shuffle(middle)
            order = [("problem", by_role["problem"]), ("cause", by_role["cause"])] + middle
            order.insert(rng.randint(2, len(order)), ("response", by_role["response"]))
            wording = {}
            sentences = [self._fill(rng, rng.choice(table[role]), f, genre, wording) for role, f in order]
            if rng.random() < 0.6:
                sentences.insert(rng.randint(1, len(sentences)), rng.choice(NEWS_QUOTES))
            lead = f"{rng.choice(CITIES)} ({rng.choice(OUTLETS)}) -- "
            body = lead + " ".join(sentences)
            title = " ".join(_cap(w) for w in " ".join(wording[by_role["problem"]]).split())
            subreddit = ""
        ex = Example(uid, split, genre, domain, subreddit, title, body, "", facts)
        ex.reference = self.reference(rng, ex, wording)
        return ex

    def comment(self, rng: random.Random, ex: Example) -> str:
        """A reader's comment on ``ex`` that quotes one to three of its sentences verbatim (each
        on a line after "> ", in the post's order) and replies to each: the pre-training
        documents in which reading the post back is the only way to predict the text."""
        sentences = [s for s in _SENTENCE_END.split(ex.body.strip()) if len(words(s)) > 2]
        picked = sorted(rng.sample(range(len(sentences)), min(len(sentences), rng.randint(1, 3))))
        return "\n".join(f"> {sentences[i]}\n{rng.choice(COMMENT_REPLIES[ex.genre])}" for i in picked)

    REUSE_WORDING = 0.75
    """Probability that a reference states a fact in the post's own words (else a synonym)."""

    def reference(self, rng: random.Random, ex: Example, wording: dict | None = None) -> str:
        """A human-like reference summary: usually the salient facts, mostly in the post's words
        (``wording``), imperfect like people's."""
        roles = {f.role: f for f in ex.facts}
        third = "ask" if ex.genre == "forum" else "response"
        p_keep = {"problem": 0.93, "cause": 0.72, third: 0.78}
        chosen = [roles[r] for r in ("problem", "cause", third) if rng.random() < p_keep[r]]
        if not chosen:
            chosen = [roles["problem"]]
        chosen += [f for f in ex.facts if f.role == "minor" and rng.random() < 0.12]
        chosen += [f for f in ex.facts if f.role == "distractor" and rng.random() < 0.03]
        if ex.genre == "forum" and rng.random() < 0.25 and chosen[0].role == "problem" and \
                len(chosen) > 1 and chosen[1].role == "cause":
            chosen[0], chosen[1] = chosen[1], chosen[0]
        parts = []
        for f in chosen:
            t = rng.choice(SUMMARY_FACT[f.role])
            if f.role == "cause" and parts == []:
                t = "{E} {P}."
            parts.append(_cap(self._fill(rng, t, f, ex.genre, wording, self.REUSE_WORDING)))
        if ex.genre == "forum" and rng.random() < 0.15:
            parts.append(rng.choice(SUMMARY_TAILS))
        text = " ".join(parts)
        if ex.genre == "forum" and rng.random() < 0.15:
            text = text.lower()
        return text

    # ---- the gold utility, labeller and judge ----
    @functools.cached_property
    def _bigrams(self) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
        """Word bigrams and vocabulary of the world's language, from a fixed large sample."""
        rng = random.Random(12345)
        bigrams: set[tuple[str, str]] = set()
        vocab: set[str] = set()
        names = list(self.lex.domains)
        for i in range(3000):
            genre = "news" if i % 3 == 2 else "forum"
            ex = self.make_example(rng, names[i % len(names)], genre, "b", "b")
            for text in (ex.title, ex.body, ex.reference, self.reference(rng, ex)):
                w = words(text)
                vocab.update(w)
                bigrams.update(zip(w, w[1:]))
        return frozenset(bigrams), frozenset(vocab)

    def fluency(self, text: str) -> float:
        """Share of adjacent word pairs of world words that occur in the world's language.

        Pairs with a word the world never uses are skipped, so a model that writes in other
        words is not punished here (it gains no coverage either); word salad of world words is.
        """
        bigrams, vocab = self._bigrams
        w = words(text)
        judged = [(a, b) for a, b in zip(w, w[1:]) if a in vocab and b in vocab]
        if not judged:
            return 1.0
        return sum(p in bigrams for p in judged) / len(judged)

    def utility(self, summary: str, ex: Example) -> Utility:
        """Gold utility of ``summary`` for example ``ex`` (higher is better; about 1 is ideal).

        u = (coverage + minor_bonus * n_minor) * fluency_factor
            - distractor_cost * n_distractor - hallucination_cost * n_hallucinated
            - excess_word_cost * max(0, n_words - budget) - repetition_cost * repeated_trigram_share
            - unterminated_cost * [no final punctuation]
        where coverage is the weighted share of the example's salient facts the summary asserts
        (problem 1.0, cause 0.8, ask or response 0.6/0.8), and fluency_factor =
        min(1, fluency / fluency_floor)^2. An empty summary scores ``empty_utility``.
        """
        w = self.weights
        toks = words(summary)
        if not toks:
            return Utility(0.0, 0, 0, 0, 0.0, 0, 0.0, False, w.empty_utility)
        asserted = self.lex.parse(summary)
        by_key = {f.key: f for f in ex.facts}
        by_pred: dict[str, list[Fact]] = {}
        for f in ex.facts:
            by_pred.setdefault(f.predicate, []).append(f)
        matched: set[Fact] = set()
        hallucinated = 0
        for ent, pred in asserted:
            if ent is not None and (ent, pred) in by_key:
                matched.add(by_key[(ent, pred)])
            elif ent is None and pred in by_pred:
                matched.update(by_pred[pred][:1])
            else:
                hallucinated += 1
        salient = [f for f in ex.facts if f.role in SALIENT_ROLES]
        total_w = sum(SALIENT_WEIGHTS[f.role] for f in salient)
        # summed in the example's order (a set's order changes with the process's hash seed, and
        # with it the last bit of a float sum)
        coverage = sum(SALIENT_WEIGHTS[f.role] for f in salient if f in matched) / total_w
        n_minor = sum(f.role == "minor" for f in matched)
        n_distractor = sum(f.role == "distractor" for f in matched)
        flu = self.fluency(summary)
        flu_factor = min(1.0, flu / w.fluency_floor) ** 2
        budget = w.length_budget_forum if ex.genre == "forum" else w.length_budget_news
        trigrams = list(zip(toks, toks[1:], toks[2:]))
        repetition = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
        terminated = summary.rstrip()[-1:] in ".!?"
        total = ((coverage + w.minor_bonus * n_minor) * flu_factor
                 - w.distractor_cost * n_distractor - w.hallucination_cost * hallucinated
                 - w.excess_word_cost * max(0, len(toks) - budget) - w.repetition_cost * repetition
                 - (0.0 if terminated else w.unterminated_cost))
        return Utility(coverage, n_minor, n_distractor, hallucinated, flu, len(toks), repetition,
                       terminated, total)

    def judge_terms(self) -> list[dict[str, str]]:
        """What the gold utility rewards and punishes, with this world's weights: one row per term
        (``term``, ``effect``, ``weight``), for the book's world page."""
        w = self.weights
        salient = ", ".join(f"{role} {weight:g}" for role, weight in SALIENT_WEIGHTS.items())
        return [
            {"term": "salient facts stated (coverage)", "effect": "rewards",
             "weight": f"up to +1: the stated share of the post's salient weight ({salient})"},
            {"term": "minor facts stated", "effect": "rewards (a little)", "weight": f"+{w.minor_bonus:g} each"},
            {"term": "distractors stated", "effect": "punishes", "weight": f"-{w.distractor_cost:g} each"},
            {"term": "facts the post does not contain", "effect": "punishes",
             "weight": f"-{w.hallucination_cost:g} each"},
            {"term": "words past the length budget", "effect": "punishes",
             "weight": f"-{w.excess_word_cost:g} a word past {w.length_budget_forum} (forum) or "
                       f"{w.length_budget_news} (news) words"},
            {"term": "repeated word trigrams", "effect": "punishes",
             "weight": f"-{w.repetition_cost:g} x their share"},
            {"term": "word salad", "effect": "punishes",
             "weight": f"coverage scaled by min(1, fluency / {w.fluency_floor:g})^2"},
            {"term": "no final punctuation", "effect": "punishes", "weight": f"-{w.unterminated_cost:g}"},
            {"term": "empty summary", "effect": "punishes", "weight": f"utility {w.empty_utility:g}"},
        ]

    def utility_formula(self) -> str:
        """The gold utility as a LaTeX display equation, with this world's weights."""
        w = self.weights
        return (rf"u = (\text{{coverage}} + {w.minor_bonus:g}\, n_\text{{minor}})\, f"
                rf" - {w.distractor_cost:g}\, n_\text{{distractor}}"
                rf" - {w.hallucination_cost:g}\, n_\text{{hallucinated}}"
                rf" - {w.excess_word_cost:g} \max(0, n_\text{{words}} - B) - {w.repetition_cost:g}\, r"
                rf" - {w.unterminated_cost:g}\,[\text{{unterminated}}]")

    def fact_set(self, text: str) -> frozenset[tuple[str | None, str]]:
        """The facts a text asserts: the oracle diversity metric's unit."""
        return frozenset(self.lex.parse(text))

    # ---- corrupted variants and extractive baselines (the judge checks of notebook 01) ----
    @property
    def judge_variants(self) -> tuple[str, ...]:
        """The worse summaries the judge checks run: corrupted references, then extractive
        baselines taken from the post."""
        return CORRUPTIONS + EXTRACTIVE

    def corrupt(self, variant: str, ex: Example, other: Example, rng: random.Random) -> str:
        """A corrupted version of ``ex.reference`` (truncated, other_post, empty, shuffled or
        hallucinated), or an extractive baseline taken from the post itself
        (:data:`EXTRACTIVE`: its first one, two or three sentences, or the whole post)."""
        ref = ex.reference
        if variant in EXTRACTIVE:
            return lead_sentences(ex.body, None if variant == "post_copy" else int(variant[-1]))
        if variant == "truncated":
            return truncated(ref)
        if variant == "other_post":
            return other.reference
        if variant == "empty":
            return ""
        if variant == "shuffled":
            return shuffled(ref, rng)
        if variant == "hallucinated":
            return ref + " " + self.hallucinated_sentence(ex, rng)
        raise ValueError(f"Unknown judge-check variant {variant!r}; choose from {CORRUPTIONS + EXTRACTIVE}.")

    def hallucinated_sentence(self, ex: Example, rng: random.Random) -> str:
        """A fluent sentence asserting a fact of the example's domain that the example does not contain."""
        dom = self.lex.domains[ex.domain]
        keys = {f.key for f in ex.facts}
        ents = [f.entity for f in ex.facts if f.role in ("problem", "cause")]
        options = [(e, p) for e in ents for p in dom.events if (e, p) not in keys]
        ent, pred = rng.choice(options)
        return _cap(self._fill(rng, "{E} {P}.", Fact(ent, pred, "problem"), ex.genre))


CORRUPTIONS = ("truncated", "other_post", "empty", "shuffled", "hallucinated")
"""Corrupted references: the judge should prefer the reference to each on nearly every post."""
EXTRACTIVE = ("lead_1", "lead_2", "lead_3", "post_copy")
"""Extractive baselines: the post's first k sentences, and the whole post verbatim. A copy of the
post states every salient fact but also every aside, at three times a reference's length: it
should lose on nearly every post. Lead sentences hold the problem (and in news, where reports
open with the problem and its cause, often the cause too) but rarely the ask, and spend words on
openers and asides: they should lose on most posts, less often on news."""
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def lead_sentences(text: str, k: int | None) -> str:
    """The first ``k`` sentences of ``text`` (all of it when ``k`` is None), as written."""
    return text.strip() if k is None else " ".join(_SENTENCE_END.split(text.strip())[:k])
