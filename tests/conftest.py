"""Shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check values, not speed (speed lives in tests/bench): no per-example deadline,
# which a shared, loaded machine exceeds at random (a first example taking 0.5 s, the rerun
# 30 ms, failed the whole suite as FlakyFailure). Tests may still set their own.
settings.register_profile("kvmtimer", deadline=None)
settings.load_profile("kvmtimer")


@pytest.fixture(autouse=True)
def _own_controller_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every controller process a test starts gets a fresh state file of its own (KVMTIMER_STATE),
    never the user's default one, also when a test hands a process an environment without the
    KVMTIMER_* variables (the default then lies under this test's XDG_STATE_HOME)."""
    directory = tmp_path_factory.mktemp("state")
    path: Path = directory / "controller.db"
    monkeypatch.setenv("KVMTIMER_STATE", str(path))
    monkeypatch.setenv("XDG_STATE_HOME", str(directory / "xdg"))
    yield
