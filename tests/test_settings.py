"""The declarations of the settings (service/settings.py): every type converted, every rule kept."""

from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_type_hints

import pytest

from service import settings
from service.settings import Settings, setting


def test_every_setting_is_declared_with_a_converter_for_its_type():
    kinds = get_type_hints(Settings)
    for field in fields(Settings):
        assert kinds[field.name] in settings.CONVERTERS, field.name
        assert field.metadata["declaration"].doc, field.name


def test_a_setting_of_a_type_without_a_converter_is_refused_with_its_name():
    @dataclass(frozen=True)
    class Broken:
        ratio: complex = setting(1j, "a type that no setting has")
        plain: int = 3

    with pytest.raises(TypeError) as error:
        settings.converters(Broken)
    assert "ratio (no converter for <class 'complex'>" in str(error.value)
    assert "plain (declare it with setting())" in str(error.value)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("SERVING_MAX_BATCH", "0", "setting SERVING_MAX_BATCH='0' must be a positive integer"),
    ("SERVING_POLL_INTERVAL", "-1", "setting SERVING_POLL_INTERVAL='-1' must be 0 or a positive integer"),
    ("SERVING_PUBLIC_HEALTH", "maybe", "setting SERVING_PUBLIC_HEALTH='maybe' must be true or false"),
    ("SERVING_LOG_LEVEL", "Loud", "setting SERVING_LOG_LEVEL='Loud' must be one of debug, info, "
                                  "warning, error, critical"),
    ("SERVING_GRPC_BIND", "8081", "setting SERVING_GRPC_BIND='8081' must be HOST:PORT"),
    ("SERVING_CORS_ORIGINS", "https://a.example, HTTP://B.example/page",  # the item at fault
     "setting SERVING_CORS_ORIGINS='http://b.example/page' must be exact origins"),
    ("SERVING_VERSION_POLICY", '{"latest": 0}', """setting SERVING_VERSION_POLICY='{"latest": 0}' must be"""),
])
def test_a_refused_value_is_named_with_what_the_setting_takes(variable, value, message):
    with pytest.raises(ValueError) as error:
        Settings.load(environ={variable: value})
    assert str(error.value).startswith(message)


def test_the_grpc_limits():
    assert (Settings().grpc_max_calls, Settings().grpc_max_streams) == (256, 16)
    assert Settings.load({"grpc_max_streams": "4"}, environ={"SERVING_GRPC_MAX_CALLS": "64"}) \
        == Settings(grpc_max_calls=64, grpc_max_streams=4)


# --- docs/settings.md, written from the declarations ---------------------------------------------

def test_docs_settings_md_is_what_the_declarations_write():
    page = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    assert page.read_text() == settings.markdown(), \
        "docs/settings.md is stale: run `python -m service.settings --markdown > docs/settings.md`"


@pytest.mark.parametrize("field", [field for field in fields(Settings)
                                   if not field.metadata["declaration"].shown], ids=lambda f: f.name)
def test_a_default_as_the_table_writes_it_is_the_default(field):
    assert Settings.load(environ={settings.variable(field): settings.written(field)}) == Settings()


def test_the_table_has_every_setting_and_marks_the_launchers():
    rows = [line for line in settings.markdown().splitlines() if line.startswith("| `SERVING_")]
    assert [row.split("`")[1] for row in rows] == [settings.variable(field) for field in fields(Settings)]
    launchers = [row for row in rows if "set by the launcher" in row]
    assert [row.split(" | ")[:2] for row in launchers] == [["| `SERVING_BODY_FILES`", "unset"],
                                                           ["| `SERVING_HEALTH_FILES`", "unset"],
                                                           ["| `SERVING_RUN_SLOTS`", "unset"]]
