"""Debian packages through `apt-get download`, with a private apt state per architecture.

The machine's apt sources are used, but its package lists, cache, dpkg status and locks are
not: lists for the target architecture live under `state_dir`, so fetching arm64 packages on
an amd64 machine neither needs nor disturbs the machine's own `apt-get update`. The lists are
fetched once per state directory and refreshed only when a pinned version cannot be found.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import attrs

from ..debfile import open_deb_control
from ..errors import FetchError, PlannerError

__all__ = ["AptPackage", "download", "debian_arch", "candidate_version"]

_T = TypeVar("_T")
_FRESH_S = 300  # lists younger than this are not refreshed when a package seems missing
# Debian policy 5.6.1 and 5.6.12; checked so that nothing we pass can read as an apt option.
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~:-]*")

# OCI / uname names to Debian's.
_ARCHES = {
    "amd64": "amd64", "x86_64": "amd64",
    "arm64": "arm64", "aarch64": "arm64", "arm64/v8": "arm64",
    "arm/v7": "armhf", "armhf": "armhf",
    "386": "i386", "i386": "i386",
    "ppc64le": "ppc64el", "ppc64el": "ppc64el",
    "s390x": "s390x", "riscv64": "riscv64",
}


@attrs.frozen
class AptPackage:
    path: Path
    package: str
    version: str
    arch: str  # from the .deb itself: the requested architecture, or `all`
    url: str | None = None  # where apt found it: recorded so that any host can fetch it by hash


class _NotAvailable(Exception):
    """apt does not know the package or version; stale lists or gone upstream."""


def debian_arch(arch: str) -> str:
    """Debian's name for an architecture given as `amd64`, `linux/amd64`, `linux/arm64/v8`, ..."""
    key = arch.lower().removeprefix("linux/")
    if key not in _ARCHES:
        raise FetchError(f"unknown architecture {arch!r} (known: {', '.join(sorted(set(_ARCHES.values())))})",
                         where="apt")
    return _ARCHES[key]


@attrs.frozen
class _State:
    """Private apt state for one architecture under `<state_dir>/<arch>`.

    Per architecture because `apt-get update` deletes the lists of every architecture it
    was not asked for.
    """

    root: Path
    arch: str

    @classmethod
    def create(cls, state_dir: Path, arch: str) -> "_State":
        root = Path(state_dir) / arch
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # An empty dpkg status: what this machine has installed must not become the candidate.
        (root / "status").touch()
        return cls(root, arch)

    def options(self) -> list[str]:
        opts = {
            "Dir::State::Lists": str(self.root / "lists"),
            "Dir::State::status": str(self.root / "status"),
            "Dir::Cache": str(self.root / "cache"),
            # apt's parsed-lists cache, kept in our state: without it every apt-cache/apt-get
            # call re-parses all lists (seconds each), and images that set it to "" (Docker's
            # docker-clean) would make every lock of many .debs minutes slower.
            "Dir::Cache::pkgcache": str(self.root / "cache" / "pkgcache.bin"),
            "Dir::Cache::srcpkgcache": str(self.root / "cache" / "srcpkgcache.bin"),
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            # Pins are checked by sha256, so an expired Release file (a mirror between syncs, a
            # machine with a skewed clock) is no reason to refuse a pinned package.
            "Acquire::Check-Valid-Until": "false",
            "Debug::NoLocking": "1",  # the machine's lock is not ours to take; _State.locked is
        }
        if os.geteuid() == 0:
            # apt would drop to _apt and then fall back, with a warning, when _apt cannot
            # write to our temporary directory.
            opts["APT::Sandbox::User"] = "root"
        return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]

    @property
    def marker(self) -> Path:
        return self.root / "updated"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool, "-q", *self.options(), *args], cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})

    def update(self) -> None:
        proc = self.run("apt-get", "update")
        if proc.returncode != 0:
            raise FetchError(f"apt-get update for {self.arch} failed: {_apt_error(proc.stderr)}",
                             where=str(self.root))
        self.marker.write_text(f"{time.time():.0f}\n")


