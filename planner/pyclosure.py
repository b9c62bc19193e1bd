"""The PyPI closure of a layer on a base: what `pip install -r` would add, and only that.

A layer's requirements are resolved once (by pip's own resolver, as of a date) against a
FROZEN VIEW of the base: the distributions the base already has installed. Like the seed's
`pip install -r`, which leaves a satisfying installed version in place, nothing the base already
has is in the closure: the base's packages are never overwritten by a layer (FlashInfer in an
sglang base is compiled against that base's own apache-tvm-ffi, for one).

The base's distributions are shown to pip as installed (metadata-only dist-info folders, and
nothing else installed), and pip resolves as `pip install -r` does on the base: a satisfied
requirement keeps the installed version; only where no installed version satisfies a requirement
does pip take one from the index, and the result says which base package that replaces.
"""

from __future__ import annotations

import datetime
import email.parser
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import attrs

from .errors import FetchError

def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@attrs.frozen
class Dist:
    name: str  # normalised (PEP 503)
    version: str


@attrs.frozen
class BaseView:
    """The distributions installed in a base, frozen: name -> version, and where it came from."""

    dists: tuple[Dist, ...]
    origin: str

    def version(self, name: str) -> Optional[str]:
        n = normalise(name)
        return next((d.version for d in self.dists if d.name == n), None)

    def names(self) -> frozenset[str]:
        return frozenset(d.name for d in self.dists)


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def view_of(pairs: dict[str, str], origin: str) -> BaseView:
    return BaseView(tuple(Dist(normalise(n), v) for n, v in sorted(pairs.items(), key=lambda kv: normalise(kv[0]))),
                    origin)


def parse_freeze(text: str, where: str) -> BaseView:
    """A `pip freeze` / `name==version` listing (comments, blank lines, `-e` and URL lines skipped)."""
    pairs: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or " @ " in line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not m:
            raise FetchError(f"line {n}: not name==version: {line[:80]!r}", where=where)
        pairs[normalise(m.group(1))] = m.group(2)
    return view_of(pairs, where)


def read_installed(rootfs: Path) -> BaseView:
    """The distributions installed in a root filesystem: every `*.dist-info/METADATA` of a
    site-packages or dist-packages folder under usr/. The root filesystem is untrusted: no link
    in it is followed (a `usr -> /` would list this machine's packages), and each METADATA is
    read as a regular file below it, its first 64 KiB only."""
    from .errors import UnsafeTree
    from .safetree import Tree

    rootfs = Path(rootfs)
    pairs: dict[str, str] = {}
    with Tree(rootfs, where=str(rootfs)) as tree:
        for pattern in ("usr/lib/python3*/*-packages", "usr/local/lib/python3*/*-packages",
                        "usr/lib64/python3*/*-packages", "opt/*/lib/python3*/*-packages"):
            for site in sorted(rootfs.glob(pattern)):
                rel = site.relative_to(rootfs)
                for info in sorted(site.glob("*.dist-info")):
                    try:
                        with tree.open_file(f"{rel}/{info.name}/METADATA") as f:
                            text = f.read(65536).decode("utf-8", errors="replace")
                    except UnsafeTree:  # through a link (the glob follows them), or not a file
                        continue
                    msg = email.parser.Parser().parsestr(text, headersonly=True)
                    name, version = msg.get("Name"), msg.get("Version")
                    if name and version:
                        pairs.setdefault(normalise(name), version.strip())
    return view_of(pairs, str(rootfs))


# -- resolution -----------------------------------------------------------------------------------

@attrs.frozen
class Resolved:
    """One file of a layer's closure."""

    name: str
    version: str
    filename: str
    sha256: Optional[str]
    requires_python: Optional[str] = None
    replaces: Optional[str] = None  # the base's version, where no version the base has satisfies
    # Its METADATA's Requires-Dist as pip read it (extras and markers included, unevaluated): what
    # a check of the image's closure holds the layers to.
    requires: tuple[str, ...] = ()


def _stub_dist_info(folder: Path, name: str, version: str) -> None:
    """An installed distribution as pip sees one: a dist-info folder, metadata only."""
    info = folder / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("frozen-base\n")
    (info / "RECORD").write_text("")


def _python_ok(requires_python: Optional[str], python: str) -> bool:
    if not requires_python:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
    except ImportError:  # pragma: no cover - pip always vendors it
        from pip._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet  # type: ignore
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True


