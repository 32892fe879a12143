"""The guest workload: periodic timers, interrupt accounting, counter readings, migration of guest memory.

Edge cases covered:
- interrupts arrive exactly at their deadlines in simulated time (lateness 0), for vtimer and ptimer;
- deadlines missed while the VM was paused are caught up on resume (late, never lost);
- the jump error over a stop is 0 when the counter kept running, and minus the stop when it was
  moved back by value (what a by-value restore does);
- save -> load of guest memory round-trips exactly and refuses a frequency mismatch or missing vCPUs;
- a workload cannot be started or replaced while the VM runs; periods below the minimum are refused;
- advance_hosts delivers interrupts on several hosts sharing one clock in time order.
"""

from __future__ import annotations

import pytest

from node.core.clock import ManualClock
from node.core.errors import Busy, InvalidArgument
from node.core.features import HostFeatures
from node.core.host import Host
from node.core.uapi import OneReg
from node.core.vm import Vm
from node.core.workload import MIN_PERIOD_TICKS, SampleCause, WorkloadSpec, save_workload
from node.core.world import advance_hosts

PERIOD = 250_000


def running_vm(vcpus: int = 2, use_ptimer: bool = True, base: int = 10_000) -> tuple[Host, Vm]:
    host = Host("n", HostFeatures(), ManualClock(), counter_base=base)
    vm = host.create_vm("g")
    for i in range(vcpus):
        vm.create_vcpu(i)
    vm.start_workload(WorkloadSpec(PERIOD, use_ptimer=use_ptimer))
    vm.resume()
    return host, vm


def test_interrupts_arrive_exactly_on_time() -> None:
    host, vm = running_vm()
    assert vm.workload is not None
    host.step_clock(10 * PERIOD)
    for w in vm.workload.vcpus.values():
        assert w.vtimer.received == 10 and w.vtimer.max_lateness_ticks == 0
        assert w.ptimer is not None and w.ptimer.received == 10 and w.ptimer.max_lateness_ticks == 0
        assert w.vtimer.expected(vm.cntvct(host.counter.read()), PERIOD) == 10
        assert w.min_step_v == 0  # two readings at the same deadline instant (v and p interrupts)
    host.step_clock(PERIOD - 1)
    assert all(w.vtimer.received == 10 for w in vm.workload.vcpus.values())
    host.step_clock(1)
    assert all(w.vtimer.received == 11 for w in vm.workload.vcpus.values())


def test_deadlines_missed_while_paused_are_caught_up_late_not_lost() -> None:
    host, vm = running_vm(vcpus=1, use_ptimer=False)
    assert vm.workload is not None
    host.step_clock(2 * PERIOD)
    vm.pause()
    host.step_clock(3 * PERIOD + 7)
    vm.resume()
    w = vm.workload.vcpus[0]
    assert w.vtimer.received == 2  # nothing delivered yet: resume only reads the counter
    host.run_due_events()
    assert w.vtimer.received == 5
    assert w.vtimer.max_lateness_ticks == 3 * PERIOD + 7 - PERIOD
    assert w.last_jump_error_ticks == 0  # the counter kept running while stopped
    assert w.last_stop_ns == (3 * PERIOD + 7) * 40


