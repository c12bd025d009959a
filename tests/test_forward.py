"""The NumPy forward propagation: the loop and the vectorised form agree, and it needs NumPy only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from modelcard import forward
from tests.conftest import MODEL_NAMES, ROOT, latest_version


@pytest.fixture(scope="module")
def networks():
    return {name: forward.Network.load(latest_version(name)) for name in MODEL_NAMES}


@pytest.fixture(scope="module")
def test_splits():
    from training import data

    return {name: data.load(name).test for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loop_equals_vectorised_on_the_whole_test_split(name, networks, test_splits):
    x = test_splits[name].x
    looped = networks[name].activations(x, vectorised=False)
    vectorised = networks[name].activations(x)
    assert len(looped) == len(networks[name].card["forward"]["layers"]) + 1
    for a_loop, a_vec in zip(looped, vectorised, strict=True):
        assert a_loop.shape == a_vec.shape
        assert np.max(np.abs(a_loop - a_vec)) <= 1e-12


def test_dense_loop_is_the_lessons_neuron():
    rng = np.random.default_rng(0)
    a_in, W, b = rng.normal(size=3), rng.normal(size=(3, 2)), rng.normal(size=2)
    a = forward.dense_loop(a_in, W, b, "sigmoid")
    by_hand = [1 / (1 + np.exp(-(sum(W[i, j] * a_in[i] for i in range(3)) + b[j]))) for j in range(2)]
    np.testing.assert_allclose(a, by_hand, rtol=1e-12)


def test_single_example_and_batch_agree(networks, test_splits):
    network, x = networks["digits"], test_splits["digits"].x[:5]
    batch = network.predict(x)
    for row, expected in zip(x, batch, strict=True):
        single = network.predict(row)
        assert single.shape == (10,)
        np.testing.assert_allclose(single, expected, rtol=0, atol=1e-15)


def test_softmax_is_stable_and_normalised():
    z = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    p = forward.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    e = np.exp([0.0, 1.0, -1.0])
    np.testing.assert_allclose(p[0], e / e.sum())


def test_sigmoid_saturates_without_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(forward.sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_relu_and_linear():
    z = np.array([-2.0, 0.0, 3.5])
    np.testing.assert_array_equal(forward.relu(z), [0.0, 0.0, 3.5])
    np.testing.assert_array_equal(forward.linear(z), z)


def test_rejects_input_of_the_wrong_rank(networks):
    with pytest.raises(ValueError, match="3-D"):
        networks["digits"].predict(np.zeros((1, 1, 64)))


def test_weights_that_do_not_match_the_card_are_refused(networks):
    card = networks["demand"].card
    weights = {"W1": np.zeros((4, 2)), "b1": np.zeros(2), "W2": np.zeros((2, 1)), "b2": np.zeros(1)}
    with pytest.raises(ValueError, match="layer 1"):
        forward.layers_from(card["forward"], weights)


def test_imports_with_numpy_only():
    """In a process where TensorFlow, onnxruntime, Flask and the service cannot be imported."""
    program = (
        "import sys\n"
        "for blocked in ('tensorflow', 'onnxruntime', 'flask', 'keras', 'training', 'service'):\n"
        "    sys.modules[blocked] = None  # makes 'import blocked' raise ImportError\n"
        "from modelcard import forward\n"
        "import pathlib\n"
        "network = forward.Network.load(pathlib.Path('models/digits-binary') / sys.argv[1])\n"
        "print(network.predict([[0.0] * 64]).shape)\n"
    )
    version = latest_version("digits-binary").name
    result = subprocess.run([sys.executable, "-c", program, version], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 1)"
