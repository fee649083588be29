"""The optional compiled build (``scripts/compile``): ``scripts/test`` runs the whole
suite on it too (``PYTHONPATH=build/compiled CLAWPROXY_EXPECT_COMPILED=1``), and this test
is what makes that run fail if the compiled modules were not the ones imported.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from conftest import COMPILED

LISTED = Path(__file__).resolve().parent.parent / "scripts" / "compiled-modules.txt"


def listed_modules() -> list[str]:
    lines = [line.strip() for line in LISTED.read_text().splitlines()]
    return ["clawproxy." + line[:-3].replace("/", ".") for line in lines if line and line[0] != "#"]


def test_every_listed_module_exists_and_is_typed_source() -> None:
    modules = listed_modules()
    assert modules
    for name in modules:
        path = Path(__file__).resolve().parent.parent / (name.replace(".", "/") + ".py")
        assert path.is_file(), name


@pytest.mark.skipif(
    os.environ.get("CLAWPROXY_EXPECT_COMPILED") != "1", reason="the pure-Python run"
)
def test_the_compiled_run_imports_the_compiled_modules() -> None:
    assert COMPILED
    for name in listed_modules():
        module = importlib.import_module(name)
        assert not (module.__file__ or "").endswith(".py"), module.__file__
