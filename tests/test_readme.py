"""The README's two walk-throughs, run as a user would run them and compared with what the README shows.

"Walk-through with curl" and "Mirroring for real" are read from README.md as shell blocks, each with
what it prints: its lines that start with ``# `` and the fenced block right under it, in that order.
The blocks of a section run in order in one bash session (variables carry over, as in one terminal),
in one fresh folder laid out like a checkout after the install command (``.venv`` and ``tests/``),
so the second section meets what the first one left, as a user doing both would. The first section
runs against a ``quaymirror serve`` started here (the install command's first terminal); the second
starts its own, as it says, after that one was stopped (Ctrl-C).

Rewritten so the test can run beside others: the ports (8080, 5001) to free ones and ``/tmp`` to a
folder of the test's own. Ignored by the comparison: tokens, dates, durations, run ids, worker names
and whatever the README elides with ``...``; the worker's log is compared as a set of lines (copies
end in any order). Right after a sync-now the README says the status is ``SYNC_NOW`` or, once a
worker took it, ``SYNCING``; both are read as the first. A block that installs packages is not run
(tests never change the machine); its tools must be there instead, and every command the blocks use
must be one that the README installs or that every Debian has. The first server's log must not hold
the mirror's password, which the README says is logged only as ``********``.

docker.io cannot be had here (loopback only, no real name is ever resolved): the first server's SSRF
check gets a public address for it from a resolver of the test's own, while nothing else in that
process resolves any name, and its skopeo is a stand-in that waits as a hung registry would, so the
run that sync-now starts is still going when the README cancels it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.common.ports import free_port
from tests.common.registries import require_tools
from tests.common.servers import request

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTIONS = ("Walk-through with curl", "Mirroring for real")
API_PORT, REGISTRY_PORT = 8080, 5001
SESSION_TIMEOUT = 240.0
# The worker's log: a run's copies end in any order, so a block that reads it is compared as a set of lines.
UNORDERED = "/tmp/quaymirror.log"
# The first server's worker polls this often (the default is 10 s) and a session waits longer than that
# between two blocks, as a user reading the README does: what a block shows must not hold only because
# it came quickly after the one before (a schedule that starts in the past would already have run).
FIRST_SERVER_POLL_SECONDS = 0.2
PAUSE_BETWEEN_BLOCKS = 0.6
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
# Commands the blocks may use without an install shown in the README, besides bash's builtins and
# keywords and the functions the blocks define: what every Debian has (coreutils and grep are Essential).
EVERYWHERE = {"cat", "cut", "date", "grep", "head", "ls", "mkdir", "rm", "sed", "seq", "sha256sum", "sleep",
              "sort", "tail", "tr", "wc"}

# The first server, as the install command starts it, with DNS of the test's own (see the docstring).
SERVE_WITHOUT_DNS = r'''
import ipaddress, socket, sys
from quaymirror import cli
from quaymirror.security import ssrf

_getaddrinfo = socket.getaddrinfo

def loopback_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    try:
        ipaddress.ip_address(name)
    except (TypeError, ValueError):
        if name not in (None, "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, "no real name is resolved in this test") from None
    return _getaddrinfo(host, *args, **kwargs)

socket.getaddrinfo = loopback_only
ssrf.set_resolver(lambda host: {"docker.io": ["93.184.216.34"]}.get(host, []))
sys.exit(cli.main(sys.argv[1:]))
'''
HUNG_SKOPEO = "#!/bin/sh\n# Stand-in for skopeo against an upstream that never answers.\nexec sleep 600\n"


@dataclass
class Block:
    """A shell block of the README and what it prints."""

    line: int
    shell: str
    expected: list[str] = field(default_factory=list)

    @property
    def installs(self) -> bool:
        return "apt-get install" in self.shell


def section(text: str, title: str) -> tuple[str, int]:
    """The body of ``## title`` and the README line it starts on."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1), text.count("\n", 0, match.start(1)) + 1


def blocks_of(title: str) -> list[Block]:
    text = README.read_text()
    body, first_line = section(text, title)
    blocks: list[Block] = []
    previous_end = None
    for fence in FENCE.finditer(body):
        language, content = fence.group(1), fence.group(2)
        line = first_line + body.count("\n", 0, fence.start())
        right_under = previous_end is not None and not body[previous_end:fence.start()].strip()
        if language == "sh":
            lines = content.splitlines()
            blocks.append(Block(line, content, [ln[2:] if ln.startswith("# ") else "" for ln in lines
                                                 if ln.startswith("# ") or ln == "#"]))
        elif right_under and blocks:
            blocks[-1].expected += content.splitlines()
        previous_end = fence.end()
    assert blocks, f"no shell block in '## {title}'"
    return blocks


