"""The two set-up commands: ``scripts/test`` installs what the README says it does, and
``scripts/demo`` reinstalls the package only when ``pyproject.toml`` changed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_names_every_debian_package_scripts_test_installs() -> None:
    packages = re.findall(r"missing\+=\(([\w.+-]+)\)", (ROOT / "scripts" / "test").read_text())
    assert {"nginx", "chromium", "golang-go"} <= set(packages), packages
    setup = readme_section("Set-up")
    for package in packages:
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", setup), package


def fake_checkout(tmp_path: Path) -> Path:
    """scripts/demo and pyproject.toml beside a .venv whose python only records its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >>{tmp_path / "calls"}\n')
    python.chmod(0o755)
    return tmp_path


def demo(checkout: Path, *args: str) -> list[str]:
    """Run the copied scripts/demo; return the python calls it made."""
    calls = checkout / "calls"
    calls.unlink(missing_ok=True)
    subprocess.run(
        ["bash", str(checkout / "scripts" / "demo"), *args],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return calls.read_text().splitlines()


def test_demo_installs_once_and_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    checkout = fake_checkout(tmp_path)
    first = demo(checkout, "--port", "9000")
    assert first[0].startswith("-m pip install"), first
    assert first[-1] == "-m clawproxy --demo --port 9000"
    # Nothing changed: straight to the gateway (an install took ~3.5 s of every start).
    assert demo(checkout, "--port", "9000") == ["-m clawproxy --demo --port 9000"]
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a new dependency\n")
    again = demo(checkout)
    assert again[0].startswith("-m pip install"), again
    assert demo(checkout) == ["-m clawproxy --demo"]
    # A failed install leaves no stamp behind: the next start tries again.
    (checkout / ".venv" / "bin" / "python").write_text(
        f'#!/bin/sh\necho "$*" >>{tmp_path / "calls"}\ncase "$*" in *pip*) exit 1;; esac\n'
    )
    pyproject.write_text(pyproject.read_text() + "\n# another\n")
    failed = subprocess.run(
        ["bash", str(checkout / "scripts" / "demo")], timeout=30, capture_output=True
    )
    assert failed.returncode != 0
    (checkout / ".venv" / "bin" / "python").write_text(
        f'#!/bin/sh\necho "$*" >>{tmp_path / "calls"}\n'
    )
    assert demo(checkout)[0].startswith("-m pip install")
