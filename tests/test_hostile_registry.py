"""A registry is untrusted input: what it answers (upload Locations, next-page Links, token
realms, index entries, manifests, blobs, store-entry annotations) gets one clear error or a cache
miss, never a traceback, never our credentials sent elsewhere, never an unbounded read.

The registries here are scripted: a small http.server on 127.0.0.1 (one over TLS, with a
certificate made for the module) answers each (method, path) with what a test put there and
records every request with its Authorization header."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import ipaddress
import json
import ssl
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import httpx
import pytest

from planner.cache.client import BinaryCache
from planner.cache.ref import (A_CONTENT, A_DIGEST, A_INPUT_KEY, A_KEY, A_KIND, A_NAME, A_SIGNATURES, A_VARIANT,
                               A_VERSION, ARTIFACT_TYPE, CacheError, MEDIA_MANIFEST, MEDIA_PREIMAGE)
from planner.cache.signing import Signer, TrustedKeys, generate_key, signed_payload
from planner.errors import FetchError, OciError
from planner.hashing import canonical_json, key_of
from planner.oci.base import reuse_base
from planner.oci.descriptor import MEDIA_INDEX, Descriptor
from planner.oci.image import ImageConfig
from planner.oci.reference import Credentials
from planner.oci.registry import RegistryClient
from planner.resolve import UnresolvedInputs, prefetch
from planner.store import Store

from .support.project import Project

Body = Union[bytes, Callable[[], Iterable[bytes]]]
ALICE = Credentials("alice", "s3cret-pw")
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def endless(chunk: int = 1 << 20, total: int = 64 << 20) -> Callable[[], Iterator[bytes]]:
    """A body far larger than anything the client may read of it, made as it is sent."""
    def gen() -> Iterator[bytes]:
        for _ in range(total // chunk):
            yield b"\0" * chunk
    return gen


# -- the scripted registry ------------------------------------------------------------------------


class Registry:
    """A scripted registry on 127.0.0.1: `answer(path, ...)` sets what a request gets; with
    `basic` set, this origin answers 401 (a Basic challenge) to requests without those
    credentials. `requests` records (method, path, Authorization or None)."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], Body]] = {}
        self.requests: list[tuple[str, str, Optional[str]]] = []
        self.basic: Optional[str] = None
        self.lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                auth = self.headers.get("Authorization")
                with registry.lock:
                    registry.requests.append((self.command, self.path, auth))
                    route = registry.routes.get((self.command, path)) or registry.routes.get(("*", path))
                    basic = registry.basic
                if basic is not None and auth != basic:
                    route = (401, {"WWW-Authenticate": 'Basic realm="scripted"'}, b"")
                if route is None:
                    route = (404, {}, b'{"errors":[{"code":"NOT_FOUND","message":"nothing here"}]}')
                status, headers, body = route
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if callable(body):
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        for chunk in body():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except OSError:
                    self.close_connection = True  # the client stopped reading, as it should

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.scheme}://{self.address}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: Body = b"", *, status: int = 200, headers: Optional[dict[str, str]] = None,
               method: str = "*") -> None:
        with self.lock:
            self.routes[(method, path)] = (status, dict(headers or {}), body)

    def reset(self) -> None:
        with self.lock:
            self.routes.clear()
            self.requests.clear()
            self.basic = None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _tls_pair(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for 127.0.0.1, the client trusting only this certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = folder / "cert.pem", folder / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_pem, key_pem)
    return server, ssl.create_default_context(cafile=str(cert_pem))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`reg` (the registry), `other` (another origin: same host, other port) and `tls` (a
    registry over https), shared by the module; `client_tls` trusts `tls`'s certificate."""
    server_ctx, client_ctx = _tls_pair(tmp_path_factory.mktemp("tls"))
    made = {"reg": Registry(), "other": Registry(), "tls": Registry(server_ctx)}
    try:
        yield {**made, "client_tls": client_ctx}
    finally:
        for r in made.values():
            r.close()


@pytest.fixture
def reg(servers: dict[str, Any]) -> Registry:
    for name in ("reg", "other", "tls"):
        servers[name].reset()
    return servers["reg"]


@pytest.fixture
def other(servers: dict[str, Any], reg: Registry) -> Registry:
    return servers["other"]


@pytest.fixture
def tls(servers: dict[str, Any], reg: Registry) -> Registry:
    return servers["tls"]


def _docker_config(tmp_path: Path, address: str, creds: Credentials = ALICE) -> Path:
    auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    folder = tmp_path / "docker"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": {address: {"auth": auth}}}))
    return folder


