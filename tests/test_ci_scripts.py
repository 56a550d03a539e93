"""The CI scripts name no package host: debootstrap's Debian mirror is the one the machine's apt uses.

``ctr_debian_mirror`` (.ci/container-lib.sh) is run by bash on apt source folders made here, in
both of apt's formats, so the scripts work behind any mirror; and no file of the project names the
host of a package registry.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / ".ci/container-lib.sh"
# The hosts of Debian's, Ubuntu's, PyPI's and npm's package archives (written so as not to name one).
PACKAGE_HOST = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.(?:debian\.org|ubuntu\.com)\b|\bpypi\.org\b"
                          r"|\bpythonhosted\.org\b|\bnpmjs\.(?:org|com)\b")


def mirror(apt_etc: Path, suite: str = "bookworm", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{LIB}"; ctr_debian_mirror "$1"', "-", suite],
                          env={**os.environ, "APT_ETC": str(apt_etc), "CI_DEBIAN_MIRROR": "", **env},
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def apt_etc(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_the_mirror_comes_from_a_deb822_source_of_the_suite(apt_etc: Path):
    (apt_etc / "sources.list.d/debian.sources").write_text(
        "Types: deb-src\nURIs: http://sources-only.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "# a disabled one\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\n  http://second.example/debian\n"
        "Suites: bookworm\n bookworm-updates\nComponents: main\n")
    result = mirror(apt_etc)
    assert (result.returncode, result.stdout) == (0, "http://mirror.example/debian\n"), result.stderr
    assert mirror(apt_etc, "bookworm-updates").stdout == "http://mirror.example/debian\n"
    assert mirror(apt_etc, "bookworm-security").stdout == "http://security.example/debian-security\n"


def test_sources_list_comes_first_as_in_apt(apt_etc: Path):
    (apt_etc / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://listed.example/debian bookworm main contrib\n")
    (apt_etc / "sources.list.d/other.sources").write_text("Types: deb\nURIs: http://later.example/debian\n"
                                                          "Suites: bookworm\nComponents: main\n")
    assert mirror(apt_etc).stdout == "http://listed.example/debian\n"
    (apt_etc / "sources.list").unlink()
    assert mirror(apt_etc).stdout == "http://later.example/debian\n"


def test_no_source_for_the_suite_is_a_clear_error_and_the_variable_overrides(apt_etc: Path):
    (apt_etc / "sources.list.d/trixie.list").write_text("deb http://mirror.example/debian trixie main\n")
    result = mirror(apt_etc)
    assert result.returncode == 1 and result.stdout == ""
    assert "no Debian mirror for bookworm" in result.stderr and "CI_DEBIAN_MIRROR" in result.stderr
    assert mirror(apt_etc, CI_DEBIAN_MIRROR="http://chosen.example/debian").stdout == "http://chosen.example/debian\n"


def test_the_cached_base_changes_with_the_mirror(apt_etc: Path, tmp_path: Path):
    """The base's own apt sources name its mirror, so another mirror makes another base."""
    def tarball(uri: str) -> str:
        (apt_etc / "sources.list").write_text(f"deb {uri} bookworm main\n")
        return subprocess.run(["bash", "-c", f'source "{LIB}"; ctr_base_tarball'],
                              env={**os.environ, "APT_ETC": str(apt_etc), "CI_DEBIAN_MIRROR": "",
                                   "CI_CTR_CACHE": str(tmp_path)},
                              capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    one, again, other = tarball("http://a.example/debian"), tarball("http://a.example/debian"), \
        tarball("http://b.example/debian")
    assert one == again != other
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/rootfs-bookworm-[0-9a-f]{12}\.tar", one)


def test_no_file_of_the_project_names_a_package_host():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True,
                           check=True).stdout.split("\0")
    named = {}
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found = PACKAGE_HOST.findall(text)
        if found:
            named[name] = sorted(set(found))
    assert not named, f"package hosts named in the project: {named}"
