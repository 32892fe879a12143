"""Live migration of guest time: method choice, the offset algorithm and the phase machine.

Pure: no I/O. The adapter (controller/service/migrator.py) executes the steps
against nodes and feeds the results back in.

Algorithm (spec §4.2): with the source paused, read the guest counters and the
source's (host counter, realtime) sample they were read at. On the destination,
sample its own pair and credit the guest with the real time that passed:

    elapsed   = max(0, RT_d - RT_s) * CNTFRQ / 1e9      (clamped: never backwards)
    voffset_d = H_d - (CNTVCT_s + elapsed)
    poffset_d = H_d - (CNTPCT_s + elapsed)

Because H_d and RT_d advance together, the result does not depend on when the
destination sample is taken: applying the same record twice gives the same offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from controller.core.errors import FailedPrecondition, InvalidArgument
from controller.core.model import GuestId, MigrationId, NodeId
from node.core.clock import NS_PER_S, U64_MASK
from node.core.features import ApiProfile, HostFeatures
from node.core.uapi import Cap, OneReg, reg_name, timer_reg_list


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
    RESTORE = "restore"
    RESUME = "resume"
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
class SourceSnapshot:
    """Guest counters read on the paused source, with the sample they were read at."""

    cntvct: int  # guest CNTVCT (TIMER_CNT)
    cntpct: int  # guest CNTPCT (PTIMER_CNT)
    host_counter: int  # source H at the read
    realtime_ns: int  # source CLOCK_REALTIME at the read
    cntfrq_hz: int  # counter frequency

    @property
    def voffset(self) -> int:
        return (self.host_counter - self.cntvct) & U64_MASK

    @property
    def poffset(self) -> int:
        return (self.host_counter - self.cntpct) & U64_MASK


@dataclass(frozen=True, slots=True)
class DestinationOffsets:
    """Offsets that make the guest counters continue in real time on the destination."""

    voffset: int  # destination virtual offset
    poffset: int  # destination physical offset
    elapsed_ticks: int  # real time between the two samples (0 when the destination sampled first)
    cntvct: int  # guest CNTVCT at the destination sample
    cntpct: int  # guest CNTPCT at the destination sample


def compute_destination_offsets(
    src: SourceSnapshot, dst_host_counter: int, dst_realtime_ns: int, *, now_realtime_ns: int | None = None
) -> DestinationOffsets:
    """The idempotent offset computation (spec §4.2), clamped so guest time never goes back.

    The destination pair may have been sampled before the source's (any pair of the
    destination gives the same offsets). `now_realtime_ns` is the destination's realtime
    when the offsets are applied (default: the sample's): if that is still behind the
    source's sample, the clocks are skewed and the guest is credited 0 elapsed time, as
    of now — never negative time.
    """
    now_realtime_ns = dst_realtime_ns if now_realtime_ns is None else now_realtime_ns
    elapsed_ns = dst_realtime_ns - src.realtime_ns + max(0, src.realtime_ns - now_realtime_ns)
    elapsed = elapsed_ns * src.cntfrq_hz // NS_PER_S
    cntvct = (src.cntvct + elapsed) & U64_MASK
    cntpct = (src.cntpct + elapsed) & U64_MASK
    return DestinationOffsets(
        voffset=(dst_host_counter - cntvct) & U64_MASK,
        poffset=(dst_host_counter - cntpct) & U64_MASK,
        elapsed_ticks=max(0, elapsed),
        cntvct=cntvct,
        cntpct=cntpct,
    )


@dataclass(frozen=True, slots=True)
class RegWrite:
    """One ONE_REG write on the destination."""

    vcpu_index: int
    reg_id: int
    value: int


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What to do on the destination, in order: caps, regs, counter offset, attr, post regs."""

    applied_as: str  # human description of the mechanism
    enable_caps: tuple[int, ...] = ()  # KVM_ENABLE_CAP on the VM
    regs: tuple[RegWrite, ...] = ()  # one SetRegs batch
    counter_offset: int | None = None  # KVM_ARM_SET_COUNTER_OFFSET
    phys_offset: int | None = None  # KVM_ARM_VCPU_TIMER_PHYS_OFFSET (broadcast; set on vCPU 0)
    post_regs: tuple[RegWrite, ...] = ()  # one SetRegs batch after the attribute
    counter_reference: int | None = None  # host counter at which `regs`' counter values hold
    offsets: DestinationOffsets | None = None  # the computed offsets (offset methods)


def plan_restore(
    method: Method,
    destination_ids: Sequence[int],
    src: SourceSnapshot,
    timer_regs: tuple[RegWrite, ...],
    dst_sample: tuple[int, int],
    *,
    dst_now_realtime_ns: int | None = None,
) -> RestorePlan:
    """How `method` is applied on this destination. Timer CVAL/CTL are copied verbatim
    (they live in the guest's counter domain, which the offsets preserve)."""
    if method is Method.BY_VALUE:
        # QEMU's default: the saved values, as they were at the pause. Guest time stalls.
        counters = [RegWrite(0, OneReg.TIMER_CNT, src.cntvct)]
        if OneReg.PTIMER_CNT in destination_ids:
            counters.append(RegWrite(0, OneReg.PTIMER_CNT, src.cntpct))
        return RestorePlan("TIMER_CNT by value (saved at pause)", regs=(*timer_regs, *counters))

    offsets = compute_destination_offsets(src, *dst_sample, now_realtime_ns=dst_now_realtime_ns)
    if method is Method.VM_COUNTER_OFFSET:
        if offsets.voffset == offsets.poffset:
            return RestorePlan(
                "KVM_ARM_SET_COUNTER_OFFSET", regs=timer_regs, counter_offset=offsets.voffset, offsets=offsets
            )
        # The VM-wide ioctl forces CNTVCT == CNTPCT; this guest's counters differ, so
        # write both counters as computed for the destination sample instead.
        return RestorePlan(
            "TIMER_CNT+PTIMER_CNT computed from offsets (guest counters differ)",
            regs=(
                *timer_regs,
                RegWrite(0, OneReg.TIMER_CNT, offsets.cntvct),
                RegWrite(0, OneReg.PTIMER_CNT, offsets.cntpct),
            ),
            offsets=offsets,
            counter_reference=dst_sample[0],
        )
    if method is Method.VCPU_OFFSETS:
        # P first (it moves the virtual total with it), then the guest's own CNTVOFF.
        return RestorePlan(
            "KVM_ARM_VCPU_TIMER_PHYS_OFFSET + KVM_REG_ARM_TIMER_OFFSET",
            enable_caps=(Cap.ARM_VTIMER_OFFSET,),
            regs=timer_regs,
            phys_offset=offsets.poffset,
            post_regs=(RegWrite(0, OneReg.TIMER_OFFSET, (offsets.voffset - offsets.poffset) & U64_MASK),),
            offsets=offsets,
        )
    raise InvalidArgument(f"method {method.name} has no restore plan")


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
    paused_realtime_ns: int | None = None  # node realtime when the source stopped
    resumed_realtime_ns: int | None = None  # node realtime when the destination continued
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
    elapsed_ticks: int = 0
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
        """Source stopped -> destination continued, as the nodes' clocks saw it."""
        return _us(self.paused_realtime_ns, self.resumed_realtime_ns)

    def total_time_us(self) -> int:
        return _us(self.started_ns, self.ended_ns)


def _us(start: int | None, end: int | None) -> int:
    return 0 if start is None or end is None else (end - start) // 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """KubeVirt's defaults: 5 migrations in the cluster, 2 outbound per node."""

    parallel: int = 5
    outbound_per_node: int = 2

    def can_start(self, source: NodeId, running: list[MigrationRecord]) -> bool:
        live = [m for m in running if not m.phase.terminal and m.phase is not Phase.PENDING]
        outbound = sum(1 for m in live if m.source == source)
        return len(live) < self.parallel and outbound < self.outbound_per_node
