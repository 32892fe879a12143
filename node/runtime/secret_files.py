"""Secrets from files: `--token-file` and `--mqtt-file` next to `--token` and `--mqtt`.

Kubernetes mounts Secrets as files; reading them from there keeps them out of the process
environment (which child processes inherit and `/proc/PID/environ` shows). Like every option,
each has its environment variable (KVMTIMER_TOKEN_FILE, KVMTIMER_MQTT_FILE) and config key.

The value is the file's content with surrounding whitespace (the trailing newline) removed; an
empty file means "not set" (an operator's explicit opt-out, e.g. no MQTT). A file that cannot be
read is an error, never a silent "not set": a mistyped path must not turn authentication off.
Giving both the value and its file is an error too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# value dest -> its file option's dest
FILE_OPTIONS = {"token": "token_file", "mqtt": "mqtt_file"}


class SecretFileError(ValueError):
    """A secret file option cannot be honoured; the message says why."""


def add_file_option(parser: argparse.ArgumentParser, value_dest: str, what: str) -> None:
    """Add `--VALUE-file FILE` (e.g. --token-file) reading `what` from FILE."""
    file_dest = FILE_OPTIONS[value_dest]
    parser.add_argument(
        "--" + file_dest.replace("_", "-"),
        default=None,
        metavar="FILE",
        help=f"read {what} from FILE (e.g. a mounted Secret) instead of --{value_dest.replace('_', '-')}",
    )


def read_secret_files(args: argparse.Namespace) -> argparse.Namespace:
    """Set each value from its file option (in place); raises SecretFileError."""
    for value_dest, file_dest in FILE_OPTIONS.items():
        path = getattr(args, file_dest, None)
        if not path:
            continue
        flag = "--" + file_dest.replace("_", "-")
        if getattr(args, value_dest, None):
            raise SecretFileError(f"give --{value_dest.replace('_', '-')} or {flag}, not both")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise SecretFileError(f"{flag} {path}: {getattr(err, 'strerror', None) or err}") from None
        setattr(args, value_dest, value or None)
    return args
