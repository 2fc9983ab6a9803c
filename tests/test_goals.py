"""GoalIndex: faiss cosine search equals a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest

from probekit.errors import ProbekitError
from probekit.probe.goals import GoalIndex, normalize_rows


def _numpy_q(z: np.ndarray, protos: np.ndarray) -> np.ndarray:
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    pn = np.linalg.norm(protos, axis=1, keepdims=True)
    cos = (z @ protos.T) / np.maximum(zn, 1e-12) / pn.T
    return cos.max(axis=1)


@pytest.mark.parametrize("k", [1, 7])
def test_q_values_match_numpy_cosine(k):
    rng = np.random.default_rng(k)
    protos = rng.normal(size=(k, 16)) * rng.uniform(0.1, 10, size=(k, 1))
    z = rng.normal(size=(200, 16)) * rng.uniform(0.01, 100, size=(200, 1))
    index = GoalIndex(protos)
    q = index.q_values(z)
    assert q.shape == (200,) and q.dtype == np.float32
    np.testing.assert_allclose(q, _numpy_q(z, protos), atol=1e-5)
    sims, nearest = index.search(z)
    np.testing.assert_array_equal(nearest, np.argmax(normalize_rows(z) @ normalize_rows(protos).T, axis=1))


def test_one_dimensional_prototype_and_zero_rows():
    index = GoalIndex(np.array([3.0, 4.0]))
    z = np.array([[0.0, 0.0], [3.0, 4.0], [-6.0, -8.0], [4.0, -3.0]])
    np.testing.assert_allclose(index.q_values(z), [0.0, 1.0, -1.0, 0.0], atol=1e-6)
    assert index.q_values(np.zeros((0, 2))).shape == (0,)


def test_bad_inputs():
    with pytest.raises(ProbekitError):
        GoalIndex(np.zeros((0, 4)))
    with pytest.raises(ProbekitError):
        GoalIndex(np.zeros((1, 4)))
    with pytest.raises(ProbekitError):
        GoalIndex(np.ones((2, 4))).q_values(np.ones((3, 5)))
