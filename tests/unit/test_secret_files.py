"""`--token-file` / `--mqtt-file` (node/runtime/secret_files.py) on the real `kvmtimer` parsers.

Edge cases: the value read from a flag, from KVMTIMER_*_FILE and from the config file key; the
trailing newline of a mounted Secret stripped; an empty file means "not set"; a missing file,
or both the value and its file, exit 2 like a bad flag and name the option (never a silent "no
token"); `--token`/`--mqtt` alone keep working; node, controller and client commands all have
`--token-file`, node and controller `--mqtt-file`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from unittest import mock

import pytest

from controller.cli import build_parser
from node.runtime import settings as config


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)}
    with mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True):
        args = build_parser().parse_args(argv)
        return config.resolve_or_exit(args, f"kvmtimer {argv[0]}")


def secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["node", "controller", "nodes"])
def test_token_from_flag_environment_and_file(command: str, tmp_path: Path) -> None:
    path = secret(tmp_path, "token", "s3cret\n")
    assert parse([command, "--token-file", path]).token == "s3cret"
    assert parse([command], {"KVMTIMER_TOKEN_FILE": path}).token == "s3cret"
    settings = tmp_path / "settings.toml"
    settings.write_text(f'token_file = "{path}"\n')
    assert parse([command, "--config", str(settings)]).token == "s3cret"
    assert parse([command, "--token", "plain"]).token == "plain"


@pytest.mark.parametrize("command", ["node", "controller"])
def test_mqtt_url_from_file(command: str, tmp_path: Path) -> None:
    path = secret(tmp_path, "url", "mqtts://user:p%40ss@broker:8883\n")
    assert parse([command, "--mqtt-file", path]).mqtt == "mqtts://user:p%40ss@broker:8883"
    assert parse([command], {"KVMTIMER_MQTT_FILE": path}).mqtt == "mqtts://user:p%40ss@broker:8883"


def test_empty_file_means_not_set(tmp_path: Path) -> None:
    args = parse(
        [
            "controller",
            "--token-file",
            secret(tmp_path, "token", "\n"),
            "--mqtt-file",
            secret(tmp_path, "u", ""),
        ]
    )
    assert args.token is None and args.mqtt is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["controller", "--token-file", "/nonexistent/token"],
            {},
            "--token-file /nonexistent/token: No such file",
        ),
        (["node"], {"KVMTIMER_MQTT_FILE": "/nonexistent/url"}, "--mqtt-file /nonexistent/url: No such file"),
        (
            ["controller", "--token", "x"],
            {"KVMTIMER_TOKEN_FILE": "FILE"},
            "give --token or --token-file, not both",
        ),
    ],
)
def test_unusable_file_exits_2(
    argv: list[str], env: dict[str, str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {k: v.replace("FILE", secret(tmp_path, "t", "y")) for k, v in env.items()}
    with pytest.raises(SystemExit) as info:
        parse(argv, env)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
