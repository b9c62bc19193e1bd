"""`planner why` on realistic changes: the explanation itself is asserted, not just the exit code."""

from __future__ import annotations

import gzip
import io
import json
import re
import lzma
import shutil
import tarfile
from pathlib import Path

import pytest

from .conftest import REPO, run_planner
from .support.http_server import LoopbackServer


def _why(root: Path, store: Path, *args: str) -> dict:
    out = run_planner("--root", str(root), "--store", str(store), "why", *args, "--json").stdout
    return json.loads(out)


def _copy_demo(demo_runs: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the demo project and of a realised demo store: changes rebuild only what they touch."""
    proj = tmp_path / "proj"
    for sub in ("recipes", "patches", "lockfiles"):
        shutil.copytree(REPO / sub, proj / sub)
    store = tmp_path / "store"
    shutil.copytree(demo_runs["store_a"], store, symlinks=True)
    run_planner("--root", str(proj), "--store", str(store), "realise", "demo")  # record a baseline run here
    return proj, store


def _dependents_of(record_deps: dict, node: str) -> set[str]:
    out, changed = set(), True
    while changed:
        changed = False
        for nid, deps in record_deps.items():
            if nid not in out and (node in deps.values() or out & set(deps.values())):
                out.add(nid)
                changed = True
    return out


@pytest.mark.slow
def test_patch_bump_is_the_single_root_cause(demo_runs: dict, tmp_path: Path) -> None:
    proj, store = _copy_demo(demo_runs, tmp_path)
    patch = proj / "patches/demo/sglang-mini.patch"
    patch.write_text(patch.read_text().replace('return "released"', 'return "released (v2)"'))
    # Before re-locking, the next realise refuses the stale lock, and why --dry-run says so with
    # the same line (it used to answer "nothing will be rebuilt").
    stale = [run_planner("--root", str(proj), "--store", str(store), *cmd, check=False)
             for cmd in (("why", "demo", "--dry-run"), ("realise", "demo"))]
    lines = [[l for l in r.stderr.splitlines() if l.startswith("planner: error:")] for r in stale]
    assert all(r.returncode != 0 for r in stale) and lines[0] == lines[1] and len(lines[0]) == 1, lines
    assert "sglang-mini.patch changed since locking" in lines[0][0], lines
    run_planner("--root", str(proj), "--store", str(store), "lock", "demo")
    dry = _why(proj, store, "demo", "--dry-run")
    planned = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--dry-run",
                                     "--json").stdout)
    result = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--json").stdout)
    why = _why(proj, store, "demo")
    for exp in (dry, why):
        assert len(exp["causes"]) == 1, exp["causes"]
        cause = exp["causes"][0]
        assert cause["cause"]["kind"] == "patch"
        assert cause["cause"]["field"] == "sglang-mini.patch"
        assert cause["cause"]["old"].startswith("blake3:") and cause["cause"]["new"].startswith("blake3:")
        assert cause["cause"]["old"] != cause["cause"]["new"]
        assert cause["cause"]["lock_entry"] == "sglang-mini/patch/sglang-mini.patch"
        assert "patches/demo/sglang-mini.patch" in cause["cause"]["file"]
        assert cause["nodes"] == ["sglang-mini"]
    built = {n["id"] for n in result["nodes"] if n["action"] == "built"}
    assert built == {"sglang-mini"} | set(why["causes"][0]["dependents"])
    # The dry run before the realise listed exactly what it then built, each as a build step.
    assert {n["id"] for n in planned["nodes"] if n["action"] == "would-build"} == built
    assert {s.split()[1] for s in planned["steps"] if s.startswith("build ")} == built
    text = run_planner("--root", str(proj), "--store", str(store), "why", "demo").stdout
    assert "root causes:" in text and "patch sglang-mini.patch of sglang-mini" in text
    after = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--dry-run",
                                   "--json").stdout)
    assert {n["action"] for n in after["nodes"]} == {"reused"} and not after.get("steps")


@pytest.mark.slow
def test_cuda_arch_change_rebuilds_only_that_variant(demo_runs: dict, tmp_path: Path) -> None:
    proj, store = _copy_demo(demo_runs, tmp_path)
    set_toml = proj / "recipes/demo/set.toml"
    set_toml.write_text(set_toml.read_text().replace('sm100a = ["sm_100a"]', 'sm100a = ["sm_100f"]'))
    result = json.loads(run_planner("--root", str(proj), "--store", str(store), "realise", "demo", "--json").stdout)
    built = [n for n in result["nodes"] if n["action"] == "built"]
    kernels = [n for n in built if n["name"] == "int4qat"]
    assert sorted(n["variant"].split(",")[0] for n in kernels) == ["linux/amd64", "linux/arm64"]
    assert all("sm_100f" in n["variant"] for n in kernels)
    assert {n["name"] for n in built} <= {"int4qat", "image"}
    why = _why(proj, store, "demo")
    variant_causes = [c for c in why["causes"] if c["cause"]["kind"] == "variant"]
    assert variant_causes and all(c["cause"]["field"] == "cuda" for c in variant_causes)
    assert {c["cause"]["old"] for c in variant_causes} == {"sm_100a"}
    assert {c["cause"]["new"] for c in variant_causes} == {"sm_100f"}
    assert variant_causes[0]["cause"]["file"] == "recipes/demo/set.toml"


@pytest.mark.slow
def test_env_var_change_is_named(demo_runs: dict, tmp_path: Path) -> None:
    proj, store = _copy_demo(demo_runs, tmp_path)
    recipe = proj / "recipes/demo/megatron-mini.toml"
    recipe.write_text(recipe.read_text().replace('builder = "python-wheel"',
                                                 'builder = "python-wheel"\nenv = { MEGATRON_FLAG = "fused" }'))
    run_planner("--root", str(proj), "--store", str(store), "realise", "demo")
    why = _why(proj, store, "demo")
    (cause,) = why["causes"]
    assert cause["cause"]["kind"] == "env" and cause["cause"]["field"] == "MEGATRON_FLAG"
    assert cause["cause"]["old"] is None and cause["cause"]["new"] == "fused"
    assert cause["cause"]["file"] == "recipes/demo/megatron-mini.toml"
    assert "MEGATRON_FLAG" in (REPO / "recipes/demo/megatron-mini.toml").read_text().replace(
        'builder = "python-wheel"', 'builder = "python-wheel"\nenv = { MEGATRON_FLAG = "fused" }').splitlines()[
        cause["cause"]["line"] - 1]
    assert cause["nodes"] == ["megatron-mini"]


def _tarball(files: dict[str, bytes], compress: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"pkg-1.0/{name}")
            info.size = len(data)
            info.mtime = 12345 if compress == "gz" else 99999  # different archives, same content
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, 9) if compress == "gz" else lzma.compress(raw)


def _shell_set(root: Path, url: str, script_b: str = "cat /deps/a/a.txt > $out/b.txt") -> None:
    folder = root / "recipes/small"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "set.toml").write_text('target = "b"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    (folder / "a.toml").write_text(f'name = "a"\nversion = "1.0"\n[source]\nkind = "url"\nurl = "{url}"\n'
                                   '[build]\nbuilder = "shell"\nscript = "cat data.txt > $out/a.txt"\n')
    (folder / "b.toml").write_text('name = "b"\nversion = "1"\ndeps = ["a"]\n[build]\nbuilder = "shell"\n'
                                   f'script = "{script_b}"\n')


def test_recompressed_upstream_rebuilds_nothing(tmp_path: Path) -> None:
    files = {"data.txt": b"payload\n"}
    with LoopbackServer() as server:
        server.add("/pkg-1.0.tar.gz", _tarball(files, "gz"))
        root, store = tmp_path / "p", tmp_path / "store"
        _shell_set(root, server.url("/pkg-1.0.tar.gz"))
        run_planner("--root", str(root), "--store", str(store), "lock", "small")
        run_planner("--root", str(root), "--store", str(store), "realise", "small")
        lock_before = (root / "lockfiles/small.lock").read_text()
        # Upstream re-publishes the same content, packed differently.
        server.add("/pkg-1.0.tar.gz", _tarball(files, "xz"))
        run_planner("--root", str(root), "--store", str(store), "lock", "small", "--update", "a")
    lock_after = (root / "lockfiles/small.lock").read_text()
    assert lock_before != lock_after  # new sha256 …
    tree = [l for l in lock_before.splitlines() if l.startswith("tree")]
    assert tree == [l for l in lock_after.splitlines() if l.startswith("tree")]  # … same tree hash
    why = _why(root, store, "small", "--dry-run")
    assert why["built"] == [] and why["causes"] == []
    assert [r["lock_entry"] for r in why["repacked"]] == ["a/source"]
    text = run_planner("--root", str(root), "--store", str(store), "why", "small", "--dry-run").stdout
    assert "nothing will be rebuilt" in text and "re-packed upstream, same content: a/source" in text
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "small", "--json").stdout)
    assert {n["action"] for n in out["nodes"]} == {"reused"}


def test_nondeterministic_builder_is_flagged(tmp_path: Path) -> None:
    with LoopbackServer() as server:
        server.add("/pkg-1.0.tar.gz", _tarball({"data.txt": b"x\n"}, "gz"))
        root, store = tmp_path / "p", tmp_path / "store"
        _shell_set(root, server.url("/pkg-1.0.tar.gz"), script_b="date +%s%N > $out/stamp; cat /deps/a/a.txt > $out/b.txt")
        run_planner("--root", str(root), "--store", str(store), "lock", "small")
    run_planner("--root", str(root), "--store", str(store), "realise", "small")
    check = run_planner("--root", str(root), "--store", str(store), "realise", "small", "--check",
                        "--out-link", str(tmp_path / "result"), check=False)
    assert check.returncode != 0
    assert "check b: DIFFERS: stamp" in check.stdout
    assert not (tmp_path / "result").is_symlink()  # a failed check makes no link, as nix-build --check
    # The rebuilt output is kept for comparing, named in the same line.
    kept = Path(re.search(r"\(the rebuilt output is kept in (\S+)\)", check.stdout).group(1))
    assert kept.parent == store / "checks" and (kept / "b.txt").read_text() == "x\n"
    assert (kept / "stamp").read_text() != (Path(json.loads(run_planner(
        "--root", str(root), "--store", str(store), "realise", "small", "--json").stdout)["output"]) / "stamp").read_text()
    run_planner("--root", str(root), "--store", str(store), "store", "gc")
    assert not kept.exists()
    why = _why(root, store, "small")
    assert [n["node"] for n in why["nondeterministic"]] == ["b"]
    assert why["nondeterministic"][0]["files"] == ["stamp"]
    text = run_planner("--root", str(root), "--store", str(store), "why", "small").stdout
    assert "NON-DETERMINISTIC: b" in text


def test_why_depends_names_each_step(tmp_path: Path) -> None:
    with LoopbackServer() as server:
        server.add("/pkg-1.0.tar.gz", _tarball({"data.txt": b"x\n"}, "gz"))
        root, store = tmp_path / "p", tmp_path / "store"
        _shell_set(root, server.url("/pkg-1.0.tar.gz"))
        run_planner("--root", str(root), "--store", str(store), "lock", "small")
    out = run_planner("--root", str(root), "--store", str(store), "why-depends", "b", "a").stdout.splitlines()
    assert out[0].startswith("b") and "--[a]-->" in out[0]
    assert out[1].strip() == "a"
    bad = run_planner("--root", str(root), "--store", str(store), "why-depends", "a", "b", check=False)
    assert bad.returncode != 0 and bad.stderr.strip() == "planner: error: a does not depend on b"
