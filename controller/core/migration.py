"""Live migration of guest time: method choice, the offset algorithm and the phase machine.

Pure: no I/O. The adapter (controller/service/migrator.py) executes the steps
against nodes and feeds the results back in.

Algorithm (spec §4.2): with the source paused, read the guest counters and the
source's (host counter, realtime) instant they were read at (`SourceSnapshot`). The
destination node applies that record itself (Node.ApplyCounterRecord, node/core/timesync.py):
it reads its own (H_d, RT_d) at the instant the offsets take effect and credits the guest
with the real time that passed as its own clock sees it, clamped at 0:

    elapsed   = max(0, RT_d - RT_s) * CNTFRQ / 1e9      (clamped: never backwards)
    voffset_d = H_d - (CNTVCT_s + elapsed)
    poffset_d = H_d - (CNTPCT_s + elapsed)

The controller never estimates a node's clock from its own: what it records (elapsed
ticks credited, offsets, the instant used) is what the destination reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from controller.core.admission import Limits as Limits  # re-exported: KubeVirt's limits
from controller.core.errors import FailedPrecondition, InvalidArgument
from controller.core.model import GuestId, MigrationId, NodeId
from node.core.clock import U64_MASK
from node.core.features import ApiProfile, HostFeatures
from node.core.timesync import CounterRecord
from node.core.uapi import OneReg, reg_name, timer_reg_list


class Method(IntEnum):
    """How guest time is carried over; numbers match proto `MigrationMethod`."""

    AUTO = 0  # best the destination supports
    BY_VALUE = 1  # write the saved counter values back (guest time stalls for the downtime)
    VCPU_OFFSETS = 2  # 2021 series: physical-offset attribute + CNTVOFF ONE_REG
    VM_COUNTER_OFFSET = 3  # Linux 6.4+: KVM_ARM_SET_COUNTER_OFFSET


# Best first.
METHOD_PREFERENCE = (Method.VM_COUNTER_OFFSET, Method.VCPU_OFFSETS, Method.BY_VALUE)


class Phase(IntEnum):
    """KubeVirt's migration phases; numbers match proto `MigrationPhase`."""

    PENDING = 1  # waiting for a slot
    SCHEDULING = 2  # choosing/checking destination and method
    SCHEDULED = 3  # destination and method fixed
    PREPARING_TARGET = 4  # creating the paused destination VM
    TARGET_READY = 5  # destination VM ready
    RUNNING = 6  # source paused, state moving
    SUCCEEDED = 7  # guest runs on the destination, source VM gone
    FAILED = 8  # guest runs on the source, unchanged

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Step(StrEnum):
    """Steps inside the phases (the PREPARE -> ... -> CLEANUP pipeline)."""

    PREPARE = "prepare"
    PAUSE = "pause"
    SNAPSHOT = "snapshot"
    TRANSFER = "transfer"
    RESUME = "resume"  # restore the snapshot into the destination and resume it (one batch)
    CLEANUP = "cleanup"
    ROLLBACK = "rollback"


_NEXT_PHASE: dict[Phase, Phase] = {
    Phase.PENDING: Phase.SCHEDULING,
    Phase.SCHEDULING: Phase.SCHEDULED,
    Phase.SCHEDULED: Phase.PREPARING_TARGET,
    Phase.PREPARING_TARGET: Phase.TARGET_READY,
    Phase.TARGET_READY: Phase.RUNNING,
    Phase.RUNNING: Phase.SUCCEEDED,
}


def supports(features: HostFeatures, method: Method) -> bool:
    """Can a destination with these features apply `method`?"""
    if method is Method.BY_VALUE:
        return True
    if method is Method.VCPU_OFFSETS:
        return features.api_profile is ApiProfile.VCPU_OFFSETS
    if method is Method.VM_COUNTER_OFFSET:
        return features.api_profile is ApiProfile.VM_COUNTER_OFFSET
    return False