def _blob(tmp_path: Path, data: bytes = b"layer bytes") -> tuple[Path, Descriptor]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, Descriptor(media_type="application/octet-stream", digest=sha(data), size=len(data))


# -- 3: credentials stay with the registry's origin ----------------------------------------------


def test_an_upload_location_on_another_origin_gets_no_credentials(reg: Registry, other: Registry,
                                                                  tmp_path: Path) -> None:
    reg.basic = ALICE.basic()
    reg.answer("/v2/repo/blobs/uploads/", status=202, method="POST",
               headers={"Location": f"http://{other.address}/elsewhere/upload"})
    other.answer("/elsewhere/upload", status=201, method="PUT")
    path, desc = _blob(tmp_path)
    with RegistryClient(reg.url, "repo", credentials=ALICE) as client:
        client.push_blob(path, desc)
    assert [r[2] for r in reg.requests] == [None, ALICE.basic()]  # challenged, then authenticated
    assert [(m, auth) for m, _p, auth in other.requests] == [("PUT", None)]


def test_a_location_from_https_down_to_http_is_refused(tls: Registry, other: Registry, servers: dict,
                                                      tmp_path: Path) -> None:
    tls.answer("/v2/repo/blobs/uploads/", status=202, method="POST",
               headers={"Location": f"http://{tls.address}/v2/repo/blobs/uploads/x"})
    path, desc = _blob(tmp_path)
    with RegistryClient(tls.url, "repo", credentials=ALICE,
                        transport=httpx.HTTPTransport(verify=servers["client_tls"])) as client:
        with pytest.raises(OciError, match="upload Location leaves https for plain http"):
            client.push_blob(path, desc)
    assert [m for m, _p, _a in tls.requests] == ["POST"]


def test_a_token_realm_from_https_down_to_http_is_refused(tls: Registry, other: Registry, servers: dict) -> None:
    tls.answer("/v2/repo/manifests/v1", status=401,
               headers={"WWW-Authenticate": f'Bearer realm="http://{other.address}/token",service="s"'})
    with RegistryClient(tls.url, "repo", credentials=ALICE,
                        transport=httpx.HTTPTransport(verify=servers["client_tls"])) as client:
        with pytest.raises(OciError, match="token realm leaves https for plain http"):
            client.pull_manifest("v1")
    assert other.requests == []


def test_a_tag_lists_next_link_on_another_origin_gets_no_credentials(reg: Registry, other: Registry, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(_docker_config(tmp_path, reg.address)))
    reg.basic = ALICE.basic()
    reg.answer("/v2/cache/tags/list", json.dumps({"tags": ["a"]}).encode(),
               headers={"Link": f'<http://{other.address}/v2/cache/tags/list?last=a>; rel="next"'})
    other.answer("/v2/cache/tags/list", json.dumps({"tags": ["b"]}).encode())
    cache = BinaryCache(f"oci://{reg.address}/cache")
    try:
        assert cache.tags() == ["a", "b"]
    finally:
        cache.close()
    assert reg.requests[-1][2] == ALICE.basic()
    assert [auth for _m, _p, auth in other.requests] == [None]


def test_a_tag_lists_next_link_from_https_down_to_http_is_refused(tls: Registry, other: Registry,
                                                                  servers: dict) -> None:
    tls.answer("/v2/cache/tags/list", json.dumps({"tags": ["a"]}).encode(),
               headers={"Link": f'<http://{other.address}/v2/cache/tags/list?last=a>; rel="next"'})
    cache = BinaryCache(f"oci://{tls.address}/cache?plain-http=false",
                        transport=httpx.HTTPTransport(verify=servers["client_tls"]))
    try:
        with pytest.raises(OciError, match="next Link leaves https for plain http"):
            cache.tags()
    finally:
        cache.close()
    assert other.requests == []


def test_a_tag_list_linking_back_to_itself_ends(reg: Registry) -> None:
    reg.answer("/v2/cache/tags/list", json.dumps({"tags": []}).encode(),
               headers={"Link": '</v2/cache/tags/list?n=1000>; rel="next"'})
    cache = BinaryCache(f"oci://{reg.address}/cache")
    try:
        with pytest.raises(CacheError, match="next Link goes back to a page already read"):
            cache.tags()
    finally:
        cache.close()
    assert len(reg.requests) == 1


# -- 6: a malformed store-entry manifest is a cache miss -----------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    path = tmp_path_factory.mktemp("key") / "ci.key"
    generate_key(path, "ci")
    return Signer.from_file(path)


