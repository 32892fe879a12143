"""Client commands of `kvmtimer`: talk to a running controller over gRPC.

`kvmtimer nodes|guests|migrations` list the cluster, `create-guest` / `destroy-guest`
manage guests, `migrate` moves one and waits for the end.

Exit codes: 0 success; 1 the migration ran and FAILED; 2 bad usage or a refusal by the
controller (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ABORTED, ...); 3 the
controller is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED); 4 any other gRPC error.
The reason (status code name and details) goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import views
from node.runtime import secret_files, settings, tls
from node.runtime.addr import host_port
from node.runtime.options import positive_int

ENV_CONTROLLER = "KVMTIMER_CONTROLLER"
DEFAULT_CONTROLLER = "127.0.0.1:7070"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MIGRATE_TIMEOUT_S = 300.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3
EXIT_ERROR = 4

UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True, slots=True)
class Connection:
    """The options every client command has: which controller, how to reach it, how long to wait."""

    command: str  # the subcommand (for messages)
    controller: str  # --controller HOST:PORT
    timeout: float | None  # --timeout seconds (None: the command's default)
    tls: tls.TlsOptions  # --tls-*, --insecure
    token: str | None  # --token
    config: str | None  # --config FILE


class ClientSettings(Protocol):
    """A client command's settings: its connection plus its own options."""

    @property
    def connection(self) -> Connection: ...


S = TypeVar("S", bound=ClientSettings)


@dataclass(frozen=True, slots=True)
class NodesSettings:
    connection: Connection
    output: str  # --output table | json


@dataclass(frozen=True, slots=True)
class GuestsSettings:
    connection: Connection
    output: str  # --output table | json
    observations: bool  # --observations: ask each guest's node what it observed


@dataclass(frozen=True, slots=True)
class MigrationsSettings:
    connection: Connection
    output: str  # --output table | json
    guest: str | None  # --guest: only this guest's migrations


@dataclass(frozen=True, slots=True)
class CreateGuestSettings:
    connection: Connection
    output: str  # --output table | json
    id: str | None  # --id (None: the controller picks one)
    vcpus: int  # --vcpus
    node: str | None  # --node (None: least loaded)
    period_ticks: int | None  # --period-ticks (None: the default)
    ptimer: bool  # --ptimer


@dataclass(frozen=True, slots=True)
class DestroyGuestSettings:
    connection: Connection
    output: str  # --output table | json
    guest: str  # GUEST


@dataclass(frozen=True, slots=True)
class MigrateSettings:
    connection: Connection
    output: str  # --output table | json
    guest: str  # GUEST
    to: str | None  # --to NODE (None: the controller picks one)
    method: str  # --method: a MigrationMethod name without prefix
    id: str | None  # --id: client-chosen migration id
    allow_state_loss: bool  # --allow-state-loss: move even if a pre-6.4 kernel loses ptimer state


def exit_code_for(code: grpc.StatusCode) -> int:
    if code in UNREACHABLE_CODES:
        return EXIT_UNREACHABLE
    if code in REFUSAL_CODES:
        return EXIT_REFUSED
    return EXIT_ERROR


def error(command: str, message: str) -> None:
    print(f"kvmtimer {command}: {message}", file=sys.stderr)


@contextmanager
def controller_stub(
    address: str, files: tls.TlsFiles | None = None, token: str | None = None, server_name: str | None = None
) -> Iterator[cpb_grpc.ControllerStub]:
    """A stub over mutual TLS when `files` is given, sending `token` as a bearer token."""
    with tls.sync_channel(address, files, token, server_name=server_name) as channel:
        yield cpb_grpc.ControllerStub(channel)


def run_client(command: Callable[[S, cpb_grpc.ControllerStub], int]) -> Callable[[S], int]:
    """Open a channel to --controller, run the command, turn any gRPC error into an exit code."""

    def run(args: S) -> int:
        c = args.connection
        try:
            files = c.tls.files()
            tls.check_plaintext_allowed(c.controller, files, c.tls.insecure, what="controller")
        except tls.TlsConfigError as err:
            error(c.command, str(err))
            return EXIT_REFUSED
        try:
            with controller_stub(c.controller, files, c.token, c.tls.tls_server_name) as stub:
                return command(args, stub)
        except grpc.RpcError as err:
            if not isinstance(err, grpc.Call):
                error(c.command, f"gRPC error: {err}")
                return EXIT_ERROR
            code = err.code()
            where = f" (controller {c.controller})" if code in UNREACHABLE_CODES else ""
            error(c.command, f"{code.name}: {err.details() or 'no details'}{where}")
            return exit_code_for(code)

    return run


