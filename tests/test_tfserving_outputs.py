"""TF Serving's :predict for outputs of every datatype and rank, in rows and in columns.

Each model (tests/onnx_models.shaped) takes x [-1, 3] of one datatype and gives one output of
rank 0 to 3 made of x's values, alone or beside a batched companion `copy`. The oracles are
onnxruntime run directly on the same model.onnx, and v2's answer to the same request: every
value TF Serving writes must equal both, with JSON's kind of value for its datatype (booleans,
integers written exactly, UINT64 beyond 2**63 included, or numbers with a fraction).

Row format follows TF Serving: every output needs a first dimension, the same for all, or the
answer is a 400 naming the output (columns answer it).
"""

from __future__ import annotations

import numpy as np
import pytest

from service import create_app
from tests.echo_model import DTYPES, ONNX_TYPES, sample
from tests.onnx_models import run, shaped, write_version

RANKS = (0, 1, 2, 3)
ROWS = 3


def model_name(datatype: str, rank: int, among: bool) -> str:
    return f"{datatype.lower()}-rank{rank}{'-among' if among else ''}"


def outputs_of(rank: int, among: bool) -> tuple[str, ...]:
    return (f"rank{rank}", "copy") if among else (f"rank{rank}",)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("shaped-models")
    for datatype, elem_type in ONNX_TYPES.items():
        for rank in RANKS:
            for among in (False, True):
                write_version(root, model_name(datatype, rank, among), 1,
                              shaped(elem_type, outputs_of(rank, among)))
    write_version(root, "unbatched", 1, shaped(ONNX_TYPES["FP32"], ("rank2", "first_row")))
    return root


@pytest.fixture(scope="module")
def client(repository):
    return create_app({"model_repository": repository}).test_client()


def leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def typed(value, dtype: np.dtype) -> np.ndarray:
    """JSON values as an array of `dtype`, once every value is JSON's kind for that datatype."""
    kind = {"b": (bool,), "i": (int,), "u": (int,), "f": (float,)}[dtype.kind]
    found = {type(leaf) for leaf in leaves(value)}
    assert found <= set(kind), f"{dtype}: {found} in the answer"
    return np.array(value, dtype=dtype)


def v2_answer(client, name: str, x: np.ndarray, datatype: str) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.tolist()}]}
    reply = client.post(f"/v2/models/{name}/infer", json=body)
    assert reply.status_code == 200, reply.get_json()
    return {t["name"]: typed(t["data"], np.dtype(DTYPES[t["datatype"]])).reshape(t["shape"])
            for t in reply.get_json()["outputs"]}


def tf_answer(client, name: str, x: np.ndarray, rows: bool, names: tuple[str, ...]):
    """TF Serving's answer as {output: its JSON values}, or the 400's message."""
    reply = client.post(f"/v1/models/{name}:predict", json={("instances" if rows else "inputs"): x.tolist()})
    document = reply.get_json()
    if reply.status_code == 400:
        return document["error"]
    assert reply.status_code == 200, document
    if rows:
        predictions = document["predictions"]
        if len(names) == 1:  # one output: its rows, bare
            return {names[0]: predictions}
        assert all(set(row) == set(names) for row in predictions), predictions
        return {output: [row[output] for row in predictions] for output in names}
    outputs = document["outputs"]
    return {names[0]: outputs} if len(names) == 1 else outputs


@pytest.mark.parametrize("rows", [True, False], ids=["rows", "columns"])
@pytest.mark.parametrize("among", [False, True], ids=["alone", "among"])
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_output_equals_onnxruntime_and_v2(client, repository, datatype, rank, among, rows):
    name, names = model_name(datatype, rank, among), outputs_of(rank, among)
    dtype = np.dtype(DTYPES[datatype])
    x = sample(rows=ROWS, seed=rank, datatypes=(datatype,))[f"x_{datatype.lower()}"]
    expected = run(repository / name / "1" / "model.onnx", {"x": x})
    v2 = v2_answer(client, name, x, datatype)
    answer = tf_answer(client, name, x, rows, names)
    if rows and rank == 0:
        # TF Serving's own rule: a row format answer needs a first dimension in every output.
        assert isinstance(answer, str) and "'rank0'" in answer and "'inputs'" in answer, answer
        return
    assert isinstance(answer, dict), answer
    assert set(answer) == set(names)
    for output in names:
        got = typed(answer[output], dtype)
        assert got.shape == expected[output].shape, output
        np.testing.assert_array_equal(got, expected[output], err_msg=output)
        np.testing.assert_array_equal(got, v2[output], err_msg=output)
        assert (v2[output].dtype, v2[output].shape) == (dtype, expected[output].shape), output


def test_uint64_beyond_int64_is_written_exactly(client):
    x = np.array([[0, 2**64 - 1, 2**63 + 1]] * 2, dtype=np.uint64)
    for rows in (True, False):
        answer = tf_answer(client, "uint64-rank1-among", x, rows, ("rank1", "copy"))
        assert answer["rank1"] == [2**64 - 1, 2**64 - 1]
        assert answer["copy"] == x.tolist()


@pytest.mark.parametrize("rows", [2, 3])
def test_rows_need_outputs_batched_alike(client, repository, rows):
    """An output whose first dimension is not the batch (x[0], 3 values) answers in columns; in
    rows only when every output has that many rows, as TF Serving does."""
    x = sample(rows=rows, datatypes=("FP32",))["x_fp32"]
    expected = run(repository / "unbatched" / "1" / "model.onnx", {"x": x})
    columns = tf_answer(client, "unbatched", x, False, ("rank2", "first_row"))
    for output in expected:
        np.testing.assert_array_equal(typed(columns[output], np.dtype(np.float32)), expected[output])
    answer = tf_answer(client, "unbatched", x, True, ("rank2", "first_row"))
    if rows == 3:
        for output in expected:
            np.testing.assert_array_equal(typed(answer[output], np.dtype(np.float32)), expected[output])
    else:
        assert isinstance(answer, str) and "'first_row'" in answer and "'rank2'" in answer, answer


def test_label_columns_never_replace_an_output_called_label(tmp_path):
    """A classifier whose one output is called `label` keeps its scores; the label columns take
    the output's name as prefix instead."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["label"])], "scores",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_version(tmp_path, "scores", 1, model, labels={"label": ["a", "b", "c"]})
    client = create_app({"model_repository": tmp_path}).test_client()
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    expected = run(tmp_path / "scores" / "1" / "model.onnx", {"x": x})["label"]
    answer = client.post("/v1/models/scores:predict", json={"instances": x.tolist()}).get_json()
    rows = answer["predictions"]
    np.testing.assert_allclose([row["label"] for row in rows], expected, atol=1e-6)
    assert [row["label_label"] for row in rows] == [["a", "b", "c"][k] for k in np.argmax(expected, axis=1)]
    probabilities = [row["label_label_probability"] for row in rows]
    assert probabilities == pytest.approx(np.max(expected, axis=1).tolist())