def commands_used(shell: str) -> set[str]:
    """The command words of a block: the first word of each command, pipeline stage and substitution."""
    body = re.sub(r"<<'?(\w+)'?\n.*?^\1$", "", shell, flags=re.DOTALL | re.MULTILINE)  # heredoc bodies
    lexer = shlex.shlex(body.replace("\\\n", " "), posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace, lexer.whitespace_split = " \t", True
    words: set[str] = set()
    at_command, redirected = True, False
    for token in lexer:
        if redirected:
            redirected = False
        elif token and set(token) <= set("<>&") and token not in ("&", "&&"):
            redirected = True  # the next word is a file or a descriptor
        elif token and set(token) <= set("();|&\n"):
            at_command = bool(set(token) & set("(;|&\n"))  # not after the ")" that closes a substitution
        elif at_command and token != "$" and not re.match(r"^\w+=", token):
            words.add(token)
            at_command = token in ("do", "then", "until", "while", "if", "!", "sudo")
    return words


class Rewrite:
    """The ports and /tmp, changed in the commands and changed back in what they print."""

    def __init__(self, tmp: Path) -> None:
        self.api, self.registry, self.tmp = free_port(), free_port(), tmp

    def command(self, shell: str) -> str:
        shell = re.sub(rf"\b{API_PORT}\b", str(self.api), shell)
        shell = re.sub(rf"\b{REGISTRY_PORT}\b", str(self.registry), shell)
        return shell.replace("/tmp/", f"{self.tmp}/")

    def output(self, text: str) -> str:
        text = text.replace(f"127.0.0.1:{self.api}", f"127.0.0.1:{API_PORT}")
        text = text.replace(f"127.0.0.1:{self.registry}", f"127.0.0.1:{REGISTRY_PORT}")
        return text.replace(f"{self.tmp}/", "/tmp/")


VARIABLE = [
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r'("duration_seconds": ?)[0-9.]+'), r"\1<seconds>"),
    (re.compile(r'("(?:worker|token)": ?)"[^"]*"'), r"\1<text>"),
    (re.compile(r'("id": ?)\d+'), r"\1<id>"),
    (re.compile(r"\b(run|in) [0-9.]+s?\b"), r"\1 <n>"),
]


