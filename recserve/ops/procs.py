"""What every process of the embedded stack needs: free ports, stopping a pid, the tail of a log,
waiting for an HTTP endpoint, and the error they all raise (StackError)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says why and what to do."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: held open together while chosen (calls of `free_port` one after another
    may get the same port back, and two components of one process then collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, n: int = 15) -> str:
    """The last `n` lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        p = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except psutil.TimeoutExpired:
        p.kill()


def wait_http(url: str, timeout: float, body: dict | None = None, poll_s: float = 0.5, headers: dict | None = None):
    """Ask `url` (GET, or POST of `body` as JSON; `headers`: an API key) until it answers 200: (the
    response, None), or (None, the last thing it said) once `timeout` passes."""
    import httpx

    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            r = (
                httpx.get(url, timeout=2, headers=headers)
                if body is None
                else httpx.post(url, json=body, timeout=30, headers=headers)
            )
            if r.status_code == 200:
                return r, None
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(poll_s)
    return None, last
