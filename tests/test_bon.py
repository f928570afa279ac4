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