def choose_method(
    source: HostFeatures,
    destination: HostFeatures,
    requested: Method,
    *,
    destination_id: str,
) -> Method:
    """The method to use, or FailedPrecondition explaining why the move is impossible.

    The source side of every method is a read of the guest counters together with
    the host counter they were read at, which every kernel allows (before 6.4 the
    guest physical counter is H minus the series' physical offset, 0 on 5.15); so
    the method is decided by what the destination kernel can apply. AUTO takes the
    best one: the offset methods credit the guest with the real time that passed and
    carry the physical counter; BY_VALUE stalls guest time for the downtime.
    What the two kernels' register lists let a migration carry is `register_set()`.
    """
    if source.cntfrq_hz != destination.cntfrq_hz:
        # KVM cannot scale the counter; the guest calibrated its clock at boot.
        raise FailedPrecondition(
            f"counter frequencies differ: source {source.cntfrq_hz} Hz, destination "
            f"{destination_id} {destination.cntfrq_hz} Hz (KVM cannot scale the guest counter)"
        )
    if requested is Method.AUTO:
        return next(m for m in METHOD_PREFERENCE if supports(destination, m))
    if requested not in METHOD_PREFERENCE:
        raise InvalidArgument(f"unknown migration method {int(requested)}")
    if not supports(destination, requested):
        raise FailedPrecondition(
            f"destination {destination_id} runs a {kernel_label(destination)} kernel "
            f"and cannot apply method {requested.name}"
        )
    return requested


def kernel_label(features: HostFeatures) -> str:
    """The kernel of a profile, for messages: "BY_VALUE (5.15, pre-6.4)"."""
    return {
        ApiProfile.BY_VALUE: "BY_VALUE (5.15, pre-6.4)",
        ApiProfile.VCPU_OFFSETS: "VCPU_OFFSETS (2021 series, pre-6.4)",
        ApiProfile.VM_COUNTER_OFFSET: "VM_COUNTER_OFFSET (6.4+)",
    }[features.api_profile]


def predicted_reg_list(features: HostFeatures) -> tuple[int, ...]:
    """The timer ids a node's kernel lists (spec §2.1), for checks made before any VM exists
    there; a migration itself uses the lists the two nodes return (GetRegList)."""
    return tuple(int(r) for r in timer_reg_list(features.api_profile))


# Counter and offset ids: carried by the method (offsets or by-value writes), never copied as state.
COUNTER_IDS = frozenset({int(OneReg.TIMER_CNT), int(OneReg.PTIMER_CNT), int(OneReg.TIMER_OFFSET)})


@dataclass(frozen=True, slots=True)
class RegisterSet:
    """What one migration saves and restores, from the two kernels' KVM_GET_REG_LIST (as QEMU does)."""

    saved: tuple[int, ...]  # every id the source lists, read on the paused source
    restored: tuple[int, ...]  # guest timer state written on the destination: listed by both, not counters
    missing_on_source: tuple[str, ...]  # state the destination could take but the source cannot give
    missing_on_destination: tuple[str, ...]  # state the source gives but the destination cannot take
    physical_counter_carried: bool  # the method can set the guest physical counter on the destination

    @property
    def not_carried(self) -> tuple[str, ...]:
        """Everything lost, by register name (the record's `not_carried`)."""
        lost = dict.fromkeys((*self.missing_on_source, *self.missing_on_destination))
        if not self.physical_counter_carried:
            lost[OneReg.PTIMER_CNT.name] = None
        return tuple(lost)

    @property
    def ptimer_lost(self) -> tuple[str, ...]:
        return tuple(n for n in self.not_carried if n.startswith("PTIMER_"))


# The physical timer's guest state (CNTP_CTL_EL0, CNTP_CVAL_EL0) by its ONE_REG names.
PTIMER_STATE_IDS = (int(OneReg.PTIMER_CTL), int(OneReg.PTIMER_CVAL))


