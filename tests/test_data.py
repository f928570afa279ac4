import json
import random

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES
from gendiv import data, instruct, world
from gendiv.instruct import InstructionWorld
from gendiv.config import load_profile


def test_world_splits_are_deterministic_prefixes(smoke_cfg):
    world = data.make_world(smoke_cfg)
    short = data.world_split(world, smoke_cfg, "ood_far", "test", 5)
    long = data.world_split(world, smoke_cfg, "ood_far", "test", 20)
    assert [e.to_dict() for e in short] == [e.to_dict() for e in long[:5]]
    again = data.world_split(data.make_world(smoke_cfg), smoke_cfg, "ood_far", "test", 5)
    assert [e.to_dict() for e in again] == [e.to_dict() for e in short]


def test_splits_have_the_right_domains_and_genres(smoke_cfg):
    world = data.make_world(smoke_cfg)
    ids = data.world_split(world, smoke_cfg, "id", "sft_train", 40)
    near = data.world_split(world, smoke_cfg, "ood_near", "test", 20)
    far = data.world_split(world, smoke_cfg, "ood_far", "test", 20)
    assert {e.domain for e in ids} == set(world.train_domains)
    assert {e.domain for e in near} <= set(smoke_cfg.world.heldout_domains)
    assert {e.genre for e in ids + near} == {"forum"} and {e.genre for e in far} == {"news"}


def test_prompts_use_the_papers_templates(smoke_cfg):
    world = data.make_world(smoke_cfg)
    post = data.world_split(world, smoke_cfg, "id", "test", 1)[0]
    news = data.world_split(world, smoke_cfg, "ood_far", "test", 1)[0]
    assert data.format_prompt(post) == f"SUBREDDIT: r/{post.subreddit}\nTITLE: {post.title}\nPOST: {post.body}\nTL;DR:"
    assert data.format_prompt(news) == f"ARTICLE: {news.body}\nTL;DR:"
    assert data.sft_target(" A summary. ", "</s>") == " A summary.</s>"


def test_pretraining_corpus_covers_both_genres_with_few_summaries(smoke_cfg):
    world = data.make_world(smoke_cfg)
    docs = data.pretraining_corpus(world, load_profile("smoke", **{"data.n_pretrain_docs": 300}))
    assert len(docs) == 300
    assert any(d.startswith("SUBREDDIT:") for d in docs) and any(d.startswith("ARTICLE:") for d in docs)
    with_summary = sum("TL;DR:" in d for d in docs) / len(docs)
    assert 0 < with_summary < 0.15
    assert not any("COMMENT:" in d for d in docs)  # smoke asks for no comments


def test_pretraining_comments_quote_the_post_verbatim(smoke_cfg):
    cfg = load_profile("smoke", **{"data.n_pretrain_docs": 600, "data.pretrain_summary_share": 0.2,
                                   "data.pretrain_comment_share": 0.5})
    world = data.make_world(cfg)
    docs = data.pretraining_corpus(world, cfg)
    kinds = [("tldr" if "\nTL;DR:" in d else "comment" if "\nCOMMENT: " in d else "post") for d in docs]
    assert abs(kinds.count("comment") / len(docs) - 0.5) < 0.07
    assert abs(kinds.count("tldr") / len(docs) - 0.2) < 0.06
    for doc in [d for d, k in zip(docs, kinds) if k == "comment"]:
        post, comment = doc.split("\nCOMMENT: ")
        quotes = [line[2:] for line in comment.split("\n") if line.startswith("> ")]
        assert 1 <= len(quotes) <= 3
        assert all(q in post for q in quotes), doc  # read back word for word
        assert world.lex.parse(comment) <= world.lex.parse(post)  # the replies add no facts
    with pytest.raises(ValueError, match="Unknown pre-training document kind 'reply'"):
        data.pretraining_document(world.make_example(random.Random(0), "cooking", "forum", "u", "t"), "reply")


