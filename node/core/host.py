"""One emulated arm64 host: its features, host counter and VMs (the /dev/kvm fd)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NewType

from node.core.clock import Clock, ClockEffects, HostCounter, ManualClock, RealtimeState
from node.core.errors import AlreadyExists, BadRequest, VmNotFound, WrongClockMode
from node.core.features import ClockMode, HostFeatures
from node.core.state import VmState
from node.core.timesync import CounterRecord, Credit, apply_record
from node.core.uapi import Cap
from node.core.vcpu import AccessKind, AccessResult, GuestOp, Vcpu
from node.core.vm import IrqLevel, Vm, check_u64

VmId = NewType("VmId", str)
NodeId = NewType("NodeId", str)
MAX_VM_ID_LEN = 128


@dataclass(frozen=True, slots=True)
class VmOwner:
    """Who created a VM: an opaque label the node keeps and lists, never interprets."""

    guest_id: str = ""  # the guest this VM runs
    migration_id: str = ""  # the migration that created it ("" = created for a new guest)
    generation: int = 0  # the guest's placement generation (+1 per migration)


def check_owner(owner: VmOwner) -> None:
    """BadRequest for labels a VM id could not hold either (same length and charset rule)."""
    for name, value in (("guest_id", owner.guest_id), ("migration_id", owner.migration_id)):
        if len(value) > MAX_VM_ID_LEN or not value.isprintable():
            raise BadRequest(f"owner.{name} must be at most {MAX_VM_ID_LEN} printable characters")
    check_u64(owner.generation, "owner.generation")


@dataclass(frozen=True, slots=True)
class RunResult:
    """Outcome of one client-driven KVM_RUN."""

    results: tuple[AccessResult, ...]  # one per op
    irq_levels: tuple[IrqLevel, ...]  # timer lines afterwards
    host_counter: int  # H when the run ended
    trap_count: int  # the vCPU's trap count afterwards


class Host:
    """The emulation core of one node. Pure: time comes from the injected clock."""

    def __init__(
        self,
        node_id: str,
        features: HostFeatures,
        clock: Clock,
        *,
        counter_base: int = 0,
        clock_mode: ClockMode = ClockMode.SIMULATED,
        clock_effects: ClockEffects | None = None,
    ) -> None:
        if clock_mode is ClockMode.SIMULATED and not isinstance(clock, ManualClock):
            raise WrongClockMode("simulated clock mode needs a ManualClock")
        self.node_id = NodeId(node_id)
        self.features = features
        self.clock_mode = clock_mode
        self.counter = HostCounter(clock, features.cntfrq_hz, counter_base, clock_effects)
        self.vms: dict[VmId, Vm] = {}
        self.owners: dict[VmId, VmOwner] = {}  # CreateVm's labels, listed by ListVms
        self._ids = itertools.count(1)
        self.retired_trap_count = 0  # traps taken by VMs since destroyed (host totals stay monotonic)
        self.guest_interrupts = 0  # guest timer interrupts delivered on this host so far

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 1 if supported, else 0 (never an error)."""
        supported = {
            Cap.ONE_REG: True,
            Cap.DEVICE_CTRL: True,
            Cap.ARM_VTIMER_OFFSET: self.features.has_vcpu_offsets,
            Cap.COUNTER_OFFSET: self.features.has_counter_offset_cap,
        }
        return int(supported.get(cap, False))  # type: ignore[call-overload]

    def vm(self, vm_id: str) -> Vm:
        try:
            return self.vms[VmId(vm_id)]
        except KeyError:
            raise VmNotFound(f"no vm {vm_id!r} on node {self.node_id!r}") from None

    def _new_vm_id(self, vm_id: str) -> VmId:
        if not vm_id:
            while (candidate := VmId(f"vm-{next(self._ids)}")) in self.vms:
                pass
            return candidate
        if len(vm_id) > MAX_VM_ID_LEN or not vm_id.isprintable():
            raise BadRequest(f"vm_id must be 1..{MAX_VM_ID_LEN} printable characters")
        if VmId(vm_id) in self.vms:
            raise AlreadyExists(f"vm {vm_id!r} already exists on node {self.node_id!r}")
        return VmId(vm_id)

    def create_vm(
        self, vm_id: str = "", *, userspace_irqchip: bool = False, owner: VmOwner | None = None
    ) -> Vm:
        """KVM_CREATE_VM; `owner` is kept with the VM and listed (EINVAL-free: a label only)."""
        owner = owner or VmOwner()
        check_owner(owner)
        new_id = self._new_vm_id(vm_id)
        vm = Vm(new_id, self.features, self.counter, userspace_irqchip=userspace_irqchip)
        self.vms[new_id] = vm
        self.owners[new_id] = owner
        return vm

    def owner(self, vm_id: str) -> VmOwner:
        """The label CreateVm was given (empty for VMs created without one)."""
        return self.owners.get(VmId(vm_id), VmOwner())

    def destroy_vm(self, vm_id: str) -> None:
        vm = self.vm(vm_id)
        self.retired_trap_count += sum(vcpu.trap_count for vcpu in vm.vcpus.values())
        del self.vms[VmId(vm_id)]
        self.owners.pop(VmId(vm_id), None)

    def restore_vm(self, state: VmState, vm_id: str = "") -> Vm:
        """Recreate a snapshotted VM on this host, offsets unchanged."""
        new_id = self._new_vm_id(vm_id or state.vm_id)
        vm = Vm.restore(state, self.features, self.counter)
        vm.vm_id = new_id
        self.vms[new_id] = vm
        return vm

    def get_clock(self) -> tuple[int, int]:
        """(host counter, this host's realtime ns) of one instant."""
        return self.counter.sample()

    def apply_counter_record(self, vm_id: str, record: CounterRecord, method: int) -> Credit:
        """Apply a paused source's counter record to this paused VM at one instant of this host."""
        return apply_record(self.vm(vm_id), record, method)

    def change_clock_effects(
        self, *, skew_ns: int | None = None, drift_ppm: float | None = None, step_ns: int = 0
    ) -> RealtimeState:
        """Deliberate realtime effects from now on (None: unchanged; step: a jump now).

        Only this host's idea of realtime moves; its counter runs on at CNTFRQ.
        """
        return self.counter.change_realtime(skew_ns=skew_ns, drift_ppm=drift_ppm, step_ns=step_ns)

    def step_clock(self, delta_ticks: int) -> int:
        """Advance a simulated host by `delta_ticks`, delivering guest timer interrupts on the way."""
        if self.clock_mode is not ClockMode.SIMULATED:
            raise WrongClockMode("StepClock needs a node in simulated clock mode")
        check_u64(delta_ticks, "delta_ticks")
        remaining = delta_ticks
        self.run_due_events()
        while (ticks := self.ticks_until_next_event()) is not None and ticks <= remaining:
            self.counter.step(ticks)
            remaining -= ticks
            self.run_due_events()
        return self.counter.step(remaining)

    def ticks_until_next_event(self) -> int | None:
        """Host ticks until some running guest takes a timer interrupt; None if no guest waits."""
        h = self.counter.read()
        waits = [t for vm in self.vms.values() if (t := vm.ticks_until_next_irq(h)) is not None]
        return min(waits, default=None)

    def run_due_events(self) -> int:
        """Deliver every guest timer interrupt due now; returns how many were taken."""
        return sum(self.run_vm_due_events(vm) for vm in self.vms.values())

    def run_vm_due_events(self, vm: Vm) -> int:
        """`run_due_events` for one VM of this host (a scheduler that tracks each VM's deadline)."""
        taken = vm.deliver_due_irqs()
        self.guest_interrupts += taken
        return taken

    def start_run(self, vm_id: str, index: int, ops: Sequence[GuestOp]) -> VcpuRun:
        """Enter a client-driven KVM_RUN that executes `ops` in order (see VcpuRun).

        Raises before anything runs: unknown VM/vCPU, malformed ops (BadRequest), VM
        resumed or vCPU already inside KVM_RUN (Busy), first-run checks.
        """
        vm = self.vm(vm_id)
        validate_ops(ops)
        vcpu = vm.enter_run(index)
        return VcpuRun(self, vm, vcpu, tuple(ops))

    def run_vcpu(self, vm_id: str, index: int, ops: Sequence[GuestOp]) -> RunResult:
        """One KVM_RUN executing `ops` in order, WAIT stepping the simulated clock.

        Precondition: no WAIT on a realtime host (WrongClockMode): only an adapter can sleep,
        through `start_run`.
        """
        if self.clock_mode is not ClockMode.SIMULATED and any(op.kind is AccessKind.WAIT for op in ops):
            self.vm(vm_id)  # unknown VM first, as before
            raise WrongClockMode("a wait op on a realtime node must be driven by the adapter")
        run = self.start_run(vm_id, index, ops)
        try:
            assert run.advance() is None  # simulated waits step the clock in the core
            return run.result()
        finally:
            run.close()

    def execute(self, vm: Vm, index: int, op: GuestOp) -> AccessResult:
        vcpu = vm.vcpu(index)
        if op.kind is AccessKind.READ:
            assert op.reg is not None
            return vm.guest_read(vcpu, op.reg)
        if op.kind is AccessKind.WRITE:
            assert op.reg is not None
            return vm.guest_write(vcpu, op.reg, op.value)
        return AccessResult(self.step_clock(op.value))

    def run_result(self, vm: Vm, index: int, results: tuple[AccessResult, ...]) -> RunResult:
        h = self.counter.read()
        return RunResult(results, tuple(vm.irq_levels(index, h)), h, vm.vcpu(index).trap_count)


