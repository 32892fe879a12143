"""The `kvmtimer` command line: `node`, `controller`, `up` and the client commands."""

from __future__ import annotations

import argparse
import sys

from controller import __main__ as controller_main
from controller import certs, client_cli, telemetry_cli, up
from node import __main__ as node_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmtimer",
        description="arm64 KVM counter/timer cluster emulator",
        epilog=client_cli.EXIT_CODES_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "up",
        help="run a local demo cluster and keep migrating guests",
        description=up.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_up_arguments(p)
    p.set_defaults(func=up.run)

    p = sub.add_parser("node", help="serve one emulated arm64 KVM host", description=node_main.__doc__)
    node_main.add_node_arguments(p)
    p.set_defaults(func=node_main.run)

    p = sub.add_parser(
        "controller",
        help="serve the controller (inventory, guests, migrations)",
        description=controller_main.__doc__,
    )
    controller_main.add_controller_arguments(p)
    p.set_defaults(func=controller_main.run)

    p = sub.add_parser("certs", help="generate a CA and mTLS certificates", description=certs.__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    certs.add_certs_arguments(p)
    p.set_defaults(func=certs.run)

    client_cli.add_client_commands(sub)
    telemetry_cli.add_telemetry_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