def test_help_threads_ask_every_kind_of_request_and_answer_it_from_the_situation(smoke_cfg):
    cfg = load_profile("smoke", **{"data.n_pretrain_docs": 600, "data.pretrain_summary_share": 0.1,
                                   "data.pretrain_instruction_share": 0.3})
    world = data.make_world(cfg)  # summarisation: the threads come from the instruction world all the same
    docs = data.pretraining_corpus(world, cfg)
    threads = [d for d in docs if d.startswith("REQUEST: ")]
    assert abs(len(threads) / len(docs) - 0.3) < 0.06
    assert abs(sum("\nTL;DR:" in d for d in docs) / len(docs) - 0.1) < 0.04
    assert not any("### Instruction" in d or "### Response" in d for d in docs)  # not the fine-tuning template
    helper = InstructionWorld(0)
    chained = 0
    for doc in threads:
        request, reply = doc[len("REQUEST: "):].split("\nREPLY: ")
        situation, ask = request.split("\n", 1)
        assert helper.lex.parse(reply) <= helper.lex.parse(situation), doc  # the reply invents nothing
        chained += ask.split(" ", 1)[0] in {i.split(" ", 1)[0] for i in instruct.SEQUENTIAL_INTROS}
        assert len(instruct.paragraphs(reply)) >= 1
    assert 0.2 < chained / len(threads) < 0.5  # a third of the requests chain two or three parts
    # the same documents from an instruction-world profile (the base is shared by both tasks)
    icfg = load_profile("smoke-instruct", **{"data.n_pretrain_docs": 600, "data.pretrain_summary_share": 0.1,
                                             "data.pretrain_comment_share": 0.0,
                                             "data.pretrain_instruction_share": 0.3})
    assert data.pretraining_corpus(data.make_world(icfg), icfg) == docs


def test_instruction_pair_share_touches_id_instructions_only():
    """data.instruction_pair_share: that share of every ID role (demonstrations and the ID test
    alike) asks for two things; the OOD splits are those of a profile without it, and a test set
    is still a prefix of a longer one."""
    plain = load_profile("smoke-instruct", **{"data.instruction_pair_share": 0.0})
    paired = load_profile("smoke-instruct", **{"data.instruction_pair_share": 0.3})
    world = data.make_world(plain)
    for role in ("sft_train", "test"):
        ids = data.world_split(world, paired, "id", role, 400)
        share = np.mean([len(ins.parts) == 2 for ins in ids])
        assert abs(share - 0.3) < 0.07, (role, share)
        assert all(len(ins.parts) <= 2 and ins.split == "id" for ins in ids)
        assert [i.to_dict() for i in data.world_split(world, paired, "id", role, 30)] == [
            i.to_dict() for i in ids[:30]]
    assert not any(len(ins.parts) > 1 for ins in data.world_split(world, plain, "id", "test", 200))
    for split in ("ood_near", "ood_far"):
        assert [i.to_dict() for i in data.world_split(world, paired, split, "test", 50)] == [
            i.to_dict() for i in data.world_split(world, plain, split, "test", 50)]


# ---- hub loaders on fixtures in each dataset's own schema ----
def test_tldr_loader(tmp_path):
    rows = data.tldr_records(str(FIXTURES / "openai-tldr-filtered"), "test")
    assert len(rows) == 6
    r = rows[0]
    assert r["prompt"].startswith("SUBREDDIT: r/relationships\nTITLE: ") and r["prompt"].endswith("\nTL;DR:")
    assert r["reference"] == r["reference"].strip() and r["split"] == "id"


def test_cnndm_loader():
    rows = data.cnndm_records(str(FIXTURES / "cnn_dailymail"), "test")
    assert rows[0]["prompt"].startswith("ARTICLE: LONDON (CNN)") and rows[0]["prompt"].endswith("\nTL;DR:")
    assert rows[0]["genre"] == "news" and rows[0]["uid"] == "a1b2c3"


