"""The miniature instruction world (the paper's second task): its graded shift, its references and
an exact judge that checks what was asked on free text."""

import math
import random

import numpy as np
import pytest
from gendiv import data, instruct, models, pretraining
from gendiv.config import load_profile
from gendiv.instruct import CORRUPTIONS, FAMILIES, ID_FAMILIES, NEAR_FAMILIES, TASKS, InstructionWorld, Part

WORLD = InstructionWorld(0)
DOMAINS = list(WORLD.lex.domains)


def U(text: str, ins: instruct.Instruction) -> float:
    return WORLD.utility(text, ins).total


def sample(split: str, n: int, seed: int = 3) -> list[instruct.Instruction]:
    rng = random.Random(seed)
    return [WORLD.make_instruction(rng, rng.choice(DOMAINS), split, f"{split}-{i}") for i in range(n)]


def in_the_asked_form(ins: instruct.Instruction, seed: int) -> str:
    """Every part's required facts in the form it asks for, one paragraph each (no slips)."""
    return "\n\n".join(WORLD.render(random.Random(seed), p, ins.facts) for p in ins.parts)


def one_of(family: str, split: str = "id") -> instruct.Instruction:
    for ins in sample(split, 400, seed=11):
        if ins.family == family:
            return ins
    raise AssertionError(family)


@pytest.mark.parametrize("split", ["id", "ood_near", "ood_far"])
def test_the_judge_prefers_the_reference_to_every_kind_of_worse_response(split):
    inss = sample(split, 200)
    asked = [in_the_asked_form(ins, i) for i, ins in enumerate(inss)]
    rng = random.Random(5)
    for variant in CORRUPTIONS:
        worse = [WORLD.corrupt(variant, ins, inss[i - 1], rng) for i, ins in enumerate(inss)]
        rate = np.mean([WORLD.judge(ins.reference, w, ins) for ins, w in zip(inss, worse)])
        if variant in ("off_task", "violating"):
            # every required fact with the form broken: it beats a reference that slipped (a fact
            # left out, a closing sentence after one asked for), as a reader would prefer it; the
            # same facts in the asked form beat it on nearly every instruction
            assert rate >= 0.85, (variant, rate)
            assert np.mean([WORLD.judge(a, w, ins) for a, w, ins in zip(asked, worse, inss)]) >= 0.97, variant
        else:
            assert rate >= 0.95, (variant, rate)


def test_references_slip_as_people_do_and_rarely_sit_at_the_ceiling():
    """References are good but imperfect at the rates of REFERENCE_SLIPS; a closing sentence states
    no fact; and the judge rarely ties a complete answer with the reference (every word costs)."""
    inss = sample("id", 400)
    prose = [ins for ins in inss if ins.parts[0].family in ("recap", "avoid")]
    tails = np.mean([any(ins.reference.endswith(t) for t in instruct.REFERENCE_TAILS) for ins in prose])
    assert abs(tails - instruct.REFERENCE_SLIPS["tail"]) < 0.06, tails
    for tail in instruct.REFERENCE_TAILS:
        assert not WORLD.lex.assertions(tail), tail
    short = np.mean([WORLD.utility(ins.reference, ins).coverage < 1 for ins in inss if ins.parts[0].family != "list"
                     and len(ins.parts[0].facts) > 1])
    assert abs(short - instruct.REFERENCE_SLIPS["omit"]) < 0.06, short
    utilities = np.array([U(ins.reference, ins) for ins in inss])
    assert 0.75 < utilities.mean() < 0.95  # good, not perfect (the summarisation world's: about 0.85)
    # the same facts in the asked form, in other words: a tie only where the word counts agree
    # (32% of these; without the word cost, 78%, as every complete answer scored the same)
    other = [in_the_asked_form(ins, i) for i, ins in enumerate(inss)]
    ties = np.mean([WORLD.judge(o, ins.reference, ins) == 0.5 for o, ins in zip(other, inss)])
    assert ties < 0.4, ties
    ins = one_of("recap")
    (part,) = ins.parts
    complete = WORLD.render(random.Random(0), part, ins.facts)
    assert U(complete, ins) - U(complete + " Hope this helps.", ins) == pytest.approx(0.3 + 3 * 0.005, abs=1e-9)