def timeout(args: ClientSettings, default: float = DEFAULT_TIMEOUT_S) -> float:
    t = args.connection.timeout
    return float(t) if t is not None else default


def json_mode(output: str) -> bool:
    return output == "json"


# --- commands ----------------------------------------------------------------


def cmd_nodes(args: NodesSettings, stub: cpb_grpc.ControllerStub) -> int:
    resp: cpb.ListNodesResponse = stub.ListNodes(cpb.ListNodesRequest(), timeout=timeout(args))
    print(views.to_json(resp) if json_mode(args.output) else views.nodes_table(resp.nodes))
    return EXIT_OK


def cmd_guests(args: GuestsSettings, stub: cpb_grpc.ControllerStub) -> int:
    resp: cpb.ListGuestsResponse = stub.ListGuests(cpb.ListGuestsRequest(), timeout=timeout(args))
    if args.observations:
        detailed = cpb.ListGuestsResponse()
        for g in resp.guests:
            full: cpb.Guest = stub.GetGuest(cpb.GetGuestRequest(guest_id=g.guest_id), timeout=timeout(args))
            detailed.guests.append(full)
        resp = detailed
    if json_mode(args.output):
        print(views.to_json(resp))
        return EXIT_OK
    nodes: cpb.ListNodesResponse = stub.ListNodes(cpb.ListNodesRequest(), timeout=timeout(args))
    down = {n.node_id for n in nodes.nodes if not n.healthy}
    print(views.guests_table(resp.guests, observations=args.observations, down=down))
    return EXIT_OK


def cmd_migrations(args: MigrationsSettings, stub: cpb_grpc.ControllerStub) -> int:
    resp: cpb.ListMigrationsResponse = stub.ListMigrations(
        cpb.ListMigrationsRequest(guest_id=args.guest or ""), timeout=timeout(args)
    )
    print(views.to_json(resp) if json_mode(args.output) else views.migrations_table(resp.migrations))
    return EXIT_OK


def default_period_ticks(args: CreateGuestSettings, stub: cpb_grpc.ControllerStub) -> int | None:
    """10 ms at the counter frequency of --node, or of every healthy node when they all agree."""
    nodes: cpb.ListNodesResponse = stub.ListNodes(cpb.ListNodesRequest(), timeout=timeout(args))
    frequencies = {n.cntfrq_hz for n in nodes.nodes if (n.node_id == args.node if args.node else n.healthy)}
    return frequencies.pop() // 100 if len(frequencies) == 1 else None


def cmd_create_guest(args: CreateGuestSettings, stub: cpb_grpc.ControllerStub) -> int:
    period = args.period_ticks
    if period is None and args.ptimer:
        # The controller's default workload (period 0) has no physical timer: pick the period here.
        period = default_period_ticks(args, stub)
        if period is None:
            error(
                args.connection.command,
                "cannot pick a default period (unknown node or mixed frequencies): give --period-ticks",
            )
            return EXIT_REFUSED
    request = cpb.CreateGuestRequest(
        guest_id=args.id or "",
        vcpus=args.vcpus,
        node_id=args.node or "",
        workload=pb.WorkloadSpec(period_ticks=period or 0, use_ptimer=args.ptimer),
    )
    guest: cpb.Guest = stub.CreateGuest(request, timeout=timeout(args))
    print(views.to_json(guest) if json_mode(args.output) else views.guests_table([guest]))
    return EXIT_OK


def cmd_destroy_guest(args: DestroyGuestSettings, stub: cpb_grpc.ControllerStub) -> int:
    stub.DestroyGuest(cpb.DestroyGuestRequest(guest_id=args.guest), timeout=timeout(args))
    if not json_mode(args.output):
        print(f"guest {args.guest} destroyed")
    else:
        print("{}")
    return EXIT_OK


def cmd_migrate(args: MigrateSettings, stub: cpb_grpc.ControllerStub) -> int:
    request = cpb.MigrateRequest(
        guest_id=args.guest,
        destination=args.to or "",
        method=views.method_value(args.method),
        migration_id=args.id or "",
        wait=True,
        allow_state_loss=args.allow_state_loss,
    )
    try:
        record: cpb.Migration = stub.Migrate(request, timeout=timeout(args, DEFAULT_MIGRATE_TIMEOUT_S))
    except KeyboardInterrupt:
        error(
            args.connection.command,
            "interrupted; the migration goes on in the controller (see `kvmtimer migrations`)",
        )
        return 130
    print(views.to_json(record) if json_mode(args.output) else views.migration_detail(record))
    if record.phase == cpb.MIGRATION_PHASE_SUCCEEDED:
        return EXIT_OK
    phase = views.phase_name(record.phase)
    error(
        args.connection.command,
        f"migration {record.migration_id} ended {phase}: {record.reason or 'no reason'}",
    )
    return EXIT_FAILED


