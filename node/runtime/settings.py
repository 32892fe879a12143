"""Settings from flags, environment variables and a config file: flags > env > file > defaults.

Every option of a command is also

* an environment variable: `KVMTIMER_` + the option's name in upper case, dashes as underscores
  (`--node-id` -> `KVMTIMER_NODE_ID`, `--ecv` -> `KVMTIMER_ECV`); repeatable options take a
  comma-separated list; switches take 1/0, true/false, yes/no, on/off;
* a key of the config file named by `--config FILE` (or `KVMTIMER_CONFIG`), TOML (`.toml`) or
  YAML (`.yaml`/`.yml`): the option's name with dashes or underscores, at the top level (shared by
  every command that has it, ignored by the others) or in the command's own table
  (`[node]`, `[controller]`, `[client]`), which wins; repeatable options take a list.

Commands never see the argparse namespace: `command(SettingsClass, run)` is the parser's `func`,
and hands `run` one frozen dataclass (`typed`) built from the resolved namespace, field by
field by option name; a field whose type is itself such a dataclass (TLS, MQTT options) is
filled from the same options. Lists become tuples.

How: `defer_defaults(parser, section)` runs last when a command's parser is built and replaces
every default with a `Deferred` marker that remembers how to convert a value; right after that
parser parsed (also as a subcommand), `resolve(args)` replaces each marker still there (no flag
given) by the environment's value, else the file's, else the real default. Values from the
environment and the file go through the option's own `type` and `choices`, so they are checked
like flags, and an error exits 2 with the usage like a bad flag. Commands call `resolve_or_exit`
again first thing (a no-op once resolved) for namespaces built some other way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from node.runtime.secret_files import SecretFileError, read_secret_files

S = TypeVar("S")

ENV_PREFIX = "KVMTIMER_"
CONFIG_DEST = "config"
CONFIG_ENV = "KVMTIMER_CONFIG"
SECTIONS = ("node", "controller", "client")
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})
NOT_LAYERED = frozenset({"help", "func", "command"})


class ConfigError(Exception):
    """A value from the environment or the config file is malformed, or the file is unreadable."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """Stands for an option's default until `resolve` knows whether env or file set it."""

    dest: str  # argparse destination (option name with underscores)
    flag: str  # the long option, e.g. --node-id
    default: Any  # the option's own default
    kind: str  # "value", "switch" (store_true/false) or "list" (append)
    convert: Callable[[str], Any]  # the option's type (str when none)
    choices: tuple[Any, ...] | None  # the option's choices
    section: str  # the command's table in the config file
    help: str  # the option's help text (for the documentation table)
    metavar: str = ""  # how the value is shown in the documentation table ("" for switches)

    @property
    def env(self) -> str:
        return env_name(self.dest)

    def __repr__(self) -> str:  # shows in --help as the default
        return repr(self.default)


class DeferredList(list[Any]):
    """The marker of a repeatable option: a list (argparse appends flag values to a copy of it)."""

    def __init__(self, deferred: Deferred) -> None:
        super().__init__(deferred.default or ())
        self.deferred = deferred

    def __copy__(self) -> list[Any]:  # argparse copies before appending: a flag was given
        return list(self)


def marker_of(value: object) -> Deferred | None:
    """The Deferred behind an unresolved value, if it is one."""
    if isinstance(value, Deferred):
        return value
    if isinstance(value, DeferredList):
        return value.deferred
    return None


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _kind(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "switch"
    if isinstance(action, argparse._AppendAction):
        return "list"
    return "value"


def _metavar(action: argparse.Action, kind: str) -> str:
    if kind == "switch":
        return ""
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "|".join(map(str, action.choices))
    return action.dest.upper()


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"TOML or YAML settings file (also {CONFIG_ENV}); flags > environment > file > defaults",
    )


