"""Small recipe sets of shell nodes written into a temporary folder, for engine tests.

    proj = Project.diamond(tmp_path)             # a -> b, c -> d; `a` has a path source
    proj.lock()                                  # Python API, writes lockfiles/t.lock
    res = proj.cli("realise", "--json")          # subprocess: python -m planner.cli
    proj.recipe("b", script="echo hi > $out/x")  # rewrite one recipe (knobs below)

Every recipe is a `shell` node. Scripts default to writing a deterministic file that names
the node and lists its dependencies' files, so outputs change exactly when inputs do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional

import attrs

SET = "t"
EPOCH = 1700000000


def _toml_str(s: str) -> str:
    """A TOML basic string (JSON escaping is a subset TOML accepts)."""
    return json.dumps(s)


def default_script(name: str, deps: Iterable[str]) -> str:
    lines = [f"echo {name} > $out/{name}.txt"]
    for d in deps:
        lines.append(f"cat /deps/{d}/{d}.txt >> $out/{name}.txt")
    return "\n".join(lines)


def recipe_toml(name: str, *, deps: Iterable[str] = (), script: Optional[str] = None,
                env: Optional[dict[str, str]] = None, source: Optional[str] = None,
                version: str = "1.0", extra: str = "", estimate: Optional[str] = None) -> str:
    deps = list(deps)
    out = [f"name = {_toml_str(name)}", f"version = {_toml_str(version)}"]
    if deps:
        out.append("deps = [" + ", ".join(_toml_str(d) for d in deps) + "]")
    if estimate:
        out.append(f"estimate = {_toml_str(estimate)}")
    if extra:
        out.append(extra)
    if source is not None:
        out += ["", "[source]", 'kind = "path"', f"path = {_toml_str(source)}"]
    out += ["", "[build]", 'builder = "shell"',
            f"script = {_toml_str(script if script is not None else default_script(name, deps))}"]
    if env:
        out += ["", "[build.env]"] + [f"{k} = {_toml_str(v)}" for k, v in sorted(env.items())]
    return "\n".join(out) + "\n"


@attrs.define
class Run:
    """A finished CLI call."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)

    def actions(self) -> dict[str, str]:
        return {n["id"]: n["action"] for n in self.json()["nodes"]}


@attrs.define
class Project:
    root: Path
    store: Path
    set: str = SET

    @property
    def folder(self) -> Path:
        return self.root / "recipes" / self.set

    @property
    def lockfile(self) -> Path:
        return self.root / "lockfiles" / f"{self.set}.lock"

    # -- writing -------------------------------------------------------------------------

    @classmethod
    def empty(cls, tmp_path: Path, *, target: str, set_name: str = SET, epoch: int = EPOCH) -> "Project":
        root = tmp_path / "proj"
        proj = cls(root=root, store=tmp_path / "store", set=set_name)
        proj.folder.mkdir(parents=True, exist_ok=True)
        proj.write_set(target=target, epoch=epoch)
        return proj

    def write_set(self, *, target: str, epoch: int = EPOCH) -> None:
        (self.folder / "set.toml").write_text(
            f"target = {_toml_str(target)}\nsource-date-epoch = {epoch}\nplatforms = [\"linux/amd64\"]\n"
            # Engine tests are about planning and caching, not the toolchain: the host's /usr.
            "build-root = \"host\"\n")

    def recipe(self, name: str, **kw) -> Path:
        path = self.folder / f"{name}.toml"
        path.write_text(recipe_toml(name, **kw))
        return path

    def write_raw(self, name: str, text: str) -> Path:
        path = self.folder / f"{name}.toml"
        path.write_text(text)
        return path

    def source_file(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @classmethod
    def diamond(cls, tmp_path: Path, *, scripts: Optional[dict[str, str]] = None,
                env: Optional[dict[str, dict[str, str]]] = None) -> "Project":
        """a -> b, c -> d (d is the target); `a` reads its path source `src/a/`.

        `a`'s default script copies only `src/a/data.txt` (a `notes.txt` beside it is ignored),
        so editing notes.txt changes a's input but not its output.
        """
        scripts = scripts or {}
        env = env or {}
        proj = cls.empty(tmp_path, target="d")
        proj.source_file("src/a/data.txt", "alpha\n")
        proj.source_file("src/a/notes.txt", "# a comment the build ignores\n")
        shape = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
        for name, deps in shape.items():
            script = scripts.get(name)
            if name == "a" and script is None:
                script = "cat data.txt > $out/a.txt"
            proj.recipe(name, deps=deps, script=script, env=env.get(name),
                        source="src/a" if name == "a" else None)
        return proj

    # -- running -------------------------------------------------------------------------

    def lock(self):
        """Lock through the Python API; returns the Lock."""
        from planner.recipes import load_set
        from planner.resolve import lock_set
        from planner.store import Store

        st = Store(self.store)
        try:
            lock, _changed = lock_set(load_set(self.root, self.set), st)
        finally:
            st.close()
        return lock

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "planner.cli", "--root", str(self.root), "--store", str(self.store),
                *args]

    def cli(self, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 120,
            set_arg: bool = True) -> Run:
        """Run the CLI; `set_arg` appends the set name after the subcommand's own words."""
        argv = list(args)
        if set_arg and argv and argv[0] in ("lock", "plan", "realise"):
            argv.insert(1, self.set)
        full_env = dict(os.environ)
        full_env.pop("PLANNER_STORE", None)
        if env:
            full_env.update(env)
        p = subprocess.run(self.cli_argv(*argv), capture_output=True, text=True, env=full_env,
                           timeout=timeout, cwd=self.root)
        return Run(p.returncode, p.stdout, p.stderr)

    def realise(self, **opts):
        from planner.realise import RealiseOptions, realise

        return realise(self.root, self.set, self.store, RealiseOptions(**opts))
