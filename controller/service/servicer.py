"""Thin grpc.aio servicer for kvmtimer.v1.Controller over a Cluster."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc

from controller.core.errors import ControllerError, InvalidArgument
from controller.service import convert
from controller.service.cluster import Cluster
from controller.service.errors import Ctx, rpc
from controller.telemetry.filters import checked_filter, with_dropped


class ControllerServicer(cpb_grpc.ControllerServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @rpc
    async def RegisterNode(self, request: cpb.RegisterNodeRequest, context: Ctx) -> cpb.NodeStatus:
        node = await self.cluster.register_node(request.node_id, request.address)
        return self.cluster.node_status(node)

    @rpc
    async def ListNodes(self, request: cpb.ListNodesRequest, context: Ctx) -> cpb.ListNodesResponse:
        c = self.cluster
        return cpb.ListNodesResponse(
            nodes=[c.node_status(n) for n in sorted(c.nodes.values(), key=lambda n: n.node_id)]
        )

    @rpc
    async def CreateGuest(self, request: cpb.CreateGuestRequest, context: Ctx) -> cpb.Guest:
        spec = convert.workload_from_request(request.workload)
        guest = await self.cluster.create_guest(request.guest_id, request.vcpus or 1, spec, request.node_id)
        return convert.guest_to_pb(guest)

    @rpc
    async def ListGuests(self, request: cpb.ListGuestsRequest, context: Ctx) -> cpb.ListGuestsResponse:
        guests = sorted(self.cluster.guests.values(), key=lambda g: g.guest_id)
        return cpb.ListGuestsResponse(guests=[convert.guest_to_pb(g) for g in guests])

    @rpc
    async def GetGuest(self, request: cpb.GetGuestRequest, context: Ctx) -> cpb.Guest:
        guest = self.cluster.guest(request.guest_id)
        try:
            obs = await self.cluster.observations(guest)
        except ControllerError:
            obs = None  # node unreachable: the record is still worth returning
        return convert.guest_to_pb(guest, obs)

    @rpc
    async def DestroyGuest(self, request: cpb.DestroyGuestRequest, context: Ctx) -> cpb.DestroyGuestResponse:
        await self.cluster.destroy_guest(request.guest_id)
        return cpb.DestroyGuestResponse()

    @rpc
    async def Migrate(self, request: cpb.MigrateRequest, context: Ctx) -> cpb.Migration:
        if not request.guest_id:
            raise InvalidArgument("guest_id is required")
        record = await self.cluster.migrate(
            request.guest_id,
            request.destination,
            convert.method_from_pb(request.method),
            request.migration_id,
            wait=request.wait,
            allow_state_loss=request.allow_state_loss,
        )
        return convert.migration_to_pb(record)

    @rpc
    async def CancelMigration(self, request: cpb.CancelMigrationRequest, context: Ctx) -> cpb.Migration:
        return convert.migration_to_pb(await self.cluster.cancel(request.migration_id))

    @rpc
    async def GetMigration(self, request: cpb.GetMigrationRequest, context: Ctx) -> cpb.Migration:
        return convert.migration_to_pb(self.cluster.migration(request.migration_id))

    @rpc
    async def ListMigrations(
        self, request: cpb.ListMigrationsRequest, context: Ctx
    ) -> cpb.ListMigrationsResponse:
        records = [
            m
            for m in self.cluster.migrations.values()
            if not request.guest_id or m.guest_id == request.guest_id
        ]
        if request.guest_id and not records:
            self.cluster.guest(request.guest_id)  # NOT_FOUND for a guest never seen
        return cpb.ListMigrationsResponse(migrations=[convert.migration_to_pb(m) for m in records])

    @rpc.stream
    async def WatchMigrations(
        self, request: cpb.WatchMigrationsRequest, context: Ctx
    ) -> AsyncGenerator[cpb.MigrationEvent, None]:
        hub = self.cluster.events
        sub = hub.subscribe()
        try:
            if request.include_existing:
                for m in list(self.cluster.migrations.values()):
                    yield cpb.MigrationEvent(
                        migration=convert.migration_to_pb(m), realtime_ns=m.created_realtime_ns
                    )
            async for event in hub.stream(sub):
                yield cpb.MigrationEvent(
                    migration=convert.migration_to_pb(event.migration),
                    step=event.step,
                    realtime_ns=event.realtime_ns,
                )
        finally:
            hub.unsubscribe(sub)

    @rpc.stream
    async def WatchTelemetry(
        self, request: cpb.WatchClusterTelemetryRequest, context: Ctx
    ) -> AsyncGenerator[cpb.ClusterTelemetry, None]:
        """Current node statuses first, then hub items as they come, filtered; `dropped` on every item."""
        c = self.cluster
        flt = checked_filter(
            request.node_ids,
            request.guest_ids,
            request.events_only,
            known_nodes=c.nodes.keys(),
            known_guests=c.guests.keys(),
        )
        hub = c.telemetry
        sub = hub.subscribe()
        try:
            now = time.time_ns()
            for node in sorted(c.nodes.values(), key=lambda n: n.node_id):
                status = c.node_status(node)
                item = flt.apply(cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=status, realtime_ns=now)))
                if item is not None:
                    yield with_dropped(item, sub.dropped, shared=False)
            async for item in hub.stream(sub):
                seen = flt.apply(item)
                if seen is not None:
                    yield with_dropped(seen, sub.dropped, shared=seen is item)
        finally:
            hub.unsubscribe(sub)
