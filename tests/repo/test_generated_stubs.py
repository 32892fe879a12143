"""The committed protobuf/gRPC stubs are exactly what proto/generate.py produces now.

Edge cases covered:
- every committed `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` is byte-identical to a fresh run
- a .proto without committed stubs (or a committed stub whose .proto is gone) fails
- each .proto yields all three outputs (.py, .pyi with --pyi_out, _grpc.py)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB_DIR = REPO / "proto" / "kvmtimer" / "v1"
STUB_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def stub_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in STUB_PATTERNS for p in sorted(root.glob(pattern))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    return stub_files(out / "kvmtimer" / "v1")


def test_every_proto_has_three_outputs(generated: dict[str, bytes]) -> None:
    protos = sorted(p.stem for p in STUB_DIR.glob("*.proto"))
    assert protos, "no .proto files found"
    expected = {f"{stem}{suffix}" for stem in protos for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    assert set(generated) == expected


def test_committed_file_set_matches(generated: dict[str, bytes]) -> None:
    assert sorted(stub_files(STUB_DIR)) == sorted(generated)


def test_committed_stubs_are_not_stale(generated: dict[str, bytes]) -> None:
    committed = stub_files(STUB_DIR)
    stale = sorted(name for name, data in generated.items() if committed.get(name) != data)
    assert stale == [], f"stale generated stubs {stale}: run `python proto/generate.py` and commit the result"