def test_comparisons_loader_orders_chosen_and_rejected():
    rows = data.tldr_comparison_records(str(FIXTURES / "openai-tldr-summarisation-preferences"), "train")
    raw = data.load_hub_split(str(FIXTURES / "openai-tldr-summarisation-preferences"), "train")
    for r, src in zip(rows, raw):
        assert r["chosen"] == src["summaries"][src["choice"]]["text"].strip()
        assert r["rejected"] == src["summaries"][1 - src["choice"]]["text"].strip()
    assert {src["choice"] for src in raw} == {0, 1}


def test_instruction_loaders():
    farm = data.alpacafarm_id_records(str(FIXTURES / "alpaca-farm-id-test"))
    assert "### Input:\nThe cat sleeps." in farm[1]["prompt"] and farm[0]["prompt"].endswith("### Response:")
    assert "### Input" not in farm[0]["prompt"]
    evals = data.alpaca_eval_records(str(FIXTURES / "alpaca_eval"))
    seq = data.sequential_instructions_records(str(FIXTURES / "sequential-instructions"))
    assert evals[0]["split"] == "ood_near" and seq[0]["split"] == "ood_far"
    assert evals[0]["domain"] == "helpful_base"


def test_alpacafarm_loaders_read_the_hub_schema(tmp_path):
    folder = FIXTURES / "alpaca_farm"
    sft = data.alpacafarm_instruction_records(str(folder / "alpaca_instructions"), "sft")
    assert sft[1]["prompt"].endswith("### Instruction:\nRewrite the sentence in the past tense.\n\n"
                                     "### Input:\nShe walks to work.\n\n### Response:")
    assert (sft[1]["reference"], sft[1]["uid"], sft[1]["split"]) == ("She walked to work.", "alpaca-sft-1", "id")
    assert data.alpacafarm_instruction_records(str(folder / "alpaca_instructions"), "unlabeled")[0]["uid"] == \
        "alpaca-unlabeled-0"
    prefs = data.alpacafarm_preference_records(str(folder / "alpaca_human_preference"))
    raw = data.load_hub_split(str(folder / "alpaca_human_preference"), "preference")
    for r, src in zip(prefs, raw):  # preference names the preferred output, 1 or 2
        assert (r["chosen"], r["rejected"]) == ((src["output_1"], src["output_2"]) if src["preference"] == 1
                                                else (src["output_2"], src["output_1"]))
    assert {src["preference"] for src in raw} == {1, 2}
    # the hub id reads its config; a local folder is that config already
    assert data._hub_config(data.ALPACA_FARM, data.ALPACA_FARM, "alpaca_instructions") == "alpaca_instructions"
    assert data._hub_config(str(folder), data.ALPACA_FARM, "alpaca_instructions") is None
    bad = tmp_path / "prefs"
    bad.mkdir()
    (bad / "preference.jsonl").write_text(json.dumps({**raw[0], "preference": 0}) + "\n")
    with pytest.raises(ValueError, match="preference=0; expected 1 or 2"):
        data.alpacafarm_preference_records(str(bad))


def test_alpaca_prompt_without_its_opening_sentence_keeps_the_sections():
    with_input = data.alpaca_prompt("Say it.", "It rains.", preamble=False)
    assert with_input == "### Instruction:\nSay it.\n\n### Input:\nIt rains.\n\n### Response:"
    assert data.alpaca_prompt("Say it.", preamble=False) == "### Instruction:\nSay it.\n\n### Response:"
    assert data.alpaca_prompt("Say it.", "It rains.") == data.ALPACA_PREAMBLE[0] + "\n\n" + with_input
    assert data.alpaca_prompt("Say it.").startswith(data.ALPACA_PREAMBLE[1] + "\n\n### Instruction:")


