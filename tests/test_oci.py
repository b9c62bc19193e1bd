"""planner.oci against real tools: skopeo, umoci, Debian's docker-registry, dpkg-deb.

The image under test: two CUDA variants (`default`: sm_90a+sm_100a, `sm100a`), each an index
over linux/amd64 and linux/arm64; two layers per image: a per-platform base layer and an
arch-independent top layer shared by both platforms and both variants.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from planner.errors import OciError
from planner.hashing import tree_digest
from planner.oci.descriptor import MEDIA_INDEX, Platform
from planner.oci.image import (
    ANNOTATION_CUDA_ARCHS,
    ANNOTATION_CUDA_VARIANT,
    PLATFORMS,
    ImageConfig,
    cuda_annotations,
    write_image,
    write_index,
)
from planner.oci.layer import LayerSource, compressor_id, gzip_reference, write_layer
from planner.oci.layout import LayoutImage, export_oci_archive, read_layout, write_layout
from planner.oci.registry import RegistryClient, push_layout
from planner.oci.rootfs import assemble_rootfs
from planner.oci.wheels import install_wheel
from tests.support.registry import free_port, registry  # noqa: F401  (session fixture)

REPO_ROOT = Path(__file__).resolve().parent.parent
SDE = 1_700_000_000
VARIANTS = {"default": ("sm_90a", "sm_100a"), "sm100a": ("sm_100a",)}


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


# ---------------------------------------------------------------------------------------------
# The image builder the tests share (also run in a subprocess with another umask, TZ, ...)


def make_trees(src: Path, *, top_text: str) -> Path:
    (src / "common/etc/planner").mkdir(parents=True)
    (src / "common/usr/bin").mkdir(parents=True)
    (src / "common/etc/planner/hello.txt").write_text("hello\n")
    tool = src / "common/usr/bin/tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    os.symlink("../../etc/planner/hello.txt", src / "common/usr/bin/hello-link")
    (src / "common/var/empty").mkdir(parents=True)
    for p in PLATFORMS:
        d = src / f"arch-{p.architecture}"
        d.mkdir()
        (d / "arch.txt").write_text(f"{p}\n")
    (src / "top").mkdir()
    (src / "top/main.py").write_text(top_text)
    return src


def build_layout(work: Path, *, top_text: str = "print('v1')\n", input_mtime: int | None = None) -> Path:
    """Build the two-variant, two-platform test image into work/layout."""
    trees = make_trees(work / "src", top_text=top_text)
    if input_mtime is not None:
        for p in [trees, *trees.rglob("*")]:
            os.utime(p, (input_mtime, input_mtime), follow_symlinks=False)
    layout = work / "layout"
    blobs = layout / "blobs"
    images = []
    for variant, archs in VARIANTS.items():
        ann = cuda_annotations(variant, archs)
        manifests = []
        for platform in PLATFORMS:
            base = write_layer(
                [LayerSource(trees / "common"), LayerSource(trees / f"arch-{platform.architecture}", "/usr/lib/planner")],
                blobs,
                source_date_epoch=SDE,
            )
            top = write_layer([LayerSource(trees / "top", "/app")], blobs, source_date_epoch=SDE)
            config = ImageConfig(
                env=["PATH=/usr/local/bin:/usr/bin:/bin"],
                cmd=["/usr/bin/tool"],
                working_dir="/app",
                labels={"dev.planner.cuda.variant": variant},
            )
            manifests.append(
                write_image([base, top], config, platform, blobs, source_date_epoch=SDE, annotations=ann,
                            history=["base", "app"])
            )
        images.append(LayoutImage(variant, write_index(manifests, blobs, annotations=ann)))
    write_layout(layout, images, verify=True)
    return layout


def blob_set(layout: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((layout / "blobs/sha256").iterdir())
    }


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(tmp_path_factory.mktemp("img"))


def _layer_tar(layout_dir: Path, tag: str, index: int) -> bytes:
    lay = read_layout(layout_dir)
    manifest = lay.read_json(lay.resolve(tag))
    digest = manifest["layers"][index]["digest"]
    return gzip.decompress(lay.blob_path(digest).read_bytes())


# ---------------------------------------------------------------------------------------------
# Layers


def test_layer_tar_is_normalised(layout: Path) -> None:
    data = _layer_tar(layout, "default-linux-amd64", 0)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names == [
        "etc", "etc/planner", "etc/planner/hello.txt", "usr", "usr/bin", "usr/bin/hello-link",
        "usr/bin/tool", "usr/lib", "usr/lib/planner", "usr/lib/planner/arch.txt", "var", "var/empty",
    ]
    by_name = {m.name: m for m in members}
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", SDE)
        assert not m.pax_headers
    assert by_name["usr/lib"].isdir() and by_name["usr/lib"].mode == 0o755  # prefix parents
    assert by_name["usr/bin/tool"].mode == 0o755
    assert by_name["etc/planner/hello.txt"].mode == 0o644
    assert by_name["usr/bin/hello-link"].issym() and by_name["usr/bin/hello-link"].linkname == "../../etc/planner/hello.txt"
    assert len(data) % 10240 == 0


def test_gzip_stream_equals_stdlib_gzip(tmp_path: Path) -> None:
    src = tmp_path / "t"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(1 << 16) * 8)  # several deflate blocks
    layer = write_layer([LayerSource(src)], tmp_path / "blobs", source_date_epoch=0)
    blob = (tmp_path / "blobs/sha256" / layer.descriptor.hex).read_bytes()
    tar = gzip.decompress(blob)
    assert blob == gzip_reference(tar)
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert layer.descriptor.size == len(blob)
    assert blob[4:8] == b"\0\0\0\0"  # gzip mtime
    assert layer.compressor == compressor_id("gzip")
    assert layer.compressor.startswith("gzip:zlib-")


def test_pinned_zlib_layer(tmp_path: Path) -> None:
    """Deflate from a root filesystem's own libz.so.1 (what a build root pins), through ctypes:
    the same gzip framing, and the bytes of that library's deflate at any chunking."""
    import zlib as host_zlib

    from planner.oci import zlibpin

    libdir = tmp_path / "root/usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    real = Path("/usr/lib/x86_64-linux-gnu") / os.readlink("/usr/lib/x86_64-linux-gnu/libz.so.1")
    shutil.copyfile(real, libdir / real.name)
    (libdir / "libz.so.1").symlink_to(real.name)
    pin = zlibpin.load(tmp_path / "root")
    src = tmp_path / "t"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(1 << 16) * 40 + b"abc" * (1 << 20))
    layer = write_layer([LayerSource(src)], tmp_path / "blobs", source_date_epoch=0, zlib_pin=pin)
    blob = (tmp_path / "blobs/sha256" / layer.descriptor.hex).read_bytes()
    tar = gzip.decompress(blob)
    assert layer.compressor == f"gzip:zlib-{pin.version}-build-root:6:hdr1"
    if pin.version == host_zlib.ZLIB_RUNTIME_VERSION:  # the same library: the same bytes
        assert blob == gzip_reference(tar)
    # A link out of its folder (into the host) is refused, not followed.
    evil = tmp_path / "evil/usr/lib/x86_64-linux-gnu"
    evil.mkdir(parents=True)
    (evil / "libz.so.1").symlink_to("/usr/lib/x86_64-linux-gnu/libz.so.1")
    with pytest.raises(OciError, match="outside its folder"):
        zlibpin.find_libz(tmp_path / "evil")