def marker_environment(platform: str, python: str) -> dict[str, str]:
    """PEP 508 marker values of the TARGET (pip would use the machine it runs on: an x86_64
    host resolving for arm64 would take x86_64-only requirements and drop aarch64-only ones)."""
    from .fetch.pypi import wheel_arch

    full = python if python.count(".") == 2 else python + ".0"
    return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": wheel_arch(platform), "platform_python_implementation": "CPython",
            "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": full, "python_version": ".".join(full.split(".")[:2]), "sys_platform": "linux"}


# pip, run with nothing installed but the base (python -S: no site-packages; sys.path is pip's
# own copy and the stub dist-infos) and the target's marker environment. pip 23 allows --platform
# only with --target, which ignores what is installed: a dry run installs nothing anywhere, so
# that restriction is lifted here. pip 23.2 also downloads every resolved wheel after resolving,
# dry run or not, only to read metadata it already has from the index (PEP 658): a dry run here
# keeps that metadata and downloads nothing (a closure of 300 wheels was 500 MB per platform).
_BOOT = """
import json, sys
cfg = json.loads(sys.argv[1])
sys.path[:0] = [cfg["pip"], cfg["installed"]]
import pip._vendor.packaging.markers as markers
markers.default_environment = lambda: dict(cfg["env"])
import pip._internal.cli.cmdoptions as cmdoptions
cmdoptions.check_dist_restriction = lambda options, check_target=False: None
import pip._internal.operations.prepare as prepare
from pip._internal.req.req_install import InstallRequirement
from pip._internal.utils.direct_url_helpers import direct_url_from_link
_prepare = prepare.RequirementPreparer.prepare_linked_requirement
def prepare_linked_requirement(self, req, parallel_builds=False):
    dist = _prepare(self, req, parallel_builds)
    if req.needs_more_preparation:
        req.planner_metadata_dist = dist
    return dist
_more = prepare.RequirementPreparer.prepare_linked_requirements_more
def prepare_linked_requirements_more(self, reqs, parallel_builds=False):
    reqs = list(reqs)
    for req in reqs:
        if req.needs_more_preparation and getattr(req, "planner_metadata_dist", None) is not None:
            req.download_info = direct_url_from_link(req.link)
            req.needs_more_preparation = False
    _more(self, reqs, parallel_builds)
_get_dist = InstallRequirement.get_dist
def get_dist(self):
    dist = getattr(self, "planner_metadata_dist", None)
    if dist is not None and not self.metadata_directory and not self.local_file_path:
        return dist
    return _get_dist(self)
# pip 23.0 compares a PEP 658 METADATA's Name with the requested name unnormalised and discards
# every file of a project whose METADATA spells it otherwise (ipython_pygments_lexers): it then
# falls back to old releases (ipython 3.2.3) or finds nothing. pip 23.1 compares normalised names.
import re as _re
from pip._vendor.packaging.utils import canonicalize_name
_gmd = prepare.get_metadata_distribution
def get_metadata_distribution(contents, filename, name):
    dist = _gmd(contents, filename, name)
    if dist.raw_name != name and canonicalize_name(dist.raw_name) == canonicalize_name(name):
        contents = _re.sub(rb"^Name:.*$", b"Name: " + name.encode(), contents, count=1, flags=_re.M)
        dist = _gmd(contents, filename, name)
    return dist
prepare.get_metadata_distribution = get_metadata_distribution
prepare.RequirementPreparer.prepare_linked_requirement = prepare_linked_requirement
prepare.RequirementPreparer.prepare_linked_requirements_more = prepare_linked_requirements_more
InstallRequirement.get_dist = get_dist
from pip._internal.cli.main import main
sys.exit(main(cfg["args"]))
"""