def test_jump_error_is_minus_the_stop_when_the_counter_is_written_back_by_value() -> None:
    host, vm = running_vm(vcpus=1, use_ptimer=False)
    assert vm.workload is not None
    host.step_clock(PERIOD // 2)
    vm.pause()
    saved = vm.get_one_reg(0, OneReg.TIMER_CNT)
    host.step_clock(12_500_000)  # 0.5 s stopped
    vm.set_one_reg(0, OneReg.TIMER_CNT, saved)
    vm.resume()
    w = vm.workload.vcpus[0]
    assert w.last_jump_error_ticks == -12_500_000
    assert w.samples[-1].cause is SampleCause.RESUME and w.samples[-2].cause is SampleCause.PAUSE
    assert w.min_step_v == 0  # stalled, never backwards


def test_guest_memory_round_trips_and_is_checked_on_load() -> None:
    host, vm = running_vm()
    host.step_clock(3 * PERIOD + 5)
    vm.pause()
    state = vm.save_workload()
    assert state is not None
    other = Host("m", HostFeatures(), ManualClock(), counter_base=99).create_vm("g")
    other.create_vcpu(0)
    with pytest.raises(InvalidArgument, match="lacks"):
        other.load_workload(state)
    other.create_vcpu(1)
    other.load_workload(state)
    assert other.workload is not None and save_workload(other.workload) == state
    fast = Host("f", HostFeatures(cntfrq_hz=1_000_000_000), ManualClock()).create_vm("g")
    fast.create_vcpu(0)
    fast.create_vcpu(1)
    with pytest.raises(InvalidArgument, match="Hz"):
        fast.load_workload(state)


def test_workload_changes_need_a_paused_vm_and_a_sane_period() -> None:
    _, vm = running_vm()
    with pytest.raises(Busy):
        vm.start_workload(WorkloadSpec(PERIOD))
    with pytest.raises(InvalidArgument):
        WorkloadSpec(99)
    empty = Host("n", HostFeatures(), ManualClock()).create_vm("e")
    with pytest.raises(InvalidArgument, match="no vcpus"):
        empty.start_workload(WorkloadSpec(PERIOD))


def test_advance_hosts_delivers_on_every_host_sharing_the_clock() -> None:
    clock = ManualClock()
    hosts = [Host(f"n{i}", HostFeatures(), clock, counter_base=i * 1_000_003) for i in range(3)]
    for h in hosts:
        vm = h.create_vm("g")
        vm.create_vcpu(0)
        vm.start_workload(WorkloadSpec(PERIOD))
        vm.resume()
    taken = advance_hosts(hosts, clock, 1_000_000_000)  # 1 s = 100 periods
    assert taken == 300
    for h in hosts:
        w = h.vm("g").workload
        assert w is not None
        assert w.vcpus[0].vtimer.received == 100 and w.vcpus[0].vtimer.max_lateness_ticks == 0


def test_resume_refused_while_a_vcpu_is_in_a_client_driven_run() -> None:
    host = Host("n", HostFeatures(), ManualClock())
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    vcpu = vm.enter_run(0)
    with pytest.raises(Busy):
        vm.resume()
    assert not vm.running
    vm.exit_run(vcpu)
    vm.resume()
    assert vm.running


def test_pre_copy_then_delta_reproduces_the_full_copy() -> None:
    host, vm = running_vm()
    host.step_clock(300 * PERIOD)  # rings full (more readings than the ring holds)
    early = vm.save_workload(live=True)
    assert early is not None
    cursor = {v.index: v.reads for v in early.vcpus}
    host.step_clock(5 * PERIOD + 3)
    vm.pause()
    delta = vm.save_workload(since_reads=cursor)
    full = vm.save_workload()
    assert delta is not None and full is not None
    # Two interrupts (v and p) per period plus the pause reading, per vCPU.
    assert [len(v.samples) for v in delta.vcpus] == [11, 11]
    dst = Host("d", HostFeatures(), ManualClock()).create_vm("g")
    dst.create_vcpu(0)
    dst.create_vcpu(1)
    dst.load_workload(early)
    dst.load_workload(delta, merge=True)
    assert dst.workload is not None and save_workload(dst.workload) == full
    with pytest.raises(Busy):
        running_vm()[1].save_workload()
    with pytest.raises(InvalidArgument, match="pre-copied"):
        Host("e", HostFeatures(), ManualClock()).create_vm("g").load_workload(delta, merge=True)


class _BusyClock(ManualClock):
    """Time passes while the guest's handlers run: every reading costs `per_read_ns`."""

    def __init__(self, per_read_ns: int, max_reads: int) -> None:
        super().__init__()
        self.per_read_ns = per_read_ns
        self.reads_left = max_reads

    def instant_ns(self) -> tuple[int, int]:
        self.reads_left -= 1
        assert self.reads_left > 0, "the host never stops taking interrupts"
        self.advance_ns(self.per_read_ns)
        return super().instant_ns()


def test_a_period_shorter_than_the_handler_leaves_the_host_free_between_rounds() -> None:
    """MIN_PERIOD_TICKS (4 us) with handlers costing more than a period: one delivery takes what
    is due at its instant and returns; what came due meanwhile is late, and caught up next time."""
    clock = _BusyClock(per_read_ns=10_000, max_reads=10_000)
    host = Host("n", HostFeatures(), clock, counter_base=10_000)
    vm = host.create_vm("g")
    for i in range(4):
        vm.create_vcpu(i)
    vm.start_workload(WorkloadSpec(MIN_PERIOD_TICKS, use_ptimer=True))
    vm.resume()
    assert vm.workload is not None
    clock.advance_ns(MIN_PERIOD_TICKS * 40 * 3)
    assert host.run_due_events() == 8  # each timer of each vCPU once, its missed deadlines caught up
    after_first = [s.received for w in vm.workload.vcpus.values() for _, s in vm.workload.timers(w)]
    assert min(after_first) >= 3
    assert host.run_due_events() == 8  # deadlines passed during the first round: late, taken next
    after_second = [s.received for w in vm.workload.vcpus.values() for _, s in vm.workload.timers(w)]
    assert all(b > a for a, b in zip(after_first, after_second, strict=True))
    assert all(s.max_lateness_ticks > 0 for w in vm.workload.vcpus.values() for _, s in vm.workload.timers(w))
