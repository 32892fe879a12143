"""HOST:PORT addresses: parsing, loopback checks, and what clients dial for a listen address.

The one place that knows the syntax (IPv6 hosts in brackets, port 0..65535, port 0 = any
free port when listening); every command-line type and every process uses it.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket

MAX_PORT = 65535
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def split_host_port(value: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, the host as written ([v6] keeps its brackets); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > MAX_PORT:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def host_of(address: str) -> str:
    """The host part of HOST:PORT ([v6] brackets removed)."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(address: str) -> bool:
    """True when HOST:PORT names a loopback host (127.0.0.0/8, ::1, localhost)."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def advertise_address(listen: str, port: int, advertise: str | None = None) -> str:
    """What peers should dial: `advertise`, else the listen host (or this host's FQDN) and bound port."""
    if advertise:
        return advertise
    host = listen.rpartition(":")[0]
    if host in WILDCARD_HOSTS:
        host = socket.getfqdn()
    return f"{host}:{port}"


def local_address(listen: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to `listen` on `port`."""
    host = listen.rpartition(":")[0]
    return f"{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{port}"


# --- argparse types ----------------------------------------------------------------------------


def host_port(value: str) -> str:
    """argparse type for HOST:PORT (port 0..65535; IPv6 hosts in brackets), kept as written."""
    try:
        split_host_port(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def listen_address(value: str) -> tuple[str, int]:
    """argparse type for a HOST:PORT to listen on (port 0 = any): (host without brackets, port)."""
    try:
        host, port = split_host_port(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return host.strip("[]"), port