def defer_defaults(parser: argparse.ArgumentParser, section: str) -> None:
    """Make every long option of `parser` settable from the environment and the config file.

    Call it after the last `add_argument`: options added later are flags only.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}")
    deferred: dict[str, Deferred | DeferredList] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in NOT_LAYERED or marker_of(action.default) is not None:
            continue
        kind = _kind(action)
        default = action.default
        if kind == "list" and default is not None:
            default = list(default)
        deferred[action.dest] = marker = Deferred(
            dest=action.dest,
            flag=longs[0],
            default=default,
            kind=kind,
            convert=action.type if callable(action.type) else str,
            choices=tuple(action.choices) if action.choices is not None else None,
            section=section,
            help=action.help or "",
            metavar=_metavar(action, kind),
        )
        if kind == "list":
            deferred[action.dest] = DeferredList(marker)
    parser.set_defaults(**deferred)
    if not getattr(parser, "_kvmtimer_layered", False):
        _resolve_when_parsed(parser)


def _resolve_when_parsed(parser: argparse.ArgumentParser) -> None:
    """Make `parser` (also as a subcommand's parser) resolve the markers right after parsing.

    A bad environment or file value then fails like a bad flag: usage, the reason, exit 2.
    """
    original = parser.parse_known_args

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = original(args, namespace)
        try:
            resolve(ns)
        except ConfigError as err:
            parser.error(str(err))
        return ns, rest

    setattr(parser, "parse_known_args", parse_known_args)  # noqa: B010 (method on this instance)
    setattr(parser, "_kvmtimer_layered", True)  # noqa: B010


def deferred_options(parser: argparse.ArgumentParser) -> list[Deferred]:
    """The layered options of a parser built with `defer_defaults`, in declaration order."""
    return [d for a in parser._actions if (d := marker_of(a.default)) is not None]


def _convert_one(d: Deferred, raw: Any, source: str) -> Any:
    text = raw if isinstance(raw, str) else str(raw)
    try:
        value = d.convert(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
        raise ConfigError(f"{source}: invalid value {raw!r} for {d.flag}: {err}") from None
    if d.choices is not None and value not in d.choices:
        shown = ", ".join(map(str, d.choices))
        raise ConfigError(f"{source}: {raw!r} is not one of {shown} ({d.flag})")
    return value


def convert(d: Deferred, raw: Any, source: str) -> Any:
    """A raw env string or file value, converted and checked as the flag would be."""
    if d.kind == "switch":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise ConfigError(f"{source}: {raw!r} is not a boolean ({d.flag}: use true/false, 1/0, yes/no)")
    if d.kind == "list":
        if isinstance(raw, str):
            items: Sequence[Any] = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list | tuple):
            items = raw
        else:
            items = [raw]
        return [_convert_one(d, item, source) for item in items]
    if isinstance(raw, list | dict):
        raise ConfigError(f"{source}: {d.flag} takes one value, got {raw!r}")
    return _convert_one(d, raw, source)


def load_file(path: str) -> dict[str, Any]:
    """Parse a TOML or YAML settings file into a mapping."""
    import yaml  # only when a file is read: a quarter of the settings module's import time

    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text.decode())
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: name it *.toml, *.yaml or *.yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/mapping")
    return data


def _norm(key: str) -> str:
    return key.replace("-", "_")


def file_values(data: Mapping[str, Any], section: str, known: set[str], path: str) -> dict[str, Any]:
    """The file's values for one command: top-level keys it knows, then its own table (which wins).

    Unknown keys in the command's table are errors (typos); unknown top-level keys may belong to
    another command and are skipped.
    """
    out = {_norm(k): v for k, v in data.items() if k not in SECTIONS and _norm(k) in known}
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    unknown = sorted(k for k in table if _norm(k) not in known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown [{section}] settings {unknown}")
    out.update({_norm(k): v for k, v in table.items()})
    return out


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Replace every `Deferred` default in `args` (in place) by env > file > default.

    Raises ConfigError on a malformed value or an unreadable file.
    """
    env = os.environ if env is None else env
    pending = {k: d for k, v in vars(args).items() if (d := marker_of(v)) is not None}
    if not pending:
        return args
    section = next(iter(pending.values())).section
    config_path = getattr(args, CONFIG_DEST, None)
    if isinstance(config_path, Deferred):
        config_path = env.get(CONFIG_ENV) or config_path.default
        setattr(args, CONFIG_DEST, config_path)
        pending.pop(CONFIG_DEST, None)
    from_file: dict[str, Any] = {}
    if config_path:
        from_file = file_values(load_file(config_path), section, set(pending), config_path)
    for dest, d in pending.items():
        if d.env in env:
            value = convert(d, env[d.env], f"environment {d.env}")
        elif dest in from_file:
            value = convert(d, from_file[dest], f"config file {config_path} ({dest})")
        elif isinstance(d.default, str) and d.kind == "value":
            value = convert(d, d.default, f"default of {d.flag}")  # argparse converts str defaults
        else:
            value = d.default
        setattr(args, dest, value)
    return args


def resolve_or_exit(args: argparse.Namespace, prog: str) -> argparse.Namespace:
    """`resolve`, exiting with status 2 and the reason on stderr (like a bad flag) on error."""
    try:
        return read_secret_files(resolve(args))  # then --token-file/--mqtt-file
    except (ConfigError, SecretFileError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# --- typed settings ------------------------------------------------------------------------------


def typed(cls: type[S], args: argparse.Namespace) -> S:
    """`cls` (a frozen dataclass) from a resolved namespace: each field is the option of that
    name, or, when the field's type is a dataclass, that dataclass built from the same options."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = typed(kind, args)
        else:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def option_names(cls: type) -> set[str]:
    """The option destinations `typed(cls, ...)` reads (for tests: they match the parser's)."""
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        names |= option_names(kind) if isinstance(kind, type) and dataclasses.is_dataclass(kind) else {f.name}
    return names


def standalone(
    prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int], list[str] | None], int]:
    """`python -m` entry of one command, outside the console script: its own parser, and exit
    status 130 on Ctrl-C. Returns main(func, argv) for the command's `func` (see `command`)."""

    def main(func: Callable[[argparse.Namespace], int], argv: list[str] | None) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=description)
        add_arguments(parser)
        try:
            return func(parser.parse_args(argv))
        except KeyboardInterrupt:
            return 130

    return main


def command(cls: type[S], run: Callable[[S], int]) -> Callable[[argparse.Namespace], int]:
    """The argparse `func` of a command: resolve env and file values, build `cls`, call `run`."""

    def func(args: argparse.Namespace) -> int:
        prog = f"kvmtimer {getattr(args, 'command', None) or ''}".rstrip()
        return run(typed(cls, resolve_or_exit(args, prog)))

    return func
