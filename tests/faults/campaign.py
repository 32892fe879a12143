"""Fault campaign: SIGKILL a victim at each migration step, restart it, check nothing was lost.

    python -m tests.faults.campaign [--runs N] [--steps S,...] [--victims V,...]

Real processes: two `kvmtimer node` processes (source `a`, destination `b`) and one
`kvmtimer controller` with its own state file, all on fixed loopback ports so a restarted
process comes back at the same address. For each step of the migration pipeline (prepare ...
cleanup) the controller runs in test mode with KVMTIMER_TEST_STOP_AT=STEP: it stops itself
(SIGSTOP) right after committing that step to its journal, before sending the step's command.
Each run then creates a guest on `a`, reads its counter from the node, starts a migration to
`b`, waits for the controller to stop and kills the victim with SIGKILL:

- controller: killed while stopped and started again on the same state file (recovery);
- source / destination: the node process is killed (a host crash: its VMs are gone), started
  again empty on the same port, and the controller continues (SIGCONT).

It waits until the cluster is consistent again (or a deadline) and checks the invariants against
the nodes' own ListVms and GetOneReg, never against the controller's word alone:
- every guest the controller lists as running has exactly one VM on the nodes, labelled with it,
  running, where the controller says; a lost guest has none; lost only when the victim was the
  host holding its only complete copy (the source before RESUME);
- no VM labelled by the controller is left that is no listed guest's (no orphan of ours);
- no migration is still in flight;
- the guest's counter is not behind the value read before the fault.

Before each run it waits until the controller sees both nodes healthy (a node the last fault
restarted is marked down until the controller's next health round answers): set-up, not a fault.
Prints a table victim x step: runs, rolled back, rolled forward, lost by host crash, violations,
and runs not started (the fault could not be set up: a set-up request refused, or the migration
ended before the watched step, because a node looked down; retried twice, then counted, and the
exit status is 1 if any);
`--runs N` runs every cell N times (6 steps x 3 victims x N faults). Goal: >= 1000 faults in one
run with 0 violations (`--runs 56` = 1008). tests/e2e/test_fault_campaign.py runs every cell once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc as pb_grpc

from controller.cli.views import table
from controller.core.machine import PIPELINE
from controller.core.migration import Step
from node.core.uapi import OneReg

VICTIMS = ("source", "destination", "controller")
STEPS = tuple(s.value for s in PIPELINE)
SETTLE_S = 30.0
START_S = 20.0
RPC_S = 10.0
TERMINAL = (cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kvmtimer(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *args]


def wait_until(predicate: object, what: str, timeout_s: float) -> object:
    """Poll `predicate()` until truthy (exceptions count as not yet); TimeoutError naming `what`."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (grpc.RpcError, OSError) as err:
            last = err
        time.sleep(0.02)
    raise TimeoutError(f"{what} within {timeout_s:g} s" + (f" (last error: {last})" if last else ""))


@dataclass
class Proc:
    """One kvmtimer process, logs appended to a file."""

    args: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, stdout=subprocess.DEVNULL, stderr=out, env={**os.environ, **self.env}
            )

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait()

    def terminate(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def stopped(self) -> bool:
        """The process stopped itself (SIGSTOP): state T in /proc."""
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.args[3]} exited with {self.popen.returncode} (log: {self.log})")
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "T"


class NotInjected(Exception):
    """The run's fault could not be set up (its migration ended before the watched step)."""


@dataclass
class Cell:
    runs: int = 0
    rolled_back: int = 0
    rolled_forward: int = 0
    lost: int = 0
    errors: int = 0  # runs that could not complete (counted as violations too)
    violations: int = 0
    notes: list[str] = field(default_factory=list)


