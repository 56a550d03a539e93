"""Running skopeo: own process group, hard timeout, cancellable, output captured and redacted.

Every command runs with ``start_new_session`` so a timeout or a cancel kills
it (and anything it started) with ``killpg`` and then reaps it; no zombie, no
orphan. As a backstop for a worker that dies with SIGKILL (which cannot clean
up), skopeo also gets ``--command-timeout`` a little above our own limit, so
an orphaned skopeo ends by itself. Credentials never appear on the command
line: callers pass authfiles (see :class:`RunFiles`).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.redact import redact

log = logging.getLogger(__name__)

# How much later than our own kill skopeo's --command-timeout fires (only matters for orphans).
BACKSTOP_GRACE = 5
MAX_OUTPUT = 64 * 1024 * 1024
# skopeo is a Go program: by default each process schedules onto every core and collects garbage when its heap
# doubles. A run starts up to QUAYMIRROR_TAG_CONCURRENCY of them at once, all short-lived with small heaps, so
# each gets its share of the cores and a lazier collector: 18 % less skopeo CPU on 2 cores (README,
# "Performance"). Set in the worker's own environment, either variable is left as it is.
GOGC = "400"
PROXY_KEYS = (("http_proxy", "HTTP_PROXY"), ("https_proxy", "HTTPS_PROXY"), ("no_proxy", "NO_PROXY"))


class StopReason(enum.StrEnum):
    """Why a run's processes were stopped; also the history reason of a run interrupted that way."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"


class Stopped(Exception):
    """The run was stopped (cancel, shutdown, lost lease) before this command could start."""


@dataclass
class Result:
    command: str
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    raw_stdout: bytes = field(default=b"", repr=False)
    duration: float = 0.0
    timed_out: bool = False
    stopped: StopReason | None = None  # why the run's processes were killed, when they were

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.stopped

    @property
    def reason(self) -> str | None:
        if self.stopped:
            return reasons.CANCELLED
        return reasons.classify(self.returncode, self.stderr, timed_out=self.timed_out)

    @property
    def message(self) -> str:
        """One line saying what went wrong (already redacted)."""
        if self.timed_out:
            return f"skopeo {self.command} did not finish within {self.duration:.1f}s and was killed (timeout)"
        if self.stopped:
            return f"skopeo was stopped ({self.stopped})"
        return reasons.fatal_message(self.stderr) or f"skopeo exited with status {self.returncode}"

    @property
    def output(self) -> str:
        """stdout and stderr together, for the history's excerpt."""
        parts = [p.strip() for p in (self.stdout, self.stderr) if p and p.strip()]
        return "\n".join(parts)


