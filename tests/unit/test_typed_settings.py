"""Typed settings: every command's frozen settings object reads exactly the options its parser has.

Edge cases: a new option without a settings field (or a field without an option) fails here;
nested option groups (TLS, MQTT, a client's connection) are filled from the same options; lists
become tuples; the objects are frozen; env and file values reach the typed object like flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from unittest import mock

import pytest

from controller.app.settings import ControllerSettings
from controller.cli import COMMANDS, build_parser, client, telemetry
from controller.cli.certs import CertsSettings
from controller.cli.up.settings import UpSettings
from node.process.settings import NodeSettings
from node.runtime.secret_files import FILE_OPTIONS
from node.runtime.settings import ENV_PREFIX, option_names, typed

SETTINGS: dict[str, type] = {
    "up": UpSettings,
    "node": NodeSettings,
    "controller": ControllerSettings,
    "certs": CertsSettings,
    "nodes": client.NodesSettings,
    "guests": client.GuestsSettings,
    "migrations": client.MigrationsSettings,
    "create-guest": client.CreateGuestSettings,
    "destroy-guest": client.DestroyGuestSettings,
    "migrate": client.MigrateSettings,
    "watch": telemetry.WatchSettings,
    "report": telemetry.ReportSettings,
}
# --token-file/--mqtt-file are read into --token/--mqtt while settings resolve (secret_files).
NOT_SETTINGS = {"help", "func", *FILE_OPTIONS.values()}


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    result: argparse.ArgumentParser = sub.choices[name]
    return result


def test_every_command_has_settings() -> None:
    assert set(SETTINGS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_fields_are_the_parser_options(name: str) -> None:
    dests = {a.dest for a in subparser(name)._actions} - NOT_SETTINGS
    fields = option_names(SETTINGS[name]) - {"command"}
    assert fields == dests


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_are_frozen(name: str) -> None:
    params = getattr(SETTINGS[name], "__dataclass_params__")  # noqa: B009
    assert params.frozen


def test_node_settings_from_flags_env_and_lists() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env = {**clean, "KVMTIMER_ECV": "2", "KVMTIMER_TLS_ALLOW": "a, b"}
    with mock.patch.dict(os.environ, env, clear=True):
        args = build_parser().parse_args(["node", "--node-id", "n7", "--mqtt", "mqtt://h:1"])
    s = typed(NodeSettings, args)
    assert (s.node_id, s.ecv, s.tls_allow, s.mqtt.mqtt, s.tls.insecure) == (
        "n7",
        2,
        ("a", "b"),
        "mqtt://h:1",
        False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.node_id = "other"  # type: ignore[misc]


def test_client_connection_is_nested() -> None:
    args = build_parser().parse_args(["migrate", "g1", "--to", "b", "--controller", "h:9", "--insecure"])
    s = typed(client.MigrateSettings, args)
    assert (s.guest, s.to, s.connection.controller, s.connection.command) == ("g1", "b", "h:9", "migrate")
    assert s.connection.tls.insecure is True
