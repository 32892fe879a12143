"""Node process start-up: `kvmtimer node --help` wall time, time to first SERVING, modules loaded.

Run: .venv/bin/python tests/bench/node_startup.py [--runs N]
(run from another checkout's top directory, with this file's path, to measure that checkout:
the processes are `python -m controller.cli` from the current directory)

Each run is a fresh process. "first SERVING" is from spawning `kvmtimer node --listen
127.0.0.1:PORT` until grpc.health.v1 answers SERVING (polled with wait_for_ready). The module
count is `len(sys.modules)` after `kvmtimer node --help`. Goals (issue 10): a node loads no
controller module but the console script's dispatcher, and about 412 modules rather than 729.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.cli.up.launch import kvmtimer_command, stop_process
from controller.cli.views import table

MODULES_GOAL = 450
DEV_ONLY = ("rich", "pygments")
COUNT = (
    "import json, sys\n"
    "from controller.cli import main\n"
    "try:\n    main(['node', '--help'])\nexcept SystemExit:\n    pass\n"
    "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)


def help_wall_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([*kvmtimer_command(), "node", "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serving_s() -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*kvmtimer_command(), "node", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.RpcError:
                    continue
            raise TimeoutError("the node never reported SERVING")
    finally:
        stop_process(proc)


def modules() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", COUNT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return loaded


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def mn(values: list[float]) -> str:
    return f"{min(values) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    helps = [help_wall_s() for _ in range(runs)]
    serves = [serving_s() for _ in range(runs)]
    loaded = modules()
    controller = sorted(m for m in loaded if m.split(".")[0] == "controller")
    # structlog pretty-prints with `rich` when it is installed; only dev tools install it.
    runtime = [m for m in loaded if m.split(".")[0] not in DEV_ONLY]
    print(f"node start-up, {runs} runs each\n")
    print(
        table(
            ("measure", "median ms", "min ms"),
            [("kvmtimer node --help", ms(helps), mn(helps)), ("to first SERVING", ms(serves), mn(serves))],
            numbers_right=True,
        )
    )
    ok = len(runtime) <= MODULES_GOAL and controller == ["controller", "controller.cli"]
    print(
        f"\nmodules after `kvmtimer node --help`: {len(loaded)}, {len(runtime)} without the dev-only "
        f"{'/'.join(DEV_ONLY)}; controller: {', '.join(controller)}\n"
        f"goal <= {MODULES_GOAL} runtime modules, only the dispatcher of controller: "
        f"{'MET' if ok else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