@dataclass(slots=True)
class VcpuRun:
    """One client-driven KVM_RUN in progress (kvm_arch_vcpu_ioctl_run with a scripted guest).

    The core executes the ops in order. A WAIT on a simulated host steps the clock; on a
    realtime host it is the one thing the core cannot do, so `advance()` stops there and
    returns the nanoseconds to sleep: the adapter sleeps and calls `advance()` again. The
    vCPU stays inside KVM_RUN (other runs and offset changes get EBUSY) until `close()`.
    """

    host: Host  # the host the VM lives on
    vm: Vm  # the VM being run
    vcpu: Vcpu  # the vCPU inside KVM_RUN
    ops: tuple[GuestOp, ...]  # the script
    results: list[AccessResult] = field(default_factory=list)  # one per op executed so far
    _next: int = 0  # index of the next op
    _waiting: bool = False  # advance() returned a wait the adapter is sleeping out

    def advance(self) -> int | None:
        """Execute ops until a realtime WAIT (returns ns to sleep) or the end (None)."""
        if self._waiting:
            self.results.append(AccessResult(self.host.counter.read()))  # the counter after the wait
            self._waiting = False
        realtime = self.host.clock_mode is not ClockMode.SIMULATED
        while self._next < len(self.ops):
            op = self.ops[self._next]
            self._next += 1
            if realtime and op.kind is AccessKind.WAIT:
                self._waiting = True
                return self.host.counter.ns_until(op.value)
            self.results.append(self.host.execute(self.vm, self.vcpu.index, op))
        return None

    def waits(self) -> Iterator[int]:
        """`advance()` as an iterator: each item is a realtime wait (ns) to sleep out before the
        rest of the ops run; the iteration ends when every op has executed."""
        while (wait_ns := self.advance()) is not None:
            yield wait_ns

    def result(self) -> RunResult:
        """Precondition: `advance()` returned None (every op executed)."""
        return self.host.run_result(self.vm, self.vcpu.index, tuple(self.results))

    def close(self) -> None:
        """Leave KVM_RUN (also after an error or a cancelled wait)."""
        self.vm.exit_run(self.vcpu)


def validate_ops(ops: Sequence[GuestOp]) -> None:
    """Reject malformed ops before any of them runs (nothing half-executed)."""
    for n, op in enumerate(ops):
        if op.kind in (AccessKind.READ, AccessKind.WRITE) and op.reg is None:
            raise BadRequest(f"op {n}: a {op.kind.name.lower()} needs a register")
        if not 0 <= op.value < (1 << 64):
            raise BadRequest(f"op {n}: value {op.value} is not an unsigned 64-bit value")