def register_set(
    source_ids: Sequence[int], destination_ids: Sequence[int], method: Method, *, uses_ptimer: bool = False
) -> RegisterSet:
    """The register set of a migration by `method` between kernels listing these ids.

    Timer CTL/CVAL are copied where both kernels list them; before 6.4 the physical
    timer's are not ONE_REG registers (ENOENT), so a pre-6.4 source cannot save them
    and a pre-6.4 destination cannot restore them: that state is not carried, as with
    QEMU there. The guest physical counter is carried by the offset methods (the
    destination's VM-wide offset or the series' physical-offset attribute) and, by
    value, only where the destination lists PTIMER_CNT. The state to carry is what
    either kernel lists, plus the physical timer's CTL/CVAL when the guest uses it
    (which then is lost even if neither kernel lists them).
    """
    src, dst = list(source_ids), list(destination_ids)
    both = set(src) & set(dst)
    used = PTIMER_STATE_IDS if uses_ptimer else ()
    state_ids = [r for r in dict.fromkeys((*src, *dst, *used)) if r not in COUNTER_IDS]
    return RegisterSet(
        saved=tuple(src),
        restored=tuple(r for r in src if r in both and r not in COUNTER_IDS),
        missing_on_source=tuple(reg_name(r) for r in state_ids if r not in src),
        missing_on_destination=tuple(reg_name(r) for r in state_ids if r not in dst),
        physical_counter_carried=method is not Method.BY_VALUE or int(OneReg.PTIMER_CNT) in dst,
    )


def check_state_loss(
    regs: RegisterSet,
    *,
    uses_ptimer: bool,
    allow_state_loss: bool,
    source: tuple[str, HostFeatures],
    destination: tuple[str, HostFeatures],
    method: Method,
) -> None:
    """Refuse (FailedPrecondition) to move a guest that uses its physical timer where its
    ptimer state would be lost, unless the request allows it. Names the side that lacks it."""
    lost = regs.ptimer_lost
    if not uses_ptimer or not lost or allow_state_loss:
        return
    (src_id, src_features), (dst_id, dst_features) = source, destination
    why = []
    if any(n.startswith("PTIMER_") for n in regs.missing_on_source):
        why.append(
            f"source {src_id} runs a {kernel_label(src_features)} kernel: "
            f"{'/'.join(n for n in regs.missing_on_source if n.startswith('PTIMER_'))} are not ONE_REG "
            "registers there (ENOENT), so its physical timer cannot be saved"
        )
    if any(n.startswith("PTIMER_") for n in regs.missing_on_destination):
        why.append(
            f"destination {dst_id} runs a {kernel_label(dst_features)} kernel: "
            f"{'/'.join(n for n in regs.missing_on_destination if n.startswith('PTIMER_'))} are not "
            "ONE_REG registers there (ENOENT), so its physical timer cannot be restored"
        )
    if not regs.physical_counter_carried:
        why.append(
            f"destination {dst_id} runs a {kernel_label(dst_features)} kernel: method {method.name} "
            "cannot set the guest physical counter there"
        )
    raise FailedPrecondition(
        "the guest uses its physical timer and " + "; ".join(why) + f". Nothing was changed; "
        f"allow_state_loss moves it anyway as QEMU would, without {', '.join(lost)} "
        "(the guest's physical-timer interrupts stop)"
    )


@dataclass(frozen=True, slots=True)
class SourceSnapshot(CounterRecord):
    """Guest counters read on the paused source, with the instant they were read at: the
    record the destination applies (node/core/timesync.py), plus the source's offsets."""

    @property
    def voffset(self) -> int:
        return (self.host_counter - self.cntvct) & U64_MASK

    @property
    def poffset(self) -> int:
        return (self.host_counter - self.cntpct) & U64_MASK


@dataclass(frozen=True, slots=True)
class RegWrite:
    """One ONE_REG write on the destination."""

    vcpu_index: int
    reg_id: int
    value: int


