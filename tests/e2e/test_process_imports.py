"""What a process imports: a `kvmtimer node` process loads no controller module, and the console
script imports only the command it runs.

Edge cases: the node serves (first SERVING reached) and stops on SIGTERM before its modules are
listed, so lazily imported modules count too; the console script's entry (node.process.console)
runs `kvmtimer node` and `kvmtimer fleet` without any controller module, `python -m node` too;
`python -m controller.cli node` loads only that dispatcher of the controller; none loads the MQTT
client, DNS, X.509 or plotting libraries without the options that need them; `kvmtimer --help`
imports no gRPC; each client command leaves the node, controller and `up` modules unloaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nodes import wait_for_log_event

pytestmark = pytest.mark.e2e

# Runs ENTRY (a module's main) with ARGV, then writes sys.modules as JSON to OUT at exit.
DUMP = """
import atexit, importlib, json, sys
out, entry, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
module, _, func = entry.partition(":")
try:
    code = getattr(importlib.import_module(module), func)(argv)
except SystemExit as stop:
    code = stop.code
sys.exit(code)
"""

CONSOLE_SCRIPT = "node.process.console:main"  # [project.scripts] kvmtimer
HEAVY_UNUSED = ("aiomqtt", "paho", "dns", "cryptography", "amqtt", "matplotlib", "yaml")


def modules_of_serving_node(tmp_path: Path, entry: str, command: str = "node") -> set[str]:
    out = tmp_path / "modules.json"
    argv = ["--listen", "127.0.0.1:0", "--clock", "simulated"]
    if command == "fleet":
        argv = ["--hosts", "3", "--clock", "simulated"]
    if entry in ("controller.cli:main", CONSOLE_SCRIPT):
        argv = [command, *argv]
    proc = subprocess.Popen(
        [sys.executable, "-c", DUMP, str(out), entry, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_log_event(proc, "node_listening")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    return set(json.loads(out.read_text()))


def modules_after(tmp_path: Path, argv: list[str]) -> set[str]:
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", DUMP, str(out), CONSOLE_SCRIPT, *argv],
        stdout=subprocess.DEVNULL,
        check=False,
        timeout=60,
    )
    return set(json.loads(out.read_text()))


def roots(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


def test_console_script_is_the_entry_these_tests_run() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'kvmtimer = "{CONSOLE_SCRIPT}"' in text


@pytest.mark.parametrize("command", ["node", "fleet"])
def test_kvmtimer_node_and_fleet_load_no_controller_module(tmp_path: Path, command: str) -> None:
    modules = modules_of_serving_node(tmp_path, CONSOLE_SCRIPT, command)
    assert "controller" not in roots(modules)
    assert f"node.process.{'main' if command == 'node' else 'fleet'}" in modules
    assert "node.service.servicer" in modules
    assert roots(modules).isdisjoint(HEAVY_UNUSED)


def test_controller_cli_node_loads_only_its_dispatcher(tmp_path: Path) -> None:
    modules = modules_of_serving_node(tmp_path, "controller.cli:main")
    assert {m for m in modules if m.split(".")[0] == "controller"} == {"controller", "controller.cli"}
    assert "node.process.main" in modules and "node.service.servicer" in modules
    assert roots(modules).isdisjoint(HEAVY_UNUSED)


def test_kvmtimer_fleet_loads_only_the_dispatcher_of_controller(tmp_path: Path) -> None:
    modules = modules_of_serving_node(tmp_path, "controller.cli:main", "fleet")
    assert {m for m in modules if m.split(".")[0] == "controller"} == {"controller", "controller.cli"}
    assert "node.process.fleet" in modules and "node.service.driver" in modules
    assert roots(modules).isdisjoint(HEAVY_UNUSED)


def test_python_m_node_loads_no_controller_module(tmp_path: Path) -> None:
    modules = modules_of_serving_node(tmp_path, "node.process.main:main")
    assert "controller" not in roots(modules)
    assert roots(modules).isdisjoint(HEAVY_UNUSED)


def test_top_level_help_imports_no_command(tmp_path: Path) -> None:
    modules = modules_after(tmp_path, ["--help"])
    assert "grpc" not in roots(modules)
    ours = {m for m in modules if m.startswith(("controller", "node"))}
    assert ours == {"controller", "controller.cli", "node", "node.process", "node.process.console"}


@pytest.mark.parametrize(
    ("argv", "loaded", "not_loaded"),
    [
        (
            ["nodes", "--help"],
            "controller.cli.client",
            ("node.process.main", "controller.app", "controller.cli.up"),
        ),
        (
            ["watch", "--help"],
            "controller.cli.telemetry",
            ("node.process.main", "controller.app", "controller.cli.up"),
        ),
        (
            ["certs", "--help"],
            "controller.cli.certs",
            ("node.process.main", "controller.app", "controller.cli.client"),
        ),
        (
            ["controller", "--help"],
            "controller.app.main",
            ("node.process.main", "controller.cli.up", "controller.cli.client"),
        ),
    ],
)
def test_a_command_imports_only_its_own_modules(
    tmp_path: Path, argv: list[str], loaded: str, not_loaded: tuple[str, ...]
) -> None:
    modules = modules_after(tmp_path, argv)
    assert loaded in modules
    assert not {m for m in modules if m.startswith(not_loaded)}
