"""First use on a brand-new Debian 12 machine, each in a container from the debootstrap base.

Run by .ci/containers, which makes the base image (``ctr_base``) first. Each container of it is made
to look like the official ``debian:12`` image first: no apt lists, no Python, no CA certificates.
Then:

* ``readme``: the README's first command, read from README.md (never retyped), runs verbatim in the
  checkout copied in (tracked and untracked files, not the host's .venv): as root, and as a user with
  sudo. It must end in a ``quaymirror serve`` that answers ``/healthz`` and knows the admin token it
  printed.
* ``provision``: ``.ci/provision`` (the first step of ``bash .ci/run``) on the same kind of machine,
  where nothing answers on 127.0.0.1:5432: afterwards ``python3 -m venv`` works and a PostgreSQL
  cluster on 127.0.0.1:5432 trusts ``postgres`` and has a ``test`` database, as the suite needs.

Each container has a network namespace of its own (podman's bridge), so the host's PostgreSQL and
ports are not seen from inside, and nothing inside can take a host port. The host's pip configuration
(this machine's package index and CA bundle) is passed in as PIP_* variables: that is the machine's
environment, not a change of the command. Containers are removed whatever happens.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.common.ports import wait_for

BASE = os.environ.get("BASE_TAG", "localhost/quaymirror-base:bookworm")
HOST_PIP = "/run/host-pip"  # where the host's pip files are mounted (read-only) in the container
README_TIMEOUT = 900.0
PROVISION_TIMEOUT = 600.0
# What the official debian:12 image does not have and our base does (the image build needs them).
NOT_IN_OFFICIAL_IMAGE = ["python3", "python3.11", "python3-minimal", "python3.11-minimal", "ca-certificates"]


def run(*args: str, check: bool = True, timeout: float = 300, stdin: bytes | None = None) -> str:
    result = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)
    out = result.stdout.decode(errors="replace")
    if check and result.returncode != 0:
        err = (result.stderr.decode(errors="replace") + out).strip()[-3000:]
        raise RuntimeError(f"{shlex.join(args[:6])}... failed ({result.returncode}): {err}")
    return out


def readme_first_command() -> str:
    """The first shell block of README.md: the install-and-run command, one line."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no ```sh block"
    command = match.group(1).strip()
    assert "\n" not in command and command.endswith("quaymirror serve"), command
    return command


def host_pip_config() -> tuple[list[str], list[str]]:
    """The host's effective pip configuration as ``-e PIP_...`` and ``-v`` podman arguments.

    Every option pip reads here (its configuration files, then PIP_* variables, which win) becomes
    one PIP_* variable. The files and directories they name are mounted read-only under HOST_PIP and
    the values rewritten to match; for a ``file://`` index its parent is mounted, since an index's
    pages link to files beside it.
    """
    listing = run(str(ROOT / ".venv/bin/pip"), "config", "list")
    options: dict[str, str] = {}
    env_options: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip().strip("'\"")
        section, _, name = key.rpartition(".")
        (env_options if section == ":env:" else options)[name] = value
    options.update(env_options)
    mounts: dict[str, str] = {}

    def inside(path: str) -> str:
        mounts[path] = HOST_PIP + path
        return HOST_PIP + path

    env: list[str] = []
    for name, value in sorted(options.items()):
        words = []
        for word in value.split():
            if word.startswith("file://"):
                path = word[len("file://"):]
                inside(os.path.dirname(path.rstrip("/")))
                word = "file://" + HOST_PIP + path
            elif word.startswith("/") and os.path.exists(word):
                word = inside(word)
            words.append(word)
        env += ["-e", f"PIP_{name.upper().replace('-', '_')}={' '.join(words)}"]
    volumes = [arg for src, dst in sorted(mounts.items()) if os.path.exists(src)
               for arg in ("-v", f"{src}:{dst}:ro")]
    return env, volumes


class Container:
    """A container of the base with its own network namespace, idle until told what to run."""

    def __init__(self, role: str, volumes: list[str]) -> None:
        self.name = f"qm-firstuse-{role}-{uuid.uuid4().hex[:6]}"
        run("podman", "run", "-d", "--pull=never", "--name", self.name, "--hostname", self.name, *volumes, BASE,
            "sleep", "infinity")

    def sh(self, script: str, *, user: str = "root", env: tuple[str, ...] = (), detach: bool = False,
           check: bool = True, timeout: float = 300, stdin: bytes | None = None) -> str:
        flags = [*(["-i"] if stdin is not None else []), *(["-d"] if detach else []), "--user", user, *env]
        return run("podman", "exec", *flags, self.name, "bash", "-c", script, check=check, timeout=timeout,
                   stdin=stdin)

    def like_official_image(self) -> None:
        """No Python, no CA certificates, no apt lists: what the official debian:12 image starts with."""
        self.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove "
                f"{' '.join(NOT_IN_OFFICIAL_IMAGE)} >/dev/null 2>&1; rm -rf /var/lib/apt/lists/*")
        self.sh("! command -v python3 && ! ls /var/lib/apt/lists/*Packages* 2>/dev/null")

    def copy_checkout(self, dest: str, owner: str = "root") -> None:
        """Tracked and untracked (not ignored) files of the checkout; never .venv or instance/."""
        files = run("git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = [name for name in files.split("\0") if name and (ROOT / name).exists()]
        archive = subprocess.run(["tar", "-C", str(ROOT), "--null", "-T", "-", "-cf", "-"],
                                 input="\0".join(names).encode(), capture_output=True, check=True).stdout
        self.sh(f"mkdir -p {dest} && tar -x -C {dest} && chown -R {owner}: {dest}", stdin=archive)

    def http_get(self, path: str, port: int = 8080, token: str | None = None) -> str:
        """A GET from inside the container, with bash alone (there is no curl in a fresh image)."""
        auth = f"Authorization: Bearer {token}\\r\\n" if token else ""
        request = f"GET {path} HTTP/1.0\\r\\n{auth}\\r\\n"
        return self.sh(f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf '{request}' >&3 && cat <&3",
                       check=False, timeout=30)

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True, timeout=60,
                       check=False)