def _entry(signer: Signer, key: str, layer: bytes, config: bytes) -> dict:
    ann = {A_KEY: key, A_INPUT_KEY: "", A_KIND: "build", A_NAME: "x", A_VERSION: "1", A_CONTENT: "dir",
           A_DIGEST: "blake3:" + "0" * 64, A_VARIANT: "{}"}
    ann[A_SIGNATURES] = signer.sign(signed_payload(ann, sha(layer), sha(config)))
    return {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": MEDIA_PREIMAGE, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_GZIP, "digest": sha(layer), "size": len(layer)}],
            "annotations": ann}


def _set(doc: dict, path: tuple[Union[str, int], ...], value: Any) -> dict:
    at: Any = doc
    for p in path[:-1]:
        at = at[p]
    at[path[-1]] = value
    return doc


@pytest.mark.parametrize("field,value", [
    (("annotations", A_SIGNATURES), ["ci:AAAA"]),  # a list where the signatures string goes
    (("annotations", A_VARIANT), 5),
    (("annotations",), ["not", "a", "map"]),
    (("layers", 0, "size"), "abc"),
    (("layers", 0, "digest"), 7),
    (("layers", 0), "sha256:" + "1" * 64),
    (("layers",), 5),
    (("config", "digest"), ["sha256:" + "2" * 64]),
    (("config", "size"), -1),
])
def test_a_malformed_entry_manifest_is_a_miss(reg: Registry, signer: Signer, field: tuple, value: Any) -> None:
    key = "a" * 32
    doc = _set(_entry(signer, key, b"layer", b"{}"), field, value)
    reg.answer(f"/v2/cache/manifests/{key}", json.dumps(doc).encode(), headers={"Content-Type": MEDIA_MANIFEST})
    cache = BinaryCache(f"oci://{reg.address}/cache", trusted=TrustedKeys([signer.public_key]))
    try:
        got = cache.lookup(key)
    finally:
        cache.close()
    assert not got.ok
    assert got.reason == "bad-signature" and got.detail.startswith("malformed manifest"), got.detail


def test_a_well_formed_entry_manifest_is_still_a_hit(reg: Registry, signer: Signer) -> None:
    key = "b" * 32
    reg.answer(f"/v2/cache/manifests/{key}", json.dumps(_entry(signer, key, b"layer", b"{}")).encode(),
               headers={"Content-Type": MEDIA_MANIFEST})
    cache = BinaryCache(f"oci://{reg.address}/cache", trusted=TrustedKeys([signer.public_key]))
    try:
        hit = cache.lookup(key)
    finally:
        cache.close()
    assert hit.ok and hit.layer_size == len(b"layer") and hit.signer == "ci"


# -- 9: every answer is read against a bound -----------------------------------------------------


@pytest.mark.parametrize("body", [endless(), b"\0" * (2 << 20)], ids=["chunked", "content-length"])
def test_a_blob_is_not_read_past_its_descriptors_size(reg: Registry, tmp_path: Path, body: Body) -> None:
    digest = sha(b"x" * 150)
    reg.answer(f"/v2/repo/blobs/{digest}", body)
    dest = tmp_path / "pulled" / "layer"
    with RegistryClient(reg.url, "repo") as client:
        with pytest.raises(OciError, match=r"blob larger than its descriptor \(150 bytes\)"):
            client.pull_blob(digest, dest, size=150)
    assert list(dest.parent.iterdir()) == []  # nothing half-written


def test_a_cache_entrys_layer_is_not_read_past_its_size(reg: Registry, signer: Signer, tmp_path: Path) -> None:
    preimage = {"name": "x", "version": "1"}
    key = key_of(preimage)
    config, layer = canonical_json(preimage), b"small layer"
    reg.answer(f"/v2/cache/manifests/{key}", json.dumps(_entry(signer, key, layer, config)).encode(),
               headers={"Content-Type": MEDIA_MANIFEST})
    reg.answer(f"/v2/cache/blobs/{sha(config)}", config)
    reg.answer(f"/v2/cache/blobs/{sha(layer)}", endless())
    cache = BinaryCache(f"oci://{reg.address}/cache", trusted=TrustedKeys([signer.public_key]))
    store = Store(tmp_path / "store")
    try:
        hit = cache.lookup(key)
        assert hit.ok
        with pytest.raises(CacheError, match=rf"larger than its descriptor \({len(layer)} bytes\)"):
            cache.fetch(hit, store)
        assert store.lookup(key) is None
    finally:
        cache.close()
        store.close()


