"""The card's declared schema (modelcard/card.schema.json) and the parser built on it.

The schema is a valid JSON Schema; every committed card and every card the builders write passes
it; each field it declares is checked (a wrong type at any declared field is refused, naming the
field); and a property-based test mutates a valid card.json and version_policy.json structurally
(types, nesting, missing and extra fields, huge values) and checks that the registry never
raises, that the version is either served or refused with a one-line reason, and that the other
models keep serving.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcard.card import SCHEMA, CardError, ModelCard
from service.repository.registry import ModelRegistry
from service.repository.version_policy import ALL, VersionPolicy
from tests.conftest import MODEL_NAMES, MODELS, latest_version, read_card


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_committed_cards_pass_the_schema(name):
    card = ModelCard.parse(read_card(latest_version(name)))
    assert card.name == name and card.files["model.onnx"]


def paths(value, prefix=()):
    """Every path into a JSON document, leaves and containers alike."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):  # the first few of a long list are enough
            yield from paths(item, (*prefix, index))


def at(document, path):
    for step in path:
        document = document[step]
    return document


def replaced(document, path, value):
    changed = copy.deepcopy(document)
    if not path:
        return value
    at(changed, path[:-1])[path[-1]] = value
    return changed


CARD = {**read_card(MODELS / "digits" / "1"), "version": 2}  # written as digits/2 below
# A value of another JSON type than the field holds: refused wherever the schema declares a type.
OTHER_TYPE = {str: 5, int: {"n": 5}, float: {"n": 5}, bool: "yes", list: 5, dict: [5], type(None): [5]}
FREE_FORM = ("dataset", "training")  # for people: any object is accepted, nothing of it is served


@pytest.mark.parametrize("path", [p for p in paths(CARD) if p and p[0] not in FREE_FORM],
                         ids=lambda p: ".".join(map(str, p)))
def test_a_wrong_type_at_any_declared_field_is_refused_naming_it(path):
    value = OTHER_TYPE[type(at(CARD, path))]
    with pytest.raises(CardError) as refused:
        ModelCard.parse(replaced(CARD, path, value))
    named = str(path[-1]) if isinstance(path[-1], str) else f"[{path[-1]}]"
    assert named in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("field", ["name", "version", "inputs", "outputs", "files"])
def test_a_missing_required_field_is_named(field):
    card = {key: value for key, value in CARD.items() if key != field}
    with pytest.raises(CardError, match=repr(field)):
        ModelCard.parse(card)


def test_an_unknown_field_is_refused_rather_than_ignored():
    with pytest.raises(CardError, match="lables"):
        ModelCard.parse(replaced(CARD, ("outputs", 0, "lables"), ["a"]))
    with pytest.raises(CardError, match="foward"):
        ModelCard.parse({**CARD, "foward": CARD["forward"]})


@pytest.mark.parametrize(("path", "value", "reason"), [
    (("outputs", 0, "labels"), ["a", "b", "c"], "3 labels do not fit"),
    (("inputs", 0, "features"), CARD["inputs"][0]["features"][:3], "3 features need a shape"),
    (("inputs", 0, "range"), [5, 1], "low <= high"),
    (("forward", "input"), "nothing", "forward.input"),
    (("outputs",), CARD["outputs"] * 2, "names a tensor twice"),
])
def test_what_spans_fields_is_checked_after_the_schema(path, value, reason):
    with pytest.raises(CardError, match=reason):
        ModelCard.parse(replaced(CARD, path, value))


# --- the property: whatever card.json or version_policy.json holds, only its version is harmed ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_cards(draw):
    """A valid card changed at one place: a field replaced by any JSON value, removed, added,
    wrapped in deep nesting, or made huge."""
    card = copy.deepcopy(CARD)
    path = draw(st.sampled_from([p for p in paths(card) if p]))
    kind = draw(st.sampled_from(["replace", "remove", "add", "nest", "huge"]))
    parent, key = at(card, path[:-1]), path[-1]
    if kind == "replace":
        parent[key] = draw(json_values)
    elif kind == "remove":
        del parent[key]
    elif kind == "add":
        target = at(card, path) if isinstance(at(card, path), dict) else parent
        if isinstance(target, dict):
            target[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        else:
            target.append(draw(json_values))
    elif kind == "nest":
        value = parent[key]
        for _ in range(draw(st.integers(1, 1500))):
            value = [value]
        parent[key] = value
    else:
        parent[key] = draw(st.sampled_from(["x" * 300_000, 2**64 - 1, -(2**63), 1e308, [0] * 100_000]))
    return card


def write_atomically(path: Path, text: str) -> None:
    """A new file renamed into place: a new inode, so every write is a change the poll sees."""
    staging = path.with_name(f".{path.name}.new")
    staging.write_text(text)
    staging.rename(path)


@pytest.fixture(scope="module")
def hostile_repository(tmp_path_factory):
    repository = tmp_path_factory.mktemp("hostile") / "models"
    shutil.copytree(MODELS, repository)
    folder = repository / "digits" / "2"
    shutil.copytree(MODELS / "digits" / "1", folder)
    registry = ModelRegistry(repository)
    registry.refresh()
    return repository, registry


def assert_only_that_version_was_harmed(registry: ModelRegistry, cases) -> None:
    state = registry.state
    if 2 in state.models.get("digits", {}):
        assert 2 not in state.failures.get("digits", {})
    else:
        [why] = [why for n, v, ready, why in registry.index() if (n, v) == ("digits", "2")]
        assert why and "\n" not in why and len(why) <= 200, why
    assert registry.ready
    for name, case in cases.items():
        model = registry.get(name, 1)
        [output] = model.card.output_names
        served = model.infer({case.input_name: case.x[:2].astype(np.float32)}, [output])[output]
        np.testing.assert_allclose(served, case.expected[:2], atol=1e-6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(card=mutated_cards())
def test_a_mutated_card_harms_its_version_only(hostile_repository, cases, card):
    repository, registry = hostile_repository
    write_atomically(repository / "digits" / "2" / "card.json", json.dumps(card))
    registry.refresh()
    assert_only_that_version_was_harmed(registry, cases)


policies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["all", "latest", "specific", "other"]), json_values, max_size=3),
    st.integers(1, 1500).map(lambda depth: "[" * depth + "]" * depth),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies)
def test_a_mutated_version_policy_harms_its_model_only(hostile_repository, cases, policy):
    repository, registry = hostile_repository
    write_atomically(repository / "digits" / "2" / "card.json", json.dumps(CARD))  # both versions load
    text = policy if isinstance(policy, str) and policy.startswith("[") else json.dumps(policy)
    write_atomically(repository / "digits" / "version_policy.json", text)
    registry.refresh()
    try:
        wanted = VersionPolicy.parse(text)
    except ValueError:  # refused: the policy in force (the default) stays
        problem = registry.state.problems["digits"]
        assert "\n" not in problem and len(problem) <= 400
        wanted = ALL
    expected = []
    for version in (2, 1):  # highest first, as the registry counts them
        if wanted.admits(version, len(expected)):
            expected.append(version)
    assert sorted(registry.state.models.get("digits", {})) == sorted(expected)
    for name in ("demand", "digits-binary"):
        assert registry.get(name).version == 1
    (repository / "digits" / "version_policy.json").unlink()
    registry.refresh()
    assert_only_that_version_was_harmed(registry, cases)
