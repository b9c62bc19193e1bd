"""What a build leaves at `$out` and what its dependents see of it, in real bubblewrap builds.

A build's output is untrusted: `$out` replaced by a link to a host folder, or by a FIFO, is one
refusal line (before: the link was stored and dependents got the host folder mounted, and the
store chmodded it; the FIFO hung the planner). And what one build leaves, or what the caller's
shell is like, must not reach another build: a dependency's mtimes (when it was built), a path
source's mtimes (when it was checked out), extended attributes, the caller's umask, open-files
limit and CPU mask (`taskset`) all used to change a dependent's output under the same key."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.reliability.support import assert_one_failure
from tests.support.project import Project

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


@pytest.mark.parametrize("script, says", [
    ('rmdir $out; ln -s "$VICTIM" $out', "output is a symbolic link, not a file or folder"),
    ("rmdir $out; ln -s . $out", "output is a symbolic link, not a file or folder"),
    ("rmdir $out; mkfifo $out", "output is a fifo, not a file or folder"),
], ids=["link-to-host-folder", "link-to-itself", "fifo"])
def test_an_out_that_is_not_a_file_or_folder_is_refused_and_nothing_follows_it(tmp_path: Path, script: str,
                                                                                 says: str) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o1777)
    (victim / "canary").write_text("host\n")
    proj = Project.empty(tmp_path, target="b")
    # The host folder's path reaches the build only through its own env (the build cannot name
    # a host path otherwise): the point is what the store does with such a link.
    proj.recipe("a", script=script, env={"VICTIM": str(victim)})
    proj.recipe("b", deps=["a"], script="cat /deps/a/canary > $out/stolen || true; echo b > $out/b")
    proj.lock()
    run = proj.cli("realise", timeout=60)
    line = assert_one_failure(run, names=["a:", says])
    assert str(proj.store) not in line
    assert stat.S_IMODE(victim.stat().st_mode) == 0o1777  # never chmodded through the link
    assert stat.S_IMODE(proj.store.stat().st_mode) & 0o200  # the store stays writable
    assert not list(proj.store.glob("*-a-1.0")) and not list(proj.store.glob("*-b-1.0"))
    assert proj.cli("store", "gc", set_arg=False).returncode == 0


_RECORD = r"""
cd /deps/a
for f in a.txt link sub sub/f; do stat -c "%n %Y %a" "$f"; done > $out/deps
python3 - <<'EOF' >> $out/deps
import os
for f in ("a.txt", "sub/f", "sub"):
    print(f, "xattrs", sorted(os.listxattr("/deps/a/" + f)))
print("cpus", len(os.sched_getaffinity(0)))
EOF
echo "umask $(umask)" >> $out/deps
echo "files $(ulimit -n) $(ulimit -Hn)" >> $out/deps
cd /tmp; mkdir made; echo x > made/f
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf $out/made.tar made
"""

_MAKE_A = r"""
cp data.txt $out/a.txt; ln -s a.txt $out/link; mkdir $out/sub; echo f > $out/sub/f
python3 - <<'EOF'
import os, time
for f in ("a.txt", "sub/f", "sub"):
    try:
        os.setxattr(os.environ["out"] + "/" + f, "user.when", str(time.time_ns()).encode())
    except OSError:
        pass  # a file system without user xattrs: nothing to leak
EOF
"""


def _realise(proj: Project, store: Path, prefix: str, wrapper: tuple[str, ...] = ()) -> str:
    """Realise into `store` under a shell that first runs `prefix` (and through `wrapper`); the
    target's output path."""
    env = dict(os.environ)
    env.pop("PLANNER_STORE", None)
    argv = [*wrapper, *proj.cli_argv("realise", proj.set, "--json")]
    argv[argv.index("--store") + 1] = str(store)
    p = subprocess.run(["sh", "-c", f'{prefix}; exec "$@"', "sh", *argv], capture_output=True, text=True,
                       env=env, cwd=proj.root, timeout=300)
    assert p.returncode == 0, p.stderr
    import json

    return json.loads(p.stdout)["output"]


