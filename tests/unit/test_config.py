"""Settings layering (node/settings.py): flags > environment > config file > defaults.

Edge cases: each layer beating the ones below it, for value, switch and repeatable options;
TOML and YAML files; top-level keys shared between commands and a command's own table winning;
dashes or underscores in keys; the config file named by KVMTIMER_CONFIG; values from env and file
checked by the option's own type and choices (KVMTIMER_ECV=3 refused like --ecv 3); malformed
booleans, unknown keys in the command's table, unreadable and unparsable files; string defaults
converted like argparse does; the real node and controller parsers layer every option.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from unittest import mock

import pytest

from node.runtime import settings


def host_port(value: str) -> str:
    if ":" not in value:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def make_parser(section: str = "node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", default="node-0")
    parser.add_argument("--ecv", type=int, choices=(0, 1, 2), default=0)
    parser.add_argument("--vhe", action="store_true")
    parser.add_argument("--listen", type=host_port, default="127.0.0.1:0")
    parser.add_argument("--interval", type=float, default=1.5)
    parser.add_argument("--peer", action="append", default=[])
    settings.add_config_argument(parser)
    settings.defer_defaults(parser, section)
    return parser


def environ(env: dict[str, str] | None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(settings.ENV_PREFIX)}
    return {**clean, **(env or {})}


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse with exactly `env` as the KVMTIMER_* environment."""
    with mock.patch.dict(os.environ, environ(env), clear=True):
        return make_parser().parse_args(argv)


def parse_error(argv: list[str], env: dict[str, str] | None, capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of a parse that must fail like a bad flag (exit 2, usage on stderr)."""
    with pytest.raises(SystemExit) as info:
        parse(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:")
    return err.splitlines()[-1]


def test_defaults_when_nothing_is_set() -> None:
    args = parse([])
    assert (args.node_id, args.ecv, args.vhe, args.listen, args.interval, args.peer, args.config) == (
        "node-0",
        0,
        False,
        "127.0.0.1:0",
        1.5,
        [],
        None,
    )


def test_env_names() -> None:
    names = {d.flag: d.env for d in settings.deferred_options(make_parser())}
    assert names["--node-id"] == "KVMTIMER_NODE_ID"
    assert names["--ecv"] == "KVMTIMER_ECV"
    assert names["--config"] == "KVMTIMER_CONFIG"


@pytest.mark.parametrize(
    ("argv", "env", "file_value", "expected"),
    [
        ([], {}, None, 0),
        ([], {}, 1, 1),
        ([], {"KVMTIMER_ECV": "2"}, 1, 2),
        (["--ecv", "0"], {"KVMTIMER_ECV": "2"}, 1, 0),
        (["--ecv", "1"], {}, 2, 1),
    ],
    ids=["default", "file", "env-beats-file", "flag-beats-env", "flag-beats-file"],
)
def test_precedence(
    tmp_path: Path, argv: list[str], env: dict[str, str], file_value: int | None, expected: int
) -> None:
    path = tmp_path / "kvmtimer.toml"
    path.write_text(f"ecv = {file_value}\n" if file_value is not None else "")
    args = parse([*argv, "--config", str(path)], env)
    assert args.ecv == expected


def test_switch_and_list_layers(tmp_path: Path) -> None:
    path = tmp_path / "kvmtimer.yaml"
    path.write_text("vhe: true\npeer: [a:1, b:2]\n")
    args = parse(["--config", str(path)])
    assert args.vhe is True and args.peer == ["a:1", "b:2"]
    args = parse(["--config", str(path)], {"KVMTIMER_VHE": "off", "KVMTIMER_PEER": "c:3, d:4"})
    assert args.vhe is False and args.peer == ["c:3", "d:4"]
    args = parse(["--config", str(path), "--vhe", "--peer", "e:5"], {"KVMTIMER_VHE": "0"})
    assert args.vhe is True and args.peer == ["e:5"]


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('node-id = "from-file"\n')
    assert parse([], {"KVMTIMER_CONFIG": str(path)}).node_id == "from-file"


def test_command_table_beats_top_level_and_foreign_keys_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'node_id = "shared"\nmax_parallel = 3\n[controller]\nmax_parallel = 4\n[node]\nnode-id = "mine"\n'
    )
    assert parse(["--config", str(path)]).node_id == "mine"


def test_unknown_key_in_command_table_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[node]\nnode_idd = 'typo'\n")
    assert "unknown [node] settings ['node_idd']" in parse_error(["--config", str(path)], None, capsys)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KVMTIMER_ECV": "3"}, "'3' is not one of 0, 1, 2"),
        ({"KVMTIMER_ECV": "two"}, "invalid value 'two' for --ecv"),
        ({"KVMTIMER_VHE": "maybe"}, "is not a boolean"),
        ({"KVMTIMER_LISTEN": "nowhere"}, "expected HOST:PORT"),
        ({"KVMTIMER_INTERVAL": "soon"}, "invalid value 'soon' for --interval"),
    ],
)
def test_bad_env_values_are_refused(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = parse_error([], env, capsys)
    assert f"environment {next(iter(env))}" in line and message in line


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.toml", "ecv = [1]\n", "takes one value"),
        ("c.toml", "ecv = \n", "config file"),
        ("c.yaml", "- a\n- b\n", "top level must be"),
        ("c.yaml", "node: 3\n", r"\[node\] must be a table"),
        ("c.ini", "ecv=1\n", r"name it \*.toml"),
    ],
)
def test_bad_files_are_refused(
    tmp_path: Path, name: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert re.search(message, parse_error(["--config", str(path)], None, capsys))


def test_missing_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "cannot read config file" in parse_error(["--config", str(tmp_path / "absent.toml")], None, capsys)


def test_string_defaults_are_converted_like_argparse() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default="7")
    settings.defer_defaults(parser, "node")
    assert parser.parse_args([]).count == 7


def test_resolve_or_exit_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """For namespaces built without parsing (markers still in place)."""
    args = argparse.Namespace(**{d.dest: d for d in settings.deferred_options(make_parser())})
    monkeypatch.setenv("KVMTIMER_ECV", "9")
    with pytest.raises(SystemExit) as info:
        settings.resolve_or_exit(args, "kvmtimer node")
    assert info.value.code == 2
    assert "kvmtimer node: environment KVMTIMER_ECV: '9' is not one of" in capsys.readouterr().err


def test_every_option_of_the_real_commands_is_layered() -> None:
    """A flag added to `kvmtimer node`/`controller` after defer_defaults() would be flag-only."""
    from controller.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("node", "controller"):
        p = sub.choices[command]
        flag_only = [
            a.option_strings[-1]
            for a in p._actions
            if a.option_strings and a.dest != "help" and settings.marker_of(a.default) is None
        ]
        assert flag_only == [], f"kvmtimer {command}: options not settable from env/file: {flag_only}"
