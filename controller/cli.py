"""The `kvmtimer` command line: `kvmtimer node`, and the controller commands."""

from __future__ import annotations

import argparse
import sys

from node import __main__ as node_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmtimer", description="arm64 KVM counter/timer cluster emulator")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node = sub.add_parser("node", help="serve one emulated arm64 KVM host", description=node_main.__doc__)
    node_main.add_node_arguments(node)
    node.set_defaults(func=node_main.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
