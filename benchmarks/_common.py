"""Shared by the benchmark scripts: free ports, readiness, nginx and vramgate as child processes.

Everything listens on 127.0.0.1. Children run in their own session (a Ctrl-C in the terminal reaches
only the script, which then stops them in order) and get SIGTERM if the script dies without cleaning
up (``PR_SET_PDEATHSIG``). ``Processes`` is a context manager that stops every child it started, and
turns SIGTERM into a normal exit so that cleanup also runs then.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]

NGINX_PROXY = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
    {extra}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 20.0, procs: Processes | None = None) -> None:
    """Poll ``url`` until it answers (any status); give up after ``timeout`` or if a child died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if procs is not None:
                procs.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up") from None
            time.sleep(0.1)


def missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def vramgate_env(**extra: str) -> dict[str, str]:
    """The environment vramgate runs with here: no GPU (let loads through), JSON access log as deployed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    env.update(VRAMGATE_LOG_FORMAT="json", VRAMGATE_GPU="none", VRAMGATE_ON_NO_GPU="allow")
    env.update(extra)
    return env


class Processes:
    """Child processes and a scratch directory, all removed on exit (also on Ctrl-C, SIGTERM, errors)."""

    def __init__(self, prefix: str = "vramgate-bench-") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._old_sigterm = None

    def __enter__(self) -> Processes:
        self._old_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # a second Ctrl-C while stopping must not leave children behind
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", REPO)
        # preexec_fn is only safe while this process has a single thread
        preexec = _die_with_parent if threading.active_count() == 1 else None
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=preexec, **kwargs)
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited early (status {proc.returncode})")

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def discard(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        """Stops one child (if still running) and forgets it: it no longer counts for ``check_alive``."""
        self.stop(proc, timeout)
        self.procs = [(name, p) for name, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            self.stop(proc)

    # --- the usual children -----------------------------------------------------------------------
    def python(self, name: str, code: str, *args: str, **kwargs) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-c", code, *args], **kwargs)

    def nginx(self, backend_port: int, port: int, extra: str = "", access_log: bool = True) -> subprocess.Popen:
        """nginx as a streaming reverse proxy to ``backend_port``: 1 worker, no buffering, keep-alive upstream."""
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_PROXY.format(tmp=self.tmp, backend=backend_port, port=port, extra=extra,
                                           access_log=f"{self.tmp}/access.log" if access_log else "off"))
        return self.start("nginx", ["nginx", "-p", str(self.tmp), "-c", str(conf)])

    def vramgate(self, upstream_port: int, port: int, **env: str) -> subprocess.Popen:
        """``python -m proxy serve`` (the Popen's pid is vramgate's own), access log to /dev/null."""
        return self.start(
            "vramgate",
            [sys.executable, "-m", "proxy", "serve", "--upstream", f"http://127.0.0.1:{upstream_port}",
             "--listen", f"127.0.0.1:{port}"],
            env=vramgate_env(**env), stdout=subprocess.DEVNULL)


# --- /proc readings ---------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (its threads included, not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def host_busy_seconds() -> float:
    """CPU time all cores together have spent not idle since boot (``/proc/stat``), any process."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK  # minus idle and iowait


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM, ...) in KiB; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1
