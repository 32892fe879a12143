from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiProfile(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_PROFILE_UNSPECIFIED: _ClassVar[ApiProfile]
    API_PROFILE_BY_VALUE: _ClassVar[ApiProfile]
    API_PROFILE_VCPU_OFFSETS: _ClassVar[ApiProfile]
    API_PROFILE_VM_COUNTER_OFFSET: _ClassVar[ApiProfile]

class ClockMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOCK_MODE_UNSPECIFIED: _ClassVar[ClockMode]
    CLOCK_MODE_REALTIME: _ClassVar[ClockMode]
    CLOCK_MODE_SIMULATED: _ClassVar[ClockMode]

class SysReg(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYS_REG_UNSPECIFIED: _ClassVar[SysReg]
    SYS_REG_CNTFRQ_EL0: _ClassVar[SysReg]
    SYS_REG_CNTVCT_EL0: _ClassVar[SysReg]
    SYS_REG_CNTPCT_EL0: _ClassVar[SysReg]
    SYS_REG_CNTVCTSS_EL0: _ClassVar[SysReg]
    SYS_REG_CNTPCTSS_EL0: _ClassVar[SysReg]
    SYS_REG_CNTV_CTL_EL0: _ClassVar[SysReg]
    SYS_REG_CNTV_CVAL_EL0: _ClassVar[SysReg]
    SYS_REG_CNTV_TVAL_EL0: _ClassVar[SysReg]
    SYS_REG_CNTP_CTL_EL0: _ClassVar[SysReg]
    SYS_REG_CNTP_CVAL_EL0: _ClassVar[SysReg]
    SYS_REG_CNTP_TVAL_EL0: _ClassVar[SysReg]

class TimerId(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMER_ID_VTIMER: _ClassVar[TimerId]
    TIMER_ID_PTIMER: _ClassVar[TimerId]
    TIMER_ID_HVTIMER: _ClassVar[TimerId]
    TIMER_ID_HPTIMER: _ClassVar[TimerId]

class CounterRestoreMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COUNTER_RESTORE_METHOD_UNSPECIFIED: _ClassVar[CounterRestoreMethod]
    COUNTER_RESTORE_METHOD_BY_VALUE: _ClassVar[CounterRestoreMethod]
    COUNTER_RESTORE_METHOD_VCPU_OFFSETS: _ClassVar[CounterRestoreMethod]
    COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET: _ClassVar[CounterRestoreMethod]

class SampleCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_CAUSE_UNSPECIFIED: _ClassVar[SampleCause]
    SAMPLE_CAUSE_START: _ClassVar[SampleCause]
    SAMPLE_CAUSE_VTIMER_IRQ: _ClassVar[SampleCause]
    SAMPLE_CAUSE_PTIMER_IRQ: _ClassVar[SampleCause]
    SAMPLE_CAUSE_PAUSE: _ClassVar[SampleCause]
    SAMPLE_CAUSE_RESUME: _ClassVar[SampleCause]
API_PROFILE_UNSPECIFIED: ApiProfile
API_PROFILE_BY_VALUE: ApiProfile
API_PROFILE_VCPU_OFFSETS: ApiProfile
API_PROFILE_VM_COUNTER_OFFSET: ApiProfile
CLOCK_MODE_UNSPECIFIED: ClockMode
CLOCK_MODE_REALTIME: ClockMode
CLOCK_MODE_SIMULATED: ClockMode
SYS_REG_UNSPECIFIED: SysReg
SYS_REG_CNTFRQ_EL0: SysReg
SYS_REG_CNTVCT_EL0: SysReg
SYS_REG_CNTPCT_EL0: SysReg
SYS_REG_CNTVCTSS_EL0: SysReg
SYS_REG_CNTPCTSS_EL0: SysReg
SYS_REG_CNTV_CTL_EL0: SysReg
SYS_REG_CNTV_CVAL_EL0: SysReg
SYS_REG_CNTV_TVAL_EL0: SysReg
SYS_REG_CNTP_CTL_EL0: SysReg
SYS_REG_CNTP_CVAL_EL0: SysReg
SYS_REG_CNTP_TVAL_EL0: SysReg
TIMER_ID_VTIMER: TimerId
TIMER_ID_PTIMER: TimerId
TIMER_ID_HVTIMER: TimerId
TIMER_ID_HPTIMER: TimerId
COUNTER_RESTORE_METHOD_UNSPECIFIED: CounterRestoreMethod
COUNTER_RESTORE_METHOD_BY_VALUE: CounterRestoreMethod
COUNTER_RESTORE_METHOD_VCPU_OFFSETS: CounterRestoreMethod
COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET: CounterRestoreMethod
SAMPLE_CAUSE_UNSPECIFIED: SampleCause
SAMPLE_CAUSE_START: SampleCause
SAMPLE_CAUSE_VTIMER_IRQ: SampleCause
SAMPLE_CAUSE_PTIMER_IRQ: SampleCause
SAMPLE_CAUSE_PAUSE: SampleCause
SAMPLE_CAUSE_RESUME: SampleCause

class CounterRecord(_message.Message):
    __slots__ = ("cntvct", "cntpct", "host_counter", "realtime_ns", "cntfrq_hz")
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    CNTPCT_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CNTFRQ_HZ_FIELD_NUMBER: _ClassVar[int]
    cntvct: int
    cntpct: int
    host_counter: int
    realtime_ns: int
    cntfrq_hz: int
    def __init__(self, cntvct: _Optional[int] = ..., cntpct: _Optional[int] = ..., host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., cntfrq_hz: _Optional[int] = ...) -> None: ...

class ApplyCounterRecordRequest(_message.Message):
    __slots__ = ("vm_id", "record", "method")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    record: CounterRecord
    method: CounterRestoreMethod
    def __init__(self, vm_id: _Optional[str] = ..., record: _Optional[_Union[CounterRecord, _Mapping]] = ..., method: _Optional[_Union[CounterRestoreMethod, str]] = ...) -> None: ...

class ApplyCounterRecordResponse(_message.Message):
    __slots__ = ("host_counter", "realtime_ns", "elapsed_ns", "elapsed_ticks", "cntvct", "cntpct", "voffset", "poffset", "applied_as", "realtime_offset_ns")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_NS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TICKS_FIELD_NUMBER: _ClassVar[int]
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    CNTPCT_FIELD_NUMBER: _ClassVar[int]
    VOFFSET_FIELD_NUMBER: _ClassVar[int]
    POFFSET_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    realtime_ns: int
    elapsed_ns: int
    elapsed_ticks: int
    cntvct: int
    cntpct: int
    voffset: int
    poffset: int
    applied_as: str
    realtime_offset_ns: int
    def __init__(self, host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., elapsed_ns: _Optional[int] = ..., elapsed_ticks: _Optional[int] = ..., cntvct: _Optional[int] = ..., cntpct: _Optional[int] = ..., voffset: _Optional[int] = ..., poffset: _Optional[int] = ..., applied_as: _Optional[str] = ..., realtime_offset_ns: _Optional[int] = ...) -> None: ...

class SetClockEffectsRequest(_message.Message):
    __slots__ = ("skew_ns", "drift_ppm", "step_ns")
    SKEW_NS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_PPM_FIELD_NUMBER: _ClassVar[int]
    STEP_NS_FIELD_NUMBER: _ClassVar[int]
    skew_ns: int
    drift_ppm: float
    step_ns: int
    def __init__(self, skew_ns: _Optional[int] = ..., drift_ppm: _Optional[float] = ..., step_ns: _Optional[int] = ...) -> None: ...

class ClockEffectsState(_message.Message):
    __slots__ = ("skew_ns", "drift_ppm", "drift_ns", "stepped_ns", "offset_ns", "host_counter", "realtime_ns")
    SKEW_NS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_PPM_FIELD_NUMBER: _ClassVar[int]
    DRIFT_NS_FIELD_NUMBER: _ClassVar[int]
    STEPPED_NS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    skew_ns: int
    drift_ppm: float
    drift_ns: int
    stepped_ns: int
    offset_ns: int
    host_counter: int
    realtime_ns: int
    def __init__(self, skew_ns: _Optional[int] = ..., drift_ppm: _Optional[float] = ..., drift_ns: _Optional[int] = ..., stepped_ns: _Optional[int] = ..., offset_ns: _Optional[int] = ..., host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ...) -> None: ...

class WatchTelemetryRequest(_message.Message):
    __slots__ = ("rate_hz", "vm_ids", "max_batch")
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    VM_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    rate_hz: float
    vm_ids: _containers.RepeatedScalarFieldContainer[str]
    max_batch: int
    def __init__(self, rate_hz: _Optional[float] = ..., vm_ids: _Optional[_Iterable[str]] = ..., max_batch: _Optional[int] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("node_id", "vm_id", "vcpu_index", "realtime_ns", "host_counter", "cntvct", "cntpct", "voffset", "poffset", "uses_cntpoff", "traps_cntpct", "traps_ptimer", "trap_count", "vtimer_ctl", "vtimer_cval", "vtimer_level", "ptimer_ctl", "ptimer_cval", "ptimer_level", "guest_id", "running")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    CNTPCT_FIELD_NUMBER: _ClassVar[int]
    VOFFSET_FIELD_NUMBER: _ClassVar[int]
    POFFSET_FIELD_NUMBER: _ClassVar[int]
    USES_CNTPOFF_FIELD_NUMBER: _ClassVar[int]
    TRAPS_CNTPCT_FIELD_NUMBER: _ClassVar[int]
    TRAPS_PTIMER_FIELD_NUMBER: _ClassVar[int]
    TRAP_COUNT_FIELD_NUMBER: _ClassVar[int]
    VTIMER_CTL_FIELD_NUMBER: _ClassVar[int]
    VTIMER_CVAL_FIELD_NUMBER: _ClassVar[int]
    VTIMER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PTIMER_CTL_FIELD_NUMBER: _ClassVar[int]
    PTIMER_CVAL_FIELD_NUMBER: _ClassVar[int]
    PTIMER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    vm_id: str
    vcpu_index: int
    realtime_ns: int
    host_counter: int
    cntvct: int
    cntpct: int
    voffset: int
    poffset: int
    uses_cntpoff: bool
    traps_cntpct: bool
    traps_ptimer: bool
    trap_count: int
    vtimer_ctl: int
    vtimer_cval: int
    vtimer_level: bool
    ptimer_ctl: int
    ptimer_cval: int
    ptimer_level: bool
    guest_id: str
    running: bool
    def __init__(self, node_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., host_counter: _Optional[int] = ..., cntvct: _Optional[int] = ..., cntpct: _Optional[int] = ..., voffset: _Optional[int] = ..., poffset: _Optional[int] = ..., uses_cntpoff: _Optional[bool] = ..., traps_cntpct: _Optional[bool] = ..., traps_ptimer: _Optional[bool] = ..., trap_count: _Optional[int] = ..., vtimer_ctl: _Optional[int] = ..., vtimer_cval: _Optional[int] = ..., vtimer_level: _Optional[bool] = ..., ptimer_ctl: _Optional[int] = ..., ptimer_cval: _Optional[int] = ..., ptimer_level: _Optional[bool] = ..., guest_id: _Optional[str] = ..., running: _Optional[bool] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("samples", "dropped", "sequence")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[TelemetrySample]
    dropped: int
    sequence: int
    def __init__(self, samples: _Optional[_Iterable[_Union[TelemetrySample, _Mapping]]] = ..., dropped: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class BatchCall(_message.Message):
    __slots__ = ("pause_vm", "resume_vm", "get_regs", "set_regs", "set_counter_offset", "set_device_attr", "get_device_attr", "enable_cap", "save_workload", "load_workload", "get_vcpu_state", "get_clock", "create_vm", "create_vcpu", "destroy_vm", "start_workload", "get_guest_observations", "apply_counter_record", "get_reg_list")
    PAUSE_VM_FIELD_NUMBER: _ClassVar[int]
    RESUME_VM_FIELD_NUMBER: _ClassVar[int]
    GET_REGS_FIELD_NUMBER: _ClassVar[int]
    SET_REGS_FIELD_NUMBER: _ClassVar[int]
    SET_COUNTER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SET_DEVICE_ATTR_FIELD_NUMBER: _ClassVar[int]
    GET_DEVICE_ATTR_FIELD_NUMBER: _ClassVar[int]
    ENABLE_CAP_FIELD_NUMBER: _ClassVar[int]
    SAVE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    LOAD_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    GET_VCPU_STATE_FIELD_NUMBER: _ClassVar[int]
    GET_CLOCK_FIELD_NUMBER: _ClassVar[int]
    CREATE_VM_FIELD_NUMBER: _ClassVar[int]
    CREATE_VCPU_FIELD_NUMBER: _ClassVar[int]
    DESTROY_VM_FIELD_NUMBER: _ClassVar[int]
    START_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    GET_GUEST_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    APPLY_COUNTER_RECORD_FIELD_NUMBER: _ClassVar[int]
    GET_REG_LIST_FIELD_NUMBER: _ClassVar[int]
    pause_vm: PauseVmRequest
    resume_vm: ResumeVmRequest
    get_regs: GetRegsRequest
    set_regs: SetRegsRequest
    set_counter_offset: SetCounterOffsetRequest
    set_device_attr: SetDeviceAttrRequest
    get_device_attr: DeviceAttrRequest
    enable_cap: EnableCapRequest
    save_workload: SaveWorkloadRequest
    load_workload: LoadWorkloadRequest
    get_vcpu_state: GetVcpuStateRequest
    get_clock: GetClockRequest
    create_vm: CreateVmRequest
    create_vcpu: CreateVcpuRequest
    destroy_vm: DestroyVmRequest
    start_workload: StartWorkloadRequest
    get_guest_observations: GetGuestObservationsRequest
    apply_counter_record: ApplyCounterRecordRequest
    get_reg_list: GetRegListRequest
    def __init__(self, pause_vm: _Optional[_Union[PauseVmRequest, _Mapping]] = ..., resume_vm: _Optional[_Union[ResumeVmRequest, _Mapping]] = ..., get_regs: _Optional[_Union[GetRegsRequest, _Mapping]] = ..., set_regs: _Optional[_Union[SetRegsRequest, _Mapping]] = ..., set_counter_offset: _Optional[_Union[SetCounterOffsetRequest, _Mapping]] = ..., set_device_attr: _Optional[_Union[SetDeviceAttrRequest, _Mapping]] = ..., get_device_attr: _Optional[_Union[DeviceAttrRequest, _Mapping]] = ..., enable_cap: _Optional[_Union[EnableCapRequest, _Mapping]] = ..., save_workload: _Optional[_Union[SaveWorkloadRequest, _Mapping]] = ..., load_workload: _Optional[_Union[LoadWorkloadRequest, _Mapping]] = ..., get_vcpu_state: _Optional[_Union[GetVcpuStateRequest, _Mapping]] = ..., get_clock: _Optional[_Union[GetClockRequest, _Mapping]] = ..., create_vm: _Optional[_Union[CreateVmRequest, _Mapping]] = ..., create_vcpu: _Optional[_Union[CreateVcpuRequest, _Mapping]] = ..., destroy_vm: _Optional[_Union[DestroyVmRequest, _Mapping]] = ..., start_workload: _Optional[_Union[StartWorkloadRequest, _Mapping]] = ..., get_guest_observations: _Optional[_Union[GetGuestObservationsRequest, _Mapping]] = ..., apply_counter_record: _Optional[_Union[ApplyCounterRecordRequest, _Mapping]] = ..., get_reg_list: _Optional[_Union[GetRegListRequest, _Mapping]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("pause_vm", "resume_vm", "get_regs", "set_regs", "set_counter_offset", "set_device_attr", "get_device_attr", "enable_cap", "save_workload", "load_workload", "get_vcpu_state", "get_clock", "create_vm", "create_vcpu", "destroy_vm", "start_workload", "get_guest_observations", "apply_counter_record", "get_reg_list")
    PAUSE_VM_FIELD_NUMBER: _ClassVar[int]
    RESUME_VM_FIELD_NUMBER: _ClassVar[int]
    GET_REGS_FIELD_NUMBER: _ClassVar[int]
    SET_REGS_FIELD_NUMBER: _ClassVar[int]
    SET_COUNTER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SET_DEVICE_ATTR_FIELD_NUMBER: _ClassVar[int]
    GET_DEVICE_ATTR_FIELD_NUMBER: _ClassVar[int]
    ENABLE_CAP_FIELD_NUMBER: _ClassVar[int]
    SAVE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    LOAD_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    GET_VCPU_STATE_FIELD_NUMBER: _ClassVar[int]
    GET_CLOCK_FIELD_NUMBER: _ClassVar[int]
    CREATE_VM_FIELD_NUMBER: _ClassVar[int]
    CREATE_VCPU_FIELD_NUMBER: _ClassVar[int]
    DESTROY_VM_FIELD_NUMBER: _ClassVar[int]
    START_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    GET_GUEST_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    APPLY_COUNTER_RECORD_FIELD_NUMBER: _ClassVar[int]
    GET_REG_LIST_FIELD_NUMBER: _ClassVar[int]
    pause_vm: PauseVmResponse
    resume_vm: ResumeVmResponse
    get_regs: GetRegsResponse
    set_regs: SetRegsResponse
    set_counter_offset: SetCounterOffsetResponse
    set_device_attr: SetDeviceAttrResponse
    get_device_attr: GetDeviceAttrResponse
    enable_cap: EnableCapResponse
    save_workload: WorkloadState
    load_workload: LoadWorkloadResponse
    get_vcpu_state: VcpuStateInfo
    get_clock: GetClockResponse
    create_vm: CreateVmResponse
    create_vcpu: CreateVcpuResponse
    destroy_vm: DestroyVmResponse
    start_workload: StartWorkloadResponse
    get_guest_observations: GuestObservations
    apply_counter_record: ApplyCounterRecordResponse
    get_reg_list: GetRegListResponse
    def __init__(self, pause_vm: _Optional[_Union[PauseVmResponse, _Mapping]] = ..., resume_vm: _Optional[_Union[ResumeVmResponse, _Mapping]] = ..., get_regs: _Optional[_Union[GetRegsResponse, _Mapping]] = ..., set_regs: _Optional[_Union[SetRegsResponse, _Mapping]] = ..., set_counter_offset: _Optional[_Union[SetCounterOffsetResponse, _Mapping]] = ..., set_device_attr: _Optional[_Union[SetDeviceAttrResponse, _Mapping]] = ..., get_device_attr: _Optional[_Union[GetDeviceAttrResponse, _Mapping]] = ..., enable_cap: _Optional[_Union[EnableCapResponse, _Mapping]] = ..., save_workload: _Optional[_Union[WorkloadState, _Mapping]] = ..., load_workload: _Optional[_Union[LoadWorkloadResponse, _Mapping]] = ..., get_vcpu_state: _Optional[_Union[VcpuStateInfo, _Mapping]] = ..., get_clock: _Optional[_Union[GetClockResponse, _Mapping]] = ..., create_vm: _Optional[_Union[CreateVmResponse, _Mapping]] = ..., create_vcpu: _Optional[_Union[CreateVcpuResponse, _Mapping]] = ..., destroy_vm: _Optional[_Union[DestroyVmResponse, _Mapping]] = ..., start_workload: _Optional[_Union[StartWorkloadResponse, _Mapping]] = ..., get_guest_observations: _Optional[_Union[GuestObservations, _Mapping]] = ..., apply_counter_record: _Optional[_Union[ApplyCounterRecordResponse, _Mapping]] = ..., get_reg_list: _Optional[_Union[GetRegListResponse, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[BatchCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[BatchCall, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...

class WorkloadSpec(_message.Message):
    __slots__ = ("period_ticks", "use_ptimer")
    PERIOD_TICKS_FIELD_NUMBER: _ClassVar[int]
    USE_PTIMER_FIELD_NUMBER: _ClassVar[int]
    period_ticks: int
    use_ptimer: bool
    def __init__(self, period_ticks: _Optional[int] = ..., use_ptimer: _Optional[bool] = ...) -> None: ...

class StartWorkloadRequest(_message.Message):
    __slots__ = ("vm_id", "spec")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    spec: WorkloadSpec
    def __init__(self, vm_id: _Optional[str] = ..., spec: _Optional[_Union[WorkloadSpec, _Mapping]] = ...) -> None: ...

class StartWorkloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CounterSample(_message.Message):
    __slots__ = ("cntvct", "cntpct", "realtime_ns", "cause")
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    CNTPCT_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    cntvct: int
    cntpct: int
    realtime_ns: int
    cause: SampleCause
    def __init__(self, cntvct: _Optional[int] = ..., cntpct: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., cause: _Optional[_Union[SampleCause, str]] = ...) -> None: ...

class TimerStatsState(_message.Message):
    __slots__ = ("first_deadline", "next_deadline", "received", "max_lateness_ticks", "total_lateness_ticks")
    FIRST_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    NEXT_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENESS_TICKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENESS_TICKS_FIELD_NUMBER: _ClassVar[int]
    first_deadline: int
    next_deadline: int
    received: int
    max_lateness_ticks: int
    total_lateness_ticks: int
    def __init__(self, first_deadline: _Optional[int] = ..., next_deadline: _Optional[int] = ..., received: _Optional[int] = ..., max_lateness_ticks: _Optional[int] = ..., total_lateness_ticks: _Optional[int] = ...) -> None: ...

class VcpuWorkloadState(_message.Message):
    __slots__ = ("vcpu_index", "vtimer", "ptimer", "reads", "last_cntvct", "last_cntpct", "min_step_v", "min_step_p", "pause_sample", "last_jump_error_ticks", "last_stop_ns", "samples")
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    VTIMER_FIELD_NUMBER: _ClassVar[int]
    PTIMER_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    LAST_CNTVCT_FIELD_NUMBER: _ClassVar[int]
    LAST_CNTPCT_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_V_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_P_FIELD_NUMBER: _ClassVar[int]
    PAUSE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    LAST_JUMP_ERROR_TICKS_FIELD_NUMBER: _ClassVar[int]
    LAST_STOP_NS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    vcpu_index: int
    vtimer: TimerStatsState
    ptimer: TimerStatsState
    reads: int
    last_cntvct: int
    last_cntpct: int
    min_step_v: int
    min_step_p: int
    pause_sample: CounterSample
    last_jump_error_ticks: int
    last_stop_ns: int
    samples: _containers.RepeatedCompositeFieldContainer[CounterSample]
    def __init__(self, vcpu_index: _Optional[int] = ..., vtimer: _Optional[_Union[TimerStatsState, _Mapping]] = ..., ptimer: _Optional[_Union[TimerStatsState, _Mapping]] = ..., reads: _Optional[int] = ..., last_cntvct: _Optional[int] = ..., last_cntpct: _Optional[int] = ..., min_step_v: _Optional[int] = ..., min_step_p: _Optional[int] = ..., pause_sample: _Optional[_Union[CounterSample, _Mapping]] = ..., last_jump_error_ticks: _Optional[int] = ..., last_stop_ns: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[CounterSample, _Mapping]]] = ...) -> None: ...

class WorkloadState(_message.Message):
    __slots__ = ("spec", "cntfrq_hz", "vcpus")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CNTFRQ_HZ_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    spec: WorkloadSpec
    cntfrq_hz: int
    vcpus: _containers.RepeatedCompositeFieldContainer[VcpuWorkloadState]
    def __init__(self, spec: _Optional[_Union[WorkloadSpec, _Mapping]] = ..., cntfrq_hz: _Optional[int] = ..., vcpus: _Optional[_Iterable[_Union[VcpuWorkloadState, _Mapping]]] = ...) -> None: ...

class SaveWorkloadRequest(_message.Message):
    __slots__ = ("vm_id", "live", "delta", "since_reads")
    class SinceReadsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SINCE_READS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    live: bool
    delta: bool
    since_reads: _containers.ScalarMap[int, int]
    def __init__(self, vm_id: _Optional[str] = ..., live: _Optional[bool] = ..., delta: _Optional[bool] = ..., since_reads: _Optional[_Mapping[int, int]] = ...) -> None: ...

class LoadWorkloadRequest(_message.Message):
    __slots__ = ("vm_id", "state", "merge")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    state: WorkloadState
    merge: bool
    def __init__(self, vm_id: _Optional[str] = ..., state: _Optional[_Union[WorkloadState, _Mapping]] = ..., merge: _Optional[bool] = ...) -> None: ...

class LoadWorkloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetGuestObservationsRequest(_message.Message):
    __slots__ = ("vm_id", "include_samples")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    include_samples: bool
    def __init__(self, vm_id: _Optional[str] = ..., include_samples: _Optional[bool] = ...) -> None: ...

class VcpuObservations(_message.Message):
    __slots__ = ("vcpu_index", "reads", "min_step_v", "min_step_p", "vtimer_received", "vtimer_expected", "ptimer_received", "ptimer_expected", "max_lateness_ticks", "last_jump_error_ticks", "last_stop_ns", "samples", "trap_count", "cntvct", "total_lateness_ticks")
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_V_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_P_FIELD_NUMBER: _ClassVar[int]
    VTIMER_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    VTIMER_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    PTIMER_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PTIMER_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENESS_TICKS_FIELD_NUMBER: _ClassVar[int]
    LAST_JUMP_ERROR_TICKS_FIELD_NUMBER: _ClassVar[int]
    LAST_STOP_NS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAP_COUNT_FIELD_NUMBER: _ClassVar[int]
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENESS_TICKS_FIELD_NUMBER: _ClassVar[int]
    vcpu_index: int
    reads: int
    min_step_v: int
    min_step_p: int
    vtimer_received: int
    vtimer_expected: int
    ptimer_received: int
    ptimer_expected: int
    max_lateness_ticks: int
    last_jump_error_ticks: int
    last_stop_ns: int
    samples: _containers.RepeatedCompositeFieldContainer[CounterSample]
    trap_count: int
    cntvct: int
    total_lateness_ticks: int
    def __init__(self, vcpu_index: _Optional[int] = ..., reads: _Optional[int] = ..., min_step_v: _Optional[int] = ..., min_step_p: _Optional[int] = ..., vtimer_received: _Optional[int] = ..., vtimer_expected: _Optional[int] = ..., ptimer_received: _Optional[int] = ..., ptimer_expected: _Optional[int] = ..., max_lateness_ticks: _Optional[int] = ..., last_jump_error_ticks: _Optional[int] = ..., last_stop_ns: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[CounterSample, _Mapping]]] = ..., trap_count: _Optional[int] = ..., cntvct: _Optional[int] = ..., total_lateness_ticks: _Optional[int] = ...) -> None: ...

class GuestObservations(_message.Message):
    __slots__ = ("vm_id", "running", "spec", "vcpus", "host_counter")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    running: bool
    spec: WorkloadSpec
    vcpus: _containers.RepeatedCompositeFieldContainer[VcpuObservations]
    host_counter: int
    def __init__(self, vm_id: _Optional[str] = ..., running: _Optional[bool] = ..., spec: _Optional[_Union[WorkloadSpec, _Mapping]] = ..., vcpus: _Optional[_Iterable[_Union[VcpuObservations, _Mapping]]] = ..., host_counter: _Optional[int] = ...) -> None: ...

class GetHostInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("node_id", "cntfrq_hz", "ecv", "vhe", "api_profile", "clock_mode", "host_counter", "realtime_ns", "nv", "has_cntpoff", "vm_count", "vcpu_count", "realtime_skew_ns", "realtime_drift_ppm", "realtime_offset_ns")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CNTFRQ_HZ_FIELD_NUMBER: _ClassVar[int]
    ECV_FIELD_NUMBER: _ClassVar[int]
    VHE_FIELD_NUMBER: _ClassVar[int]
    API_PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MODE_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NV_FIELD_NUMBER: _ClassVar[int]
    HAS_CNTPOFF_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    VCPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    REALTIME_SKEW_NS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_DRIFT_PPM_FIELD_NUMBER: _ClassVar[int]
    REALTIME_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cntfrq_hz: int
    ecv: int
    vhe: bool
    api_profile: ApiProfile
    clock_mode: ClockMode
    host_counter: int
    realtime_ns: int
    nv: bool
    has_cntpoff: bool
    vm_count: int
    vcpu_count: int
    realtime_skew_ns: int
    realtime_drift_ppm: float
    realtime_offset_ns: int
    def __init__(self, node_id: _Optional[str] = ..., cntfrq_hz: _Optional[int] = ..., ecv: _Optional[int] = ..., vhe: _Optional[bool] = ..., api_profile: _Optional[_Union[ApiProfile, str]] = ..., clock_mode: _Optional[_Union[ClockMode, str]] = ..., host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., nv: _Optional[bool] = ..., has_cntpoff: _Optional[bool] = ..., vm_count: _Optional[int] = ..., vcpu_count: _Optional[int] = ..., realtime_skew_ns: _Optional[int] = ..., realtime_drift_ppm: _Optional[float] = ..., realtime_offset_ns: _Optional[int] = ...) -> None: ...

class CheckExtensionRequest(_message.Message):
    __slots__ = ("cap",)
    CAP_FIELD_NUMBER: _ClassVar[int]
    cap: int
    def __init__(self, cap: _Optional[int] = ...) -> None: ...

class CheckExtensionResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class EnableCapRequest(_message.Message):
    __slots__ = ("vm_id", "cap", "args")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    cap: int
    args: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, vm_id: _Optional[str] = ..., cap: _Optional[int] = ..., args: _Optional[_Iterable[int]] = ...) -> None: ...

class EnableCapResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateVmRequest(_message.Message):
    __slots__ = ("vm_id", "userspace_irqchip", "owner")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    USERSPACE_IRQCHIP_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    userspace_irqchip: bool
    owner: VmOwner
    def __init__(self, vm_id: _Optional[str] = ..., userspace_irqchip: _Optional[bool] = ..., owner: _Optional[_Union[VmOwner, _Mapping]] = ...) -> None: ...

class VmOwner(_message.Message):
    __slots__ = ("guest_id", "migration_id", "generation")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    migration_id: str
    generation: int
    def __init__(self, guest_id: _Optional[str] = ..., migration_id: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class CreateVmResponse(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class DestroyVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class DestroyVmResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VmSummary(_message.Message):
    __slots__ = ("vm_id", "vcpu_count", "running", "voffset", "poffset", "owner")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VOFFSET_FIELD_NUMBER: _ClassVar[int]
    POFFSET_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_count: int
    running: bool
    voffset: int
    poffset: int
    owner: VmOwner
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_count: _Optional[int] = ..., running: _Optional[bool] = ..., voffset: _Optional[int] = ..., poffset: _Optional[int] = ..., owner: _Optional[_Union[VmOwner, _Mapping]] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VmSummary]
    def __init__(self, vms: _Optional[_Iterable[_Union[VmSummary, _Mapping]]] = ...) -> None: ...

class CreateVcpuRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ...) -> None: ...

class CreateVcpuResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetVcpuRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ...) -> None: ...

class ResetVcpuResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOneRegRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index", "reg_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    REG_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    reg_id: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., reg_id: _Optional[int] = ...) -> None: ...

class GetOneRegResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class SetOneRegRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index", "reg_id", "value")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    REG_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    reg_id: int
    value: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., reg_id: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class SetOneRegResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRegListRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ...) -> None: ...

class GetRegListResponse(_message.Message):
    __slots__ = ("reg_ids",)
    REG_IDS_FIELD_NUMBER: _ClassVar[int]
    reg_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reg_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RegValue(_message.Message):
    __slots__ = ("vcpu_index", "reg_id", "value")
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    REG_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    vcpu_index: int
    reg_id: int
    value: int
    def __init__(self, vcpu_index: _Optional[int] = ..., reg_id: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class GetRegsRequest(_message.Message):
    __slots__ = ("vm_id", "regs")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REGS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    regs: _containers.RepeatedCompositeFieldContainer[RegValue]
    def __init__(self, vm_id: _Optional[str] = ..., regs: _Optional[_Iterable[_Union[RegValue, _Mapping]]] = ...) -> None: ...

class GetRegsResponse(_message.Message):
    __slots__ = ("regs", "host_counter", "realtime_ns", "realtime_offset_ns")
    REGS_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    REALTIME_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    regs: _containers.RepeatedCompositeFieldContainer[RegValue]
    host_counter: int
    realtime_ns: int
    realtime_offset_ns: int
    def __init__(self, regs: _Optional[_Iterable[_Union[RegValue, _Mapping]]] = ..., host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., realtime_offset_ns: _Optional[int] = ...) -> None: ...

class SetRegsRequest(_message.Message):
    __slots__ = ("vm_id", "regs", "counter_reference")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REGS_FIELD_NUMBER: _ClassVar[int]
    COUNTER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    regs: _containers.RepeatedCompositeFieldContainer[RegValue]
    counter_reference: int
    def __init__(self, vm_id: _Optional[str] = ..., regs: _Optional[_Iterable[_Union[RegValue, _Mapping]]] = ..., counter_reference: _Optional[int] = ...) -> None: ...

class SetRegsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceAttrRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index", "group", "attr")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    group: int
    attr: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., group: _Optional[int] = ..., attr: _Optional[int] = ...) -> None: ...

class HasDeviceAttrResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDeviceAttrResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class SetDeviceAttrRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index", "group", "attr", "value")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    group: int
    attr: int
    value: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., group: _Optional[int] = ..., attr: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class SetDeviceAttrResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetCounterOffsetRequest(_message.Message):
    __slots__ = ("vm_id", "counter_offset", "reserved")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    counter_offset: int
    reserved: int
    def __init__(self, vm_id: _Optional[str] = ..., counter_offset: _Optional[int] = ..., reserved: _Optional[int] = ...) -> None: ...

class SetCounterOffsetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClockRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClockResponse(_message.Message):
    __slots__ = ("host_counter", "realtime_ns", "cntfrq_hz")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CNTFRQ_HZ_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    realtime_ns: int
    cntfrq_hz: int
    def __init__(self, host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ..., cntfrq_hz: _Optional[int] = ...) -> None: ...

class SysRegWrite(_message.Message):
    __slots__ = ("reg", "value")
    REG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    reg: SysReg
    value: int
    def __init__(self, reg: _Optional[_Union[SysReg, str]] = ..., value: _Optional[int] = ...) -> None: ...

class GuestOp(_message.Message):
    __slots__ = ("read", "write", "wait_ticks")
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    WAIT_TICKS_FIELD_NUMBER: _ClassVar[int]
    read: SysReg
    write: SysRegWrite
    wait_ticks: int
    def __init__(self, read: _Optional[_Union[SysReg, str]] = ..., write: _Optional[_Union[SysRegWrite, _Mapping]] = ..., wait_ticks: _Optional[int] = ...) -> None: ...

class GuestOpResult(_message.Message):
    __slots__ = ("value", "trapped", "undefined")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TRAPPED_FIELD_NUMBER: _ClassVar[int]
    UNDEFINED_FIELD_NUMBER: _ClassVar[int]
    value: int
    trapped: bool
    undefined: bool
    def __init__(self, value: _Optional[int] = ..., trapped: _Optional[bool] = ..., undefined: _Optional[bool] = ...) -> None: ...

class IrqLine(_message.Message):
    __slots__ = ("timer", "intid", "level")
    TIMER_FIELD_NUMBER: _ClassVar[int]
    INTID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    timer: TimerId
    intid: int
    level: bool
    def __init__(self, timer: _Optional[_Union[TimerId, str]] = ..., intid: _Optional[int] = ..., level: _Optional[bool] = ...) -> None: ...

class RunVcpuRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index", "ops")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    ops: _containers.RepeatedCompositeFieldContainer[GuestOp]
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[GuestOp, _Mapping]]] = ...) -> None: ...

class RunVcpuResponse(_message.Message):
    __slots__ = ("results", "irq_lines", "host_counter", "trap_count")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    IRQ_LINES_FIELD_NUMBER: _ClassVar[int]
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    TRAP_COUNT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GuestOpResult]
    irq_lines: _containers.RepeatedCompositeFieldContainer[IrqLine]
    host_counter: int
    trap_count: int
    def __init__(self, results: _Optional[_Iterable[_Union[GuestOpResult, _Mapping]]] = ..., irq_lines: _Optional[_Iterable[_Union[IrqLine, _Mapping]]] = ..., host_counter: _Optional[int] = ..., trap_count: _Optional[int] = ...) -> None: ...

class PauseVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class PauseVmResponse(_message.Message):
    __slots__ = ("host_counter", "realtime_ns")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    realtime_ns: int
    def __init__(self, host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ...) -> None: ...

class ResumeVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class ResumeVmResponse(_message.Message):
    __slots__ = ("host_counter", "realtime_ns")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    realtime_ns: int
    def __init__(self, host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ...) -> None: ...

class StepClockRequest(_message.Message):
    __slots__ = ("delta_ticks",)
    DELTA_TICKS_FIELD_NUMBER: _ClassVar[int]
    delta_ticks: int
    def __init__(self, delta_ticks: _Optional[int] = ...) -> None: ...

class StepClockResponse(_message.Message):
    __slots__ = ("host_counter", "realtime_ns")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    REALTIME_NS_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    realtime_ns: int
    def __init__(self, host_counter: _Optional[int] = ..., realtime_ns: _Optional[int] = ...) -> None: ...

class GetVcpuStateRequest(_message.Message):
    __slots__ = ("vm_id", "vcpu_index")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    vcpu_index: int
    def __init__(self, vm_id: _Optional[str] = ..., vcpu_index: _Optional[int] = ...) -> None: ...

class TimerInfo(_message.Message):
    __slots__ = ("timer", "ctl", "cval", "intid", "level", "direct")
    TIMER_FIELD_NUMBER: _ClassVar[int]
    CTL_FIELD_NUMBER: _ClassVar[int]
    CVAL_FIELD_NUMBER: _ClassVar[int]
    INTID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    timer: TimerId
    ctl: int
    cval: int
    intid: int
    level: bool
    direct: bool
    def __init__(self, timer: _Optional[_Union[TimerId, str]] = ..., ctl: _Optional[int] = ..., cval: _Optional[int] = ..., intid: _Optional[int] = ..., level: _Optional[bool] = ..., direct: _Optional[bool] = ...) -> None: ...

class VcpuStateInfo(_message.Message):
    __slots__ = ("host_counter", "voffset", "poffset", "cntvct", "cntpct", "cnthctl_el2", "traps_cntpct", "traps_ptimer", "uses_cntpoff", "trap_count", "timers", "has_run")
    HOST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    VOFFSET_FIELD_NUMBER: _ClassVar[int]
    POFFSET_FIELD_NUMBER: _ClassVar[int]
    CNTVCT_FIELD_NUMBER: _ClassVar[int]
    CNTPCT_FIELD_NUMBER: _ClassVar[int]
    CNTHCTL_EL2_FIELD_NUMBER: _ClassVar[int]
    TRAPS_CNTPCT_FIELD_NUMBER: _ClassVar[int]
    TRAPS_PTIMER_FIELD_NUMBER: _ClassVar[int]
    USES_CNTPOFF_FIELD_NUMBER: _ClassVar[int]
    TRAP_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMERS_FIELD_NUMBER: _ClassVar[int]
    HAS_RUN_FIELD_NUMBER: _ClassVar[int]
    host_counter: int
    voffset: int
    poffset: int
    cntvct: int
    cntpct: int
    cnthctl_el2: int
    traps_cntpct: bool
    traps_ptimer: bool
    uses_cntpoff: bool
    trap_count: int
    timers: _containers.RepeatedCompositeFieldContainer[TimerInfo]
    has_run: bool
    def __init__(self, host_counter: _Optional[int] = ..., voffset: _Optional[int] = ..., poffset: _Optional[int] = ..., cntvct: _Optional[int] = ..., cntpct: _Optional[int] = ..., cnthctl_el2: _Optional[int] = ..., traps_cntpct: _Optional[bool] = ..., traps_ptimer: _Optional[bool] = ..., uses_cntpoff: _Optional[bool] = ..., trap_count: _Optional[int] = ..., timers: _Optional[_Iterable[_Union[TimerInfo, _Mapping]]] = ..., has_run: _Optional[bool] = ...) -> None: ...
