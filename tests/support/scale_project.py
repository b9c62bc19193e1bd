"""Fixtures for scale-out tests and benches: shell-node recipe sets, a heterogeneous local Dask
cluster, and a plan prepared through the Python API.

    proj = scale_set(tmp_path)                       # diamond a->b,c->d + slow + native + big
    with dask_cluster(tmp_path, {"amd": {"arch_amd64": 1, "MEMORY": 4e9},
                                 "any": {"MEMORY": 4e9}}) as (cluster, client): ...
    p = prepare(proj)                                # plan, store, resolver, lock, decls
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Optional

import attrs

from .project import EPOCH, Project, _toml_str


def write_set_toml(proj: Project, *, target: str, platforms: tuple[str, ...] = ("linux/amd64",)) -> None:
    plats = ", ".join(_toml_str(p) for p in platforms)
    (proj.folder / "set.toml").write_text(
        f"target = {_toml_str(target)}\nsource-date-epoch = {EPOCH}\nplatforms = [{plats}]\nbuild-root = \"host\"\n")


def scale_set(tmp_path: Path, *, slow_seconds: float = 3.0) -> Project:
    """A set with:
    - the diamond a -> b, c -> d (target d); `a` reads its path source src/a/;
    - `slow`: sleeps, then writes slow.txt (no platform: any worker may run it);
    - `native`: axes = [platform] over linux/amd64 and linux/arm64 (needs arch_* resources);
    - `big`: asks for 64 GiB of memory;
    - `broken`: a build that fails.
    """
    proj = Project.diamond(tmp_path)
    write_set_toml(proj, target="d", platforms=("linux/amd64", "linux/arm64"))
    proj.recipe("slow", script=f"sleep {slow_seconds}\necho slow > $out/slow.txt", estimate="3s")
    proj.write_raw("native", 'name = "native"\nversion = "1.0"\naxes = ["platform"]\n\n[build]\n'
                             'builder = "shell"\nscript = "echo native > $out/n.txt"\n')
    proj.write_raw("big", 'name = "big"\nversion = "1.0"\n\n[resources]\nmemory = "64GiB"\n\n[build]\n'
                          'builder = "shell"\nscript = "echo big > $out/big.txt"\n')
    proj.recipe("broken", script="echo about to fail\nexit 3")
    proj.lock()
    return proj


def wide_set(tmp_path: Path, *, width: int, seconds: float) -> Project:
    """`width` independent sleeping leaves under one `top` node (the scale-out bench)."""
    proj = Project.empty(tmp_path, target="top")
    leaves = [f"leaf{i:04d}" for i in range(width)]
    ms = int(seconds * 1000)
    for name in leaves:
        proj.recipe(name, script=f"sleep {seconds}\necho {name} > $out/{name}.txt", estimate=f"{max(ms, 1)}ms")
    proj.recipe("top", deps=leaves, script="cat /deps/*/*.txt > $out/all.txt", estimate="10ms")
    proj.lock()
    return proj


@attrs.define
class Prepared:
    plan: object
    store: object
    resolver: object
    lock: object
    decls: dict

    def close(self) -> None:
        self.store.close()


def prepare(proj: Project, *, target: Optional[str] = None, store: Optional[Path] = None,
            sandbox: bool = True) -> Prepared:
    """Plan `proj` like `planner realise` does, against `store` (default: the project's)."""
    from planner import lock as lockmod
    from planner.graph import plan as make_plan
    from planner.host import detect_host
    from planner.recipes import load_set
    from planner.resolve import Resolver
    from planner.store import Store

    rs = load_set(proj.root, proj.set)
    lock = lockmod.read(rs.lockfile)
    plan = make_plan(rs, lock, detect_host(sandbox), target=target)
    st = Store(store or proj.store)
    return Prepared(plan, st, Resolver(rs, st), lock, lockmod.declarations(rs))


@contextlib.contextmanager
def dask_cluster(tmp_path: Path, workers: dict[str, dict[str, float]], *, nthreads: int = 1
                 ) -> Iterator[tuple[object, object]]:
    """A local cluster of Nanny-managed worker processes, each with its own resources and its
    own worker store (PLANNER_WORKER_STORE). LocalCluster gives every worker the same
    resources, so this uses its base class, SpecCluster, with one spec per worker."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    specs = {}
    for name, res in workers.items():
        specs[name] = {"cls": Nanny, "options": {
            "nthreads": nthreads, "resources": dict(res), "host": "127.0.0.1",
            "env": {"PLANNER_WORKER_STORE": str(tmp_path / "workers" / name / "store")},
            "memory_limit": 0, "silence_logs": logging.ERROR, "preload": ["planner.executors"]}}
    cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard": False, "host": "127.0.0.1"}},
                          workers=specs, silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(len(workers), timeout=60)
        yield cluster, client
    finally:
        client.close()
        cluster.close()


def realise_on(proj: Project, executor, *, store: Path, target: Optional[str] = None,
               platform: Optional[str] = None, substituters=(), download: str = "toplevel"):
    """`planner realise` through the Python API with an executor the caller holds; returns
    (RealiseResult, {node id: NodeResult})."""
    from planner.realise import RealiseOptions, realise

    res = realise(proj.root, proj.set, store,
                  RealiseOptions(target=target, platform=platform, download=download, use_plan_cache=False),
                  executor=executor, substituters=substituters)
    return res, {n.id: n for n in res.nodes}