def test_zstd_layer_has_same_diff_id(tmp_path: Path) -> None:
    _need("zstd")
    src = make_trees(tmp_path / "src", top_text="x\n") / "common"
    g = write_layer([LayerSource(src)], tmp_path / "blobs", source_date_epoch=SDE)
    z = write_layer([LayerSource(src)], tmp_path / "blobs", source_date_epoch=SDE, compression="zstd")
    assert z.diff_id == g.diff_id
    assert z.descriptor.media_type.endswith("+zstd") and z.compressor.startswith("zstd:cli-")
    blob = tmp_path / "blobs/sha256" / z.descriptor.hex
    out = subprocess.run(["zstd", "-dc", str(blob)], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(out).hexdigest() == z.diff_id


def test_layer_long_and_undecodable_names_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    long_dir = src / ("d" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_text("long\n")
    os.symlink("t" * 150, src / "longlink")
    raw = os.fsencode(src) + b"/caf\xe9"  # Latin-1 byte: not UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    layer = write_layer([LayerSource(src, "/opt")], tmp_path / "blobs", source_date_epoch=7)
    tar = gzip.decompress((tmp_path / "blobs/sha256" / layer.descriptor.hex).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as t:
        members = {m.name: m for m in t.getmembers()}
    assert f"opt/{'d' * 120}/{'f' * 120}" in members
    assert members["opt/longlink"].linkname == "t" * 150
    assert os.fsencode("opt/caf\udce9") == b"opt/caf\xe9" and "opt/caf\udce9" in members
    assert all(m.mtime == 7 and not m.pax_headers for m in members.values())
    if shutil.which("tar"):  # GNU tar reads it too
        listing = subprocess.run(["tar", "--quoting-style=literal", "-tzf", str(tmp_path / "blobs/sha256" / layer.descriptor.hex)],
                                 capture_output=True, check=True).stdout
        assert b"opt/caf\xe9\n" in listing


def test_layer_rejects_special_files_and_conflicts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.mkfifo(tmp_path / "a/fifo")
    with pytest.raises(OciError, match="fifo"):
        write_layer([LayerSource(tmp_path / "a")], tmp_path / "blobs", source_date_epoch=0)
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "b/x").write_text("1")
    (tmp_path / "c/x").write_text("2")
    with pytest.raises(OciError, match="provided twice"):
        write_layer([LayerSource(tmp_path / "b"), LayerSource(tmp_path / "c")], tmp_path / "blobs", source_date_epoch=0)
    # Inputs are checked before anything is written.
    assert not (tmp_path / "blobs").exists()


# ---------------------------------------------------------------------------------------------
# Reproducibility


def test_same_inputs_give_same_bytes_under_another_environment(tmp_path: Path, layout: Path) -> None:
    # Second build: other temp dir, umask 077 (so the inputs are 0600/0700), another TZ, locale,
    # hash seed and working directory, and other input mtimes.
    work = tmp_path / "elsewhere" / "deeper"
    work.mkdir(parents=True)
    script = (
        "import sys; from pathlib import Path; from tests.test_oci import build_layout\n"
        "build_layout(Path(sys.argv[1]), input_mtime=1234567890)\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO_ROOT),
        "TZ": "Pacific/Chatham",
        "LC_ALL": "C",
        "PYTHONHASHSEED": "4242",
        "HOME": str(tmp_path),
    }
    subprocess.run([sys.executable, "-c", script, str(work)], env=env, cwd=tmp_path, umask=0o077, check=True)
    other = work / "layout"
    assert (other / "index.json").read_bytes() == (layout / "index.json").read_bytes()
    assert (other / "oci-layout").read_bytes() == (layout / "oci-layout").read_bytes()
    assert blob_set(other) == blob_set(layout)
    assert oct((work / "src/common/etc/planner/hello.txt").stat().st_mode & 0o777) == "0o600"
    # The exported archives are identical too, and do not depend on the blob files' modes.
    a = export_oci_archive(layout, tmp_path / "a.tar")
    b = export_oci_archive(other, tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()


def test_changing_top_layer_changes_only_that_blob(tmp_path: Path, layout: Path) -> None:
    changed = build_layout(tmp_path, top_text="print('v2')\n")
    for tag in ("default-linux-amd64", "default-linux-arm64", "sm100a-linux-amd64"):
        old = read_layout(layout).read_json(read_layout(layout).resolve(tag))
        new = read_layout(changed).read_json(read_layout(changed).resolve(tag))
        assert old["layers"][0] == new["layers"][0]
        assert old["layers"][1]["digest"] != new["layers"][1]["digest"]
    old_blobs, new_blobs = set(blob_set(layout)), set(blob_set(changed))
    # One top layer + 4 configs + 4 manifests + 2 indexes changed; the base layers did not.
    assert len(new_blobs - old_blobs) == 1 + 4 + 4 + 2


# ---------------------------------------------------------------------------------------------
# Layout structure, skopeo and umoci


def test_layout_tags_and_structure(layout: Path) -> None:
    lay = read_layout(layout)
    assert lay.tags() == (
        "default", "default-linux-amd64", "default-linux-arm64",
        "sm100a", "sm100a-linux-amd64", "sm100a-linux-arm64",
    )
    index = lay.resolve("default")
    assert index.media_type == MEDIA_INDEX
    assert index.annotation(ANNOTATION_CUDA_ARCHS) == "sm_90a,sm_100a"
    assert index.annotation(ANNOTATION_CUDA_VARIANT) == "default"
    platforms = [m.platform for m in lay.children(index)]
    assert platforms == [Platform("linux", "amd64"), Platform("linux", "arm64", "v8")]
    assert lay.resolve("default-linux-arm64").platform == Platform("linux", "arm64", "v8")
    # The top layer is shared by all four images.
    tops = {lay.read_json(lay.resolve(t))["layers"][1]["digest"] for t in lay.tags() if "-linux-" in t}
    assert len(tops) == 1
    config = lay.read_json(lay.children(lay.resolve("default-linux-amd64"))[0])
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert [h["created"] for h in config["history"]] == ["2023-11-14T22:13:20Z"] * 2
    assert len(config["rootfs"]["diff_ids"]) == 2
    with pytest.raises(OciError, match="no tag 'nope'"):
        lay.resolve("nope")


def test_skopeo_reads_layout(layout: Path) -> None:
    _need("skopeo")
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:default"], capture_output=True, check=True).stdout
    doc = json.loads(raw)
    assert doc["mediaType"] == MEDIA_INDEX and len(doc["manifests"]) == 2
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == read_layout(layout).resolve("default").digest
    out = subprocess.run(["skopeo", "inspect", f"oci:{layout}:default-linux-arm64"], capture_output=True, check=True)
    assert json.loads(out.stdout)["Architecture"] == "arm64"
    out = subprocess.run(["skopeo", "inspect", "--config", f"oci:{layout}:default-linux-arm64"],
                         capture_output=True, check=True)
    config = json.loads(out.stdout)
    assert (config["architecture"], config["variant"], config["os"]) == ("arm64", "v8", "linux")
    archive = export_oci_archive(layout, layout.parent / "image.tar")
    out = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}:sm100a-linux-amd64"],
                         capture_output=True, check=True)
    assert json.loads(out.stdout)["Architecture"] == "amd64"


def test_umoci_unpacks_platform_tag(tmp_path: Path, layout: Path) -> None:
    _need("umoci")
    bundle = tmp_path / "bundle"
    cmd = ["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    subprocess.run(cmd + ["--image", f"{layout}:default-linux-amd64", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc/planner/hello.txt").read_text() == "hello\n"
    assert (rootfs / "usr/lib/planner/arch.txt").read_text() == "linux/amd64\n"
    assert (rootfs / "app/main.py").read_text() == "print('v1')\n"
    assert os.readlink(rootfs / "usr/bin/hello-link") == "../../etc/planner/hello.txt"
    assert os.stat(rootfs / "usr/bin/tool").st_mode & 0o777 == 0o755


# ---------------------------------------------------------------------------------------------
# Registry


def test_skopeo_copies_layout_to_registry(layout: Path, registry: str) -> None:  # noqa: F811
    _need("skopeo")
    subprocess.run(
        ["skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:default",
         f"docker://{registry}/skopeo-copy:default"],
        check=True, capture_output=True,
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/skopeo-copy:default"],
        check=True, capture_output=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == read_layout(layout).resolve("default").digest


def test_push_layout_keeps_digests_and_skips_present_blobs(layout: Path, registry: str, tmp_path: Path) -> None:  # noqa: F811
    lay = read_layout(layout)
    first = push_layout(layout, f"{registry}/ours:default", tag_for="default")
    assert first.descriptor.digest == lay.resolve("default").digest
    assert (first.blobs_uploaded, first.blobs_skipped) == (5, 0)  # 2 base + 1 top layer, 2 configs
    assert first.manifests_pushed == 3  # 2 platform manifests + the index
    if shutil.which("skopeo"):
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/ours:default"],
            check=True, capture_output=True,
        ).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == first.descriptor.digest
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--override-arch", "arm64", f"docker://{registry}/ours:default"],
            check=True, capture_output=True,
        ).stdout
        assert json.loads(out)["Architecture"] == "arm64"

    again = push_layout(layout, f"{registry}/ours:default", tag_for="default")
    assert (again.blobs_uploaded, again.blobs_skipped, again.bytes_uploaded) == (0, 5, 0)
    assert again.manifests_skipped == 2 and again.manifests_pushed == 1

    # The other variant shares all layers; only its configs are new.
    other = push_layout(layout, f"{registry}/ours:sm100a", tag_for="sm100a")
    assert (other.blobs_uploaded, other.blobs_skipped) == (2, 3)

    # A single platform manifest can be pushed under a tag of its own.
    single = push_layout(layout, f"{registry}/ours:amd64", tag_for="default-linux-amd64")
    assert single.descriptor.digest == lay.resolve("default-linux-amd64").digest

    with RegistryClient(f"http://{registry}", "ours") as client:
        pulled = client.pull_manifest("default")
        assert pulled.descriptor.digest == first.descriptor.digest
        assert pulled.data == lay.read_blob(lay.resolve("default"))
        by_digest = client.pull_manifest(first.descriptor.digest)
        assert by_digest.descriptor.media_type == MEDIA_INDEX
        layer = lay.read_json(lay.resolve("default-linux-arm64"))["layers"][0]
        got = client.pull_blob(layer["digest"], tmp_path / "pulled" / "layer.tar.gz")
        assert got.size == layer["size"]
        assert (tmp_path / "pulled/layer.tar.gz").read_bytes() == lay.blob_path(layer["digest"]).read_bytes()
        missing = "sha256:" + "0" * 64
        with pytest.raises(OciError, match=missing):
            client.pull_blob(missing, tmp_path / "pulled" / "missing")
        assert not (tmp_path / "pulled/missing").exists()


