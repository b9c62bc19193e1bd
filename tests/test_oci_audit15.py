"""Audit 15 (OCI): references, export paths, variant names and a failing standard output.

Each test here failed on the code before its fix: a tag outside the distribution-spec grammar
pushed under another name, `export` writing into the store, CUDA variant names that make tags
skopeo and umoci refuse, and `export -` onto a full disk ending in a traceback (exit 120).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import OciError, PlannerError
from planner.oci.reference import Reference
from tests.support.project import Project

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    return env


@pytest.mark.parametrize("ref, says", [
    ("127.0.0.1:5000/x:release#2", "the tag 'release#2'"),
    ("127.0.0.1:5000/x:v9?foo=bar", "the tag 'v9?foo=bar'"),
    ("127.0.0.1:5000/x:-leadingdash", "the tag '-leadingdash'"),
    ("127.0.0.1:5000/x:..", "the tag '..'"),
    ("127.0.0.1:5000/x:" + "a" * 129, "the tag 'aaaa"),
    ("127.0.0.1:5000/x:", "the tag ''"),
    ("127.0.0.1:5000/a..b:t", "the repository 'a..b'"),
    ("127.0.0.1:5000/a._b:t", "the repository 'a._b'"),
    ("127.0.0.1:5000/a/_b:t", "the repository 'a/_b'"),
    ("127.0.0.1:5000/a___b:t", "the repository 'a___b'"),
    ("h#x:1/a:b", "the registry 'h#x:1'"),
])
def test_a_reference_outside_the_distribution_grammar_is_refused(ref: str, says: str) -> None:
    with pytest.raises(OciError) as err:
        Reference.parse(ref)
    line = err.value.line()
    assert says in line and "\n" not in line, line
    assert "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}" in line or "components separated by '/'" in line or "host" in line


@pytest.mark.parametrize("ref, repo, tag", [
    ("127.0.0.1:5000/x:release-2", "x", "release-2"),
    ("localhost:5000/a/b:_v1.0", "a/b", "_v1.0"),
    ("ghcr.io/a__b/c-d.e--f:T_g", "a__b/c-d.e--f", "T_g"),
    ("ubuntu:22.04", "library/ubuntu", "22.04"),
    ("[::1]:5000/x:" + "a" * 128, "x", "a" * 128),
])
def test_references_inside_the_grammar_parse(ref: str, repo: str, tag: str) -> None:
    parsed = Reference.parse(ref)
    assert (parsed.repository, parsed.tag) == (repo, tag)


def test_push_refuses_a_bad_tag_before_any_work(tmp_path: Path) -> None:
    """Before: `release#2` went into the URL as it was written and the image was pushed as
    `release`, exit 0, the asked name printed. Now: one line, before the realise (the target here is
    not even an image: the old code failed on that instead, after a build)."""
    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    run = subprocess.run(proj.cli_argv("push", "t", "127.0.0.1:1/tagtest:release#2"), capture_output=True,
                         text=True, env=_env(), cwd=proj.root, timeout=120)
    assert run.returncode == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "the tag 'release#2' is not [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}" in lines[0], lines
    assert not proj.store.exists() or not any(p.name.endswith("-a") for p in proj.store.iterdir())


def test_export_refuses_a_path_inside_the_store(tmp_path: Path) -> None:
    """Before: as root, `export SET STORE/ENTRY/oci-layout` replaced the store entry's file with
    the archive (root ignores the 0444/0555 modes); here the old code went on to realise the set
    and failed on its target instead. Now: one line, before any work, the file untouched, also
    through a link to a folder of the store."""
    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    entry = proj.store / "abc-image"
    entry.mkdir(parents=True)
    kept = entry / "oci-layout"
    kept.write_text("kept")
    (tmp_path / "link").symlink_to(entry)
    for out in (kept, tmp_path / "link" / "oci-layout", proj.store / "new.tar"):
        run = subprocess.run(proj.cli_argv("export", "t", str(out)), capture_output=True, text=True, env=_env(),
                             cwd=proj.root, timeout=120)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1, run
        assert f"is inside the store {proj.store.resolve()}" in lines[0], lines
    assert kept.read_text() == "kept" and sorted(p.name for p in proj.store.iterdir()) == ["abc-image"]


@pytest.mark.parametrize("name", ["_x", "x.", "x-", "a..b", "a__b", "a.-b", "a" * 65])
def test_a_cuda_variant_name_outside_the_ref_name_grammar_is_refused(tmp_path: Path, name: str) -> None:
    """Before: set.toml took `[A-Za-z0-9_][A-Za-z0-9._-]{0,63}`, and `sm100a.` became the tags
    `sm100a.` and `sm100a.-linux-amd64`, which skopeo and umoci refuse to name."""
    from planner.recipes import load_set

    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    set_toml = proj.folder / "set.toml"
    set_toml.write_text(set_toml.read_text() + f'[cuda]\n"{name}" = ["sm_100a"]\n')
    with pytest.raises(PlannerError) as err:
        load_set(proj.root, "t")
    assert f"cuda variant name {name!r} must be letters" in err.value.line(), err.value.line()


def test_the_variant_names_and_the_layout_tags_share_one_grammar(tmp_path: Path) -> None:
    """Every name set.toml takes makes tags the layout writer takes, and the layout writer refuses
    what skopeo and umoci refuse; the demo and slime sets' names (`default`, `sm100a`) stay valid."""
    from planner.oci.layout import _TAG_RE
    from planner.recipes import load_set
    from planner.recipes.validate import _VARIANT

    for good in ("default", "sm100a", "sm_100a", "a.b-c_d", "A1", "a" * 64):
        assert _VARIANT.fullmatch(good) and _TAG_RE.match(good) and _TAG_RE.match(good + "-linux-arm64"), good
    for bad in ("_x", "x.", "x-", "a..b", "a__b", "a-.b", "", "a b", "a#b"):
        assert not _VARIANT.fullmatch(bad) and not _TAG_RE.match(bad), bad
    assert _TAG_RE.match("a" * 128) and not _TAG_RE.match("a" * 129)
    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    set_toml = proj.folder / "set.toml"
    set_toml.write_text(set_toml.read_text() + '[cuda]\ndefault = ["sm_90a", "sm_100a"]\nsm100a = ["sm_100a"]\n'
                        '"a.b-c_d" = ["sm_100a"]\n')
    assert set(load_set(proj.root, "t").config.cuda) == {"default", "sm100a", "a.b-c_d"}
    for name in ("demo", "slime"):
        assert set(load_set(REPO, name).config.cuda) <= {"default", "sm100a"}