def test_a_dependent_sees_the_same_inputs_whoever_and_whenever_they_were_made(tmp_path: Path) -> None:
    proj = Project.empty(tmp_path, target="b")
    proj.source_file("src/a/data.txt", "alpha\n")
    proj.recipe("a", source="src/a", script=_MAKE_A)
    proj.recipe("b", deps=["a"], script=_RECORD)
    proj.lock()
    os.utime(proj.root / "src/a/data.txt", (1_000_000_000, 1_000_000_000))
    first = Path(_realise(proj, tmp_path / "s1", "umask 022"))
    # A second checkout (another mtime), later, by a caller with another umask, open-files
    # limit and CPU mask: every input and dependency the same bytes, so the same output.
    os.utime(proj.root / "src/a/data.txt", (1_600_000_000, 1_600_000_000))
    one_cpu = ("taskset", "-c", str(min(os.sched_getaffinity(0)))) if shutil.which("taskset") else ()
    second = Path(_realise(proj, tmp_path / "s2", "umask 077; ulimit -Sn 1000", one_cpu))
    assert first != second
    seen = (first / "deps").read_text()
    assert seen == (second / "deps").read_text()
    assert (first / "made.tar").read_bytes() == (second / "made.tar").read_bytes()
    # What it sees: the store's one mtime, no attributes, the sandbox's umask and limits, the
    # recipe's one core.
    assert "a.txt 315532800 444" in seen and "sub/f 315532800 444" in seen and "sub 315532800 555" in seen
    assert "link 315532800" in seen
    assert "xattrs []" in seen and "user.when" not in seen
    assert "umask 0022" in seen and "cpus 1" in seen
    from planner.limits import open_files

    assert f"files {open_files()} {open_files()}" in seen
    # And the stored dependency itself holds none of it.
    a = next((tmp_path / "s2").glob("*-a-1.0"))
    for f in ("a.txt", "sub/f", "sub"):
        assert os.lstat(a / f).st_mtime_ns == 315532800 * 10**9
        assert os.listxattr(a / f) == []


_FAKE_LAYOUT = r"""
h=0000000000000000000000000000000000000000000000000000000000000001
mkdir -p $out/blobs/sha256; ln -s "$SECRET" $out/blobs/sha256/$h; ln -s "$SECRET" $out/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > $out/oci-layout
"""


def test_only_an_image_is_exported_or_given_a_digest(tmp_path: Path) -> None:
    """A shell build's output that looks like an OCI layout (its index.json a link to a host
    file naming a digest, a blob a link to another): no image digest from it, and `export`
    refuses it in one line instead of copying the host file into the archive."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json",'
                      '"digest":"sha256:' + "0" * 63 + '1","size":10}]}')
    proj = Project.empty(tmp_path, target="fake")
    proj.recipe("fake", script=_FAKE_LAYOUT, env={"SECRET": str(secret)})
    proj.lock()
    run = proj.cli("realise", "--json")
    assert run.returncode == 0, run.stderr
    assert run.json()["digest"] is None
    out = tmp_path / "out.tar"
    line = assert_one_failure(proj.cli("export", proj.set, str(out), set_arg=False), names=["not an OCI image"])
    assert "internal error" not in line and not out.exists()


def _layout(folder: Path) -> dict[str, Path]:
    """A minimal real OCI layout (config, one layer, a manifest, index.json) written by hand."""
    import hashlib
    import json

    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    paths = {}

    def blob(name: str, data: bytes, media: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        paths[name] = blobs / digest
        return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}

    config = blob("config", b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
                  "application/vnd.oci.image.config.v1+json")
    layer = blob("layer", b"\0" * 1024, "application/vnd.oci.image.layer.v1.tar")
    manifest = blob("manifest", json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                            "config": config, "layers": [layer]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "x"}
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return paths


@pytest.mark.parametrize("harm, says", [
    ("link", "not a regular file"),
    ("other-bytes", "does not match its digest"),
    ("blobs-link", "blobs is a symbolic link"),
])
def test_export_archives_only_the_bytes_the_digests_name(tmp_path: Path, harm: str, says: str) -> None:
    from planner.errors import OciError
    from planner.oci.layout import export_oci_archive

    good = tmp_path / "good"
    _layout(good)
    export_oci_archive(good, tmp_path / "good.tar")  # (the layout as written exports)
    bad = tmp_path / "bad"
    paths = _layout(bad)
    host = tmp_path / "host-file"
    host.write_bytes(b"\0" * 1024)  # the layer's very bytes, elsewhere on the host
    if harm == "link":
        paths["layer"].unlink()
        paths["layer"].symlink_to(host)
    elif harm == "other-bytes":
        paths["layer"].write_bytes(b"\1" * 1024)
    else:
        shutil.move(bad / "blobs", tmp_path / "elsewhere")
        (bad / "blobs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OciError, match=says):
        export_oci_archive(bad, tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()
