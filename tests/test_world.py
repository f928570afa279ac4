import os
import random
import subprocess
import sys

import pytest
from gendiv.world import (CORRUPTIONS, EXTRACTIVE, NARRATOR, Example, Fact, Lexicon, UtilityWeights, World,
                          lead_sentences, lexicon, words)

HELDOUT = ("gardening", "travel", "techsupport", "mechanic")


@pytest.fixture(scope="module")
def world():
    return World(seed=0, heldout_domains=HELDOUT)


@pytest.fixture(scope="module")
def examples(world):
    rng = random.Random(1)
    return [world.make_example(rng, d, g, f"{g}-{d}-{i}", "t")
            for g in ("forum", "news") for d in world.lex.domains for i in range(12)]


def test_world_is_rich_enough():
    lex = lexicon()
    assert len(lex.domains) >= 12
    for dom in lex.domains.values():
        assert len(dom.entities) >= 5 and len(dom.events) >= 8 and len(dom.asks) >= 4
        assert all(len(p) >= 2 for p in dom.events.values()), "every event needs synonyms"


def test_generation_is_deterministic_given_a_seed(world):
    a = [world.make_example(random.Random("s"), "cooking", "forum", "x", "t").to_dict() for _ in range(2)]
    assert a[0] == a[1]
    b = world.make_example(random.Random("other"), "cooking", "forum", "x", "t").to_dict()
    assert b != a[0]


def test_parser_reads_back_exactly_the_facts_of_every_post(world, examples):
    for ex in examples:
        assert world.lex.parse(ex.body) == {f.key for f in ex.facts}, ex.body


def test_references_assert_only_facts_of_their_post(world, examples):
    for ex in examples:
        assert ex.reference
        assert world.lex.parse(ex.reference) <= {f.key for f in ex.facts}, ex.reference


def test_references_vary_like_peoples(world, examples):
    covered = [world.utility(ex.reference, ex).coverage for ex in examples]
    assert 0.5 < sum(covered) / len(covered) < 0.98  # usually good, not perfect
    assert len({ex.reference for ex in examples}) == len(examples)


def test_news_reports_are_third_person(examples):
    for ex in examples:
        if ex.genre == "news":
            assert not {"i", "my", "me"} & set(words(ex.body)), ex.body


def test_parser_binds_predicates_to_the_last_entity_and_asks_to_the_narrator():
    lex = lexicon()
    facts = lex.parse("My landlord raised the rent and never fixed the leak. Should I sue them?")
    assert facts == {("tenancy/landlord", "tenancy/raised_rent"), ("tenancy/landlord", "tenancy/ignored_repairs"),
                     (NARRATOR, "tenancy/take_to_court")}
    assert lex.parse("raised the rent") == {(None, "tenancy/raised_rent")}
    assert lex.parse("nothing of note here") == set()


def test_a_phrase_with_two_owners_is_rejected(monkeypatch):
    lex = Lexicon()
    lex.entity_phrases["tenancy/roommate"].append("landlord")
    with pytest.raises(ValueError, match="belongs to both"):
        lex._build_trie()


def _forum_example():
    facts = [Fact("tenancy/landlord", "tenancy/raised_rent", "problem"),
             Fact("tenancy/roommate", "tenancy/stopped_paying_share", "cause"),
             Fact(NARRATOR, "tenancy/break_lease", "ask"),
             Fact("tenancy/building", "tenancy/built_1960s", "minor"),
             Fact("aside/weather", "aside/was_rainy", "distractor")]
    return Example("u", "id", "forum", "tenancy", "legaladvice", "t", "body", "ref", facts)


def test_utility_on_hand_worked_cases(world):
    ex = _forum_example()
    full = "My landlord raised the rent. My roommate stopped paying their share. Should I break the lease?"
    u = world.utility(full, ex)
    assert u.coverage == pytest.approx(1.0) and u.hallucinated == 0 and u.fluency == pytest.approx(1.0)
    assert u.total == pytest.approx(1.0)
    # Problem only: coverage = 1.0 / (1.0 + 0.8 + 0.6).
    assert world.utility("My landlord raised the rent.", ex).total == pytest.approx(1.0 / 2.4)
    # A minor fact adds 0.05; a distractor costs 0.1; a hallucinated fact costs 0.35.
    assert world.utility(full + " My building was built in the sixties.", ex).total == pytest.approx(1.05)
    assert world.utility(full + " The weather has been rainy all week.", ex).total == pytest.approx(0.9)
    assert world.utility(full + " My landlord flooded the flat.", ex).total == pytest.approx(0.65)
    # Misattributing a fact to another entity is a hallucination, not coverage.
    assert world.utility("My roommate raised the rent.", ex).hallucinated == 1
    assert world.utility("", ex).total == pytest.approx(world.weights.empty_utility)
    assert world.utility(full.rstrip("?"), ex).total == pytest.approx(1.0 - 0.05)