@pytest.mark.parametrize("preamble", [True, False])
def test_alpacafarm_splits_follow_the_instruction_preamble_setting(preamble):
    folder = FIXTURES / "alpaca_farm"
    cfg = load_profile("alpacafarm", **{
        "data.alpaca_instructions_source": str(folder / "alpaca_instructions"),
        "data.alpaca_preferences_source": str(folder / "alpaca_human_preference"),
        "data.alpaca_id_test_source": str(FIXTURES / "alpaca-farm-id-test"),
        "data.alpaca_eval_source": str(FIXTURES / "alpaca_eval"),
        "data.sequential_source": str(FIXTURES / "sequential-instructions"),
        "data.instruction_preamble": preamble})
    records = data.hub_splits(cfg)
    prompts = [r["prompt"] for recs in records.values() for r in recs]
    assert len(records) == 7 and prompts
    assert all(p.startswith(data.ALPACA_PREAMBLE) == preamble for p in prompts)
    assert all(p.startswith(("Below", "### Instruction:\n")) and p.endswith("### Response:") for p in prompts)


def test_wrong_schema_names_the_missing_fields():
    with pytest.raises(ValueError, match=r"lack field\(s\) \['post', 'title', 'subreddit', 'summary'\]"):
        data.tldr_records(str(FIXTURES / "cnn_dailymail"), "test")


def test_unreachable_hub_gives_a_clear_error_and_no_fallback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(data.HubUnavailableError, match=r"UCL-DARK/openai-tldr-filtered.*offline.*local folder"):
        data.tldr_records("UCL-DARK/openai-tldr-filtered", "test")


def test_missing_local_split_is_named(tmp_path):
    with pytest.raises(data.HubUnavailableError, match=r"no file for split 'validation'"):
        data.load_hub_split(str(FIXTURES / "cnn_dailymail"), "validation")


def test_hub_source_builds_the_same_split_structure(tmp_path):
    cfg = load_profile("smoke", run_dir=str(tmp_path), **{
        "data.source": "tldr", "data.tldr_source": str(FIXTURES / "openai-tldr-filtered"),
        "data.cnndm_source": str(FIXTURES / "cnn_dailymail"),
        "data.comparisons_source": str(FIXTURES / "openai-tldr-summarisation-preferences"),
        "data.n_sft_train": 4, "data.n_rl_prompts": 2, "data.n_sft_val": 2, "data.n_test": 3,
        "data.n_comparison_prompts": 4, "data.n_shift_sample": 3})
    paths = data.build_splits(cfg)
    assert len(data.load_split(cfg, "id", "sft_train")) == 4
    assert len(data.load_split(cfg, "ood_far", "test")) == 3
    assert data.load_split(cfg, "id", "comparisons")[0].keys() >= {"prompt", "chosen", "rejected"}
    splits = pd.read_csv(paths["splits"])
    assert list(splits.columns) == data.SPLITS_COLUMNS
    assert "judge_checks" not in paths  # the hub data has no exact judge
    assert data.available_splits(cfg) == ["id", "ood_far"]  # TL;DR has no OOD-near split


def test_world_stage_writes_the_results_contract(smoke_cfg):
    paths = data.build_splits(smoke_cfg)
    splits = pd.read_csv(paths["splits"])
    checks = pd.read_csv(paths["judge_checks"])
    assert list(splits.columns) == data.SPLITS_COLUMNS
    assert list(checks.columns) == data.JUDGE_CHECK_COLUMNS
    assert set(splits["split"]) == set(data.SPLITS)
    assert set(checks["variant"]) == {"truncated", "other_post", "empty", "shuffled", "hallucinated",
                                      "lead_1", "lead_2", "lead_3", "post_copy"}
    tests = splits[splits.role == "test"].set_index("split")
    # The graded shift: OOD-far is further from ID than OOD-near, which is further than ID test.
    dist = tests["embedding_distance_from_id"]
    assert dist["id"] < dist["ood_near"] < dist["ood_far"]
    assert tests.loc["ood_far", "vocab_overlap_with_id"] < tests.loc["id", "vocab_overlap_with_id"]
    corrupted = checks[checks["variant"].isin(world.CORRUPTIONS)]
    assert (corrupted["reference_preferred_rate"] >= 0.9).all()  # smoke sizes: 24 posts
    assert (checks[checks["variant"] == "post_copy"]["reference_preferred_rate"] >= 0.9).all()
    assert data.available_splits(smoke_cfg) == list(data.SPLITS)
