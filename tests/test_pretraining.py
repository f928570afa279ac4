"""The base model: whole-document packing, perplexity, resumable pre-training, the shipped checkpoint."""

import json

import pytest
import torch
from gendiv import cli, models, pretraining
from gendiv.config import ConfigError, load_profile

DOCS = [f"SUBREDDIT: r/test\nTITLE: post {i}\nPOST: My landlord raised the rent{' again' * (i % 7)}.\n"
        f"TL;DR: landlord raised rent {i}" for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return models.train_tokenizer(DOCS, vocab_size=300)


def _documents(rows, tok):
    """The documents of packed rows, as token lists (split at EOS, padding dropped)."""
    docs = []
    for row in rows.tolist():
        current = []
        for t in row:
            if t == tok.pad_token_id:
                break
            current.append(t)
            if t == tok.eos_token_id:
                docs.append(current)
                current = []
        assert not current, "a row ends inside a document"
    return docs


def test_pack_keeps_every_document_whole_and_fills_rows(tok):
    rows = pretraining.pack(tok, DOCS, 128)
    expected = [ids + [tok.eos_token_id] for ids in tok(DOCS, add_special_tokens=False)["input_ids"]]
    assert sorted(_documents(rows, tok)) == sorted(expected)  # each once, none cut
    # A row is opened only when a document fits in no other, so no two rows could be merged.
    used = (rows != tok.pad_token_id).sum(1).tolist()
    assert all(a + b > 128 for i, a in enumerate(used) for b in used[i + 1:])
    assert sum(used) / rows.numel() > 0.6


def test_pack_hand_worked(tok):
    class Toy:  # documents of 3, 2 and 4 tokens (+ EOS) into rows of 5
        eos_token_id, pad_token_id = 9, 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[int(c) for c in t] for t in texts]}

    rows = pretraining.pack(Toy(), ["123", "45", "6781"], 5)
    # "123"+EOS opens row 0 (1 free); "45"+EOS does not fit there, opens row 1 (2 free);
    # "6781"+EOS needs 5, opens row 2.
    assert rows.tolist() == [[1, 2, 3, 9, 0], [4, 5, 9, 0, 0], [6, 7, 8, 1, 9]]
    # Best fit, not first fit: "1"+EOS goes to the fuller row 1 (2 free), not row 0 (4 free).
    rows = pretraining.pack(Toy(), ["123", "12345", "1"], 8)
    assert rows.tolist() == [[1, 2, 3, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 9, 1, 9]]
    assert pretraining.pack(Toy(), ["1234567"], 4).tolist() == [[5, 6, 7, 9]]  # keeps the end


def test_perplexity_ignores_padding(tok):
    torch.manual_seed(0)
    model = models.tiny_llama(tok, 32, 2, 2, 64, 128)
    rows = pretraining.pack(tok, DOCS[:6], 128)
    padded = torch.cat([rows, torch.full((len(rows), 40), tok.pad_token_id)], dim=1)
    assert pretraining.perplexity(model, padded, tok.pad_token_id) == pytest.approx(
        pretraining.perplexity(model, rows, tok.pad_token_id), rel=1e-5)
    labels = pretraining.lm_labels(rows, tok.pad_token_id)
    assert ((labels == -100) == (rows == tok.pad_token_id)).all()