_EXPORT_ONTO = """
import sys
import planner.publish

def export_image(root, set_name, store, out, variant, *, progress=None):  # the archive, without the realise
    for _ in range(8192):  # (in tar headers' pieces, as write_tar_entries: some still buffered at the error)
        out.write(b"x" * 512)
    out.flush()
    return out

planner.publish.export_image = export_image
sys.argv = ["planner", "--root", sys.argv[1], "--store", sys.argv[2], "export", "t", "-"]
from planner.entry import main
sys.exit(main())
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_export_onto_a_full_standard_output_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Before: `planner export SET - > /dev/full` printed its error, then the interpreter's last
    flush failed again: 'Exception ignored ... OSError' and a traceback, exit 120. (The realise
    is left out here: the archive written is 4 MiB of x, through the command line's own stdout.)"""
    proj = Project.empty(tmp_path, target="a")
    proj.recipe("a")
    with open("/dev/full", "wb") as full:
        run = subprocess.run([sys.executable, "-c", _EXPORT_ONTO, str(proj.root), str(proj.store)], stdout=full,
                             stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and lines == ["planner: error: standard output: No space left on device"], run


def test_export_variant_help_says_what_the_archive_holds() -> None:
    """Before: '--variant NAME  Only this CUDA variant (and its platform tags)', while the archive's
    index.json holds the variant's index alone, under its name."""
    run = subprocess.run([sys.executable, "-m", "planner.cli", "export", "--help"], capture_output=True, text=True,
                         env=_env(), cwd=REPO, timeout=120)
    text = " ".join(run.stdout.split())
    assert run.returncode == 0 and "and its platform tags" not in text, text
    assert "its index alone, under its name (no NAME-linux-amd64 platform tags)" in text, text
