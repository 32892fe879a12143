"""Packaging: every Python package under node/ and controller/ ships in a non-editable install.

Edge case covered: a new subpackage that is importable in the work tree (editable install)
but missing from pyproject's explicit package list, which a normal install would lose.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    present = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("node", "controller")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert present - listed == set(), "add these to [tool.setuptools] packages"


def test_console_script_points_at_the_cli() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["scripts"]["kvmtimer"] == "node.process.console:main"
