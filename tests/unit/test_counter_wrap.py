"""StepClock / advance_hosts with a guest counter that wraps past 2^64 (the StepClock spin bug).

Edge cases covered, on every profile x ECV x VHE combination:
- an armed physical timer on a host whose counter wraps: the re-armed deadline lies past the
  wrap; StepClock delivers exactly the deadlines that really pass (one spurious interrupt at
  the last tick before the wrap), with lateness 0, and finishes (bounded by a counting hook
  that fails the test instead of spinning)
- the same through advance_hosts (the shared clock of a simulated cluster)
- a CVAL written by the VMM far in the past or past the wrap does not make the loop spin
- the comparator value a wrap-aware guest programs, for deadlines due, ahead and past the wrap
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.core.clock import U64_MASK, ManualClock
from node.core.features import ALL_FEATURE_COMBINATIONS, HostFeatures
from node.core.host import Host
from node.core.timer import TimerId
from node.core.uapi import OneReg
from node.core.vm import Vm
from node.core.workload import Workload, WorkloadSpec, comparator_value
from node.core.world import advance_hosts
from tests.unit.conftest import feature_params

PERIOD = 1000
START = U64_MASK + 1 - 2500  # host counter 2500 ticks before the wrap
MAX_DELIVERIES = 100  # far above the 21 that are due; a spinning loop hits it at once
FEATURES = feature_params(ALL_FEATURE_COMBINATIONS)


@pytest.fixture
def deliveries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, TimerId, bool]]]:
    """Every interrupt the guest takes, recorded; the test fails once MAX_DELIVERIES is passed."""
    taken: list[tuple[int, TimerId, bool]] = []
    original = Workload.on_irq

    def counting(self: Workload, vm: Vm, vcpu: object, timer_id: TimerId) -> bool:
        if len(taken) >= MAX_DELIVERIES:
            raise AssertionError(f"more than {MAX_DELIVERIES} interrupts: the delivery loop spins")
        real = original(self, vm, vcpu, timer_id)  # type: ignore[arg-type]
        taken.append((vm.counter.read(), timer_id, real))
        return real

    monkeypatch.setattr(Workload, "on_irq", counting)
    yield taken


def wrapping_guest(features: HostFeatures) -> tuple[Host, Vm]:
    host = Host("n", features, ManualClock(), counter_base=START)
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    vm.start_workload(WorkloadSpec(PERIOD, use_ptimer=True))
    vm.resume()
    return host, vm


def check_wrapped_run(vm: Vm, taken: list[tuple[int, TimerId, bool]]) -> None:
    assert vm.workload is not None
    w = vm.workload.vcpus[0]
    # Guest CNTPCT = H (poffset 0): deadlines START+1000, START+2000, then 500, 1500, ..., 7500.
    real_p = [h for h, t, real in taken if t is TimerId.PTIMER and real]
    assert real_p == [START + 1000, START + 2000, *range(500, 7501, PERIOD)]
    # The one deadline past the wrap costs one spurious interrupt, at the last tick before it.
    assert [h for h, t, real in taken if not real] == [U64_MASK]
    assert w.ptimer is not None
    assert (w.ptimer.received, w.ptimer.max_lateness_ticks) == (10, 0)
    assert w.ptimer.received == w.ptimer.expected(vm.cntpct(vm.counter.read()), PERIOD)
    # The virtual counter started at 0 at vCPU creation: ten deadlines, no wrap.
    assert (w.vtimer.received, w.vtimer.max_lateness_ticks) == (10, 0)
    assert len(taken) == 21


@pytest.mark.parametrize("features", FEATURES)
def test_step_clock_over_the_wrap_delivers_only_real_deadlines(
    features: HostFeatures, deliveries: list[tuple[int, TimerId, bool]]
) -> None:
    host, vm = wrapping_guest(features)
    assert host.step_clock(10_000) == (START + 10_000) & U64_MASK
    check_wrapped_run(vm, deliveries)


@pytest.mark.parametrize("features", FEATURES)
def test_advance_hosts_over_the_wrap(
    features: HostFeatures, deliveries: list[tuple[int, TimerId, bool]]
) -> None:
    host, vm = wrapping_guest(features)
    clock = host.counter.clock
    assert isinstance(clock, ManualClock)
    advance_hosts([host], clock, 10_000 * 40)  # 25 MHz: 40 ns a tick
    assert host.counter.read() == (START + 10_000) & U64_MASK
    check_wrapped_run(vm, deliveries)


@pytest.mark.parametrize("cval", [0, 1, U64_MASK, START - 1])
def test_a_cval_set_by_the_vmm_does_not_make_the_loop_spin(
    cval: int, deliveries: list[tuple[int, TimerId, bool]]
) -> None:
    host, vm = wrapping_guest(HostFeatures())
    vm.pause()
    vm.vcpu(0).timer(TimerId.PTIMER).cval = cval  # what SET_ONE_REG PTIMER_CVAL does on 6.4+
    vm.resume()
    host.step_clock(10_000)
    assert len(deliveries) <= 22
    assert vm.workload is not None and vm.workload.vcpus[0].ptimer is not None
    assert vm.workload.vcpus[0].ptimer.received == 10


@pytest.mark.parametrize(
    ("deadline", "now", "cval"),
    [
        (100, 50, 100),  # ahead, expressible
        (50, 100, 50),  # due: fire at once
        (U64_MASK - 5, 3, 3),  # due, the counter wrapped past it: fire at once
        (499, U64_MASK - 500, U64_MASK),  # past the wrap: the last tick before it
        (499, U64_MASK, 499),  # at that last tick: the real deadline
        (0, U64_MASK, 0),
    ],
)
def test_comparator_value(deadline: int, now: int, cval: int) -> None:
    assert comparator_value(deadline, now) == cval


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("jump", [10**6, 1 << 62, (1 << 63) - 5000])
def test_a_counter_jump_costs_one_interrupt_per_timer(
    features: HostFeatures, jump: int, deliveries: list[tuple[int, TimerId, bool]]
) -> None:
    host = Host("n", features, ManualClock(), counter_base=1000)
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    vm.start_workload(WorkloadSpec(PERIOD))
    vm.resume()
    host.step_clock(3 * PERIOD)
    vm.pause()
    # The VMM moves the guest virtual counter far ahead (by value).
    vm.set_one_reg(0, OneReg.TIMER_CNT, (vm.get_one_reg(0, OneReg.TIMER_CNT) + jump) & U64_MASK)
    vm.resume()
    host.step_clock(0)
    assert vm.workload is not None
    w = vm.workload.vcpus[0]
    now = vm.cntvct(host.counter.read())
    assert w.vtimer.received == w.vtimer.expected(now, PERIOD)
    # Three on-time interrupts, then the whole jump in one (or a spurious one near the wrap).
    assert len(deliveries) <= 5