def test_an_upload_answer_is_bounded(reg: Registry, tmp_path: Path) -> None:
    reg.answer("/v2/repo/blobs/uploads/", endless(), status=202, method="POST",
               headers={"Location": "/v2/repo/blobs/uploads/x"})
    path, desc = _blob(tmp_path)
    with RegistryClient(reg.url, "repo") as client:
        with pytest.raises(OciError, match="registry answer is larger than 64 KiB"):
            client.push_blob(path, desc)
    assert [m for m, _p, _a in reg.requests] == ["POST"]


def test_a_token_answer_is_bounded(reg: Registry) -> None:
    reg.answer("/v2/repo/manifests/v1", status=401,
               headers={"WWW-Authenticate": f'Bearer realm="{reg.url}/token",service="s"'})
    reg.answer("/token", endless())
    with RegistryClient(reg.url, "repo", credentials=ALICE) as client:
        with pytest.raises(OciError, match="token answer is larger than 1 MiB"):
            client.pull_manifest("v1")


# -- 7, 8: lock refuses a registry's malformed index or manifest, naming input and field ---------


def _layer() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo("etc/x")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"hi\n"))
    return gzip.compress(raw.getvalue(), mtime=0)


def _serve_image(reg: Registry, case: str = "good") -> str:
    """An image `base:latest` (an index of one linux/amd64 manifest), spoiled as `case` says;
    returns the manifest's digest."""
    layer = _layer()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha(gzip.decompress(layer))]}}).encode()
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_GZIP, "digest": sha(layer), "size": len(layer)}]}
    if case == "mediatype-list":
        manifest["mediaType"] = ["x"]
    if case == "layers-not-a-list":
        manifest["layers"] = 5
    if case == "layer-size-text":
        manifest["layers"][0]["size"] = "abc"
    data = json.dumps(manifest).encode()
    entry: Any = {"mediaType": MEDIA_MANIFEST, "digest": sha(data), "size": len(data),
                  "platform": {"os": "linux", "architecture": "amd64"}}
    manifests: Any = [entry]
    if case == "entry-a-string":
        manifests = [sha(data)]
    if case == "manifests-an-object":
        manifests = {"a": 1}
    if case == "digest-an-integer":
        entry["digest"] = 5
    if case == "digest-a-tag":
        entry["digest"] = "other"  # a tag the registry also answers: the lock must not pin it
    if case == "platform-a-string":
        entry["platform"] = "linux/amd64"
    index = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}).encode()
    reg.answer("/v2/base/manifests/latest", index, headers={"Content-Type": MEDIA_INDEX})
    for ref in (sha(data), "other"):
        reg.answer(f"/v2/base/manifests/{ref}", data, headers={"Content-Type": MEDIA_MANIFEST})
    reg.answer(f"/v2/base/blobs/{sha(config)}", config)
    reg.answer(f"/v2/base/blobs/{sha(layer)}", endless() if case == "layer-too-big" else layer)
    return sha(data)


def _image_project(tmp_path: Path, reg: Registry) -> Project:
    proj = Project.empty(tmp_path, target="pulled")
    proj.write_raw("pulled", f'name = "pulled"\nversion = "1"\n[source]\nkind = "image"\n'
                             f'url = "{reg.address}/base:latest"\n[build]\nbuilder = "image-rootfs"\n')
    return proj


@pytest.mark.parametrize("case,field", [
    ("entry-a-string", "index field manifests[0] is not a descriptor object"),
    ("manifests-an-object", "index field manifests is not a list"),
    ("digest-an-integer", "index field manifests[0].digest '5' is not sha256:<64 hex digits>"),
    ("digest-a-tag", "index field manifests[0].digest 'other' is not sha256:<64 hex digits>"),
    ("platform-a-string", "index field manifests[0].platform is not an object"),
    ("mediatype-list", "manifest field mediaType is not a string"),
    ("layers-not-a-list", "manifest field layers is not a list"),
    ("layer-size-text", "manifest field layers[0].size is not a byte count"),
    ("layer-too-big", "blob larger than its descriptor"),
])
def test_lock_refuses_a_malformed_image_naming_input_and_field(reg: Registry, tmp_path: Path, case: str,
                                                               field: str) -> None:
    _serve_image(reg, case)
    proj = _image_project(tmp_path, reg)
    with pytest.raises(UnresolvedInputs) as info:
        proj.lock()
    line = info.value.line()
    assert line.startswith(f"could not resolve pulled/source: pulled/source ({reg.address}/base:latest): ")
    assert field in line and "\n" not in line
    assert 'status = "unlocked"' in proj.lockfile.read_text()  # nothing pinned from it


