from kvmtimer.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MigrationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_METHOD_AUTO: _ClassVar[MigrationMethod]
    MIGRATION_METHOD_BY_VALUE: _ClassVar[MigrationMethod]
    MIGRATION_METHOD_VCPU_OFFSETS: _ClassVar[MigrationMethod]
    MIGRATION_METHOD_VM_COUNTER_OFFSET: _ClassVar[MigrationMethod]

class MigrationPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_PHASE_UNSPECIFIED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PENDING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SCHEDULING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SCHEDULED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PREPARING_TARGET: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_TARGET_READY: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_RUNNING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SUCCEEDED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_FAILED: _ClassVar[MigrationPhase]

class GuestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUEST_STATE_UNSPECIFIED: _ClassVar[GuestState]
    GUEST_STATE_RUNNING: _ClassVar[GuestState]
    GUEST_STATE_LOST: _ClassVar[GuestState]
    GUEST_STATE_CREATING: _ClassVar[GuestState]
MIGRATION_METHOD_AUTO: MigrationMethod
MIGRATION_METHOD_BY_VALUE: MigrationMethod
MIGRATION_METHOD_VCPU_OFFSETS: MigrationMethod
MIGRATION_METHOD_VM_COUNTER_OFFSET: MigrationMethod
MIGRATION_PHASE_UNSPECIFIED: MigrationPhase
MIGRATION_PHASE_PENDING: MigrationPhase
MIGRATION_PHASE_SCHEDULING: MigrationPhase
MIGRATION_PHASE_SCHEDULED: MigrationPhase
MIGRATION_PHASE_PREPARING_TARGET: MigrationPhase
MIGRATION_PHASE_TARGET_READY: MigrationPhase
MIGRATION_PHASE_RUNNING: MigrationPhase
MIGRATION_PHASE_SUCCEEDED: MigrationPhase
MIGRATION_PHASE_FAILED: MigrationPhase
GUEST_STATE_UNSPECIFIED: GuestState
GUEST_STATE_RUNNING: GuestState
GUEST_STATE_LOST: GuestState
GUEST_STATE_CREATING: GuestState

class WatchClusterTelemetryRequest(_message.Message):
    __slots__ = ("node_ids", "guest_ids", "events_only")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    GUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    guest_ids: _containers.RepeatedScalarFieldContainer[str]
    events_only: bool
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ..., guest_ids: _Optional[_Iterable[str]] = ..., events_only: _Optional[bool] = ...) -> None: ...

class NodeHealthEvent(_message.Message):
    __slots__ = ("node", "realtime_ns")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    node: NodeStatus
    realtime_ns: int
    def __init__(self, node: _Optional[_Union[NodeStatus, _Mapping]] = ..., realtime_ns: _Optional[int] = ...) -> None: ...