@dataclass(slots=True)
class MigrationRecord:
    """One migration; timings are monotonic ns from the controller's clock."""

    migration_id: MigrationId
    guest_id: GuestId
    source: NodeId
    destination: NodeId | None  # None until scheduled (auto)
    requested_method: Method
    method: Method | None = None
    phase: Phase = Phase.PENDING
    reason: str = ""
    cancelled: bool = False
    cancel_requested: bool = False
    applied_as: str = ""
    started_ns: int = 0
    target_ready_ns: int | None = None
    paused_realtime_ns: int | None = None  # source node's realtime when it stopped
    resumed_realtime_ns: int | None = None  # destination node's realtime when it continued
    stop_sent_ns: int | None = None  # controller monotonic: the pause was sent
    resume_acked_ns: int | None = None  # controller monotonic: the resume's reply arrived
    paused_host_counter: int | None = None  # source host counter when it stopped
    stop_bound_ns: int | None = None  # source counter: pause -> a read after the resume (one clock)
    guest_stop_ns: int | None = None  # the guest's own pause -> resume readings (machine realtimes)
    ended_ns: int | None = None
    created_realtime_ns: int = 0
    finished_realtime_ns: int = 0
    counter_error_ticks: int | None = None
    traps_before: int = 0
    traps_after: int = 0
    source_traps_cntpct: bool = False
    destination_traps_cntpct: bool = False
    destination_uses_cntpoff: bool = False
    source_voffset: int = 0
    source_poffset: int = 0
    destination_voffset: int = 0
    destination_poffset: int = 0
    elapsed_ticks: int = 0  # ticks of realtime the destination credited (its own clock, clamped at 0)
    realtime_skew_ns: int = 0  # destination realtime minus source realtime (deliberate effects)
    guest_uses_ptimer: bool = False  # the guest arms its physical timer
    allow_state_loss: bool = False  # the request allowed losing state
    not_carried: list[str] = field(default_factory=list)  # state the kernels could not carry
    steps: list[str] = field(default_factory=list)
    journal_step: str = ""  # the last step committed to the journal
    recovered: str = ""  # how a restart finished it: rolled_back, rolled_forward, lost

    def advance(self, to: Phase) -> None:
        """Move to the next phase (or FAILED from any live phase); anything else is a bug."""
        if self.phase.terminal:
            raise InvalidArgument(f"migration {self.migration_id} already ended ({self.phase.name})")
        if to is not Phase.FAILED and _NEXT_PHASE.get(self.phase) is not to:
            raise InvalidArgument(
                f"migration {self.migration_id}: no transition {self.phase.name} -> {to.name}"
            )
        self.phase = to

    @property
    def cancellable(self) -> bool:
        """Until the destination is told to resume, the guest can stay on the source."""
        return not self.phase.terminal and Step.RESUME not in self.steps

    def setup_time_us(self) -> int:
        return _us(self.started_ns, self.target_ready_ns)

    def downtime_us(self) -> int:
        """How long the guest was stopped; never negative.

        The guest's own measurement (its pause reading on the source to its resume reading on
        the destination, on the machines' CLOCK_REALTIME: one system-wide clock when the nodes
        share a machine, exact on simulated nodes), accepted when it lies within [0, bound]; the
        bound is measured on one monotonic clock, the source host's counter from its pause to a
        read taken right after the destination resumed (it includes the resume's reply and one
        round trip), or, when the source cannot be read then, the controller's monotonic clock
        from sending the pause to the resume's reply. Outside that interval (hosts whose clocks
        disagree by more than the stop), the bound. Never two nodes' own realtimes subtracted
        as they are: they are different clocks, apart by as much as the hosts disagree.
        """
        bound_ns = self.stop_bound_ns
        if bound_ns is None and self.stop_sent_ns is not None and self.resume_acked_ns is not None:
            bound_ns = max(0, self.resume_acked_ns - self.stop_sent_ns)
        if bound_ns is None:
            return 0
        stop = self.guest_stop_ns
        return (stop if stop is not None and 0 <= stop <= bound_ns else bound_ns) // 1000

    def total_time_us(self) -> int:
        return _us(self.started_ns, self.ended_ns)


def _us(start: int | None, end: int | None) -> int:
    return 0 if start is None or end is None else (end - start) // 1000
