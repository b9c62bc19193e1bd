"""In-process writers never follow a link they did not make (issue 13, class 1).

The planner process copies, merges and unpacks outside the sandbox, as whoever runs it. Every
one of those writers (layer assembly, wheel installs into layers, `image-rootfs`, the Debian root
filesystem, the CUDA toolkit merge, `prebuilt-wheel`, unpacking) works through
`planner.safetree.Tree`: links planted by an earlier member, layer, package or wheel are never
followed. Each variant plants a link to a canary folder outside the store and checks that the
canary is untouched and the error is one line naming the input.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.project import Project
from tests.support.registry import registry  # noqa: F401  (session fixture)

from .support import assert_clean_error, assert_one_failure, tarball

ROW = "10. In-process writers"
SITE = "usr/local/lib/python3.11/dist-packages"


def _canary(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "dir").mkdir(parents=True)
    (host / "file").write_text("host file\n")
    (host / "dir" / "victim").write_text("host victim\n")
    (host / "secret").write_text("host secret\n")
    return host


def _host_state(host: Path) -> dict[str, str]:
    return {str(p.relative_to(host)): (p.read_text() if p.is_file() else "dir") + oct(p.stat().st_mode)
            for p in sorted(host.rglob("*"))}


def wheel_bytes(dist: str, files: dict[str, bytes]) -> bytes:
    """A minimal valid wheel (METADATA, WHEEL, RECORD with hashes) shipping `files`."""
    info = f"{dist}-1.0.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n".encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, data in sorted(members.items()):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


# -- oci-image layer groups: outputs of sandboxed builds, merged in-process -------------------

def _layer_project(tmp_path: Path, first: str, second: str | None, wheel: bytes | None = None) -> Project:
    proj = Project.empty(tmp_path, target="img")
    proj.recipe("one", script=first)
    layer = '["one", "two"]'
    if wheel is not None:
        (proj.root / "src/two").mkdir(parents=True)
        (proj.root / "src/two/evil-1.0-py3-none-any.whl").write_bytes(wheel)
        proj.recipe("two", source="src/two", script="cp evil-1.0-py3-none-any.whl $out/")
    elif second is not None:
        proj.recipe("two", script=second)
    else:
        layer = '["one"]'
    proj.write_raw("img", f'name = "img"\nversion = "1"\n[build]\nbuilder = "oci-image"\n[image]\nlayers = [{layer}]\n')
    return proj


def test_layer_groups_never_write_through_planted_links(tmp_path: Path, figure: dict) -> None:
    """An oci-image layer group whose first member plants links and whose later member (a tree or a wheel) writes through them: refused in one line, host untouched."""
    host = _canary(tmp_path / "c")
    h = str(host)
    cases = {
        "file-over-absolute-file-link": (f"ln -s {h}/file $out/y", "echo evil > $out/y", None),
        "file-under-absolute-dir-link": (f"ln -s {h}/dir $out/d", "mkdir $out/d; echo evil > $out/d/new", None),
        "file-under-relative-escaping-link": ("ln -s ../../../../../../../../../../.." + h + "/dir $out/d",
                                              "mkdir $out/d; echo evil > $out/d/victim", None),
        "link-chain": (f"ln -s b $out/a; ln -s {h}/dir $out/b", "mkdir $out/a; echo evil > $out/a/victim", None),
        "wheel-into-planted-site-packages": (f"mkdir -p $out/usr/local/lib/python3.11; ln -s {h}/dir $out/{SITE}",
                                             None, wheel_bytes("evil", {"evil/__init__.py": b"evil = 1\n"})),
        "wheel-over-planted-file-link": (f"mkdir -p $out/{SITE}/evil; ln -s {h}/file $out/{SITE}/evil/__init__.py",
                                         None, wheel_bytes("evil", {"evil/__init__.py": b"evil = 1\n"})),
        "dir-link-in-a-single-member": (f"ln -s {h}/dir $out/d; mkdir -p $out/e", None, None),
    }
    before = _host_state(host)
    refused, outcomes = 0, []
    for name, (first, second, wheel) in cases.items():
        proj = _layer_project(tmp_path / name, first, second, wheel)
        proj.lock()
        run = proj.cli("realise")
        after = _host_state(host)
        assert after == before, f"{name}: the host canary changed: {after}"
        if name == "dir-link-in-a-single-member":
            # One member's own links are its business: copied as links, never followed.
            assert run.returncode == 0, run.stderr
            out = Path(run.stdout.split()[0])
            assert out.is_dir()
            outcomes.append(f"{name}: built, link kept as a link")
            continue
        line = assert_one_failure(run, names=["img", "symlink"])
        refused += 1
        outcomes.append(f"{name}: {line.split(': ', 2)[-1][:90]}")
    figure.update(trials=len(cases), faults=", ".join(cases),
                  outcomes=f"{refused}/{len(cases) - 1} refused in one line naming the image and the link; "
                           f"host canary unchanged {len(cases)}/{len(cases)}")


# -- image-rootfs: layers of an image pulled from a real registry ------------------------------

def _push_image(reg: str, name: str, layers: list[bytes], workdir: Path) -> str:
    """An OCI layout holding one linux/amd64 image of `layers` (uncompressed tars), pushed with
    skopeo; returns the reference."""
    lay = workdir / f"layout-{name}"
    blobs = lay / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(l).hexdigest()}" for l in layers]},
                         }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(l)} for l in layers],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **blob(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (lay / "index.json").write_text(json.dumps(index))
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    ref = f"{reg}/hostile-{name}:v1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{lay}:v1", f"docker://{ref}"],
                   check=True, capture_output=True)
    return ref


def test_image_rootfs_layers_never_reach_the_host(tmp_path: Path, registry: str, figure: dict) -> None:  # noqa: F811
    """Images in a real registry whose layers plant links to the host, then write, hardlink or whiteout through them: image-rootfs refuses in one line; the host is untouched."""
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    host = _canary(tmp_path / "c")
    h = str(host).lstrip("/")
    plant = tarball([("etc", "symlink", f"/{h}/dir"), ("f", "symlink", f"/{h}/file")], compress=False)
    cases = {
        # The /etc/shadow attack: a directory link, then a hardlink through it.
        "hardlink-through-dir-link": [plant, tarball([("stolen", "hardlink", "etc/victim")], compress=False)],
        "hardlink-to-host-file-via-link": [tarball([("etc", "symlink", f"/{h}")], compress=False),
                                           tarball([("stolen", "hardlink", "etc/secret")], compress=False)],
        "file-under-dir-link": [plant, tarball([("etc/new", "file", "evil")], compress=False)],
        "whiteout-through-dir-link": [plant, tarball([("etc/.wh.victim", "file", "")], compress=False)],
        "opaque-whiteout-through-dir-link": [plant, tarball([("etc/.wh..wh..opq", "file", "")], compress=False)],
        "dir-under-dir-link": [plant, tarball([("etc/sub", "dir", b"")], compress=False)],
        # Allowed, the container way: a later layer's file replaces an earlier layer's link.
        "file-replaces-file-link": [plant, tarball([("f", "file", "image's own file\n")], compress=False)],
    }
    before = _host_state(host)
    refused, outcomes = 0, []
    for name, layers in cases.items():
        ref = _push_image(registry, name, layers, tmp_path)
        proj = Project.empty(tmp_path / name, target="pulled")
        proj.write_raw("pulled", f'name = "pulled"\nversion = "1"\n[source]\nkind = "image"\nurl = "{ref}"\n'
                                 '[build]\nbuilder = "image-rootfs"\n')
        lock = proj.cli("lock")
        assert lock.returncode == 0, lock.stderr
        run = proj.cli("realise")
        assert _host_state(host) == before, f"{name}: the host canary changed"
        if name == "file-replaces-file-link":
            assert run.returncode == 0, run.stderr
            out = Path(run.stdout.split()[0])
            assert (out / "f").read_text() == "image's own file\n" and (out / "etc").is_symlink()
            outcomes.append(f"{name}: built; the link replaced, not written through")
            continue
        line = assert_one_failure(run, names=["pulled"])
        assert "symlink" in line or "no such file" in line, line
        refused += 1
        outcomes.append(f"{name}: {line.split(': ', 2)[-1][:100]}")
    figure.update(trials=len(cases), faults=", ".join(cases),
                  outcomes=f"{refused}/{len(cases) - 1} refused in one line naming the input, the layer and the link; "
                           f"host canary unchanged {len(cases)}/{len(cases)}")


# -- the in-process writers called directly, on real archives ---------------------------------

def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def deb_bytes(package: str, members: list[tuple[str, str, bytes | str]]) -> bytes:
    control = f"Package: {package}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t\nDescription: t\n"
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", tarball([("control", "file", control)])),
                ("data.tar.gz", tarball(members))])


def test_debian_rootfs_toolkit_and_unpack_refuse_links(tmp_path: Path, figure: dict) -> None:
    """Debian root filesystems, the CUDA toolkit merge and archive unpacking fed real archives that write through links: each refused in one line, the host untouched."""
    from planner.archive import safe_extract
    from planner.builders.cuda import assemble_toolkit
    from planner.errors import PlannerError
    from planner.oci.rootfs import assemble_rootfs

    host = _canary(tmp_path / "c")
    h = str(host)
    before = _host_state(host)
    work = tmp_path / "w"
    work.mkdir()
    outcomes: list[str] = []

    def refused(name: str, fn) -> None:
        with pytest.raises((PlannerError, ValueError)) as info:
            fn()
        line = str(info.value)
        assert "\n" not in line, line
        assert _host_state(host) == before, f"{name}: the host canary changed"
        outcomes.append(f"{name}: {line[-90:]}")

    debs = {
        "deb-file-under-another-package-link": [
            ("a", [("./usr/share/x", "symlink", f"{h}/dir")]), ("b", [("./usr/share/x/new", "file", "evil")])],
        "deb-file-under-own-link": [("a", [("./opt", "symlink", f"{h}/dir"), ("./opt/victim", "file", "evil")])],
        "deb-hardlink-through-link": [("a", [("./opt", "symlink", f"{h}/dir"), ("./stolen", "hardlink", "opt/victim")])],
        "deb-file-over-link": [("a", [("./usr/share/y", "symlink", f"{h}/file")]), ("b", [("./usr/share/y", "file", "evil")])],
    }
    for name, pkgs in debs.items():
        paths = []
        for pkg, members in pkgs:
            p = work / f"{name}-{pkg}.deb"
            p.write_bytes(deb_bytes(f"{pkg}-{name}", members))
            paths.append(p)
        refused(name, lambda paths=paths, name=name: assemble_rootfs(paths, work / f"root-{name}", arch="amd64"))

    def cuda_wheel(member: str, *, link: bool = False) -> Path:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo(member)
            if link:
                info.external_attr = (0o120777 << 16)
                info.create_system = 3
            zf.writestr(info, f"{h}/file" if link else "evil")
        p = work / f"evil-{len(list(work.iterdir()))}.whl"
        p.write_bytes(buf.getvalue())
        return p

    toolkit = {
        "toolkit-symlink-member": cuda_wheel("nvidia/cu13/include/evil.h", link=True),
        "toolkit-dotdot-member": cuda_wheel("nvidia/cu13/../../../../../../../../x"),
        "toolkit-absolute-member": cuda_wheel(f"{h}/dir/victim"),
    }
    for name, whl in toolkit.items():
        refused(name, lambda whl=whl, name=name: assemble_toolkit([whl], work / f"tk-{name}"))

    archives = {
        "unpack-hardlink-through-dir-link": tarball([("d", "symlink", f"{h}/dir"), ("x", "hardlink", "d/victim")]),
        "unpack-file-through-relative-link": tarball([("top/d", "symlink", "../../../../../../../../../.." + h),
                                                      ("top/d/file", "file", "evil")]),
        "unpack-link-chain": tarball([("a", "symlink", "b"), ("b", "symlink", f"{h}/dir"), ("a/victim", "file", "x")]),
    }
    for name, data in archives.items():
        arc = work / f"{name}.tar.gz"
        arc.write_bytes(data)
        refused(name, lambda arc=arc, name=name: safe_extract(arc, work / f"out-{name}"))
        assert not (work / f"out-{name}").exists()
    n = len(debs) + len(toolkit) + len(archives)
    figure.update(trials=n, faults=", ".join([*debs, *toolkit, *archives]),
                  outcomes=f"{len(outcomes)}/{n} refused with one line; host canary unchanged {n}/{n}")
