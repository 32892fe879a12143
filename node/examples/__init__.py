"""Example clients of a kvmtimer node, written the way a VMM drives KVM (copy them)."""
