"""The node vocabulary on the wire: protobuf forms of HostFeatures, ApiProfile and WorkloadSpec.

Shared by the node's service (node.service.convert) and the controller, which speaks to nodes
in these terms but never imports node.service (import contracts in pyproject.toml).
"""

from __future__ import annotations

from typing import cast

from kvmtimer.v1 import node_pb2 as pb

from node.core.errors import BadRequest
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec


def api_profile_to_pb(profile: ApiProfile) -> pb.ApiProfile:
    return cast(pb.ApiProfile, int(profile))


def api_profile_from_pb(value: int) -> ApiProfile:
    try:
        return ApiProfile(value)
    except ValueError:
        raise BadRequest(f"unknown api profile {value}") from None


def features_from_info(info: pb.HostInfo) -> HostFeatures:
    return HostFeatures(
        cntfrq_hz=info.cntfrq_hz,
        ecv=EcvLevel(info.ecv),
        vhe=info.vhe,
        api_profile=api_profile_from_pb(info.api_profile),
        nv=info.nv,
    )


def workload_spec_from_pb(spec: pb.WorkloadSpec) -> WorkloadSpec:
    return WorkloadSpec(period_ticks=spec.period_ticks, use_ptimer=spec.use_ptimer)


def workload_spec_to_pb(spec: WorkloadSpec) -> pb.WorkloadSpec:
    return pb.WorkloadSpec(period_ticks=spec.period_ticks, use_ptimer=spec.use_ptimer)
