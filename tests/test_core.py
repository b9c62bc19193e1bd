"""The pure core, without bubblewrap, Dask, a registry or the CLI: preimage diffs and why's
classification and explanation, graph expansion over variant axes, typed preimages and
resolution, the sandbox's argument list."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from planner import sandbox
from planner.derivation import Preimage, Variant, build_key, resolve
from planner.graph import plan
from planner.hashing import key_of
from planner.host import HostInfo
from planner.lock import read as read_lock
from planner.recipes import load_set
from planner.causes import Change, NodeState, classify, diff_preimages, explain

from .support.project import Project

HOST = HostInfo(platform="linux/amd64", packages={"bash": "5.2.15-2+b2"})


# -- graph expansion -------------------------------------------------------------------------

def _variant_project(tmp_path: Path) -> Project:
    """k (platform x cuda) <- w (pure, no axes) <- top (requires both), for 2 platforms x 2 CUDA sets."""
    proj = Project.empty(tmp_path, target="top")
    (proj.folder / "set.toml").write_text(
        'target = "top"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64", "linux/arm64"]\n'
        '[cuda]\ndefault = ["sm_90a", "sm_100a"]\nsm100a = ["sm_100a"]\n')
    proj.recipe("k", extra='axes = ["platform", "cuda"]')
    proj.recipe("w", deps=["k"])
    proj.recipe("pure")
    proj.recipe("top", deps=["w", "pure"])
    proj.lock()
    return proj


def _plan(proj: Project, host: HostInfo = HOST):
    rs = load_set(proj.root, proj.set)
    return plan(rs, read_lock(rs.lockfile), host)


def test_axes_reach_only_what_consumes_them(tmp_path: Path) -> None:
    p = _plan(_variant_project(tmp_path))
    by_name: dict[str, list] = {}
    for n in p.nodes.values():
        by_name.setdefault(n.name, []).append(n)
    assert len(by_name["pure"]) == 1 and by_name["pure"][0].variant == Variant()
    assert len(by_name["k"]) == 4  # 2 platforms x 2 CUDA arch sets
    assert {(n.variant.platform, n.variant.cuda) for n in by_name["k"]} == {
        (p, c) for p in ("linux/amd64", "linux/arm64") for c in (("sm_90a", "sm_100a"), ("sm_100a",))}
    # w consumes k, so it inherits k's axes; top consumes w.
    assert len(by_name["w"]) == 4 and len(by_name["top"]) == 4
    for n in by_name["w"]:
        (dep,) = n.deps.values()
        assert p.nodes[dep].variant == n.variant
    # Dependencies first, and every dependency's key is in the dependent's preimage.
    order = list(p.nodes)
    for n in p.nodes.values():
        for mount, dep in n.deps.items():
            assert order.index(dep) < order.index(n.id)
            assert n.preimage.deps[mount] == p.nodes[dep].key
    assert set(p.targets) == {n.id for n in by_name["top"]}


def test_needed_stops_at_valid_outputs(tmp_path: Path) -> None:
    p = _plan(_variant_project(tmp_path))
    w = next(n.id for n in p.nodes.values() if n.name == "w")
    top = next(t for t in p.targets if w in p.nodes[t].deps.values())
    needed = p.needed([top], valid=[w])
    assert top in needed and w not in needed
    assert not any(p.nodes[n].name == "k" for n in needed)  # below a valid node: nothing to build
    assert p.needed([top], valid=[]) == set(p.closure([top]))


def test_host_packages_key_sandboxed_builders_only(tmp_path: Path) -> None:
    proj = _variant_project(tmp_path)
    a, b = _plan(proj), _plan(proj, attrs.evolve(HOST, packages={"bash": "5.2.15-3"}))
    assert a.nodes.keys() == b.nodes.keys()
    assert all(a.nodes[n].key != b.nodes[n].key for n in a.nodes)  # every node here is a shell build
    assert all(a.nodes[n].preimage.host == {**{k: "absent" for k in a.nodes[n].preimage.host}, "bash": "5.2.15-2+b2"}
               for n in a.nodes)


# -- the typed preimage ----------------------------------------------------------------------

def test_preimage_round_trips_and_keys_its_json(tmp_path: Path) -> None:
    p = _plan(_variant_project(tmp_path))
    for n in p.nodes.values():
        data = n.preimage.to_json()
        assert key_of(data) == n.key
        assert Preimage.from_json(data) == n.preimage
        assert "resolved" not in data


def test_resolve_replaces_dependency_keys_by_digests(tmp_path: Path) -> None:
    p = _plan(_variant_project(tmp_path))
    top = p.nodes[p.targets[0]]
    digests = {m: f"blake3:{'1' * 63}{i}" for i, m in enumerate(sorted(top.deps))}
    r = resolve(top, digests)
    assert r.preimage.deps == digests and r.preimage.resolved
    assert r.build_key == key_of(r.preimage.to_json()) != top.key
    assert resolve(top, digests) == r  # pure
    # A dependency rebuilt to the same digest leaves the build key alone (early cutoff) ...
    assert build_key(top, {m: _Entry(d) for m, d in digests.items()}) == r.build_key
    # ... another digest moves it.
    other = dict(digests, **{sorted(top.deps)[0]: "blake3:" + "f" * 64})
    assert resolve(top, other).build_key != r.build_key


@attrs.frozen
class _Entry:
    digest: str


# -- why: diffs, classification, explanation ---------------------------------------------------

PRE = {"format": "planner/derivation/v1", "name": "b", "version": "1.0", "variant": {"platform": "linux/amd64"},
       "builder": {"kind": "shell", "version": 1, "settings": {"opt": 1}, "script": "make"},
       "env": {"CFLAGS": "-O2"}, "inputs": {"source": {"tree": "blake3:aa", "unpacked": True}},
       "patches": [{"name": "p1", "strip": 1, "tree": "blake3:p1"}], "deps": {"a": "blake3:ka"},
       "source_date_epoch": 1, "impure": False, "host": {"bash": "5.2"}}


def _with(**changes) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRE.items()}
    for path, value in changes.items():
        head, _, rest = path.partition("__")
        if rest:
            out[head] = dict(out[head], **{rest: value})
        else:
            out[head] = value
    return out


@pytest.mark.parametrize("changes, kind, field", [
    ({"inputs": {"source": {"tree": "blake3:bb", "unpacked": True}}}, "source", "source"),
    ({"env__CFLAGS": "-O3"}, "env", "CFLAGS"),
    ({"builder": dict(PRE["builder"], settings={"opt": 2})}, "setting", "opt"),
    ({"builder": dict(PRE["builder"], script="make -j")}, "script", "script"),
    ({"builder": dict(PRE["builder"], version=2)}, "builder", "version"),
    ({"host__bash": "5.3"}, "host-package", "bash"),
    ({"variant__platform": "linux/arm64"}, "variant", "platform"),
    ({"source_date_epoch": 2}, "epoch", "source-date-epoch"),
    ({"patches": [{"name": "p1", "strip": 1, "tree": "blake3:p2"}]}, "patch", "p1"),
    ({"impure": True}, "sandbox", "sandbox"),
])
def test_each_preimage_field_classifies_to_its_cause(changes: dict, kind: str, field: str) -> None:
    (ch,) = diff_preimages(PRE, _with(**changes))
    cause = classify(ch, "b")
    assert cause is not None and (cause.kind, cause.field) == (kind, field)


def test_an_impure_build_is_the_sandbox_turned_off() -> None:
    """`impure` false -> true is the sandbox going from on to off (not the other way round)."""
    (ch,) = diff_preimages(PRE, _with(impure=True))
    cause = classify(ch, "b")
    assert (cause.old, cause.new) == ("on", "off (impure)")
    assert cause.describe().endswith(": on -> off (impure)")


def test_a_changed_dependency_is_propagation_not_a_cause() -> None:
    (ch,) = diff_preimages(PRE, _with(deps={"a": "blake3:kb"}))
    assert ch == Change(("deps", "a"), "blake3:ka", "blake3:kb")
    assert classify(ch, "b") is None


def test_patch_order_is_its_own_change() -> None:
    two = [{"name": "p1", "strip": 1, "tree": "t1"}, {"name": "p2", "strip": 1, "tree": "t2"}]
    changes = diff_preimages(_with(patches=two), _with(patches=list(reversed(two))))
    assert [c.path for c in changes] == [("patches", "(order)")]


def _state(nid: str, pre: dict, action: str, deps: dict | None = None, **kw) -> NodeState:
    return NodeState(id=nid, name=nid, variant="", key=key_of(pre), action=action, deps=deps or {}, preimage=pre,
                     seconds=kw.pop("seconds", 1.0), **kw)


def test_explain_names_the_root_cause_once_and_counts_dependents() -> None:
    a_old = dict(PRE, name="a", deps={})
    a_new = dict(a_old, env={"CFLAGS": "-O3"})
    b_old, b_new = dict(PRE, deps={"a": key_of(a_old)}), dict(PRE, deps={"a": key_of(a_new)})
    c_old, c_new = dict(PRE, name="c", deps={"b": key_of(b_old)}), dict(PRE, name="c", deps={"b": key_of(b_new)})
    previous = [_state("a", a_old, "built"), _state("b", b_old, "built", {"a": "a"}),
                _state("c", c_old, "built", {"b": "b"})]
    current = [_state("a", a_new, "built", seconds=2.0), _state("b", b_new, "built", {"a": "a"}),
               _state("c", c_new, "reused", {"b": "b"}, cutoff=True)]
    exp = explain("t", current, previous)
    (cause,) = exp.causes
    assert (cause.cause.kind, cause.cause.recipe, cause.cause.field) == ("env", "a", "CFLAGS")
    assert cause.nodes == ["a"] and cause.dependents == ["b"] and cause.cost == 3.0
    assert [c.node for c in exp.cutoff] == ["c"] and exp.cutoff[0].rebuilt_deps == ["b"]
    assert exp.built == ["a", "b"] and exp.reused == 1


def test_explain_reads_cache_misses_and_cutoffs_from_fields_not_reasons() -> None:
    prev = [_state("a", PRE, "built")]
    changed = dict(PRE, env={"CFLAGS": "-O0"})
    # The reason texts say nothing; the typed fields carry the outcome.
    cur = [_state("a", changed, "built", reason="inputs changed", miss=("not-in-cache", "no entry"))]
    exp = explain("t", cur, prev)
    assert [(m.node, m.category, m.detail) for m in exp.cache_misses] == [("a", "not-in-cache", "no entry")]
    fake = [_state("a", changed, "built", reason="inputs changed; cache miss: looks: like one")]
    assert explain("t", fake, prev).cache_misses == []
    reused = [_state("a", PRE, "reused", reason="early cutoff: dependencies rebuilt to identical outputs")]
    assert explain("t", reused, prev).cutoff == []


# -- the sandbox's argument list ----------------------------------------------------------------

def test_sandbox_argv_isolates_and_mounts_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "require_bwrap", lambda: "/usr/bin/bwrap")
    build = tmp_path / "b" / "build"
    build.mkdir(parents=True)
    dep = tmp_path / "store" / "dep"
    argv = sandbox.command(["/usr/bin/python3", "-c", "pass"], build_dir=build,
                           mounts=[sandbox.Mount(dep, "/deps/x")], env={"FOO": "bar"})
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    assert cmd == ["/usr/bin/python3", "-c", "pass"]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in opts
    pairs = [tuple(opts[i:i + 3]) for i in range(len(opts) - 2)]
    assert ("--ro-bind", str(dep), "/deps/x") in pairs
    assert ("--bind", str(build), sandbox.BUILD_DIR) in pairs
    assert ("--ro-bind", "/usr", "/usr") in pairs
    assert ("--setenv", "FOO", "bar") in pairs
    # Nothing of the host's home, store or build paths is bound writable except /build.
    writable = [opts[i + 1] for i, o in enumerate(opts) if o == "--bind"]
    assert writable == [str(build)]
    assert "--share-net" not in opts


# -- the scheduler -----------------------------------------------------------------------------

def test_scheduler_runs_by_priority_and_skips_what_a_failure_blocks() -> None:
    from planner.schedule import Job, run_dag

    jobs = [Job("a", (), 3), Job("b", ("a",), 2), Job("c", ("a",), 1), Job("d", ("b", "c"), 0), Job("e", (), 0.5)]
    order: list[str] = []

    def work(j: object) -> object:
        order.append(str(j))
        if j == "c":
            raise ValueError("c fails")
        return j

    out = run_dag(jobs, work, slots=1, memory=10)
    assert order == ["a", "b", "c"] and set(out.ok) == {"a", "b"} and list(out.failed) == ["c"]
    assert out.skipped == ["d", "e"]  # d needs c; e was never started once the run stopped
    order.clear()
    out = run_dag(jobs, work, slots=1, memory=10, keep_going=True)
    assert order == ["a", "b", "c", "e"] and out.skipped == ["d"]


def test_scheduler_runs_a_job_bigger_than_the_budget_alone() -> None:
    from planner.schedule import Job, run_dag

    out = run_dag([Job("big", (), 1, memory=100), Job("small", (), 0, memory=1)], lambda j: j, slots=2, memory=10)
    assert set(out.ok) == {"big", "small"} and not out.failed


# -- the worker's narrow request ---------------------------------------------------------------

def test_work_request_carries_what_a_build_needs_and_refuses_a_tampered_preimage(tmp_path: Path) -> None:
    from planner.worker import RemoteError, WorkRequest

    p = _plan(_variant_project(tmp_path))
    top = p.nodes[p.targets[0]]
    bkey = resolve(top, {m: "blake3:" + "1" * 64 for m in top.deps}).build_key
    req = WorkRequest.from_json(WorkRequest.of(top, bkey).to_json())
    node = req.node()
    assert (node.key, node.preimage, node.builder, node.cores, node.variant) == \
        (top.key, top.preimage, top.builder, top.cores, top.variant)
    assert set(node.deps) == set(top.deps)  # mounts: what resolving and the sandbox need
    assert resolve(node, {m: "blake3:" + "1" * 64 for m in node.deps}).build_key == bkey
    bad = attrs.evolve(req, preimage=dict(req.preimage, env={"INJECTED": "1"}))
    with pytest.raises(RemoteError, match="does not hash to its input key"):
        bad.node()


@pytest.mark.parametrize("head", ["host", "inputs", "patches", "env", "variant"])
def test_a_whole_field_that_appears_or_goes_is_one_cause(head: str) -> None:
    """A set moving from the host's /usr to a build root drops the `host` field at once: the
    change's path is the field alone, which `why` must explain rather than crash on."""
    gone = classify(Change((head,), {"bash": "5.2", "patch": "2.7"}, None), "r")
    came = classify(Change((head,), None, {"bash": "5.2"}), "r")
    assert gone is not None and came is not None
    assert (gone.field, gone.old, gone.new) == (f"(all {head})", "2 entries", "absent")
    assert (came.old, came.new) == ("absent", "1 entry")
    assert gone.recipe == "r" and gone.describe()
