"""Best-of-N selection and its scaling grid."""

import numpy as np
import pytest
from gendiv import bon


def test_best_of_n_picks_the_argmax_and_the_first_on_ties():
    scores = np.array([[0.1, 0.9, 0.3], [2.0, 2.0, -1.0]])
    assert bon.best_of_n(scores).tolist() == [1, 0]
    with pytest.raises(ValueError, match="inputs x candidates"):
        bon.best_of_n(np.zeros(3))


def test_n_grid():
    assert bon.n_grid(16) == [1, 2, 4, 8, 16]
    assert bon.n_grid(6) == [1, 2, 4, 6]
    assert bon.n_grid(1) == [1]


def test_candidates_are_scored_in_the_rm_batches_and_shaped_inputs_by_candidates():
    # reward.score_batch_size, not the sampling batch, sets the RM's batches; scores come back as
    # (inputs x candidates), each for its own input's prompt.
    from gendiv.config import load_profile
    cfg = load_profile("smoke", **{"reward.score_batch_size": 7, "sampling.batch_size": 300})
    seen = []

    class RM:
        def score(self, prompts, texts, batch_size):
            seen.append(batch_size)
            return np.array([float(p[-1]) * 10 + len(t) for p, t in zip(prompts, texts)])

    records = [{"prompt": "post 1"}, {"prompt": "post 2"}]
    out = bon.score_candidates(cfg, RM(), records, [["a", "bb", "ccc"], ["dddd", "e", "ff"]])
    assert seen == [7]
    assert out.tolist() == [[11, 12, 13], [24, 21, 22]]
