"""The `kvmtimer` console script's entry point.

A host process is node code only: `kvmtimer node` and `kvmtimer fleet` run their own
command (node.process.main / node.process.fleet) without loading any controller module.
Every other command belongs to the controller's command line (`controller.cli`), which is
imported by name, and only when one of those commands runs; it also builds `kvmtimer --help`
and the settings table, where the node commands appear with the same options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import cast

# Commands served by node code alone -> the module whose main(argv) runs them.
NODE_COMMANDS = {"node": "node.process.main", "fleet": "node.process.fleet"}
CONTROLLER_CLI = "controller.cli"  # everything else (imported by name: node never imports controller)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in NODE_COMMANDS:  # `kvmtimer node ...`: no option before the command
        entry = importlib.import_module(NODE_COMMANDS[argv[0]]).main
        return cast(Callable[[list[str]], int], entry)(argv[1:])
    cli = importlib.import_module(CONTROLLER_CLI)
    return cast(Callable[[list[str]], int], cli.main)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
