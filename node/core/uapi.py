"""Linux uapi numbers for the arm64 generic timer: the vocabulary a VMM (and the controller) shares.

ONE_REG ids, device attribute groups/ids, capability numbers and the
KVM_ARM_SET_COUNTER_OFFSET ioctl number, from arch/arm64/include/uapi/asm/kvm.h
and include/uapi/linux/kvm.h (spec §2). TIMER_CVAL and TIMER_CNT carry each
other's architectural encodings: a frozen ABI accident; always use the
constants, never derive them. `timer_reg_list()` is spec §2.1's table of which
timer ids each kernel lists in KVM_GET_REG_LIST; a VMM should not hard-code
it but ask the kernel (GetRegList), as QEMU does.
"""

from __future__ import annotations

from enum import IntEnum

from node.core.features import ApiProfile

KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_MASK = 0x00F0_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
KVM_REG_ARM64_SYSREG = 0x0013_0000
KVM_REG_ARCH_MASK = 0xFF00_0000_0000_0000  # KVM_REG_ARCH_MASK: the arch field of an id


def arm64_sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """ARM64_SYS_REG(): the 64-bit ONE_REG id of a system register."""
    return (
        KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
    )


class OneReg(IntEnum):
    """Timer ONE_REG ids."""

    TIMER_CTL = 0x6030_0000_0013_DF19  # vtimer CTL (CNTV_CTL_EL0 encoding)
    TIMER_CVAL = 0x6030_0000_0013_DF02  # vtimer CVAL (CNTVCT_EL0's encoding: swapped)
    TIMER_CNT = 0x6030_0000_0013_DF1A  # guest CNTVCT (CNTV_CVAL_EL0's encoding: swapped)
    PTIMER_CTL = 0x6030_0000_0013_DF11  # ptimer CTL
    PTIMER_CVAL = 0x6030_0000_0013_DF12  # ptimer CVAL
    PTIMER_CNT = 0x6030_0000_0013_DF01  # guest CNTPCT
    TIMER_OFFSET = 0x6030_0000_0013_E703  # guest CNTVOFF_EL2 (2021 series, opt-in)


def reg_name(reg_id: int) -> str:
    """The uapi name of a timer id ("PTIMER_CTL"), or the id in hex."""
    try:
        return OneReg(reg_id).name
    except ValueError:
        return f"{reg_id:#018x}"


# KVM_GET_REG_LIST's timer ids per kernel, in the kernel's order (spec §2.1 table).
VTIMER_REGS = (OneReg.TIMER_CTL, OneReg.TIMER_CNT, OneReg.TIMER_CVAL)  # copy_timer_indices(), every kernel
PTIMER_REGS = (OneReg.PTIMER_CTL, OneReg.PTIMER_CNT, OneReg.PTIMER_CVAL)  # 6.4+ only (Linux 680232a94c12)


def timer_reg_list(profile: ApiProfile, *, vtimer_offset_enabled: bool = False) -> tuple[OneReg, ...]:
    """The timer ids a kernel of `profile` lists (and accepts in GET/SET_ONE_REG), in order.

    Pre-6.4 (5.15 and the 2021 series): the vtimer trio only; the series adds
    TIMER_OFFSET after TIMER_CVAL once KVM_CAP_ARM_VTIMER_OFFSET is enabled.
    6.4+: the trio, then PTIMER_CTL, PTIMER_CNT, PTIMER_CVAL.
    """
    if profile is ApiProfile.VM_COUNTER_OFFSET:
        return (*VTIMER_REGS, *PTIMER_REGS)
    if profile is ApiProfile.VCPU_OFFSETS and vtimer_offset_enabled:
        return (*VTIMER_REGS, OneReg.TIMER_OFFSET)
    return VTIMER_REGS


def is_arm64_reg_id(reg_id: int) -> bool:
    """Bits 63..32 of the id, size field aside, are KVM_REG_ARM64's (else -EINVAL, guest.c)."""
    return (reg_id & ~KVM_REG_SIZE_MASK) >> 32 == KVM_REG_ARM64 >> 32


KVM_ARM_VCPU_TIMER_CTRL = 1  # vCPU device attribute group of the timers


class TimerAttr(IntEnum):
    """Attributes in group KVM_ARM_VCPU_TIMER_CTRL."""

    IRQ_VTIMER = 0  # KVM_ARM_VCPU_TIMER_IRQ_VTIMER
    IRQ_PTIMER = 1  # KVM_ARM_VCPU_TIMER_IRQ_PTIMER
    IRQ_HVTIMER = 2  # KVM_ARM_VCPU_TIMER_IRQ_HVTIMER (NV); PHYS_OFFSET in the 2021 series
    IRQ_HPTIMER = 3  # KVM_ARM_VCPU_TIMER_IRQ_HPTIMER (NV)


KVM_ARM_VCPU_TIMER_PHYS_OFFSET = 2  # 2021 series only: collides with IRQ_HVTIMER


class Cap(IntEnum):
    """KVM_CHECK_EXTENSION numbers this host knows."""

    ONE_REG = 70  # KVM_CAP_ONE_REG
    DEVICE_CTRL = 89  # KVM_CAP_DEVICE_CTRL
    ARM_VTIMER_OFFSET = 206  # 2021 series numbering only (not upstream)
    COUNTER_OFFSET = 227  # KVM_CAP_COUNTER_OFFSET (6.4+)


KVM_ARM_SET_COUNTER_OFFSET = 0x4010_AEB5  # _IOW(KVMIO, 0xb5, struct kvm_arm_counter_offset)
KVM_MAX_VCPUS = 512  # arm64 limit with a GICv3
PPI_MIN = 16  # first PPI INTID
PPI_MAX = 31  # last PPI INTID