class ClusterTelemetry(_message.Message):
    __slots__ = ("samples", "migration", "node", "dropped")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    samples: _node_pb2.TelemetryBatch
    migration: MigrationEvent
    node: NodeHealthEvent
    dropped: int
    def __init__(self, samples: _Optional[_Union[_node_pb2.TelemetryBatch, _Mapping]] = ..., migration: _Optional[_Union[MigrationEvent, _Mapping]] = ..., node: _Optional[_Union[NodeHealthEvent, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "address", "healthy", "cntfrq_hz", "ecv", "vhe", "api_profile", "clock_mode", "has_cntpoff", "guest_count", "vcpu_count", "last_error", "orphans", "lost_guests")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    CNTFRQ_HZ_FIELD_NUMBER: _ClassVar[int]
    ECV_FIELD_NUMBER: _ClassVar[int]
    VHE_FIELD_NUMBER: _ClassVar[int]
    API_PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MODE_FIELD_NUMBER: _ClassVar[int]
    HAS_CNTPOFF_FIELD_NUMBER: _ClassVar[int]
    GUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    VCPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    LOST_GUESTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    healthy: bool
    cntfrq_hz: int
    ecv: int
    vhe: bool
    api_profile: _node_pb2.ApiProfile
    clock_mode: _node_pb2.ClockMode
    has_cntpoff: bool
    guest_count: int
    vcpu_count: int
    last_error: str
    orphans: _containers.RepeatedCompositeFieldContainer[OrphanVm]
    lost_guests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., cntfrq_hz: _Optional[int] = ..., ecv: _Optional[int] = ..., vhe: _Optional[bool] = ..., api_profile: _Optional[_Union[_node_pb2.ApiProfile, str]] = ..., clock_mode: _Optional[_Union[_node_pb2.ClockMode, str]] = ..., has_cntpoff: _Optional[bool] = ..., guest_count: _Optional[int] = ..., vcpu_count: _Optional[int] = ..., last_error: _Optional[str] = ..., orphans: _Optional[_Iterable[_Union[OrphanVm, _Mapping]]] = ..., lost_guests: _Optional[_Iterable[str]] = ...) -> None: ...

class OrphanVm(_message.Message):
    __slots__ = ("vm_id", "owner_guest_id", "owner_migration_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    owner_guest_id: str
    owner_migration_id: str
    def __init__(self, vm_id: _Optional[str] = ..., owner_guest_id: _Optional[str] = ..., owner_migration_id: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class CreateGuestRequest(_message.Message):
    __slots__ = ("guest_id", "vcpus", "workload", "node_id")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    vcpus: int
    workload: _node_pb2.WorkloadSpec
    node_id: str
    def __init__(self, guest_id: _Optional[str] = ..., vcpus: _Optional[int] = ..., workload: _Optional[_Union[_node_pb2.WorkloadSpec, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class Guest(_message.Message):
    __slots__ = ("guest_id", "node_id", "vm_id", "vcpus", "workload", "migrating", "migrations", "observations", "state", "state_reason", "generation")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    MIGRATING_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    node_id: str
    vm_id: str
    vcpus: int
    workload: _node_pb2.WorkloadSpec
    migrating: str
    migrations: int
    observations: _node_pb2.GuestObservations
    state: GuestState
    state_reason: str
    generation: int
    def __init__(self, guest_id: _Optional[str] = ..., node_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., vcpus: _Optional[int] = ..., workload: _Optional[_Union[_node_pb2.WorkloadSpec, _Mapping]] = ..., migrating: _Optional[str] = ..., migrations: _Optional[int] = ..., observations: _Optional[_Union[_node_pb2.GuestObservations, _Mapping]] = ..., state: _Optional[_Union[GuestState, str]] = ..., state_reason: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class ListGuestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGuestsResponse(_message.Message):
    __slots__ = ("guests",)
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    guests: _containers.RepeatedCompositeFieldContainer[Guest]
    def __init__(self, guests: _Optional[_Iterable[_Union[Guest, _Mapping]]] = ...) -> None: ...

class GetGuestRequest(_message.Message):
    __slots__ = ("guest_id",)
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    def __init__(self, guest_id: _Optional[str] = ...) -> None: ...

class DestroyGuestRequest(_message.Message):
    __slots__ = ("guest_id",)
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    def __init__(self, guest_id: _Optional[str] = ...) -> None: ...

class DestroyGuestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("guest_id", "destination", "method", "migration_id", "wait", "allow_state_loss")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_STATE_LOSS_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    destination: str
    method: MigrationMethod
    migration_id: str
    wait: bool
    allow_state_loss: bool
    def __init__(self, guest_id: _Optional[str] = ..., destination: _Optional[str] = ..., method: _Optional[_Union[MigrationMethod, str]] = ..., migration_id: _Optional[str] = ..., wait: _Optional[bool] = ..., allow_state_loss: _Optional[bool] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("migration_id", "guest_id", "source", "destination", "requested_method", "method", "phase", "reason", "setup_time", "downtime", "total_time", "counter_error_ticks", "traps_before", "traps_after", "source_traps_cntpct", "destination_traps_cntpct", "destination_uses_cntpoff", "applied_as", "cancelled", "created_realtime_ns", "finished_realtime_ns", "source_voffset", "source_poffset", "destination_voffset", "destination_poffset", "elapsed_ticks", "not_carried", "guest_uses_ptimer", "allow_state_loss", "realtime_skew_ns", "journal_step", "recovered")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_METHOD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SETUP_TIME_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_FIELD_NUMBER: _ClassVar[int]
    COUNTER_ERROR_TICKS_FIELD_NUMBER: _ClassVar[int]
    TRAPS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TRAPS_AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TRAPS_CNTPCT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_TRAPS_CNTPCT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_USES_CNTPOFF_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VOFFSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_POFFSET_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_VOFFSET_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_POFFSET_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TICKS_FIELD_NUMBER: _ClassVar[int]
    NOT_CARRIED_FIELD_NUMBER: _ClassVar[int]
    GUEST_USES_PTIMER_FIELD_NUMBER: _ClassVar[int]
    ALLOW_STATE_LOSS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_SKEW_NS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_STEP_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    guest_id: str
    source: str
    destination: str
    requested_method: MigrationMethod
    method: MigrationMethod
    phase: MigrationPhase
    reason: str
    setup_time: int
    downtime: int
    total_time: int
    counter_error_ticks: int
    traps_before: int
    traps_after: int
    source_traps_cntpct: bool
    destination_traps_cntpct: bool
    destination_uses_cntpoff: bool
    applied_as: str
    cancelled: bool
    created_realtime_ns: int
    finished_realtime_ns: int
    source_voffset: int
    source_poffset: int
    destination_voffset: int
    destination_poffset: int
    elapsed_ticks: int
    not_carried: _containers.RepeatedScalarFieldContainer[str]
    guest_uses_ptimer: bool
    allow_state_loss: bool
    realtime_skew_ns: int
    journal_step: str
    recovered: str
    def __init__(self, migration_id: _Optional[str] = ..., guest_id: _Optional[str] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., requested_method: _Optional[_Union[MigrationMethod, str]] = ..., method: _Optional[_Union[MigrationMethod, str]] = ..., phase: _Optional[_Union[MigrationPhase, str]] = ..., reason: _Optional[str] = ..., setup_time: _Optional[int] = ..., downtime: _Optional[int] = ..., total_time: _Optional[int] = ..., counter_error_ticks: _Optional[int] = ..., traps_before: _Optional[int] = ..., traps_after: _Optional[int] = ..., source_traps_cntpct: _Optional[bool] = ..., destination_traps_cntpct: _Optional[bool] = ..., destination_uses_cntpoff: _Optional[bool] = ..., applied_as: _Optional[str] = ..., cancelled: _Optional[bool] = ..., created_realtime_ns: _Optional[int] = ..., finished_realtime_ns: _Optional[int] = ..., source_voffset: _Optional[int] = ..., source_poffset: _Optional[int] = ..., destination_voffset: _Optional[int] = ..., destination_poffset: _Optional[int] = ..., elapsed_ticks: _Optional[int] = ..., not_carried: _Optional[_Iterable[str]] = ..., guest_uses_ptimer: _Optional[bool] = ..., allow_state_loss: _Optional[bool] = ..., realtime_skew_ns: _Optional[int] = ..., journal_step: _Optional[str] = ..., recovered: _Optional[str] = ...) -> None: ...

class CancelMigrationRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("guest_id",)
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    def __init__(self, guest_id: _Optional[str] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    def __init__(self, migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ...) -> None: ...

class WatchMigrationsRequest(_message.Message):
    __slots__ = ("include_existing",)
    INCLUDE_EXISTING_FIELD_NUMBER: _ClassVar[int]
    include_existing: bool
    def __init__(self, include_existing: _Optional[bool] = ...) -> None: ...

class MigrationEvent(_message.Message):
    __slots__ = ("migration", "step", "realtime_ns")
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    step: str
    realtime_ns: int
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ..., step: _Optional[str] = ..., realtime_ns: _Optional[int] = ...) -> None: ...