def test_pretraining_resumes_exactly(tok, tmp_path):
    rows = pretraining.pack(tok, DOCS, 64)
    kwargs = dict(pad_token_id=tok.pad_token_id, epochs=1.0, lr=1e-3, batch_size=4, warmup_steps=2, seed=3,
                  eval_every=100)
    torch.manual_seed(0)
    straight = models.tiny_llama(tok, 32, 2, 2, 64, 64)
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    full = pretraining.pretrain(straight, rows[2:], rows[:2], **kwargs)

    stopped = models.tiny_llama(tok, 32, 2, 2, 64, 64)
    stopped.load_state_dict(start)
    ckpt = tmp_path / "state.pt"
    steps = len(full)
    half = pretraining.pretrain(stopped, rows[2:], rows[:2], **{**kwargs, "epochs": 1.0}, checkpoint=ckpt,
                                checkpoint_every=steps // 2, run_id="r")
    assert len(half) == steps  # it ran through, leaving a checkpoint at the half
    resumed = models.tiny_llama(tok, 32, 2, 2, 64, 64)
    resumed.load_state_dict(start)
    log = pretraining.pretrain(resumed, rows[2:], rows[:2], **kwargs, checkpoint=ckpt, checkpoint_every=0,
                               run_id="r")
    assert log["train_loss"].tolist() == pytest.approx(full["train_loss"].tolist())
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    other = models.tiny_llama(tok, 32, 2, 2, 64, 64)
    other.load_state_dict(start)  # another run id ignores the checkpoint: a full run from step 0
    assert len(pretraining.pretrain(other, rows[2:], rows[:2], **kwargs, checkpoint=ckpt, run_id="x")) == steps


def test_the_world_fingerprint_is_stable_and_tracks_the_generator(monkeypatch):
    from gendiv import world

    first = pretraining.world_fingerprint()
    assert first == pretraining.world_fingerprint()
    monkeypatch.setattr(world, "SUMMARY_TAILS", world.SUMMARY_TAILS + ["A new tail."])
    monkeypatch.setattr(world, "FORUM_CLOSERS", ["Thanks all."])
    assert pretraining.world_fingerprint() != first


def test_the_instruction_fingerprint_joins_the_recipe_only_with_help_threads(monkeypatch):
    from gendiv import instruct

    plain, helped = load_profile("tiny", **{"data.pretrain_instruction_share": 0.0}), load_profile("tiny")
    assert "instruction_world" not in pretraining.recipe(plain)
    assert "pretrain_instruction_share" not in pretraining.recipe(plain)["data"]
    # No share: the recipe (and its hash) of the base shipped before the option existed (a2d552f...)
    assert pretraining.recipe_hash(plain) == "a2d552f660107fa9"
    shipped = json.loads((pretraining.shipped_dir("tiny") / pretraining.MANIFEST).read_text())
    assert pretraining.recipe_hash(helped) == shipped["recipe_hash"]  # tiny's 10% help threads: the shipped base
    first = pretraining.recipe(helped)["instruction_world"]
    assert pretraining.recipe(helped)["data"]["pretrain_instruction_share"] == 0.1
    monkeypatch.setattr(instruct, "REFERENCE_TAILS", ["Cheers."])
    assert pretraining.instruction_fingerprint() != first


def test_gendiv_pretrain_runs_on_smoke_and_is_deterministic(tmp_path):
    profile = tmp_path / "micro.yaml"
    profile.write_text("profile: micro\ndata:\n  n_pretrain_docs: 60\n  pretrain_comment_share: 0.3\n"
                       "  pretrain_instruction_share: 0.2\n"
                       "model:\n  base: scratch\n  vocab_size: 300\n  hidden_size: 32\n  n_layers: 2\n"
                       "  n_heads: 2\n  intermediate_size: 64\n  max_length: 256\n"
                       "pretrain:\n  batch_size: 8\n  probe_every: 4\n  probe_inputs: 2\n")
    assert cli.main(["pretrain", "--profile", str(profile), "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["pretrain", "--profile", str(profile), "--out", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "a" / pretraining.MANIFEST).read_text())
    assert manifest["recipe_hash"] == pretraining.recipe_hash(load_profile(str(profile)))
    assert manifest["tokens"] > 0 and manifest["command"] == "gendiv pretrain --profile micro"
    log_a = (tmp_path / "a" / pretraining.LOG).read_text()
    assert "id_utility" in log_a.splitlines()[0]  # the summary probe ran
    a = models.load_causal_lm(tmp_path / "a", torch.device("cpu")).state_dict()
    b = models.load_causal_lm(tmp_path / "b", torch.device("cpu")).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert not (tmp_path / "a.checkpoint.pt").exists()


def test_gendiv_pretrain_without_out_needs_a_shipped_base(capsys):
    assert cli.main(["pretrain", "--profile", "smoke"]) == 1
    assert "pass --out DIR" in capsys.readouterr().err


def test_shipped_base_matches_its_profile_world_and_tokenizer():
    cfg = load_profile("tiny")
    folder = pretraining.shipped_dir(cfg.model.base)
    manifest = pretraining.check_shipped(cfg, folder)  # raises if the recipe or the world changed
    assert manifest["recipe_hash"] == pretraining.recipe_hash(cfg)
    tok = models.load_tokenizer(folder)
    assert len(tok) == cfg.model.vocab_size and tok.pad_token_id != tok.eos_token_id
    model = models.load_causal_lm(folder, torch.device("cpu"))
    assert model.config.hidden_size == cfg.model.hidden_size
    assert model.config.num_hidden_layers == cfg.model.n_layers
    assert model.config.vocab_size == len(tok)
    # the tokenizer was trained on this world: its words are mostly single tokens
    from gendiv.world import lexicon
    vocabulary = sorted(lexicon().vocabulary)
    single = sum(len(tok.tokenize(" " + w)) == 1 for w in vocabulary) / len(vocabulary)
    assert single > 0.45, single  # half of the 1,479 words at 2,048 tokens


def test_a_changed_recipe_is_named_with_the_fix():
    cfg = load_profile("tiny", **{"pretrain.lr": 1.0e-4, "model.hidden_size": 64})
    with pytest.raises(ConfigError, match=r"model.hidden_size: profile 64.*pretrain.lr: profile 0.0001.*"
                                          r"gendiv pretrain --profile tiny"):
        pretraining.check_shipped(cfg, pretraining.shipped_dir("tiny"))
    plain = load_profile("tiny", **{"data.pretrain_instruction_share": 0.0})  # no help threads
    with pytest.raises(ConfigError, match=r"data.pretrain_instruction_share: profile 0, shipped 0.1\. Remake"):
        pretraining.check_shipped(plain, pretraining.shipped_dir("tiny"))


def test_cased_openers_become_single_tokens_and_join_the_recipe_only_when_set():
    """A summary that opens with a capitalised noun ("Contractor grew ...") should not have to
    spell it from rare pieces: with ``pretrain.cased_openers`` the tokenizer holds each such word
    whole. Off (every shipped recipe so far), the recipe and its hash are as before."""
    openers = pretraining.cased_openers()
    assert "Contractor" in openers and openers == sorted(set(openers)) and all(w[0].isupper() for w in openers)
    docs = ["the contractor grew black mould and the landlord never came"] * 50
    plain = models.train_tokenizer(docs, vocab_size=300)
    cased = models.train_tokenizer(docs, vocab_size=300, whole_words=["Contractor", "Landlord"])
    assert len(plain.tokenize(" Contractor")) > 1
    assert cased.tokenize(" Contractor") == ["ĠContractor"] and cased.tokenize(" Landlord") == ["ĠLandlord"]
    off, on = load_profile("tiny"), load_profile("tiny", **{"pretrain.cased_openers": True})
    assert "cased_openers" not in pretraining.recipe(off)["pretrain"]
    assert pretraining.recipe(on)["pretrain"]["cased_openers"] is True
    with pytest.raises(ConfigError, match=r"pretrain.cased_openers: profile True, shipped 0"):
        pretraining.check_shipped(on, pretraining.shipped_dir("tiny"))
