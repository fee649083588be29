"""The optional compiled wheel: ``CLAWPROXY_MYPYC=1 pip install --no-build-isolation .``
compiles the modules listed in scripts/compiled-modules.txt with mypyc (mypy installed in
the same environment, and a C compiler). Without the variable, or where the build cannot
compile, this is the plain pure-Python package that pyproject.toml describes."""

import os
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("CLAWPROXY_MYPYC") == "1":
    from mypyc.build import mypycify

    listed = Path(__file__).parent / "scripts" / "compiled-modules.txt"
    lines = [line.strip() for line in listed.read_text().splitlines()]
    ext_modules = mypycify([f"clawproxy/{line}" for line in lines if line and line[0] != "#"])

setup(ext_modules=ext_modules)