def check_readme(as_user: str | None) -> float:
    """The README's first command, run verbatim as root (``as_user`` None) or as a user with sudo."""
    command = readme_first_command()
    pip_env, pip_volumes = host_pip_config()
    box = Container("readme-" + (as_user or "root"), pip_volumes)
    try:
        user, home = "root", "/root"
        if as_user:
            user, home = as_user, f"/home/{as_user}"
            box.sh("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq"
                   " && apt-get install -y -qq sudo >/dev/null"
                   f" && useradd -m -s /bin/bash {user}"
                   f" && echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user}")
        box.like_official_image()
        checkout = f"{home}/quaymirror"
        box.copy_checkout(checkout, owner=user)
        log = f"{home}/readme-first-command.log"
        started = time.monotonic()
        # The command, verbatim, on a line of its own; its output and its end go to the log.
        box.sh(f"cd {checkout} && exec >{log} 2>&1\n{command}\necho \"README command exited with $?\"",
               user=user, env=(*pip_env, "-e", f"HOME={home}"), detach=True)

        def answered() -> bool:
            output = box.sh(f"cat {log}", check=False)
            if "README command exited" in output:
                raise RuntimeError(f"the README's first command ended:\n{output[-4000:]}")
            return '{"status": "ok"}' in box.http_get("/healthz")

        wait_for(answered, README_TIMEOUT, interval=1.0, what="/healthz of the README's quaymirror serve")
        took = time.monotonic() - started
        printed = re.search(r"Admin token .*:\n(\S+)\n", box.sh(f"cat {log}"))
        assert printed, box.sh(f"cat {log}")[-2000:]
        token = printed.group(1)
        assert box.sh(f"cat {checkout}/instance/admin-token").strip() == token
        me = box.http_get("/api/v1/user/", token=token)
        assert '"username": "admin"' in me and '"super_user": true' in me, me
        who = f"as {as_user} with sudo" if as_user else "as root"
        print(f"container: README install {who} (apt-get update, apt, venv, pip) to /healthz "
              f"in {took:.0f} s; the printed admin token works")
        return took
    finally:
        box.remove()


def check_provision() -> float:
    """.ci/provision where nothing answers on 127.0.0.1:5432 and python3-venv is missing."""
    box = Container("provision", [])
    try:
        box.like_official_image()
        box.sh("! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null")  # nothing answers, as on a new machine
        box.copy_checkout("/src")
        started = time.monotonic()
        output = box.sh("cd /src && bash .ci/provision 2>&1", timeout=PROVISION_TIMEOUT)
        took = time.monotonic() - started
        box.sh("python3 -m venv /tmp/venv-check && /tmp/venv-check/bin/python -c pass")
        box.sh("for tool in skopeo docker-registry htpasswd openssl curl jq; do command -v $tool; done")
        answer = box.sh("psql -h 127.0.0.1 -p 5432 -U postgres -d test -tAc 'SELECT current_user'").strip()
        assert answer == "postgres", (answer, output)
        again = box.sh("cd /src && bash .ci/provision 2>&1", timeout=120)  # a second run finds it answering
        assert "installing" not in again, again
        print(f"container: .ci/provision on a new Debian 12 machine in {took:.0f} s (tools, python3-venv, "
              "PostgreSQL with a trusted 'test' database on 127.0.0.1:5432)")
        return took
    finally:
        box.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    checks = ["readme", "readme-sudo", "provision"]
    parser.add_argument("checks", nargs="*", metavar="CHECK", help=f"one of {', '.join(checks)} (default: all)")
    args = parser.parse_args()
    if set(args.checks) - set(checks):
        parser.error(f"unknown check(s): {' '.join(sorted(set(args.checks) - set(checks)))}")
    for check in args.checks or checks:
        if check == "readme":
            check_readme(None)
        elif check == "readme-sudo":
            check_readme("newcomer")
        else:
            check_provision()
    return 0


if __name__ == "__main__":
    sys.exit(main())