def test_lock_update_against_a_hostile_index_keeps_the_old_pin(reg: Registry, tmp_path: Path) -> None:
    digest = _serve_image(reg)
    proj = _image_project(tmp_path, reg)
    assert proj.lock().inputs["pulled/source"].pins["linux/amd64"].digest == digest
    before = proj.lockfile.read_text()
    _serve_image(reg, "digest-a-tag")
    run = proj.cli("lock", "--update", "pulled/source")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("planner: error: could not resolve pulled/source: ")
    assert "manifests[0].digest 'other'" in last
    assert proj.lockfile.read_text() == before


# -- 11: a pulled base image's config is type-checked before anything is copied ------------------


def _base_folder(tmp_path: Path, config: Any, *, layer_size: Any = None) -> Path:
    folder = tmp_path / "base"
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer = _layer()
    cfg = json.dumps(config).encode()
    for data in (layer, cfg):
        (blobs / sha(data)[7:]).write_bytes(data)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": CONFIG, "digest": sha(cfg), "size": len(cfg)},
                "layers": [{"mediaType": LAYER_GZIP, "digest": sha(layer),
                            "size": len(layer) if layer_size is None else layer_size}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _config(**runtime: Any) -> dict:
    return {"rootfs": {"type": "layers", "diff_ids": [sha(gzip.decompress(_layer()))]}, "config": runtime}


@pytest.mark.parametrize("config,message", [
    (_config(Env="PATH=/usr/bin"), "config.Env is not a list of strings"),
    (_config(Cmd="sh"), "config.Cmd is not a list of strings"),
    (_config(Entrypoint=[1]), "config.Entrypoint is not a list of strings"),
    (_config(Labels=["a"]), "config.Labels is not a map of strings"),
    (_config(WorkingDir=["x"]), "config.WorkingDir is not a string"),
    (_config(User=0), "config.User is not a string"),
    ({**_config(), "history": "made"}, "config.history is not a list of objects"),
    ({**_config(), "config": [1]}, "config.config is not an object"),
    ({"rootfs": {"diff_ids": ["not-a-digest\n"]}}, "config.rootfs.diff_ids[0] 'not-a-digest\\n' is not sha256"),
    ({"rootfs": []}, "config.rootfs is not an object"),
    ([1], "config is not a JSON object"),
])
def test_a_malformed_base_config_is_refused_naming_the_field(tmp_path: Path, config: Any, message: str) -> None:
    base = _base_folder(tmp_path, config)
    out = tmp_path / "out"
    with pytest.raises(OciError) as info:
        reuse_base(base, out, ImageConfig())
    assert info.value.line() == f"base image base: {message}" or info.value.line().startswith(
        f"base image base: {message}"), info.value.line()
    assert not out.exists()  # no blob copied for a refused base


def test_a_base_layer_of_no_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OciError, match=r"manifest field layers\[0\].size is not a byte count"):
        reuse_base(_base_folder(tmp_path, _config(), layer_size="abc"), tmp_path / "out", ImageConfig())


def test_a_well_formed_base_config_carries_over(tmp_path: Path) -> None:
    base = _base_folder(tmp_path, _config(Env=["PATH=/usr/bin", "LANG=C"], Cmd=["sh"], Labels={"a": "1"},
                                          WorkingDir="/w", User="app"))
    layers, history, merged = reuse_base(base, tmp_path / "out", ImageConfig(env=("LANG=C.UTF-8",)))
    assert len(layers) == 1 and history == ["base layer 0"]
    assert merged.env == ("PATH=/usr/bin", "LANG=C.UTF-8") and merged.cmd == ("sh",)
    assert (merged.working_dir, merged.user, dict(merged.labels)) == ("/w", "app", {"a": "1"})


# -- 12: an archive the safe writer refuses is named by its input --------------------------------


def test_an_unsafe_archive_at_prefetch_names_the_input_not_a_temp_path(reg: Registry, tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tf:
        info = tarfile.TarInfo("p/a")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("p/a")  # a hard link to itself: the name it points at is gone
        link.type, link.linkname = tarfile.LNKTYPE, "p/a"
        tf.addfile(link)
    reg.answer("/selflink.tar.gz", raw.getvalue())
    store = Store(tmp_path / "store")
    try:
        with pytest.raises(FetchError) as info:
            prefetch(store, f"{reg.url}/selflink.tar.gz")
    finally:
        store.close()
    assert info.value.where == "prefetch/url"  # a FetchError of the input: lock marks it unlocked
    assert info.value.message.startswith("selflink.tar.gz: hardlink ") and "p/a" in info.value.message
    assert "fetch-" not in info.value.line() and str(tmp_path) not in info.value.line()