# --- parser ------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    parser.add_argument(
        "--controller",
        type=host_port,
        default=os.environ.get(ENV_CONTROLLER) or DEFAULT_CONTROLLER,
        help=f"controller HOST:PORT (default: ${ENV_CONTROLLER}, else {DEFAULT_CONTROLLER})",
    )
    parser.add_argument("--timeout", type=float, default=None, help="RPC deadline in seconds")
    if output:
        parser.add_argument(
            "--output", "-o", choices=("table", "json"), default="table", help="table (default) or json"
        )
    tls.add_tls_arguments(parser, server=False)
    parser.add_argument(
        "--token", default=None, help="bearer token for the controller (prefer KVMTIMER_TOKEN)"
    )
    secret_files.add_file_option(parser, "token", "the bearer token")
    settings.add_config_argument(parser)
    settings.defer_defaults(parser, "client")  # the options above; a command's own options stay flags


def _method(value: str) -> str:
    name = value.upper().removeprefix("MIGRATION_METHOD_")
    if name not in views.METHOD_NAMES:
        raise argparse.ArgumentTypeError(
            f"invalid method {value!r} (choose from {', '.join(views.METHOD_NAMES)})"
        )
    return name


def _nodes(p: argparse.ArgumentParser) -> None:
    p.description = "List the nodes: features, health, load."
    _common(p)
    p.set_defaults(func=settings.command(NodesSettings, run_client(cmd_nodes)))


def _guests(p: argparse.ArgumentParser) -> None:
    p.description = "List the guests and where they run."
    _common(p)
    p.add_argument(
        "--observations",
        action="store_true",
        help="also ask each guest's node what the guest observed (min counter step, interrupts)",
    )
    p.set_defaults(func=settings.command(GuestsSettings, run_client(cmd_guests)))


def _migrations(p: argparse.ArgumentParser) -> None:
    p.description = "List migration records."
    _common(p)
    p.add_argument("--guest", help="only this guest's migrations")
    p.set_defaults(func=settings.command(MigrationsSettings, run_client(cmd_migrations)))


def _create_guest(p: argparse.ArgumentParser) -> None:
    p.description = "Create a guest (VM + vCPUs + timer workload) and start it."
    _common(p)
    p.add_argument("--id", help="guest id (default: the controller picks one)")
    p.add_argument("--vcpus", type=positive_int, default=1, help="vCPU count (default 1)")
    p.add_argument("--node", help="node to place it on (default: least loaded)")
    p.add_argument(
        "--period-ticks",
        type=positive_int,
        default=None,
        help="timer period in counter ticks (default: 10 ms at the node's frequency)",
    )
    p.add_argument("--ptimer", action="store_true", help="also arm the physical timer")
    p.set_defaults(func=settings.command(CreateGuestSettings, run_client(cmd_create_guest)))


def _destroy_guest(p: argparse.ArgumentParser) -> None:
    p.description = "Destroy a guest and its VM."
    _common(p)
    p.add_argument("guest", metavar="GUEST")
    p.set_defaults(func=settings.command(DestroyGuestSettings, run_client(cmd_destroy_guest)))


def _migrate(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Live-migrate GUEST and wait until the migration ends; print its record. "
        "Exit 0 when it SUCCEEDED, 1 when it FAILED (the guest stays on the source), "
        "2 when the controller refused it, 3 when the controller is unreachable."
    )
    _common(p)
    p.add_argument("guest", metavar="GUEST")
    p.add_argument("--to", metavar="NODE", help="destination node (default: the controller picks one)")
    p.add_argument(
        "--method",
        type=_method,
        default="AUTO",
        metavar="{" + ",".join(views.METHOD_NAMES) + "}",
        help="how guest time is carried over (default AUTO: the best both ends support)",
    )
    p.add_argument("--id", metavar="MIGRATION_ID", help="client-chosen id making the request idempotent")
    p.add_argument(
        "--allow-state-loss",
        action="store_true",
        help="move a guest that uses its physical timer even where a pre-6.4 kernel cannot carry its "
        "ptimer state (as QEMU would); the record lists what was not carried",
    )
    p.set_defaults(func=settings.command(MigrateSettings, run_client(cmd_migrate)))


CONFIGURE: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "nodes": _nodes,
    "guests": _guests,
    "migrations": _migrations,
    "create-guest": _create_guest,
    "destroy-guest": _destroy_guest,
    "migrate": _migrate,
}
"""Client command name -> what adds its options and sets its `func` (help: controller.cli)."""
