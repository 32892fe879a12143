"""Test hosts in network namespaces: one namespace per host, all on one private /24 through a
bridge that lives in its own namespace. Everything is created by `host_network` and removed when
its block ends (also on failure); no address or link is added to the machine's own namespace.

Each host namespace can also get its own /etc/hosts (`ip netns exec` bind-mounts
/etc/netns/NAME/hosts over /etc/hosts), which stands in for cluster DNS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ETC_NETNS = Path("/etc/netns")
SUBNET = "10.213.77"  # the test network's /24 (exists only inside the test namespaces)


class NetnsUnavailable(Exception):
    """Namespaces cannot be created here; the message says why."""


@dataclass(frozen=True, slots=True)
class NetHost:
    name: str  # namespace name
    address: str  # its IPv4 address on the test /24

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def check_available() -> None:
    """Raise NetnsUnavailable with the reason when this machine cannot host the test network."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise NetnsUnavailable("creating network namespaces needs root")
    probe = f"kvt{os.getpid()}probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {done.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)


@contextlib.contextmanager
def host_network(
    hosts: Sequence[str], hosts_files: Callable[[Mapping[str, NetHost]], Mapping[str, str]] | None = None
) -> Iterator[dict[str, NetHost]]:
    """Namespaces `hosts[i]` at SUBNET.(10+i)/24 on one bridge; yields them by name.

    `hosts_files(hosts)`: host name -> /etc/hosts content for that namespace.
    """
    prefix = f"kvt{os.getpid() % 100000}"
    switch = f"{prefix}-sw"
    made: list[str] = []
    etc_dirs: list[Path] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        out: dict[str, NetHost] = {}
        for i, host in enumerate(hosts):
            ns = f"{prefix}-{host}"
            _ip("netns", "add", ns)
            made.append(ns)
            port = f"p{i}"
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", switch)
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            address = f"{SUBNET}.{10 + i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[host] = NetHost(ns, address)
        for host, text in (hosts_files(out) if hosts_files else {}).items():
            directory = ETC_NETNS / out[host].name
            directory.mkdir(parents=True, exist_ok=True)
            etc_dirs.append(directory)
            (directory / "hosts").write_text(text)
        yield out
    finally:
        for ns in reversed(made):  # deleting a namespace deletes its veth ends and the bridge
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for directory in etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