def test_utility_penalises_length_and_repetition(world):
    ex = _forum_example()
    base = "My landlord raised the rent."
    assert world.utility(base + " " + " ".join(["really"] * 40), ex).total < world.utility(base, ex).total
    assert world.utility(" ".join([base] * 4), ex).repetition > 0.5
    assert world.utility(" ".join([base] * 4), ex).total < world.utility(base, ex).total


def test_word_salad_is_not_fluent(world):
    assert world.fluency("My landlord raised the rent.") == pytest.approx(1.0)
    assert world.fluency("rent the raised landlord my.") < 0.3
    assert world.fluency("Zorblax quuxified the flibbertigibbet.") == 1.0  # unknown words are not judged


@pytest.mark.parametrize("variant", CORRUPTIONS)
def test_judge_prefers_the_reference_over_each_corruption(world, examples, variant):
    rng = random.Random(variant)
    for genre in ("forum", "news"):
        sub = [e for e in examples if e.genre == genre]
        wins = [world.judge(ex.reference, world.corrupt(variant, ex, sub[(i + 5) % len(sub)], rng), ex)
                for i, ex in enumerate(sub)]
        assert sum(wins) / len(wins) >= 0.97, (variant, genre)


def _reference_preferred(world, examples, variant, genre):
    sub = [e for e in examples if e.genre == genre]
    return sum(world.judge(ex.reference, world.corrupt(variant, ex, ex, random.Random(0)), ex)
               for ex in sub) / len(sub)


@pytest.mark.parametrize("genre", ["forum", "news"])
def test_judge_rewards_concision_a_copy_of_the_post_loses(world, examples, genre):
    # A verbatim copy states every salient fact; only its length and asides can make it lose.
    assert _reference_preferred(world, examples, "post_copy", genre) >= 0.95
    # The length cost is what does it: at the old 0.01 a word, the copy won on about a fifth of posts.
    lenient = World(seed=0, heldout_domains=HELDOUT, weights=UtilityWeights(excess_word_cost=0.01))
    assert _reference_preferred(lenient, examples, "post_copy", genre) < 0.9


def test_lead_sentences_lose_on_most_posts(world, examples):
    for k in (1, 2, 3):
        for genre in ("forum", "news"):
            assert _reference_preferred(world, examples, f"lead_{k}", genre) > 0.6, (k, genre)
    # Forum posts open with an aside or the problem and hold the ask at the end: lead sentences
    # lose more often there than in news, which opens with the problem and its cause.
    assert _reference_preferred(world, examples, "lead_2", "forum") > _reference_preferred(
        world, examples, "lead_2", "news")


def test_lead_sentences_cut_at_sentence_ends():
    text = "First one. Is this second? Third! Fourth."
    assert lead_sentences(text, 1) == "First one."
    assert lead_sentences(text, 3) == "First one. Is this second? Third!"
    assert lead_sentences(text, None) == text
    assert set(EXTRACTIVE) == {"lead_1", "lead_2", "lead_3", "post_copy"}


def test_judge_is_antisymmetric_with_ties_as_half(world, examples):
    ex = examples[0]
    other = examples[1].reference
    assert world.judge(ex.reference, other, ex) + world.judge(other, ex.reference, ex) == 1.0
    assert world.judge(ex.reference, ex.reference, ex) == 0.5


def test_labeller_is_noisy_bradley_terry(world, examples):
    ex = examples[0]
    good, bad = ex.reference, world.corrupt("truncated", ex, ex, random.Random(0))
    p = world.preference_probability(good, bad, ex)
    assert 0.5 < p <= 1.0
    assert world.preference_probability(bad, good, ex) == pytest.approx(1 - p)
    assert world.preference_probability(good, good, ex) == pytest.approx(0.5)
    rng = random.Random(0)
    labels = [world.label(good, good, ex, rng) for _ in range(2000)]
    assert 0.45 < sum(labels) / len(labels) < 0.55  # equal utilities: a coin flip
    noisy = World(seed=0, heldout_domains=HELDOUT, labeller_temperature=10.0)
    assert abs(noisy.preference_probability(good, bad, ex) - 0.5) < abs(p - 0.5)


def test_oracle_fact_sets(world):
    a = world.fact_set("My landlord raised the rent.")
    b = world.fact_set("The rent was hiked by my property manager... my landlord hiked the rent")
    assert a == b == frozenset({("tenancy/landlord", "tenancy/raised_rent")})


def test_unknown_heldout_domain_is_rejected():
    with pytest.raises(ValueError, match="Unknown held-out domain"):
        World(heldout_domains=["narnia"])


def test_utility_is_the_same_in_every_process():
    # A set's iteration order follows the interpreter's hash seed; the utility must not.
    code = ("import random; from gendiv.world import World; w = World(seed=0, heldout_domains=['travel']); "
            "ex = w.make_example(random.Random(3), 'cooking', 'forum', 'u', 't'); "
            "print(repr(w.utility(ex.reference + ' ' + ex.body, ex).total))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2, 3)}
    assert len(outs) == 1 and outs != {""}
