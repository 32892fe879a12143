"""The image definition against the manifests and the dependency lock (offline, no podman needed).

Covers: the Dockerfile's ENTRYPOINT, USER and EXPOSE agree exactly with every rendered
manifest (no container overrides the entry point; each runs a real `kvmtimer` subcommand; the
pods' UID/GID are the image's user; the exposed ports are exactly the ports the manifests
declare); deploy/requirements.lock pins every runtime dependency of pyproject.toml at a version
its specifier allows, and nothing twice; the private containers.conf selects runc and the
sandbox-safe ulimits. tests/e2e/test_image.py checks the same against the built image.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from controller.cli import build_parser
from tests.support.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted((ROOT / "deploy" / "kubernetes" / "overlays").glob("*/kustomization.yaml"))


def dockerfile() -> dict[str, list[str]]:
    """INSTRUCTION -> its arguments, in order (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.setdefault(instruction.upper(), []).append(rest.strip())
    return out


def image_contract() -> tuple[list[str], str, set[int]]:
    """(entrypoint, user, exposed ports) as the Dockerfile states them."""
    d = dockerfile()
    (entrypoint,) = d["ENTRYPOINT"]
    (user,) = d["USER"]
    ports = {int(p.split("/")[0]) for args in d["EXPOSE"] for p in args.split()}
    return json.loads(entrypoint), user, ports


def kvmtimer_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(overlay, pod spec, container) for every container of the kvmtimer image."""
    out = []
    for k in OVERLAYS:
        for obj in render(k.parent):
            if obj["kind"] not in ("Deployment", "StatefulSet"):
                continue
            spec = obj["spec"]["template"]["spec"]
            for c in spec["containers"]:
                if c["image"].split(":")[0].endswith("kvmtimer"):
                    out.append((k.parent.name, spec, c))
    return out


def test_entrypoint_user_and_ports_match_the_manifests() -> None:
    entrypoint, user, exposed = image_contract()
    assert entrypoint == ["kvmtimer"]
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = set(commands.choices)
    declared: set[int] = set()
    containers = kvmtimer_containers()
    assert {overlay for overlay, _, _ in containers} == {k.parent.name for k in OVERLAYS}
    for overlay, spec, c in containers:
        assert "command" not in c, f"{overlay}/{c['name']} overrides the image's ENTRYPOINT"
        assert c["args"][0] in subcommands and c["args"][0] in ("node", "controller"), c["args"]
        sc = spec["securityContext"]
        assert f"{sc['runAsUser']}:{sc['runAsGroup']}" == user, (overlay, c["name"])
        ports = {p["containerPort"] for p in c["ports"]}
        assert ports <= exposed, (overlay, c["name"], ports - exposed)
        declared |= ports
    assert declared == exposed, f"EXPOSEd but in no manifest: {sorted(exposed - declared)}"


def test_lock_pins_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, Version] = {}
    for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            assert canonicalize_name(name) not in pins, f"pinned twice: {name}"
            pins[canonicalize_name(name)] = Version(version)
    for dependency in project["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} missing from deploy/requirements.lock (build-image.sh --lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (dependency, pins[name])


def test_private_containers_conf() -> None:
    conf = tomllib.loads((ROOT / "deploy" / "podman" / "containers.conf").read_text())
    assert conf["engine"]["runtime"] == "runc"
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]