class _TokenProxy:
    """A registry front that demands bearer tokens (as Docker Hub, GHCR and Harbor do) and
    forwards authorised requests to the real registry."""

    def __init__(self, upstream: str, user: str, password: str, *, scheme: str = "bearer") -> None:
        self.upstream = upstream
        self.scheme = scheme
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.token = "tok-" + hashlib.sha256(password.encode()).hexdigest()[:16]
        self.token_requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/token"):
                    proxy.token_requests.append(self.path)
                    if self.headers.get("Authorization") != proxy.basic:
                        return self._reply(401, {}, b'{"details":"bad credentials"}')
                    return self._reply(200, {"Content-Type": "application/json"},
                                       json.dumps({"token": proxy.token}).encode())
                if proxy.scheme == "basic":
                    if self.headers.get("Authorization") != proxy.basic:
                        return self._reply(401, {"WWW-Authenticate": 'Basic realm="test"'}, b"")
                elif self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    host = self.headers["Host"]
                    challenge = f'Bearer realm="http://{host}/token",service="test",scope="repository:auth:pull"'
                    return self._reply(401, {"WWW-Authenticate": challenge}, b"")
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("authorization", "content-length")}
                resp = httpx.request(self.command, f"http://{proxy.upstream}{self.path}", headers=headers,
                                     content=body)
                out = {k: v for k, v in resp.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
                self._reply(resp.status_code, out, resp.content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _TokenProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _docker_config(path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_push_with_bearer_token_auth_and_secret_hygiene(layout: Path, registry: str, tmp_path: Path) -> None:  # noqa: F811
    with _TokenProxy(registry, "alice", "s3cret-pw") as proxy:
        config = _docker_config(tmp_path / "config.json", proxy.address, "alice", "s3cret-pw")
        result = push_layout(layout, f"{proxy.address}/auth:default", tag_for="default", docker_config=config)
        assert result.descriptor.digest == read_layout(layout).resolve("default").digest
        # One token for the push scope, reused for every request.
        assert len(proxy.token_requests) == 1
        assert "scope=repository%3Aauth%3Apull%2Cpush" in proxy.token_requests[0]

        bad = _docker_config(tmp_path / "bad.json", proxy.address, "alice", "wrong-pw")
        with pytest.raises(OciError) as info:
            push_layout(layout, f"{proxy.address}/auth:default", tag_for="default", docker_config=bad)
        message = str(info.value)
        assert "token request refused: HTTP 401" in message
        for secret in ("wrong-pw", "s3cret-pw", proxy.token, base64.b64encode(b"alice:wrong-pw").decode()):
            assert secret not in message
        assert "\n" not in message

        # No credentials at all: a clear message, still nothing secret.
        empty = tmp_path / "none.json"
        empty.write_text("{}")
        with RegistryClient(f"http://{proxy.address}", "auth", docker_config=empty) as client:
            with pytest.raises(OciError, match="token request refused"):
                client.pull_manifest("default")


def test_push_with_basic_auth(layout: Path, registry: str, tmp_path: Path) -> None:  # noqa: F811
    with _TokenProxy(registry, "bob", "b4sic-pw", scheme="basic") as proxy:
        config = _docker_config(tmp_path / "config.json", f"http://{proxy.address}", "bob", "b4sic-pw")
        result = push_layout(layout, f"{proxy.address}/basic:amd64", tag_for="default-linux-amd64",
                             docker_config=config)
        assert result.descriptor.digest == read_layout(layout).resolve("default-linux-amd64").digest
        bad = _docker_config(tmp_path / "bad.json", proxy.address, "bob", "nope-pw")
        with pytest.raises(OciError, match="HTTP 401") as info:
            push_layout(layout, f"{proxy.address}/basic:amd64", tag_for="default-linux-amd64", docker_config=bad)
        assert "nope-pw" not in str(info.value) and base64.b64encode(b"bob:nope-pw").decode() not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Root filesystems from .debs, and wheels


def _build_deb(work: Path, name: str, files: dict[str, bytes | str], *, arch: str = "amd64",
               compression: str = "xz", links: dict[str, str] | None = None) -> Path:
    root = work / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: {arch}\nMaintainer: Test <t@example.org>\n"
        f"Description: test package {name}\n long description line\n .\n second paragraph\n"
    )
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            p.write_text(content)
        else:
            p.write_bytes(content)
        if "/bin/" in f"/{rel}":
            p.chmod(0o755)
    for rel, target in (links or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    out = work / f"{name}_1.0-1_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


def test_rootfs_from_debs_is_merged_usr(tmp_path: Path) -> None:
    _need("dpkg-deb")
    hello = _build_deb(tmp_path, "hello", {"usr/bin/hello": "#!/bin/sh\necho hello\n", "bin/legacy": "#!/bin/sh\n"})
    libfoo = _build_deb(
        tmp_path, "libfoo",
        {"lib/x86_64-linux-gnu/libfoo.so.1": b"\x7fELF fake", "usr/share/doc/libfoo/copyright": "MIT\n"},
        compression="zstd",
        links={"usr/lib/ssl/certs": "/etc/ssl/certs"},  # absolute targets are normal in Debian
    )
    root = tmp_path / "rootfs"
    result = assemble_rootfs([libfoo, hello], root, arch="amd64")
    assert [p.package for p in result.packages] == ["hello", "libfoo"]
    for d in ("bin", "sbin", "lib", "lib64"):
        assert os.readlink(root / d) == f"usr/{d}"
        assert (root / "usr" / d).is_dir()
    assert (root / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    assert os.stat(root / "usr/bin/hello").st_mode & 0o777 == 0o755
    assert (root / "usr/bin/legacy").is_file()  # shipped as /bin/legacy
    assert (root / "bin/hello").is_file()  # through the merged-/usr link
    assert (root / "usr/lib/x86_64-linux-gnu/libfoo.so.1").read_bytes() == b"\x7fELF fake"
    assert os.readlink(root / "usr/lib/ssl/certs") == "/etc/ssl/certs"
    status = (root / "var/lib/dpkg/status").read_text()
    assert status.index("Package: hello") < status.index("Package: libfoo")
    assert "Status: install ok installed" in status and " long description line\n .\n" in status

    # The same debs in another order give the same tree; it becomes a layer like any other.
    again = tmp_path / "rootfs2"
    assemble_rootfs([hello, libfoo], again, arch="amd64")
    assert tree_digest(again) == tree_digest(root)
    layer = write_layer([LayerSource(root)], tmp_path / "blobs", source_date_epoch=SDE)
    tar = gzip.decompress((tmp_path / "blobs/sha256" / layer.descriptor.hex).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["bin"].issym() and names["bin"].linkname == "usr/bin"
    assert "usr/bin/hello" in names and "bin/legacy" not in names

    # arm64 has no /lib64 link (debootstrap makes none); wrong-arch packages are refused.
    arm = _build_deb(tmp_path / "arm", "hello", {"usr/bin/hello": "x"}, arch="arm64")
    arm_root = tmp_path / "arm-root"
    assemble_rootfs([arm], arm_root, arch="arm64")
    assert not os.path.lexists(arm_root / "lib64") and os.readlink(arm_root / "lib") == "usr/lib"
    with pytest.raises(OciError, match="not amd64"):
        assemble_rootfs([arm], tmp_path / "wrong", arch="amd64")


def test_rootfs_refuses_conflicting_files(tmp_path: Path) -> None:
    _need("dpkg-deb")
    a = _build_deb(tmp_path / "a", "aaa", {"usr/bin/tool": "one\n"})
    b = _build_deb(tmp_path / "b", "bbb", {"bin/tool": "two\n"})  # same file after usr-merge
    with pytest.raises(OciError, match="/usr/bin/tool is shipped by both aaa and bbb"):
        assemble_rootfs([a, b], tmp_path / "root", arch="amd64")
    same = _build_deb(tmp_path / "c", "ccc", {"usr/bin/tool": "one\n"})
    assemble_rootfs([a, same], tmp_path / "root2", arch="amd64")  # identical content is fine


def _make_wheel(path: Path) -> Path:
    dist = "demo_pkg-1.0.dist-info"
    files = {
        "demo_pkg/__init__.py": b"def main():\n    print('demo')\n",
        "demo_pkg/data.txt": b"payload\n",
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\ndemo = demo_pkg:main\n",
        "demo_pkg-1.0.data/scripts/demo-sh": b"#!python\nprint('script')\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_install_wheel_is_deterministic(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "demo_pkg-1.0-py3-none-any.whl")
    roots = []
    old = os.umask(0o077)
    try:
        for i, mask in enumerate((0o022, 0o002)):
            os.umask(mask)
            root = tmp_path / f"root{i}"
            root.mkdir()
            result = install_wheel(wheel, root)
            roots.append(root)
    finally:
        os.umask(old)
    site = roots[0] / "usr/local/lib/python3.11/dist-packages"
    assert (site / "demo_pkg/__init__.py").read_bytes() == b"def main():\n    print('demo')\n"
    assert (site / "demo_pkg/data.txt").stat().st_mode & 0o777 == 0o644
    assert (site / "demo_pkg-1.0.dist-info/INSTALLER").read_bytes() == b"planner\n"
    script = (roots[0] / "usr/local/bin/demo").read_text()
    assert script.startswith("#!/usr/bin/python3\n") and "demo_pkg" in script
    assert (roots[0] / "usr/local/bin/demo-sh").read_text() == "#!/usr/bin/python3\nprint('script')\n"
    assert os.stat(roots[0] / "usr/local/bin/demo").st_mode & 0o777 == 0o755
    assert not list(roots[0].rglob("*.pyc")) and not list(roots[0].rglob("__pycache__"))
    record = (site / "demo_pkg-1.0.dist-info/RECORD").read_text().splitlines()
    assert record == sorted(record, key=lambda line: line.split(",")[0])
    assert any(line.startswith("../../../bin/demo,sha256=") for line in record)
    assert "/usr/local/lib/python3.11/dist-packages/demo_pkg/__init__.py" in result.files
    assert tree_digest(roots[0]) == tree_digest(roots[1])
    with pytest.raises(OciError, match="demo_pkg-1.0-py3-none-any.whl"):
        install_wheel(wheel, roots[0])  # files exist already

