"""Host: VM table, clock modes, KVM_RUN driving and op validation.

Edge cases covered:
- VM ids: generated ids skip taken ones; duplicates EEXIST; too long or
  unprintable ids are bad requests; unknown / destroyed VMs are not found
- vCPU index range 0..511 (512 and -1 EINVAL), duplicate index EEXIST, unknown index not found
- simulated mode needs a ManualClock; StepClock on a realtime node is refused
- run_vcpu executes ops in order, WAIT steps the clock exactly, reports lines and traps
- run_vcpu validates every op before running any (no half-executed batch)
- run_vcpu on a resumed VM is EBUSY; enter_run twice on one vCPU is EBUSY
- a realtime node refuses WAIT ops in run_vcpu (the adapter must drive them)
- every refused call leaves the host unchanged
- the owner label: kept, listed, dropped with the VM; unprintable/too long/negative refused
"""

from __future__ import annotations

import pytest

from node.core.clock import ManualClock, SystemClock
from node.core.errors import (
    AlreadyExists,
    BadRequest,
    Busy,
    InvalidArgument,
    VcpuNotFound,
    VmNotFound,
    WrongClockMode,
)
from node.core.features import ClockMode, HostFeatures
from node.core.host import MAX_VM_ID_LEN, Host, VmOwner, validate_ops
from node.core.timer import TimerId
from node.core.uapi import KVM_MAX_VCPUS, OneReg
from node.core.vcpu import AccessKind, AccessResult, GuestOp, SysReg
from node.core.vm import IrqLevel
from tests.unit.conftest import fingerprint, host_fingerprint, make_host, make_vm, rd, wait, wr

U64 = 1 << 64


def test_generated_vm_ids_skip_taken_ones() -> None:
    host = make_host()
    assert host.create_vm("vm-2").vm_id == "vm-2"
    assert host.create_vm().vm_id == "vm-1"
    assert host.create_vm().vm_id == "vm-3"
    assert sorted(host.vms) == ["vm-1", "vm-2", "vm-3"]


def test_duplicate_vm_id_is_eexist_and_changes_nothing() -> None:
    host = make_host()
    vm = host.create_vm("a")
    vm.create_vcpu(0)
    before = host_fingerprint(host)
    with pytest.raises(AlreadyExists) as exc_info:
        host.create_vm("a")
    assert exc_info.value.errno_name == "EEXIST"
    assert host_fingerprint(host) == before
    assert host.vm("a") is vm


@pytest.mark.parametrize("vm_id", ["x" * (MAX_VM_ID_LEN + 1), "a\nb", "tab\there", "\x00"])
def test_bad_vm_ids_are_bad_requests(vm_id: str) -> None:
    host = make_host()
    with pytest.raises(BadRequest):
        host.create_vm(vm_id)
    assert host.vms == {}


def test_longest_vm_id_is_accepted() -> None:
    host = make_host()
    assert host.create_vm("x" * MAX_VM_ID_LEN).vm_id == "x" * MAX_VM_ID_LEN


def test_unknown_and_destroyed_vms_are_not_found() -> None:
    host = make_host()
    host.create_vm("a").create_vcpu(0)
    before = host_fingerprint(host)
    with pytest.raises(VmNotFound):
        host.vm("b")
    with pytest.raises(VmNotFound):
        host.destroy_vm("b")
    with pytest.raises(VmNotFound):
        host.run_vcpu("b", 0, [])
    assert host_fingerprint(host) == before
    host.destroy_vm("a")
    assert host.vms == {}
    with pytest.raises(VmNotFound):
        host.vm("a")
    # The id is free again, for a brand-new VM.
    assert host.create_vm("a").vcpus == {}


@pytest.mark.parametrize("index", [KVM_MAX_VCPUS, KVM_MAX_VCPUS + 1, -1, 1 << 64])
def test_vcpu_index_out_of_range_is_einval(index: int) -> None:
    _, vm = make_vm(h=10)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument):
        vm.create_vcpu(index)
    assert fingerprint(vm) == before


def test_vcpu_index_bounds_and_duplicates() -> None:
    host, vm = make_vm(h=10)
    host.step_clock(5)
    vm.create_vcpu(KVM_MAX_VCPUS - 1)
    assert vm.voffset == 15
    before = fingerprint(vm)
    with pytest.raises(AlreadyExists):
        vm.create_vcpu(0)
    with pytest.raises(AlreadyExists):
        vm.create_vcpu(KVM_MAX_VCPUS - 1)
    assert fingerprint(vm) == before
    with pytest.raises(VcpuNotFound):
        vm.vcpu(1)
    with pytest.raises(VcpuNotFound):
        vm.reset_vcpu(1)
    with pytest.raises(VcpuNotFound):
        vm.irq_levels(1)


