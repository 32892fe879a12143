"""The `kvmtimer` command line: `node`, `controller`, `up` and the client commands.

Subcommands load lazily: `kvmtimer COMMAND` imports the modules of COMMAND only, so a
`kvmtimer node` process loads no controller module but this one (tests/e2e/test_process_imports.py).
The other commands appear in the parser as bare names with their help line, which is all
`kvmtimer --help` and argparse's "invalid choice" message show.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Kept here (not in controller.cli.client) so `kvmtimer --help` imports no gRPC module.
EXIT_CODES_HELP = (
    "exit codes of the client commands: 0 success, 1 migration FAILED, 2 bad usage or refused "
    "by the controller, 3 controller unreachable, 4 other gRPC error (reason on stderr)"
)

Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its help line and where its options and `func` come from."""

    help: str  # one line in `kvmtimer --help`
    module: str  # imported only when this command is parsed
    configure: str  # in `module`: a function(parser), or a mapping name -> function(parser)


def _configure_up(p: argparse.ArgumentParser) -> None:
    from controller.cli import up
    from controller.cli.up.settings import UpSettings
    from node.runtime.settings import command

    p.description = up.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    up.add_up_arguments(p)
    p.set_defaults(func=command(UpSettings, up.run))


def _configure_node(p: argparse.ArgumentParser) -> None:
    from node.process import main as node_main

    p.description = node_main.__doc__
    node_main.add_node_arguments(p)
    p.set_defaults(func=node_main.run_command)


def _configure_controller(p: argparse.ArgumentParser) -> None:
    from controller.app import main as controller_main

    p.description = controller_main.__doc__
    controller_main.add_controller_arguments(p)
    p.set_defaults(func=controller_main.run_command)


def _configure_certs(p: argparse.ArgumentParser) -> None:
    from controller.cli import certs
    from node.runtime.settings import command

    p.description = certs.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    certs.add_certs_arguments(p)
    p.set_defaults(func=command(certs.CertsSettings, certs.run))


_CLIENT = "controller.cli.client"
_TELEMETRY = "controller.cli.telemetry"
COMMANDS: dict[str, Command] = {
    "up": Command("run a local demo cluster and keep migrating guests", __name__, "_configure_up"),
    "node": Command("serve one emulated arm64 KVM host", __name__, "_configure_node"),
    "controller": Command(
        "serve the controller (inventory, guests, migrations)", __name__, "_configure_controller"
    ),
    "certs": Command("generate a CA and mTLS certificates", __name__, "_configure_certs"),
    "nodes": Command("list the controller's nodes", _CLIENT, "CONFIGURE"),
    "guests": Command("list guests", _CLIENT, "CONFIGURE"),
    "migrations": Command("list migration records", _CLIENT, "CONFIGURE"),
    "create-guest": Command("create and start a guest", _CLIENT, "CONFIGURE"),
    "destroy-guest": Command("destroy a guest", _CLIENT, "CONFIGURE"),
    "migrate": Command("live-migrate a guest and wait for the end", _CLIENT, "CONFIGURE"),
    "watch": Command(
        "live telemetry of the cluster (vCPU samples, migrations, node health)", _TELEMETRY, "CONFIGURE"
    ),
    "report": Command("plot guest counter minus ideal time across migrations (PNG)", _TELEMETRY, "CONFIGURE"),
}
"""Every subcommand in `kvmtimer --help` order."""

ALL = None  # build_parser(): every command with its options (settings table, tests)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Import command `name`'s module and let it add its options and `func` to `parser`."""
    command = COMMANDS[name]
    target = getattr(importlib.import_module(command.module), command.configure)
    (target[name] if isinstance(target, dict) else target)(parser)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(only: str | None = ALL) -> argparse.ArgumentParser:
    """The `kvmtimer` parser; with `only`, the other commands are bare names (nothing imported)."""
    parser = argparse.ArgumentParser(
        prog="kvmtimer",
        description="arm64 KVM counter/timer cluster emulator",
        epilog=EXIT_CODES_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        if only is ALL or name == only:
            configure(name, p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = command_of(argv)
    args = build_parser(chosen if chosen in COMMANDS else "").parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