class ProcessGroup:
    """The live skopeo processes of one sync run, so a cancel or shutdown can kill them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.stopped: StopReason | None = None
        self._event = threading.Event()

    def stop(self, reason: StopReason) -> None:
        """Kill every running process and refuse new ones; the first reason given wins."""
        with self._lock:
            if self.stopped is None:
                self.stopped = reason
            self._event.set()
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, or until the group is stopped (then True)."""
        return self._event.wait(timeout)

    @property
    def is_stopped(self) -> bool:
        return self.stopped is not None

    def _add(self, proc: subprocess.Popen[bytes]) -> bool:
        with self._lock:
            if self.stopped is not None:
                return False
            self._procs.add(proc)
            return True

    def _remove(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the pid


def proxy_env(proxy: Mapping[str, object] | None, bypass: Iterable[str] = ()) -> dict[str, str]:
    """HTTP_PROXY/HTTPS_PROXY/NO_PROXY from a mirror's ``proxy`` object (only the non-empty ones).

    ``bypass`` (the destination registry) is added to NO_PROXY when a proxy is
    set, because the proxy is for the upstream only.
    """
    env: dict[str, str] = {}
    proxy = proxy if isinstance(proxy, Mapping) else {}
    for key, name in PROXY_KEYS:
        value = proxy.get(key)
        if isinstance(value, str) and value.strip():
            env[name] = value.strip()
    if ("HTTP_PROXY" in env or "HTTPS_PROXY" in env) and bypass:
        extra = [b for b in bypass if b]
        env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY", ""), *extra]))
    return env


RUN_DIR_PREFIX = "quaymirror-run-"
_RUN_DIR_RE = re.compile(rf"^{RUN_DIR_PREFIX}(\d+)-")


class RunFiles:
    """A private directory (0700) for one run's authfiles, digest files and staging; removed afterwards.

    Its name carries the worker's pid, so that :meth:`sweep` can remove the
    directories (and authfiles) of a worker that was killed before it could.
    """

    def __init__(self, base: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=base))

    @staticmethod
    def sweep(base: Path | None = None) -> int:
        """Remove run directories left by dead processes of this host; return how many."""
        root = Path(base or tempfile.gettempdir())
        removed = 0
        try:
            entries = list(os.scandir(root))
        except OSError:
            return 0
        for entry in entries:
            match = _RUN_DIR_RE.match(entry.name)
            if not match or not entry.is_dir(follow_symlinks=False):
                continue
            pid = int(match.group(1))
            try:
                os.kill(pid, 0)
                continue  # still alive (or a reused pid): leave it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        return removed

    def authfile(self, name: str, creds: Mapping[str, tuple[str, str | None]]) -> Path:
        """A containers-auth.json (mode 0600) with the base64 ``auth`` field, the only one skopeo reads.

        Always written, also empty, so skopeo never falls back to ambient
        credentials (``~/.docker/config.json`` and friends).
        """
        auths = {
            host: {"auth": base64.b64encode(f"{user}:{password or ''}".encode()).decode()}
            for host, (user, password) in creds.items() if user
        }
        path = self.path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"auths": auths}, handle)
        return path

    def child(self, name: str) -> Path:
        return self.path / name

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def go_runtime_env(parallel: int) -> dict[str, str]:
    """``GOMAXPROCS`` and ``GOGC`` for one of ``parallel`` skopeo processes running at once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"GOMAXPROCS": str(max(1, cores // max(1, parallel))), "GOGC": GOGC}


class Skopeo:
    """One run's skopeo: binary, environment, timeout, redaction and the run's process group.

    ``parallel``: how many of this run's skopeo processes may run at once (see :func:`go_runtime_env`).
    """

    def __init__(self, binary: str, *, timeout: float, group: ProcessGroup, workdir: Path,
                 env: Mapping[str, str] | None = None, secrets: Sequence[str | None] = (), parallel: int = 1) -> None:
        self.binary = binary
        self.timeout = timeout
        self.group = group
        self.workdir = workdir
        self.secrets = [s for s in secrets if s]
        base = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE",)}
        for name, value in go_runtime_env(parallel).items():
            base.setdefault(name, value)
        base.update(env or {})
        self.env = base

    def redact(self, text: str | None) -> str:
        return redact(text, self.secrets) or ""

    def run(self, args: Sequence[str], *, global_args: Sequence[str] = ()) -> Result:
        """Run ``skopeo [global_args] <args>``; raises :class:`Stopped` when the run is already stopped."""
        backstop = int(self.timeout) + BACKSTOP_GRACE
        argv = [self.binary, "--command-timeout", f"{backstop}s", *global_args, *args]
        started = time.monotonic()
        with tempfile.TemporaryFile(dir=self.workdir) as out, tempfile.TemporaryFile(dir=self.workdir) as err:
            if self.group.is_stopped:
                raise Stopped(self.group.stopped)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env,
                                    cwd=self.workdir, start_new_session=True, close_fds=True)
            if not self.group._add(proc):
                _kill_group(proc)
            timed_out = False
            try:
                try:
                    proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    timed_out = not self.group.is_stopped
                    _kill_group(proc)
                    proc.wait()
            except BaseException:
                _kill_group(proc)
                proc.wait()
                raise
            finally:
                self.group._remove(proc)
            duration = time.monotonic() - started
            out.seek(0)
            err.seek(0)
            raw = out.read(MAX_OUTPUT)
            err_text = err.read(MAX_OUTPUT).decode("utf-8", "replace")
        stopped = self.group.stopped if (proc.returncode != 0 and self.group.is_stopped and not timed_out) else None
        result = Result(
            command=args[0] if args else "",
            argv=argv,
            returncode=proc.returncode,
            stdout=self.redact(raw.decode("utf-8", "replace")),
            stderr=self.redact(err_text),
            raw_stdout=raw,
            duration=duration,
            timed_out=timed_out,
            stopped=stopped,
        )
        if not result.ok:
            log.debug("skopeo %s failed (rc %s, %.2fs): %s", result.command, proc.returncode, duration,
                      result.message)
        return result

    # ------------------------------------------------------------ commands
    def list_tags(self, reference: str, *, tls_verify: bool, authfile: Path) -> Result:
        return self.run(["list-tags", f"--tls-verify={_bool(tls_verify)}", "--authfile", str(authfile),
                         f"docker://{reference}"])

    def inspect_raw(self, image: str, *, tls_verify: bool, authfile: Path) -> Result:
        return self.run(["inspect", "--raw", f"--tls-verify={_bool(tls_verify)}", "--authfile", str(authfile),
                         image])

    def inspect_config(self, image: str, *, tls_verify: bool, authfile: Path) -> Result:
        """The image's config blob as the registry stores it (``inspect --config --raw``)."""
        return self.run(["inspect", "--config", "--raw", f"--tls-verify={_bool(tls_verify)}", "--authfile",
                         str(authfile), image])

    def copy(self, source: str, destination: str, *, src_tls_verify: bool, src_authfile: Path,
             dest_args: Sequence[str] = (), digestfile: Path | None = None, unsigned: bool = False) -> Result:
        args = ["copy", "--all", "--preserve-digests", "--remove-signatures",
                f"--src-tls-verify={_bool(src_tls_verify)}", "--src-authfile", str(src_authfile), *dest_args]
        if digestfile is not None:
            args += ["--digestfile", str(digestfile)]
        args += [source, destination]
        return self.run(args, global_args=["--insecure-policy"] if unsigned else ())

    def delete(self, image: str, *, tls_verify: bool, authfile: Path) -> Result:
        return self.run(["delete", f"--tls-verify={_bool(tls_verify)}", "--authfile", str(authfile), image])


def _bool(value: bool) -> str:
    return "true" if value else "false"
