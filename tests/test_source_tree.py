"""The `source-tree` builder: a recipe's patched source placed at a path of the image, as its own
layer (slime's and Megatron-LM's checkouts at /root/slime and /root/Megatron-LM, which users run
train.py, tools/ and scripts/ from)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from .conftest import run_planner

PATCH = """\
Say hello properly.

--- a/train.py
+++ b/train.py
@@ -1 +1 @@
-print("helo")
+print("hello")
"""


def _project(root: Path, place: str) -> None:
    folder = root / "recipes/trees"
    folder.mkdir(parents=True)
    (folder / "set.toml").write_text('target = "img"\nsource-date-epoch = 1700000000\nbuild-root = "host"\nplatforms = ["linux/amd64"]\n')
    src = root / "src/proj"
    (src / "tools").mkdir(parents=True)
    (src / "train.py").write_text('print("helo")\n')
    (src / "tools/run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "tools/run.sh").chmod(0o755)
    (root / "patches").mkdir()
    (root / "patches/hello.patch").write_text(PATCH)
    (folder / "proj-source.toml").write_text(
        'name = "proj-source"\nversion = "1"\n[source]\nkind = "path"\npath = "src/proj"\n'
        '[[patches]]\nfile = "patches/hello.patch"\n'
        f'[build]\nbuilder = "source-tree"\n[build.settings]\npath = "{place}"\n')
    (folder / "img.toml").write_text(
        'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n'
        '[image]\nlayers = [["proj-source"]]\ncompression = "gzip"\n')


def _layer_members(layout: Path) -> dict[str, tarfile.TarInfo]:
    index = json.loads((layout / "index.json").read_text())
    blob = lambda d: layout / "blobs" / d.split(":", 1)[0] / d.split(":", 1)[1]  # noqa: E731
    doc = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    while "manifests" in doc:
        doc = json.loads(blob(doc["manifests"][0]["digest"]).read_text())
    (layer,) = doc["layers"]
    data = gzip.decompress(blob(layer["digest"]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name.lstrip("./"): m for m in tf.getmembers()}
        members["train.py:text"] = tf.extractfile(members["root/proj/train.py"]).read().decode()  # type: ignore[assignment]
    return members


def test_the_patched_source_tree_is_a_layer_at_its_path(tmp_path: Path) -> None:
    root, store = tmp_path / "p", tmp_path / "s"
    _project(root, "root/proj")
    run_planner("--root", str(root), "--store", str(store), "lock", "trees")
    out = json.loads(run_planner("--root", str(root), "--store", str(store), "realise", "trees", "--json").stdout)
    members = _layer_members(Path(out["output"]))
    assert members["train.py:text"] == 'print("hello")\n'
    assert members["root/proj/tools/run.sh"].mode & 0o111
    assert not any(name.startswith(("proj/", "train.py")) for name in members if name != "train.py:text")


def test_a_path_that_leaves_the_image_is_refused(tmp_path: Path) -> None:
    for bad in ("../etc", "/root/proj", "root/../../x", ""):
        root = tmp_path / str(abs(hash(bad)))
        _project(root, bad)
        run = run_planner("--root", str(root), "--store", str(tmp_path / "s"), "plan", "trees", check=False)
        assert run.returncode != 0, bad
        errors = [line for line in run.stderr.splitlines() if line.startswith("planner: error:")]
        assert len(errors) == 1 and "recipes/trees/proj-source.toml" in errors[0] and "settings" in errors[0], errors