def test_simulated_mode_needs_a_manual_clock() -> None:
    with pytest.raises(WrongClockMode):
        Host("n", HostFeatures(), SystemClock(), clock_mode=ClockMode.SIMULATED)


def test_realtime_node_refuses_step_clock_and_wait_ops() -> None:
    clock = ManualClock()
    host = Host("n", HostFeatures(), clock, clock_mode=ClockMode.REALTIME, counter_base=100)
    vm = host.create_vm("vm0")
    vm.create_vcpu(0)
    with pytest.raises(WrongClockMode):
        host.step_clock(1)
    before = host_fingerprint(host)
    with pytest.raises(WrongClockMode):
        host.run_vcpu("vm0", 0, [wr(SysReg.CNTV_CTL_EL0, 1), wait(1)])
    assert host_fingerprint(host) == before
    # Reads and writes work; the counter follows the clock (40 ns per tick at 25 MHz).
    clock.advance_ns(400)
    run = host.run_vcpu("vm0", 0, [rd(SysReg.CNTVCT_EL0)])
    assert run.results == (AccessResult(10),)
    assert run.host_counter == 110


def test_a_realtime_run_hands_each_wait_to_the_adapter_and_holds_the_vcpu() -> None:
    """VcpuRun: ops before a WAIT run at once; the WAIT comes back as ns to sleep; the vCPU
    stays inside KVM_RUN (a second run gets EBUSY) until close(); the wait's result is the
    counter after it."""
    clock = ManualClock()
    host = Host("n", HostFeatures(), clock, clock_mode=ClockMode.REALTIME, counter_base=100)
    host.create_vm("vm0").create_vcpu(0)
    run = host.start_run("vm0", 0, [rd(SysReg.CNTVCT_EL0), wait(25), rd(SysReg.CNTVCT_EL0)])
    try:
        assert run.advance() == 1000  # 25 ticks at 25 MHz
        with pytest.raises(Busy):
            host.start_run("vm0", 0, [])
        clock.advance_ns(1000)  # the adapter slept
        assert run.advance() is None
        result = run.result()
    finally:
        run.close()
    assert result.results == (AccessResult(0), AccessResult(125), AccessResult(25))
    host.start_run("vm0", 0, []).close()  # out of KVM_RUN again


def test_realtime_node_on_the_system_clock_reads_a_counter() -> None:
    host = Host("n", HostFeatures(), SystemClock(), clock_mode=ClockMode.REALTIME, counter_base=1000)
    first = host.counter.read()
    assert first >= 1000
    h, realtime_ns = host.get_clock()
    assert h >= first
    assert realtime_ns > 0


def test_step_clock_is_exact_and_refuses_negative_steps() -> None:
    host = make_host(h=1000)
    assert host.step_clock(0) == 1000
    assert host.step_clock(1) == 1001
    assert host.step_clock(24_999_999) == 25_001_000
    with pytest.raises(BadRequest):
        host.step_clock(-1)
    with pytest.raises(BadRequest):
        host.step_clock(1 << 64)
    assert host.counter.read() == 25_001_000


def test_get_clock_samples_counter_and_realtime_together() -> None:
    clock = ManualClock(start_ns=5, realtime_offset_ns=1_000_000)
    host = Host("n", HostFeatures(), clock, counter_base=7)
    assert host.get_clock() == (7, 1_000_005)
    host.step_clock(25_000_000)  # one second at 25 MHz
    # Booted 5 ns into a 40 ns tick of the shared grid: the 25,000,000th tick starts 5 ns
    # short of one second later.
    assert host.get_clock() == (25_000_007, 1_001_000_000)


def test_run_vcpu_executes_ops_in_order() -> None:
    host, vm = make_vm(h=1000)
    run = host.run_vcpu(
        "vm0",
        0,
        [
            rd(SysReg.CNTVCT_EL0),
            wr(SysReg.CNTV_TVAL_EL0, 50),
            wr(SysReg.CNTV_CTL_EL0, 1),
            wait(49),
            rd(SysReg.CNTV_CTL_EL0),
            wait(1),
            rd(SysReg.CNTV_CTL_EL0),
            rd(SysReg.CNTV_TVAL_EL0),
        ],
    )
    assert [r.value for r in run.results] == [0, 50, 1, 1049, 0x1, 1050, 0x5, 0]
    assert run.host_counter == 1050
    assert run.irq_levels == (IrqLevel(TimerId.VTIMER, 27, True), IrqLevel(TimerId.PTIMER, 30, False))
    assert run.trap_count == 0
    assert vm.vcpu(0).in_run is False
    assert vm.vcpu(0).has_run is True
    assert vm.ppis_frozen is True


