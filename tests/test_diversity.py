"""Diversity metrics on hand-worked cases: EAD, Sentence-BERT, NLI aggregation, the oracle."""

import numpy as np
import pytest
from gendiv import diversity


def test_ead_tokenisation_drops_full_stops_and_newlines():
    assert diversity.ead_tokens("The cat sat.\nThe dog.") == ["The", "cat", "sat", "The", "dog"]


def test_ead_hand_worked():
    # "a b a": unigrams C = 3, N = 2; with V = 2 the expected distinct count is 2 * (1 - (1/2)^3) = 1.75
    assert diversity.ead_n(["a b a"], 1, vocab_size=2) == pytest.approx(2 / 1.75)
    # bigrams "a b", "b a": C = 2, N = 2, expected 2 * (1 - 1/4) = 1.5
    assert diversity.ead_n(["a b a"], 2, vocab_size=2) == pytest.approx(2 / 1.5)
    assert np.isnan(diversity.ead_n(["a b"], 3))


def test_ead_identical_texts_score_lower_than_disjoint_ones_and_stay_in_bounds():
    same = ["tenant pays landlord rent late again"] * 8
    disjoint = [f"w{i}a w{i}b w{i}c w{i}d w{i}e w{i}f" for i in range(8)]
    ead_same, per_n_same = diversity.ead(same)
    ead_disjoint, _ = diversity.ead(disjoint)
    assert ead_same < 0.2 < 0.99 < ead_disjoint
    # all-distinct n-grams give C / E[distinct]: just above 1 for C << V, never more than 1 + C / V
    c = 8 * 6
    assert ead_disjoint <= 1 + c / 50257
    for n, value in per_n_same.items():  # one text's distinct n-grams over 8 copies' count
        assert value == pytest.approx((7 - n) / (50257 * (1 - (50256 / 50257) ** (8 * (7 - n)))))


def test_sbert_diversity_of_identical_texts_is_zero_and_of_orthogonal_ones_is_one():
    e = np.eye(3)
    assert diversity.sbert_diversity(np.repeat(e[:1], 4, axis=0)) == pytest.approx(0.0)
    assert diversity.sbert_diversity(e) == pytest.approx(1.0)


def test_resampled_duplicates_do_not_count_as_pairs():
    e = np.eye(3)
    assert diversity.sbert_diversity(e, np.array([0, 0, 1])) == pytest.approx(1.0)


def test_sbert_with_the_offline_model_identical_texts():
    emb = diversity.embed(["the rent went up", "the rent went up"], "all-MiniLM-L6-v2")
    assert diversity.sbert_diversity(emb) == pytest.approx(0.0, abs=1e-5)


def test_nli_label_order_comes_from_the_model():
    assert diversity.label_scores({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}).tolist() == [1, 0, -1]
    assert diversity.label_scores({"0": "entailment", "1": "neutral", "2": "contradiction"}).tolist() == [-1, 0, 1]
    with pytest.raises(ValueError, match="MNLI"):
        diversity.label_scores({0: "positive", 1: "negative"})


def test_nli_pair_aggregation_with_a_stub_scorer():
    scores = np.array([1.0, 0.0, -1.0])  # contradiction, neutral, entailment

    def scorer(premises, hypotheses):
        # contradiction (p 0.9) when texts differ, entailment (p 0.8) when they are the same
        return np.array([[0.9, 0.05, 0.05] if p != h else [0.1, 0.1, 0.8] for p, h in zip(premises, hypotheses)])

    assert diversity.nli_pair_scores(["a", "b"], scorer, scores).tolist() == pytest.approx([1.8])
    assert diversity.nli_diversity(["a", "a"], scorer, scores) == pytest.approx(-1.6)
    value = diversity.nli_diversity(["a", "a", "b"], scorer, scores)  # pairs: -1.6, 1.8, 1.8
    assert value == pytest.approx((-1.6 + 1.8 + 1.8) / 3)
    assert -2 <= value <= 2


def test_nli_scorer_runs_a_local_randomly_headed_classifier(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "rent", "went", "up", "down"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3,
                        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                        label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    scorer = diversity.NLIScorer(str(tmp_path), device="cpu")
    assert scorer.labels.tolist() == [-1, 0, 1]
    probs = scorer(["the rent went up"] * 2, ["the rent went down", "the rent went up"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)
    assert -2 <= diversity.nli_diversity(["the rent went up", "the rent went down"], scorer, scorer.labels) <= 2


def test_oracle_on_known_fact_sets():
    a, b, c = frozenset({1, 2}), frozenset({2, 3}), frozenset()
    assert diversity.jaccard_distance(a, a) == 0.0
    assert diversity.jaccard_distance(a, b) == pytest.approx(1 - 1 / 3)
    assert diversity.jaccard_distance(c, c) == 0.0
    assert diversity.oracle_diversity([a, b, a]) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_prepare_many_matches_one_list_at_a_time(smoke_cfg):
    """Embedding many inputs' samples in one call gives each input the features (and so the
    metrics) it gets alone."""
    from gendiv.world import World

    metrics = diversity.Metrics(smoke_cfg, World(seed=0))
    groups = [["my rent went up.", "the landlord raised the rent."], ["a short one."],
              ["my dog ate the homework.", "my dog ate it.", "the cat sat."]]
    together = metrics.prepare_many(groups)
    for g, feats in zip(groups, together):
        alone = metrics.prepare(g)
        np.testing.assert_allclose(feats["embeddings"], alone["embeddings"], atol=1e-5)
        assert metrics.compute(feats) == pytest.approx(metrics.compute(alone), abs=1e-5, nan_ok=True)
    assert [f["texts"] for f in together] == groups


def test_effective_diversity_counts_only_pairs_of_good_outputs():
    """Three outputs with distances 1 (0-1), 0.5 (0-2) and 0.2 (1-2); output 1 is bad (utility 0.1
    below the threshold 0.5): only the pair 0-2 counts, 0.5 over 3 pairs."""
    from gendiv import diversity

    d = np.array([[0, 1.0, 0.5], [1.0, 0, 0.2], [0.5, 0.2, 0]])
    q = np.array([0.9, 0.1, 0.8])
    assert diversity.effective_pairwise(d, q, 0.5) == pytest.approx(0.5 / 3)
    assert diversity.effective_pairwise(d, q, 0.0) == pytest.approx(1.7 / 3)  # all good: plain mean
    assert diversity.effective_pairwise(d, q, 0.95) == 0.0  # none good
    # a bootstrap draw (0, 0, 2) leaves out the pair of item 0 with itself: both pairs left are 0-2
    assert diversity.effective_pairwise(d, q, 0.5, np.array([0, 0, 2])) == pytest.approx(0.5)
    assert diversity.effective_pairwise(d, q, 0.5, np.array([0, 1, 1])) == 0.0