class Campaign:
    """Two node processes and a controller; one fault per run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {"a": free_port(), "b": free_port()}
        self.controller_port = free_port()
        self.state = workdir / "controller.db"
        self.nodes = {
            n: Proc(
                kvmtimer("node", "--listen", f"127.0.0.1:{p}", "--node-id", n, "--log-level", "warning"),
                workdir / f"node-{n}.log",
                {},
            )
            for n, p in self.ports.items()
        }
        self.controller: Proc | None = None
        self.channels: list[grpc.Channel] = []
        self.stub = cpb_grpc.ControllerStub(self._channel(self.controller_port))
        self.node_stubs = {n: pb_grpc.NodeStub(self._channel(p)) for n, p in self.ports.items()}
        self.counter = 0
        self.injected = False  # the current run's fault was injected

    def _channel(self, port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)],
        )
        self.channels.append(channel)
        return channel

    # --- processes -------------------------------------------------------------------------

    def start_node(self, node_id: str) -> None:
        self.nodes[node_id].start()
        stub = self.node_stubs[node_id]
        wait_until(
            lambda: stub.GetHostInfo(pb.GetHostInfoRequest(), timeout=1), f"node {node_id} up", START_S
        )

    def start_controller(self, step: str | None) -> None:
        """Start the controller; with `step`, in test mode stopping itself at that step."""
        args = kvmtimer(
            "controller",
            "--listen",
            f"127.0.0.1:{self.controller_port}",
            "--state",
            str(self.state),
            "--health-interval",
            "0.2",
            "--log-level",
            "warning",
            *(f"--node={n}=127.0.0.1:{p}" for n, p in self.ports.items()),
        )
        env = {"KVMTIMER_TEST_MODE": "1", "KVMTIMER_TEST_STOP_AT": step} if step else {}
        self.controller = Proc(args, self.workdir / "controller.log", env)
        self.controller.start()
        wait_until(
            lambda: len(self.stub.ListNodes(cpb.ListNodesRequest(), timeout=1).nodes) == 2,
            "controller up with both nodes",
            START_S,
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[Campaign]:
        try:
            for n in self.nodes:
                self.start_node(n)
            yield self
        finally:
            if self.controller is not None:
                self.controller.terminate()
            for proc in self.nodes.values():
                proc.terminate()
            for channel in self.channels:
                channel.close()

    # --- one run -----------------------------------------------------------------------------

    def vm_counter(self, node_id: str, vm_id: str) -> int:
        reg = pb.GetOneRegRequest(vm_id=vm_id, vcpu_index=0, reg_id=int(OneReg.TIMER_CNT))
        return int(self.node_stubs[node_id].GetOneReg(reg, timeout=RPC_S).value)

    def nodes_healthy(self) -> bool:
        """The controller sees both nodes up (what the next fault's set-up requests need)."""
        nodes = self.stub.ListNodes(cpb.ListNodesRequest(), timeout=RPC_S).nodes
        return len(nodes) == len(self.ports) and all(n.healthy for n in nodes)

    def one(self, victim: str, step: str) -> tuple[str, list[str]]:
        """One fault; (outcome, violations)."""
        assert self.controller is not None
        # Set-up: a node the last fault restarted may still be marked down (until the
        # controller's next health round answers): wait for it, never count it as a fault.
        wait_until(self.nodes_healthy, "both nodes healthy on the controller", SETTLE_S)
        created: cpb.Guest = self.stub.CreateGuest(
            cpb.CreateGuestRequest(vcpus=1, node_id="a"), timeout=RPC_S
        )
        before = self.vm_counter("a", created.vm_id)
        controller = self.controller
        self.counter += 1
        migration = cpb.Migration(migration_id=f"fault-{self.counter}-{created.guest_id}")
        try:
            request = cpb.MigrateRequest(
                guest_id=created.guest_id, destination="b", migration_id=migration.migration_id
            )
            self.stub.Migrate(request, timeout=RPC_S)
        except grpc.RpcError as err:
            # Stopping itself at PREPARE, the controller may not have sent its reply yet: the
            # migration exists (its id is ours), and the fault goes on.
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED or not controller.stopped():
                raise

        def stopped_or_ended() -> str | None:
            if controller.stopped():
                return "stopped"
            ask = cpb.GetMigrationRequest(migration_id=migration.migration_id)
            m = self.stub.GetMigration(ask, timeout=1)
            return f"ended: {m.reason}" if m.phase in TERMINAL else None

        reached = wait_until(stopped_or_ended, f"controller stopped at {step}", START_S)
        if reached != "stopped":
            # Refused before its journal started (a node seen down): nothing was injected.
            self.stub.DestroyGuest(cpb.DestroyGuestRequest(guest_id=created.guest_id), timeout=RPC_S)
            raise NotInjected(f"migration {migration.migration_id} {reached} before {step}")
        self.injected = True
        if victim == "controller":
            self.controller.kill()
            self.start_controller(step)
        else:
            node = "a" if victim == "source" else "b"
            self.nodes[node].kill()
            self.start_node(node)
            assert self.controller.popen is not None
            self.controller.popen.send_signal(signal.SIGCONT)
        try:
            problems = wait_until(
                lambda: self.consistent(created.guest_id, migration.migration_id) == [] or None,
                "consistent again",
                SETTLE_S,
            )
            assert problems
            problems = []
        except TimeoutError:
            problems = self.consistent(created.guest_id, migration.migration_id) or ["timeout"]
        guest: cpb.Guest = self.stub.GetGuest(cpb.GetGuestRequest(guest_id=created.guest_id), timeout=RPC_S)
        if guest.state == cpb.GUEST_STATE_LOST:
            outcome = "lost"
            if not (victim == "source" and Step(step) not in (Step.RESUME, Step.CLEANUP)):
                problems.append(f"{guest.guest_id} lost although a complete copy survived")
        else:
            outcome = "rolled_back" if guest.node_id == "a" else "rolled_forward"
            after = self.vm_counter(guest.node_id, guest.vm_id)
            if after < before:
                problems.append(f"{guest.guest_id} counter went back: {before} -> {after}")
        self.stub.DestroyGuest(cpb.DestroyGuestRequest(guest_id=created.guest_id), timeout=RPC_S)
        return outcome, problems

    def one_with_retries(self, victim: str, step: str, attempts: int = 3) -> tuple[str, list[str]]:
        """`one`, set up again when its fault could not be set up (nothing was injected then)."""
        for attempt in range(attempts):
            try:
                return self.one(victim, step)
            except NotInjected:
                if attempt == attempts - 1:
                    raise
            except grpc.RpcError as err:
                # Only a refused set-up request (a node seen down) comes before the fault.
                refused = err.code() == grpc.StatusCode.FAILED_PRECONDITION and "is down" in (
                    err.details() or ""
                )
                if not refused or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def consistent(self, guest_id: str, migration_id: str) -> list[str]:
        """Invariant violations now ([] = consistent), from the nodes' own lists."""
        problems: list[str] = []
        m: cpb.Migration = self.stub.GetMigration(
            cpb.GetMigrationRequest(migration_id=migration_id), timeout=RPC_S
        )
        if m.phase not in TERMINAL:
            problems.append(f"migration {migration_id} still in flight ({m.journal_step})")
        guests = {g.guest_id: g for g in self.stub.ListGuests(cpb.ListGuestsRequest(), timeout=RPC_S).guests}
        labelled: dict[str, list[tuple[str, str, bool]]] = {}
        for node_id, stub in self.node_stubs.items():
            for vm in stub.ListVms(pb.ListVmsRequest(), timeout=RPC_S).vms:
                labelled.setdefault(vm.owner.guest_id, []).append((node_id, vm.vm_id, vm.running))
        for gid, g in guests.items():
            copies = labelled.pop(gid, [])
            if g.migrating:
                problems.append(f"{gid} still migrating")
            elif g.state == cpb.GUEST_STATE_RUNNING:
                if copies != [(g.node_id, g.vm_id, True)]:
                    problems.append(f"{gid} should run once at {g.node_id}/{g.vm_id}: {copies}")
            elif g.state == cpb.GUEST_STATE_LOST:
                if copies:
                    problems.append(f"lost {gid} still has VMs {copies}")
            else:
                problems.append(f"{gid} in state {g.state}")
        for gid, copies in labelled.items():
            problems.append(f"VMs of {gid or 'no guest'} that no listed guest owns: {copies}")
        if guest_id not in guests:
            problems.append(f"{guest_id} not listed")
        return problems


def run_campaign(
    runs: int,
    steps: tuple[str, ...] = STEPS,
    victims: tuple[str, ...] = VICTIMS,
    *,
    workers: int = 1,
    verbose: bool = True,
) -> dict[tuple[str, str], Cell]:
    """Every victim x step `runs` times; the table's cells. `workers` independent clusters
    (own processes, ports and state files) share the steps between them."""
    cells = {(v, s): Cell() for v in victims for s in steps}
    groups = [steps[i::workers] for i in range(max(1, min(workers, len(steps))))]
    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        for done in [pool.submit(_worker, group, runs, victims, cells, verbose) for group in groups]:
            done.result()
    return cells


def _worker(
    steps: tuple[str, ...],
    runs: int,
    victims: tuple[str, ...],
    cells: dict[tuple[str, str], Cell],
    verbose: bool,
) -> None:
    with tempfile.TemporaryDirectory(prefix="kvmtimer-faults-") as tmp:
        campaign = Campaign(Path(tmp))
        with campaign.running():
            for step in steps:
                if campaign.controller is not None:
                    campaign.controller.terminate()
                campaign.start_controller(step)
                for n in range(runs):
                    for victim in victims:
                        cell = cells[(victim, step)]
                        try:
                            outcome, problems = campaign.one_with_retries(victim, step)
                        except (grpc.RpcError, TimeoutError, RuntimeError, NotInjected) as err:
                            # Counted, never hidden: a run that could not set its fault up (a
                            # request refused while a starved node looked down) is an error.
                            cell.errors += 1
                            cell.notes.append(f"run failed: {err!r}"[:300])
                            # A controller left stopped (or stuck) would fail every later run:
                            # start it again (recovery settles what the failed run left).
                            if campaign.controller is not None:
                                campaign.controller.terminate()
                            campaign.start_controller(step)
                            if verbose:
                                print(f"ERROR {victim} at {step} (run {n + 1}): {err!r}"[:300], flush=True)
                            continue
                        cell.runs += 1
                        setattr(cell, outcome, getattr(cell, outcome) + 1)
                        if problems:
                            cell.violations += 1
                            cell.notes.extend(problems)
                            if verbose:
                                print(f"VIOLATION {victim} at {step} (run {n + 1}): {problems}", flush=True)
                if verbose:
                    print(f"  {step}: {runs * len(victims)} faults done", file=sys.stderr, flush=True)
                    print(report(cells), file=sys.stderr, flush=True)


def report(cells: dict[tuple[str, str], Cell]) -> str:
    rows = [
        (victim, step, c.runs, c.rolled_back, c.rolled_forward, c.lost, c.violations, c.errors)
        for (victim, step), c in cells.items()
    ]
    total = Cell(
        runs=sum(c.runs for c in cells.values()),
        rolled_back=sum(c.rolled_back for c in cells.values()),
        rolled_forward=sum(c.rolled_forward for c in cells.values()),
        lost=sum(c.lost for c in cells.values()),
        violations=sum(c.violations for c in cells.values()),
        errors=sum(c.errors for c in cells.values()),
    )
    rows.append(
        (
            "all",
            "all",
            total.runs,
            total.rolled_back,
            total.rolled_forward,
            total.lost,
            total.violations,
            total.errors,
        )
    )
    headers = ("VICTIM", "STEP", "RUNS", "ROLLED BACK", "ROLLED FORWARD", "LOST (HOST CRASH)", "VIOLATIONS")
    text = table((*headers, "NOT STARTED"), rows)
    goal = total.runs >= 1000 and total.violations == 0
    return (
        f"{text}\n\ngoal: >= 1000 faults, 0 violations: {'MET' if goal else 'NOT MET'} ({total.runs} faults)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.campaign", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=1, help="faults per victim x step (default 1)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps (default all)")
    parser.add_argument("--victims", default=",".join(VICTIMS), help="comma-separated victims (default all)")
    parser.add_argument("--workers", type=int, default=1, help="independent clusters in parallel (default 1)")
    args = parser.parse_args(argv)
    steps = tuple(s for s in args.steps.split(",") if s)
    victims = tuple(v for v in args.victims.split(",") if v)
    for s in steps:
        Step(s)
    if not set(victims) <= set(VICTIMS):
        parser.error(f"victims are {', '.join(VICTIMS)}")
    started = time.monotonic()
    cells = run_campaign(args.runs, steps, victims, workers=args.workers)
    print(report(cells))
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 1 if any(c.violations or c.errors for c in cells.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
