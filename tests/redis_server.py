"""A real redis-server on a free port: one shared by a test process's tests (emptied before
each), or one of a test's own, for tests that kill, stop or restart it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(
        self, workdir: Path, password: str | None = None, appendonly: bool = False
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self.exe = exe
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.appendonly = appendonly  # keep data across a kill and restart (an outage)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        """Kill it and start an empty one on the same port: everything in it is forgotten."""
        self.stop()
        self.start()


class SharedRedisServer(RedisServer):
    """The test process's redis-server, emptied before each test (``flushall``). A test must
    not stop or restart it: mark the test ``private_redis`` for a server of its own."""

    def flushall(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as conn:
            # a process an earlier test left behind must not take this test's jobs
            conn.client_kill_filter(_type="normal", skipme=True)
            conn.client_kill_filter(_type="pubsub", skipme=True)
            conn.flushall()
            conn.script_flush()

    def stop(self) -> None:
        raise RuntimeError("the shared redis-server: mark the test private_redis to stop it")

    def restart(self) -> None:
        raise RuntimeError("the shared redis-server: mark the test private_redis to restart it")

    def close(self) -> None:
        """At the end of the session."""
        super().stop()