def _apt_error(stderr: str) -> str:
    """The most telling line of apt's stderr: its first `E:` line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["no message"])[0 if errors else -1]


def _candidate(state: _State, package: str) -> str:
    proc = state.run("apt-cache", "policy", package)
    if proc.returncode != 0:
        raise FetchError(f"apt-cache policy failed: {_apt_error(proc.stderr)}", where=f"apt:{package}")
    m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", proc.stdout, re.MULTILINE)
    if not m or m.group(1) == "(none)":
        raise _NotAvailable()
    return m.group(1)


_SOURCE_LINE = re.compile(r"^\s*-?\d+\s+(\S+\s+\S+\s+\S+\s+Packages)\s*$")


def _releases(state: _State) -> dict[str, tuple[str, str]]:
    """`apt-cache policy`'s package files: "URL dist/component arch Packages" -> (origin, codename)."""
    proc = state.run("apt-cache", "policy")
    out: dict[str, tuple[str, str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        m = _SOURCE_LINE.match(line)
        if m:
            current = m.group(1)
            continue
        if current and line.strip().startswith("release "):
            fields = dict(kv.split("=", 1) for kv in line.strip()[8:].split(",") if "=" in kv)
            out[current] = (fields.get("o", "").lower(), fields.get("n", "").lower())
            current = None
    return out


def _version_sources(state: _State, package: str, version: str) -> list[str]:
    """The package files that offer `package` at `version` (from its version table)."""
    proc = state.run("apt-cache", "policy", package)
    lines = proc.stdout.splitlines()
    out, inside = [], False
    for line in lines:
        head = re.match(r"^\s*(?:\*\*\*)?\s*(\S+)\s+-?\d+\s*$", line)
        if head and not _SOURCE_LINE.match(line):
            inside = head.group(1) == version
            continue
        m = _SOURCE_LINE.match(line)
        if inside and m:
            out.append(m.group(1))
    return out


def suite_matches(suite: str, origin: str, codename: str) -> bool:
    """`ubuntu/jammy` matches origin Ubuntu with codename jammy or one of its pockets (jammy-updates)."""
    vendor, _, name = suite.lower().partition("/")
    return origin == vendor and (codename == name or codename.startswith(name + "-"))


def _check_suite_offered(state: _State, what: str, suite: str) -> None:
    """Before any package lookup: a package the other distribution lacks (nvtop is in Debian's
    contrib) would otherwise be reported missing instead of from the wrong distribution."""
    releases = _releases(state)
    offered = sorted({f"{o}/{n}" for o, n in releases.values() if o and n})
    if not any(suite_matches(suite, o, n) for o, n in releases.values()):
        raise FetchError(f"wants {suite}, and this machine's apt sources offer only {', '.join(offered) or 'nothing'}: "
                         f"lock it where apt points at {suite}", where=f"apt:{what}")


def _check_suite(state: _State, package: str, version: str, suite: str) -> None:
    releases = _releases(state)
    _check_suite_offered(state, f"{package}={version}", suite)
    sources = _version_sources(state, package, version)
    if not sources:
        raise _NotAvailable()
    if not any(suite_matches(suite, *releases.get(src, ("", ""))) for src in sources):
        got = sorted({"/".join(releases.get(src, ("?", "?"))) for src in sources})
        raise FetchError(f"{package}={version} comes from {', '.join(got)} here, not {suite}",
                         where=f"apt:{package}={version}")


def _uris(printed: str) -> dict[str, str]:
    """File name -> URL, from `apt-get --print-uris download` ('URL' FILENAME SIZE SHA256:HEX
    per package); only http(s) URLs, which any host can fetch the pinned bytes from."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^'(https?://[^']+)' (\S+\.deb) \d+ ", printed, re.MULTILINE)}


def _fetch(state: _State, package: str, version: str, dest_dir: Path) -> tuple[Path, str | None]:
    """The .deb of package=version in `dest_dir`, and the URL apt fetched it from (the lock
    records it, so that a realise anywhere fetches it by hash without apt)."""
    uris = state.run("apt-get", "--print-uris", "download", f"{package}={version}", cwd=dest_dir)
    with tempfile.TemporaryDirectory(prefix=".apt-download-", dir=dest_dir) as tmp:
        os.chmod(tmp, 0o755)
        proc = state.run("apt-get", "download", f"{package}={version}", cwd=Path(tmp))
        if proc.returncode != 0:
            err = _apt_error(proc.stderr)
            if re.search(r"was not found|Unable to locate package|404\s+Not Found|Can't select", err):
                raise _NotAvailable()
            raise FetchError(f"apt-get download failed: {err}", where=f"apt:{package}={version}")
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download left {len(debs)} .deb files, expected one",
                             where=f"apt:{package}={version}")
        final = dest_dir / debs[0].name
        os.replace(debs[0], final)
        return final, _uris(uris.stdout).get(final.name) if uris.returncode == 0 else None


def _check_names(package: str, version: str | None) -> None:
    if not _PACKAGE_RE.fullmatch(package):
        raise FetchError(f"{package!r} is not a Debian package name", where="apt")
    if version is not None and not _VERSION_RE.fullmatch(version):
        raise FetchError(f"{version!r} is not a Debian version", where=f"apt:{package}")


def candidate_version(package: str, arch: str, *, state_dir: Path) -> str:
    """The version `apt-get download package` would fetch for `arch` now."""
    _check_names(package, None)
    state = _State.create(state_dir, debian_arch(arch))
    with state.locked():
        return _with_fresh_lists(state, package, None, lambda: _candidate(state, package))


def _with_fresh_lists(state: _State, package: str, version: str | None, step: Callable[[], _T]) -> _T:
    """Run `step`; if apt does not know the package/version, refresh the lists once and retry.

    Lists fetched in the last few minutes count as fresh: a lock run that meets several
    missing versions should not re-download the indexes for each.
    """
    if not state.marker.exists():
        state.update()
    fresh = time.time() - state.marker.stat().st_mtime < _FRESH_S
    while True:
        try:
            return step()
        except _NotAvailable:
            if fresh:
                break
            state.update()
            fresh = True
    what = f"{package}={version}" if version else package
    raise FetchError(f"{what} is not available for {state.arch} from the apt sources (gone upstream, "
                     f"or never there); run planner lock --update {package}", where=f"apt:{what}")


def download(package: str, version: str | None, arch: str, dest_dir: Path, *, state_dir: Path,
             suite: str | None = None) -> AptPackage:
    """Download `package` (at `version`, or the current candidate when None) for `arch`.

    `suite` (`ubuntu/jammy`, `debian/bookworm`) is the distribution the package must come
    from: apt sources of another distribution are refused instead of pinning a package of the
    same name from them. Returns the .deb's path in `dest_dir` and the package, version and
    architecture read back from the .deb itself.
    """
    _check_names(package, version)
    deb_arch = debian_arch(arch)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    state = _State.create(state_dir, deb_arch)

    def step() -> tuple[Path, str | None]:
        if suite:
            _check_suite_offered(state, package if version is None else f"{package}={version}", suite)
        wanted = version if version is not None else _candidate(state, package)
        if suite:
            _check_suite(state, package, wanted, suite)
        return _fetch(state, package, wanted, dest_dir)

    with state.locked():
        path, url = _with_fresh_lists(state, package, version, step)
    control = _control_of(path, f"apt:{package}")
    got = AptPackage(path=path, package=control.get("Package", ""), version=control.get("Version", ""),
                     arch=control.get("Architecture", ""), url=url)
    if got.package != package or (version is not None and got.version != version) \
            or got.arch not in (deb_arch, "all"):
        path.unlink(missing_ok=True)
        raise FetchError(f"apt gave {got.package}={got.version} ({got.arch}), "
                         f"not {package}={version or 'candidate'} ({deb_arch})", where=f"apt:{package}")
    return got


def _control_of(path: Path, what: str) -> dict[str, str]:
    """The control fields of a .deb apt just downloaded. It came from a mirror, so it is
    untrusted: one that cannot be read is removed and named, by its file and the package."""
    try:
        return open_deb_control(path)
    except PlannerError as exc:
        path.unlink(missing_ok=True)
        # The message names the file: callers re-raise it under their own input's name.
        raise FetchError(f"{path.name}: {exc.message}", where=what) from None


def download_many(wanted: list[tuple[str, str | None]], arch: str, dest_dir: Path, *, state_dir: Path
                  ) -> dict[tuple[str, str | None], AptPackage]:
    """One `apt-get download` for many packages of one architecture (each apt call parses the
    whole package index: a build root of 130 packages one by one takes minutes). Returns what
    it got, by the (package, version) asked for; on any apt error it returns nothing and the
    caller fetches one by one, which names the package at fault."""
    for package, version in wanted:
        _check_names(package, version)
    deb_arch = debian_arch(arch)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    state = _State.create(state_dir, deb_arch)
    args = sorted({p if v is None else f"{p}={v}" for p, v in wanted})
    with state.locked():
        if not state.marker.exists():
            state.update()
        uris = state.run("apt-get", "--print-uris", "download", *args, cwd=dest_dir)
        proc = state.run("apt-get", "download", *args, cwd=dest_dir)
    if proc.returncode != 0 or uris.returncode != 0:
        return {}
    url_of = _uris(uris.stdout)
    found: dict[str, list[AptPackage]] = {}
    for path in sorted(dest_dir.glob("*.deb")):
        try:
            control = _control_of(path, "apt")
        except FetchError:
            continue  # removed: fetched one by one, its error names the package at fault
        pkg = AptPackage(path=path, package=control.get("Package", ""), version=control.get("Version", ""),
                         arch=control.get("Architecture", ""), url=url_of.get(path.name))
        if pkg.arch in (deb_arch, "all"):
            found.setdefault(pkg.package, []).append(pkg)
    out: dict[tuple[str, str | None], AptPackage] = {}
    for package, version in wanted:
        match = [p for p in found.get(package, []) if version is None or p.version == version]
        if len(match) == 1:
            out[(package, version)] = match[0]
    return out