def test_the_shift_is_graded_by_what_is_asked():
    for ins in sample("id", 150):
        (part,) = ins.parts
        assert part.family in ID_FAMILIES
        train = [t.split("{")[0] for t in TASKS[part.family][0]]
        assert any(part.task.startswith(t) for t in train), part.task  # training phrasings only
    near = sample("ood_near", 150)
    assert {p.family for ins in near for p in ins.parts} == set(FAMILIES)
    for ins in near:  # held-out families, or training families in held-out phrasings
        (part,) = ins.parts
        held = [t.split("{")[0] for t in TASKS[part.family][1]]
        assert any(part.task.startswith(t) for t in held), part.task
    far = sample("ood_far", 150)
    assert {len(ins.parts) for ins in far} == {2, 3}
    assert all(len({p.family for p in ins.parts}) == len(ins.parts) for ins in far)
    assert all(ins.instruction.count(") ") >= len(ins.parts) for ins in far)  # numbered, in order


def test_an_id_pair_asks_two_training_families_in_their_training_phrasings():
    """data.instruction_pair_share: ID instructions that ask for two things at once stay inside
    the training distribution (two distinct training families, training phrasings, a pair
    intro no OOD-far prompt uses), and the judge reads them one paragraph per part."""
    rng = random.Random(4)
    pairs = [WORLD.make_instruction(rng, rng.choice(DOMAINS), "id", f"p{i}", pair=True) for i in range(150)]
    for ins in pairs:
        assert ins.split == "id" and len(ins.parts) == 2 and len({p.family for p in ins.parts}) == 2
        assert ins.ask.split(" 1) ")[0] in instruct.PAIR_INTROS, ins.ask
        for part in ins.parts:
            assert part.family in ID_FAMILIES
            assert any(part.task.startswith(t.split("{")[0]) for t in TASKS[part.family][0]), part.task
    assert {p.family for ins in pairs for p in ins.parts} == set(ID_FAMILIES)
    assert not set(instruct.PAIR_INTROS) & set(instruct.SEQUENTIAL_INTROS)
    assert all(not ins.ask.startswith(tuple(instruct.PAIR_INTROS)) for ins in sample("ood_far", 100))
    # answering only the first part loses the second part's utility: paragraph i answers part i
    ins = pairs[0]
    first, second = (WORLD.render(random.Random(0), p, ins.facts) for p in ins.parts)
    both, alone = U(f"{first}\n\n{second}", ins), U(first, ins)
    parts = WORLD.part_utilities(f"{first}\n\n{second}", ins)
    assert both == pytest.approx((parts[0].total + parts[1].total) / 2)
    assert alone == pytest.approx((parts[0].total + WORLD.weights.empty_utility) / 2)
    with pytest.raises(ValueError, match="two training families; split is 'ood_far'"):
        WORLD.make_instruction(random.Random(0), DOMAINS[0], "ood_far", "x", pair=True)


def test_instructions_are_deterministic_and_round_trip():
    a, b = sample("ood_far", 5, seed=9), sample("ood_far", 5, seed=9)
    assert [x.to_dict() for x in a] == [y.to_dict() for y in b]
    again = instruct.Instruction.from_dict(a[0].to_dict())
    assert again.to_dict() == a[0].to_dict() and U(again.reference, again) == U(
        a[0].reference, a[0])


@pytest.mark.parametrize("family,broken,requirement", [
    ("recap", lambda r, p: r.rstrip(".") + ". It was a bad week.", "one sentence"),
    ("list", lambda r, p: "\n".join(r.splitlines()[:-1]), "items"),
    ("note", lambda r, p: r.split(", ", 1)[1], "addressed to"),
    ("avoid", lambda r, p: r.rstrip(".") + f" and it {p.avoid}.", "avoids"),
    ("ordered", lambda r, p: " ".join(reversed([s.strip() for s in r.split(". ") if s])), "in order"),
    ("headline", lambda r, p: r + " and it is really really really really bad", "at most"),
])
def test_each_form_requirement_is_checked_on_free_text(family, broken, requirement):
    ins = one_of(family, "id" if family in ID_FAMILIES else "ood_near")
    (part,) = ins.parts
    good = WORLD.render(random.Random(0), part, ins.facts)
    assert WORLD.part_utilities(good, ins)[0].failed == ()
    bad = broken(good, part)
    failed = WORLD.part_utilities(bad, ins)[0].failed
    assert any(requirement in f for f in failed), (bad, failed)
    assert WORLD.judge(good, bad, ins) == 1.0