def resolve_layer(requirements: list[str], base: BaseView, *, platform: str, python: str,
                  as_of: Optional[datetime.datetime] = None, constraints: list[str] = (),
                  sdists: tuple[str, ...] = (), metadata_cache: Optional[Path] = None) -> list[Resolved]:
    """pip's resolution of `requirements` for `platform` and CPython `python` (e.g. 3.10.12)
    on top of `base`, as `pip install -r` would do it there: the files the layer adds. A
    distribution of the base is in it only where no version the base has satisfies a
    requirement (pip would replace it too); `Resolved.replaces` says so.

    Only wheels are candidates, except for the distributions named in `sdists` (pure-Python
    projects that publish no wheel, built by a recipe of their own).

    pip 23's `--python-version` does not apply a candidate's Requires-Python where the index
    omits it; violators are excluded and the resolution repeated.

    With a date, pip reads the index through a `DatedIndex` that serves each wheel's METADATA
    (kept by the wheel's sha256 in `metadata_cache`, default `fetch.metadata.default_cache_dir()`)
    and fetches ahead of pip in parallel (`fetch.prefetch`): pip itself downloads no wheel.
    """
    import pip as _pip

    full = python if python.count(".") == 2 else python + ".0"
    with tempfile.TemporaryDirectory(prefix="planner-closure-") as tmp:
        work = Path(tmp)
        # pip alone on sys.path (a link to its package: its compiled modules are reused), not
        # the folder it is installed in, whose other distributions pip would count as installed.
        (work / "piplib").mkdir()
        (work / "piplib" / "pip").symlink_to(Path(_pip.__file__).parent, target_is_directory=True)
        installed = work / "installed"
        installed.mkdir()
        for d in base.dists:
            _stub_dist_info(installed, d.name, d.version)
        excluded: list[str] = []
        for _attempt in range(20):
            items = _resolve_once(requirements, list(constraints) + excluded, work, platform, full, as_of, sdists,
                                  metadata_cache)
            bad = [f"{r.name}!={r.version}" for r in items if not _python_ok(r.requires_python, full)]
            if not bad:
                return [attrs.evolve(r, replaces=base.version(r.name)) for r in items]
            excluded += bad
    raise FetchError(f"still resolving to versions that exclude Python {python}: {', '.join(excluded)}",
                     where="closure")


def _resolve_once(requirements: list[str], constraints: list[str], work: Path, platform: str, python: str,
                  as_of: Optional[datetime.datetime], sdists: tuple[str, ...],
                  metadata_cache: Optional[Path]) -> list[Resolved]:
    from .fetch.pypi import platform_tags
    from .fetch.simple_index import DatedIndex, pip_index_args

    report = work / "report.json"
    cfile = work / "constraints.txt"
    cfile.write_text("".join(c + "\n" for c in constraints))
    major_minor = "".join(python.split(".")[:2])
    args = ["install", "--dry-run", "--quiet", "--report", str(report), "--only-binary", ":all:",
            "--python-version", python, "--implementation", "cp", "--abi", "cp" + major_minor, "-c", str(cfile)]
    for tag in platform_tags(platform):
        args += ["--platform", tag]
    for name in sdists:
        args += ["--no-binary", name]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if as_of is not None:
        # pip builds an sdist's metadata in an isolated environment that a child pip fills from
        # the machine's pip configuration (find-links, extra indexes: undated files), not from the
        # options given here (`--isolated` is not passed on): setuptools 84 and wheel 0.48 from a
        # local folder cannot build pylatexenc 2.10 ("invalid command 'bdist_wheel'"). With a date
        # the child sees only the dated index, which pip passes on as --index-url.
        env = {k: v for k, v in env.items()
               if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")}
        env["PIP_CONFIG_FILE"] = os.devnull

    def run(index_args: list[str]) -> subprocess.CompletedProcess:
        cfg = {"pip": str(work / "piplib"), "installed": str(work / "installed"),
               "env": marker_environment(platform, python), "args": args + index_args + list(requirements)}
        return subprocess.run([sys.executable, "-S", "-c", _BOOT, json.dumps(cfg)], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL)

    errors: list[str] = []
    if as_of is None:
        proc = run([])
    else:
        from .fetch.metadata import MetadataCache, default_cache_dir
        from .fetch.prefetch import Prefetcher

        cache = MetadataCache(metadata_cache if metadata_cache is not None else default_cache_dir())
        watcher = Prefetcher(platform, python, marker_environment(platform, python))
        wanted = frozenset(normalise(n) for n in sdists)
        with DatedIndex(as_of, metadata=cache, watcher=watcher, keep=lambda f: watcher.usable(f, wanted)) as view:
            watcher.attach(view)
            proc = run(pip_index_args(view.url))
        errors = view.errors
    if proc.returncode != 0:
        if errors:  # what the index view could not fetch: pip only saw an HTTP 502
            raise FetchError(f"pip cannot resolve the layer: {errors[-1]}", where="closure")
        last = [line.strip() for line in proc.stderr.splitlines() if line.strip() and "ERROR" in line]
        raise FetchError(f"pip cannot resolve the layer: {last[-1] if last else proc.stderr.strip()[-300:]}",
                         where="closure")
    data = json.loads(report.read_text())
    out = []
    for item in data.get("install", []):
        meta, info = item["metadata"], item["download_info"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        out.append(Resolved(normalise(meta["name"]), meta["version"],
                            info["url"].rsplit("/", 1)[-1].split("#")[0], hashes.get("sha256"),
                            meta.get("requires_python"), requires=tuple(meta.get("requires_dist") or ())))
    return out