def normalise(line: str) -> str:
    for pattern, replacement in VARIABLE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def matches(expected: str, actual: str) -> bool:
    """``expected`` (normalised; ``...`` stands for anything) against ``actual`` (normalised)."""
    pattern = ".*".join(re.escape(piece) for piece in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def compare(block: Block, output: str) -> str | None:
    """None when ``output`` is what the README shows under ``block``, else a readable difference."""
    actual = [normalise(line) for line in output.splitlines()]
    if "sync-now" in block.shell:
        actual = [re.sub(r"\bSYNCING\b", "SYNC_NOW", line) for line in actual]
    while actual and not actual[-1]:
        actual.pop()
    expected = [normalise(line) for line in block.expected]
    if UNORDERED in block.shell:
        actual, expected = sorted(actual), sorted(expected)
    if len(actual) == len(expected) and all(matches(e, a) for e, a in zip(expected, actual, strict=True)):
        return None
    return (f"README.md line {block.line}:\n{block.shell}\n--- the README shows\n" + "\n".join(block.expected)
            + "\n--- it prints (normalised)\n" + "\n".join(actual))


class Session:
    """One bash session (one terminal) in ``cwd``: blocks run in order, each one's output kept apart."""

    def __init__(self, name: str, cwd: Path, scratch: Path, env: dict[str, str]) -> None:
        self.name, self.cwd, self.env = name, cwd, env
        self.scratch = scratch / name
        self.scratch.mkdir()
        self.process: subprocess.Popen | None = None

    def run(self, commands: list[str]) -> list[str]:
        lines = []
        for i, text in enumerate(commands):
            path = self.scratch / f"block-{i}.sh"
            path.write_text(text)
            pause = f"sleep {PAUSE_BETWEEN_BLOCKS}; " if i else ""
            lines.append(f"{pause}printf '\\036\\n'; . {shlex.quote(str(path))}")
        driver = self.scratch / "session.sh"
        driver.write_text("\n".join(lines) + "\nprintf '\\036\\n'\n")
        out = self.scratch / "output"
        with out.open("wb") as sink:
            self.process = subprocess.Popen(["bash", "--noprofile", "--norc", str(driver)], cwd=self.cwd,
                                            env=self.env, stdin=subprocess.DEVNULL, stdout=sink,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.process.wait(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name}: the blocks did not finish within {SESSION_TIMEOUT:.0f}s:\n"
                        + out.read_text(errors="replace"))
        chunks = out.read_text(errors="replace").split("\x1e\n")
        assert len(chunks) == len(commands) + 2, out.read_text()
        return chunks[1:-1]

    def stop(self) -> None:
        """What the session left running (the servers a block started with ``&``) stops with it."""
        if self.process is not None:
            stop_group(self.process.pid)


def stop_group(pgid: int, timeout: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def user_env() -> dict[str, str]:
    """The environment of a user's terminal: no QUAYMIRROR_* setting of the test run leaks in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}


def start_first_server(checkout: Path, rewrite: Rewrite, scratch: Path) -> subprocess.Popen:
    """``.venv/bin/quaymirror serve`` as the install command leaves it, in the checkout (port rewritten)."""
    skopeo = scratch / "hung-skopeo"
    skopeo.write_text(HUNG_SKOPEO)
    skopeo.chmod(0o755)
    env = {**user_env(), "QUAYMIRROR_SKOPEO": str(skopeo),
           "QUAYMIRROR_WORKER_POLL_SECONDS": str(FIRST_SERVER_POLL_SECONDS)}
    with (scratch / "first-server.log").open("wb") as log:
        server = subprocess.Popen([str(checkout / ".venv/bin/python"), "-c", SERVE_WITHOUT_DNS, "serve",
                                   "--port", str(rewrite.api)], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, (scratch / "first-server.log").read_text()
        with contextlib.suppress(OSError):
            if request(rewrite.api, "GET", "/healthz")[0] == 200:
                return server
        time.sleep(0.2)
    stop_group(server.pid)
    pytest.fail("the first server did not answer /healthz:\n" + (scratch / "first-server.log").read_text())


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A fresh folder laid out like the checkout after the install command: .venv and tests/."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    (folder / ".venv").symlink_to(sys.prefix)
    (folder / "tests").symlink_to(ROOT / "tests")
    return folder


def test_every_command_of_the_walk_throughs_is_installed_by_the_readme():
    """A block uses only tools that the README's own commands install (or that every Debian has)."""
    text = README.read_text()
    builtins = set(subprocess.run(["bash", "-c", "compgen -b -k"], capture_output=True, text=True,
                                  check=True).stdout.split())
    installed = set()
    for match in re.finditer(r"apt-get install -y ([\w .-]+?)(?: &&|$)", text, re.MULTILINE):
        installed.update(match.group(1).split())
    missing = {}
    for title in SECTIONS:
        blocks = blocks_of(title)
        functions = {name for block in blocks
                     for name in re.findall(r"^(\w+)\(\) *\{", block.shell, re.MULTILINE)}
        for block in blocks:
            for word in commands_used(block.shell):
                if word.startswith(".venv/bin/") or word in EVERYWHERE | builtins | functions | installed:
                    continue
                missing.setdefault(word, block.line)
    assert not missing, f"used without an install the README shows (command: README line): {missing}"


def test_the_walk_throughs_print_what_the_readme_shows(checkout: Path, tmp_path: Path):
    require_tools("bash", "curl", "jq", "skopeo", "docker-registry")
    rewrite = Rewrite(tmp_path / "tmp")
    rewrite.tmp.mkdir()
    scratch = tmp_path / "sessions"
    scratch.mkdir()
    failures: list[str] = []
    sessions: list[Session] = []
    try:
        for title in SECTIONS:
            blocks = blocks_of(title)
            for block in blocks:
                if block.installs:  # not run: what it installs must be here
                    packages = re.search(r"apt-get install -y ([\w .-]+)", block.shell).group(1).split()
                    require_tools(*packages)
            runnable = [block for block in blocks if not block.installs]
            server = start_first_server(checkout, rewrite, scratch) if title == SECTIONS[0] else None
            session = Session(f"section-{len(sessions) + 1}", checkout, scratch, user_env())
            sessions.append(session)
            try:
                outputs = session.run([rewrite.command(block.shell) for block in runnable])
            finally:
                if server is not None:  # Ctrl-C in the first terminal, as the second section asks
                    server.send_signal(signal.SIGINT)
                    try:
                        server.wait(timeout=20)
                    finally:
                        stop_group(server.pid)
            if server is not None:  # the README: the password is "logged only as ********"
                shown = "".join(b.shell for b in blocks)
                password = re.search(r'"external_registry_password": "([^"]+)"', shown)
                assert password and password.group(1) not in (scratch / "first-server.log").read_text()
            for block, output in zip(runnable, outputs, strict=True):
                difference = compare(block, rewrite.output(output))
                if difference:
                    failures.append(difference)
    finally:
        for session in sessions:
            session.stop()
    assert not failures, "\n\n".join(failures)
