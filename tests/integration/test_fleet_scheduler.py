"""The per-process guest timer scheduler and `up`'s retries, on a real event loop.

Edge cases: an idle host (no VM running) is never planned and arms no timer; several realtime hosts
share one scheduler and every guest gets every interrupt it expects (within its own lateness)
with about one wake-up per deadline, not a poll; a paused guest's stale entry is dropped; the
Retrier retries transient codes with back-off and counts them, gives up at once on others, and
re-raises the last transient error when the attempts run out.
"""

from __future__ import annotations

import grpc
import pytest

from controller.cli.up.retry import Retrier
from node.core.clock import SystemClock
from node.core.features import ClockMode
from node.core.fleet import fleet_host
from node.core.host import Host
from node.core.vm import Vm
from node.core.workload import WorkloadSpec
from node.service.driver import TimerScheduler
from tests.support.wait import until

PERIOD_TICKS = 250_000  # 10 ms at 25 MHz


def realtime_host(index: int) -> Host:
    plan = fleet_host(index)
    return Host(
        plan.node_id,
        plan.features,
        SystemClock(),
        counter_base=plan.counter_base,
        clock_mode=ClockMode.REALTIME,
    )


def running_guest(host: Host, vcpus: int) -> None:
    vm = host.create_vm()
    for i in range(vcpus):
        vm.create_vcpu(i)
    vm.start_workload(WorkloadSpec(PERIOD_TICKS))
    vm.resume()


def plan_host(scheduler: TimerScheduler, host: Host) -> None:
    """What the servicer does as each of the host's VMs changes."""
    for vm in list(host.vms.values()):
        scheduler.kick_vm(host, vm)


@pytest.mark.asyncio
async def test_idle_host_arms_nothing() -> None:
    scheduler = TimerScheduler()
    host = realtime_host(1)
    host.create_vm().create_vcpu(0)  # a VM that never runs
    plan_host(scheduler, host)
    assert (scheduler.planned, scheduler.armed) == (0, False)


@pytest.mark.asyncio
async def test_hosts_share_one_scheduler_and_lose_no_interrupt() -> None:
    scheduler = TimerScheduler()
    hosts = [realtime_host(i) for i in range(1, 4)]
    for n, host in enumerate(hosts):
        running_guest(host, 1 + n)
        plan_host(scheduler, host)
    assert (scheduler.planned, scheduler.armed) == (3, True)

    def every_vcpu_took(count: int) -> bool:
        return all(
            w.vtimer.received >= count
            for h in hosts
            for vm in h.vms.values()
            for w in (vm.workload.vcpus.values() if vm.workload else ())
        )

    await until(lambda: every_vcpu_took(10), timeout_s=10.0, what="10 interrupts on every vCPU")
    for host in hosts:
        h = host.counter.read()
        for vm in host.vms.values():
            assert vm.workload is not None
            for w in vm.workload.vcpus.values():
                now = (h - vm.voffset) & ((1 << 64) - 1)
                allowed = 1 + w.vtimer.max_lateness_ticks // PERIOD_TICKS
                assert 0 <= w.vtimer.expected(now, PERIOD_TICKS) - w.vtimer.received <= allowed
    # One wake-up serves every host due at that instant: never more wake-ups than deliveries
    # (a polling driver wakes whether or not anything is due).
    assert 0 < scheduler.wakeups <= scheduler.delivered
    for host in hosts:
        for vm in host.vms.values():
            vm.pause()
    await until(lambda: not scheduler.armed, timeout_s=5.0, what="paused guests leave nothing planned")
    assert scheduler.planned == 0
    scheduler.stop()


@pytest.mark.asyncio
async def test_kick_vm_plans_that_vm_only_and_leaves_the_others_planned() -> None:
    scheduler = TimerScheduler()
    host = realtime_host(1)
    running_guest(host, 1)
    running_guest(host, 2)
    plan_host(scheduler, host)
    first, second = host.vms.values()
    planned_first = scheduler._due[id(first)]
    second.pause()
    scheduler.kick_vm(host, second)  # what ResumeVm/SetRegs of `second` do
    # The paused VM left the plan; the other one kept its entry, untouched.
    assert (scheduler.planned, scheduler._due.get(id(first))) == (1, planned_first)
    second.resume()
    scheduler.kick_vm(host, second)
    assert scheduler.planned == 2

    def took(vm: Vm, count: int) -> bool:
        assert vm.workload is not None
        return all(w.vtimer.received >= count for w in vm.workload.vcpus.values())

    await until(lambda: took(first, 5) and took(second, 5), timeout_s=10.0, what="5 interrupts on every vCPU")
    scheduler.stop()


class _Failure(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name, debug_error_string=""
        )


@pytest.mark.asyncio
async def test_retrier_retries_transient_codes_and_counts_them() -> None:
    retrier = Retrier(initial_s=0.001, max_s=0.002)
    attempts: list[int] = []

    async def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 2:
            raise _Failure(grpc.StatusCode.DEADLINE_EXCEEDED if attempt == 0 else grpc.StatusCode.UNAVAILABLE)
        return "ok"

    assert await retrier.call(flaky) == "ok"
    assert attempts == [0, 1, 2]
    assert dict(retrier.retried) == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}


@pytest.mark.asyncio
async def test_retrier_gives_up_on_other_codes_and_after_the_last_attempt() -> None:
    retrier = Retrier(attempts=3, initial_s=0.001, max_s=0.002)
    calls: list[int] = []

    async def refused(attempt: int) -> None:
        calls.append(attempt)
        raise _Failure(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retrier.call(refused)
    assert (err.value.code(), calls) == (grpc.StatusCode.INVALID_ARGUMENT, [0])

    async def down(attempt: int) -> None:
        calls.append(attempt)
        raise _Failure(grpc.StatusCode.UNAVAILABLE)

    calls.clear()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retrier.call(down)
    assert (err.value.code(), calls) == (grpc.StatusCode.UNAVAILABLE, [0, 1, 2])
    assert retrier.retried["UNAVAILABLE"] == 2