@pytest.mark.parametrize(
    "bad_op",
    [
        GuestOp(AccessKind.READ),
        GuestOp(AccessKind.WRITE, value=1),
        GuestOp(AccessKind.WRITE, SysReg.CNTV_CVAL_EL0, 1 << 64),
        GuestOp(AccessKind.WAIT, value=-1),
    ],
)
def test_run_vcpu_validates_every_op_before_running(bad_op: GuestOp) -> None:
    host, vm = make_vm(h=1000)
    before = host_fingerprint(host)
    with pytest.raises(BadRequest) as exc_info:
        host.run_vcpu("vm0", 0, [wr(SysReg.CNTV_CVAL_EL0, 5), wait(10), bad_op])
    assert exc_info.value.message.startswith("op 2: ")
    assert host_fingerprint(host) == before
    assert vm.vcpu(0).has_run is False
    with pytest.raises(BadRequest):
        validate_ops([bad_op])


def test_run_vcpu_on_a_resumed_vm_is_busy() -> None:
    host, vm = make_vm(h=1000)
    vm.resume()
    before = host_fingerprint(host)
    with pytest.raises(Busy):
        host.run_vcpu("vm0", 0, [wait(5)])
    assert host_fingerprint(host) == before
    vm.pause()
    assert host.run_vcpu("vm0", 0, [wait(5)]).host_counter == 1005


def test_run_vcpu_on_an_unknown_vcpu_is_not_found() -> None:
    host, vm = make_vm(h=1000)
    with pytest.raises(VcpuNotFound):
        host.run_vcpu("vm0", 3, [])
    assert vm.ppis_frozen is False


def test_enter_run_twice_is_busy() -> None:
    host, vm = make_vm(h=1000)
    vcpu = vm.enter_run(0)
    with pytest.raises(Busy):
        vm.enter_run(0)
    with pytest.raises(Busy):
        host.run_vcpu("vm0", 0, [])
    vm.exit_run(vcpu)
    assert vcpu.in_run is False
    host.run_vcpu("vm0", 0, [])


def test_resume_is_idempotent_and_pause_stops() -> None:
    _, vm = make_vm(h=0, vcpus=2)
    vm.resume()
    vm.resume()
    assert vm.running is True
    assert all(v.has_run for v in vm.vcpus.values())
    vm.pause()
    vm.pause()
    assert vm.running is False


def test_vm_ids_are_per_host() -> None:
    a = make_host(node_id="a")
    b = make_host(node_id="b")
    a.create_vm("vm0").create_vcpu(0)
    b.create_vm("vm0")
    assert a.node_id == "a"
    assert list(a.vm("vm0").vcpus) == [0]
    assert list(b.vm("vm0").vcpus) == []
    a.vm("vm0").set_one_reg(0, OneReg.TIMER_CVAL, 9)
    with pytest.raises(VcpuNotFound):
        b.vm("vm0").get_one_reg(0, OneReg.TIMER_CVAL)


def test_owner_label_is_kept_listed_and_dropped_with_the_vm() -> None:
    host = make_host()
    owner = VmOwner(guest_id="g-7", migration_id="m-3", generation=2)
    host.create_vm("a", owner=owner)
    host.create_vm("b")
    assert host.owner("a") == owner
    assert host.owner("b") == VmOwner()
    host.destroy_vm("a")
    assert host.owner("a") == VmOwner()
    host.create_vm("a")  # a new VM under the same id does not inherit the label
    assert host.owner("a") == VmOwner()


@pytest.mark.parametrize(
    "owner",
    [
        VmOwner(guest_id="x" * (MAX_VM_ID_LEN + 1)),
        VmOwner(migration_id="bad\n"),
        VmOwner(generation=-1),
        VmOwner(generation=U64),
    ],
)
def test_bad_owner_label_is_refused_and_creates_nothing(owner: VmOwner) -> None:
    host = make_host()
    with pytest.raises(BadRequest):
        host.create_vm("a", owner=owner)
    assert host.vms == {} and host.owners == {}