def test_content_counts_invented_and_unasked_facts_cost():
    ins = one_of("recap")
    part = ins.parts[0]
    full = WORLD.render(random.Random(0), part, ins.facts)
    half = WORLD.render(random.Random(0), part, ins.facts, keys=part.facts[:1])
    assert WORLD.part_utilities(full, ins)[0].coverage == 1.0
    assert WORLD.part_utilities(half, ins)[0].coverage == 0.5
    extra = next(f for f in ins.facts if f.key not in part.facts)
    padded = full.rstrip(".") + " and " + WORLD._say(random.Random(1), extra.key, ins.facts, None) + "."
    u_full, u_padded = WORLD.part_utilities(full, ins)[0], WORLD.part_utilities(padded, ins)[0]
    assert u_padded.off_task == u_full.off_task + 1
    invented = full + " " + WORLD.posts.hallucinated_sentence(instruct._as_post(ins), random.Random(2))
    assert WORLD.part_utilities(invented, ins)[0].hallucinated >= 1
    assert U(full, ins) > U(padded, ins) > U(invented, ins) - 0.1


def test_a_chained_instruction_reads_one_paragraph_per_part_in_order():
    ins = next(i for i in sample("ood_far", 100) if len(i.parts) == 2 and "list" not in i.family)
    rng = random.Random(0)
    answers = [WORLD.render(rng, p, ins.facts) for p in ins.parts]
    right = "\n\n".join(answers)
    swapped = "\n\n".join(reversed(answers))
    run_on = " ".join(answers)  # one paragraph for two parts: the second part goes unanswered
    extra = right + "\n\nHope that helps."
    assert U(right, ins) > U(swapped, ins)
    assert U(right, ins) > U(run_on, ins)
    assert U(extra, ins) == pytest.approx(
        U(right, ins) - WORLD.weights.extra_paragraph_cost)


def test_copying_the_instruction_back_loses_nearly_always():
    inss = sample("id", 200) + sample("ood_far", 100)
    assert sum(WORLD.judge(i.reference, i.instruction, i) for i in inss) / len(inss) >= 0.98


def test_the_labeller_is_bradley_terry_on_the_utility():
    ins = one_of("note")
    worse = WORLD.corrupt("violating", ins, ins, random.Random(0))
    d = U(ins.reference, ins) - U(worse, ins)
    assert WORLD.preference_probability(ins.reference, worse, ins) == pytest.approx(1 / (1 + math.exp(-d / 0.1)))
    rng = random.Random(0)
    labels = [WORLD.label(ins.reference, worse, ins, rng) for _ in range(2000)]
    assert sum(labels) / len(labels) == pytest.approx(1 / (1 + math.exp(-d / 0.1)), abs=0.03)


def test_the_oracle_unit_is_the_facts_and_the_shape():
    ins = one_of("list")
    listed = WORLD.render(random.Random(0), ins.parts[0], ins.facts)
    prose = " ".join(line[2:] for line in listed.splitlines())
    assert WORLD.fact_set(listed) - WORLD.fact_set(prose) == {("shape", "list/1")}
    assert {k for k in WORLD.fact_set(listed) if k[0] != "shape"} == set(ins.parts[0].facts)


def test_an_unknown_family_or_split_names_the_choices():
    with pytest.raises(ValueError, match="choose from"):
        WORLD._part(random.Random(0), "poem", sample("id", 1)[0].facts, {}, False)
    with pytest.raises(ValueError, match="'id', 'ood_near' or 'ood_far'"):
        WORLD.make_instruction(random.Random(0), DOMAINS[0], "test", "x")
    assert set(NEAR_FAMILIES) & set(ID_FAMILIES) == set() and Part.from_dict(
        sample("id", 1)[0].parts[0].to_dict()) == sample("id", 1)[0].parts[0]


def test_tiny_instruct_prompts_fit_the_shipped_base_without_alpacas_opening_sentence():
    """tiny-instruct leaves out Alpaca's fixed opening sentence (data.instruction_preamble): with it
    hardly a chained (OOD-far) test prompt fits the 192 tokens the shipped base's 256 positions leave
    beside 64 new ones (1.5%); without it every ID and OOD-near prompt fits, and 99% of chained ones
    (the tokenizer of a corpus with help threads; 7 in 8 with the one before)."""
    cfg = load_profile("tiny-instruct")
    assert not cfg.data.instruction_preamble and cfg.max_prompt_tokens == 192
    tok = models.load_tokenizer(pretraining.shipped_dir("tiny"))
    world = data.make_world(cfg)
    fits = {}
    for split in data.SPLITS:
        examples = data.world_split(world, cfg, split, "test", 200)
        for preamble in (True, False):
            n = [len(tok(data.format_prompt(e, preamble), add_special_tokens=False)["input_ids"]) for e in examples]
            fits[split, preamble] = float(np.mean(np.array(n) <= cfg.max_prompt_tokens))
    assert fits["id", False] == fits["ood_near", False] == 1.0
    assert fits["ood_far", False] >= 0.95 and fits["ood_far", True] <= 0.05
