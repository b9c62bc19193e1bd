"""Recipes reach only what they declare (issue 13, class 2).

A `url` input `file:///etc/shadow` and a `git` source at a local path outside the project were
copied into the store; a `subdir` that was absolute or climbed out made `planner lock` move that
host folder into the store. URLs are http(s) only (mirrors serve local files), local git
repositories must lie inside the project, and every path-like field is checked at load time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.gitrepo import GitRepo
from tests.support.project import Project

from .support import assert_clean_error

ROW = "11. Recipes reach only what they declare"


def _host(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "folder").mkdir(parents=True)
    (host / "folder" / "precious").write_text("do not move me\n")
    (host / "shadow").write_text("root:secret\n")
    return host


def _state(host: Path) -> list[str]:
    return sorted(str(p.relative_to(host)) for p in host.rglob("*"))


def _store_holds(store: Path, needle: bytes) -> list[str]:
    if not store.exists():
        return []
    return [str(p) for p in store.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_sources_outside_the_project_are_refused(tmp_path: Path, figure: dict) -> None:
    """file:// and other non-http URLs, local git repositories outside the project and hostile subdirs: refused at load time naming the file and key; host folders never moved, host files never stored."""
    host = _host(tmp_path)
    outside = GitRepo.init(tmp_path / "outside.git")
    outside.write("README", "outside\n")
    outside.commit("c")
    h = str(host)
    cases: dict[str, tuple[str, str]] = {
        "url-file-scheme": ("url", f'[source]\nkind = "url"\nurl = "file://{h}/shadow"\n'),
        "url-file-scheme-upper": ("url", f'[source]\nkind = "url"\nurl = "FILE://{h}/shadow"\n'),
        "url-bare-path": ("url", f'[source]\nkind = "url"\nurl = "{h}/shadow"\n'),
        "url-ftp": ("url", '[source]\nkind = "url"\nurl = "ftp://127.0.0.1/x.tar.gz"\n'),
        "input-url-file-scheme": ("url", f'[inputs.extra]\nkind = "url"\nurl = "file://{h}/shadow"\n'),
        "patch-url-file-scheme": ("url", f'[[patches]]\nurl = "file://{h}/shadow"\nsha256 = "{"0" * 64}"\n'),
        "patch-name-with-slash": ("patches", '[[patches]]\nfile = "p.patch"\nname = "../../x.patch"\n'),
        "git-absolute-path-outside": ("url", f'[source]\nkind = "git"\nurl = "{outside.path}"\nrev = "HEAD"\n'),
        "git-file-url-outside": ("url", f'[source]\nkind = "git"\nurl = "{outside.url}"\nrev = "HEAD"\n'),
        "git-relative-path-climbing-out": ("url", '[source]\nkind = "git"\nurl = "../outside.git"\nrev = "HEAD"\n'),
        "subdir-absolute": ("subdir", f'[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\nsubdir = "{h}/folder"\n'),
        "subdir-dotdot": ("subdir", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\n'
                                    'subdir = "../../../../../../../../../../tmp"\n'),
        "subdir-inner-dotdot": ("subdir", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\nsubdir = "a/../../b"\n'),
        "subdir-url-archive-dotdot": ("subdir", '[source]\nkind = "url"\nurl = "http://127.0.0.1:1/x.tar.gz"\n'
                                                'subdir = "../folder"\n'),
        "paths-absolute": ("paths", f'[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = ["{h}/folder"]\n'),
        "paths-dotdot": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = ["a", "a/../../b"]\n'),
        "paths-dot": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = ["./a"]\n'),
        "paths-git-dir": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = [".git/config"]\n'),
        "paths-empty": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = []\n'),
        "paths-repeated": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = ["a", "a"]\n'),
        "paths-nested": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\npaths = ["a", "a/README"]\n'),
        "paths-and-subdir": ("paths", '[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\nsubdir = "a"\n'
                                      'paths = ["a"]\n'),
        "paths-on-a-url-input": ("paths", '[source]\nkind = "url"\nurl = "http://127.0.0.1:1/x.tar.gz"\n'
                                          'paths = ["a"]\n'),
    }
    lines = []
    for name, (key, body) in cases.items():
        proj = Project.empty(tmp_path / name, target="x")
        (proj.root / "p.patch").write_text("")
        repo = GitRepo.init(proj.root / "repo")  # a repository inside the project: allowed
        repo.write("a/README", "in\n")
        repo.commit("c")
        proj.write_raw("x", f'name = "x"\nversion = "1"\n{body}[build]\nbuilder = "shell"\nscript = "true"\n')
        run = proj.cli("lock")
        line = assert_clean_error(run, names=["recipes/t/x.toml", key])
        assert _state(host) == ["folder", "folder/precious", "shadow"], name
        assert not _store_holds(proj.store, b"root:secret"), name
        lines.append(line)
    # Allowed: a repository inside the project, by relative path and as file://.
    for name, url, pick in (("git-inside-relative", "repo", 'subdir = "a"'), ("git-inside-file-url", None, 'subdir = "a"'),
                            ("git-inside-paths", "repo", 'paths = ["a"]')):
        proj = Project.empty(tmp_path / name, target="x")
        repo = GitRepo.init(proj.root / "repo")
        repo.write("a/README", "in\n")
        repo.commit("c")
        script = "cp README $out/" if pick.startswith("subdir") else "cp a/README $out/"
        proj.write_raw("x", f'name = "x"\nversion = "1"\n[source]\nkind = "git"\nurl = "{url or repo.url}"\n'
                            f'rev = "HEAD"\n{pick}\n[build]\nbuilder = "shell"\nscript = "{script}"\n')
        assert proj.cli("lock").returncode == 0
        assert proj.cli("realise").returncode == 0
    figure.update(trials=len(cases) + 3, faults=", ".join(cases),
                  outcomes=f"{len(lines)}/{len(cases)} refused at load time in one line naming the file and key; "
                           f"host folder moved 0 times, host file stored 0 times; 3/3 repositories inside the "
                           f"project still lock and build")


def test_subdir_through_a_link_never_moves_a_host_folder(tmp_path: Path, figure: dict) -> None:
    """A git source whose subdir goes through a symlink the repository holds (a -> /host): lock refuses naming the input; the host folder stays where it was."""
    host = _host(tmp_path)
    cases = {"dir-link-then-child": ("a", str(host), "a/folder"),
             "dir-link-is-the-subdir": ("a", str(host / "folder"), "a"),
             "relative-link-climbing-out": ("a", "../../../../../../../../../.." + str(host), "a/folder"),
             "link-chain": ("b", str(host), "c/folder")}
    outcomes = []
    for name, (link, target, subdir) in cases.items():
        proj = Project.empty(tmp_path / name, target="x")
        repo = GitRepo.init(proj.root / "repo")
        repo.write("README", "in\n")
        (repo.path / link).symlink_to(target)
        if name == "link-chain":
            (repo.path / "c").symlink_to("b")
        subprocess.run(["git", "-C", str(repo.path), "add", "-A"], check=True, capture_output=True)
        repo.commit("links")
        proj.write_raw("x", f'name = "x"\nversion = "1"\n[source]\nkind = "git"\nurl = "repo"\nrev = "HEAD"\n'
                            f'subdir = "{subdir}"\n[build]\nbuilder = "shell"\nscript = "true"\n')
        run = proj.cli("lock")
        line = assert_clean_error(run, names=["x/source", "subdir"])
        assert _state(host) == ["folder", "folder/precious", "shadow"], f"{name}: {_state(host)}"
        outcomes.append(line)
    figure.update(trials=len(cases), faults=", ".join(cases),
                  outcomes=f"{len(outcomes)}/{len(cases)} refused naming the input; host folder moved 0 times")
