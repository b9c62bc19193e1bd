"""A shared binary cache on any OCI registry: signed store entries as OCI artifacts.

One store entry (a build output or a fixed-output input) is one OCI image manifest:

    tag        <build key>                      (32 base32 characters: a valid OCI tag)
    alias tag  <name>--<version>--<build key>   (build outputs only: lets `why` find near misses
                                                 by listing tags, without reading every manifest)
    manifest   mediaType  application/vnd.oci.image.manifest.v1+json
               artifactType application/vnd.dev.planner.store-entry.v1
               config     application/vnd.dev.planner.preimage.v1+json: the canonical JSON
                          preimage whose key is the tag (resolved preimage, or {fixed, unpacked})
               layers[0]  application/vnd.oci.image.layer.v1.tar+gzip: the entry's content as a
                          deterministic tar (planner.oci.layer: sorted, uid 0, mtime 0, pinned
                          gzip), so equal content gives equal blobs, shared across entries
               annotations dev.planner.* (key, input key, digest, kind, name, version, variant,
                          content kind) and dev.planner.signatures

The signature (ed25519, keys in Nix's `name:base64` format) covers the canonical JSON of
{format, build_key, input_key, kind, name, version, content, digest, layer_digest,
config_digest}: the blob digests bind the content and the preimage, the tree digest binds
what the store will hold. An entry is used only if a signature by a trusted key verifies;
then its layer is pulled by digest (sha256 checked), unpacked into the store's tmp/, its tree
hash checked against the signed digest and its preimage against the key, and only then is it
added to the store (atomic rename under the key's lock). Blobs go up first and the manifest
last, so a reader never sees a half-pushed entry.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

import attrs

from .errors import OciError, PlannerError, StoreError
from .hashing import canonical_json, key_of
from .store import Entry, Store, remove_tree

ARTIFACT_TYPE = "application/vnd.dev.planner.store-entry.v1"
MEDIA_PREIMAGE = "application/vnd.dev.planner.preimage.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGN_FORMAT = "planner/cache-entry/v1"
ANN = "dev.planner."
A_KEY, A_INPUT_KEY, A_DIGEST = ANN + "key", ANN + "input-key", ANN + "digest"
A_KIND, A_NAME, A_VERSION, A_VARIANT = ANN + "kind", ANN + "name", ANN + "version", ANN + "variant"
A_CONTENT, A_SIGNATURES = ANN + "content", ANN + "signatures"
_CONTENT_MEMBER = "content"  # the tar member holding a single-file (or symlink) entry
LAYER_EPOCH = 0  # tar mtimes; the tree hash ignores times, so one constant keeps blobs shared

MISS_REASONS = ("absent", "unsigned", "untrusted", "bad-signature", "unreachable")


class CacheError(PlannerError):
    """A cache entry could not be pushed, fetched or verified."""


# -- references ------------------------------------------------------------------------------

@attrs.frozen
class CacheRef:
    """`oci://HOST[:PORT]/REPO[?plain-http]`: a repository of a registry holding store entries."""

    registry: str
    repository: str
    plain_http: Optional[bool] = None  # None: plain HTTP for localhost / 127.0.0.1 / ::1 only

    @classmethod
    def parse(cls, text: str, *, plain_http: Optional[bool] = None) -> "CacheRef":
        parts = urlsplit(text)
        if parts.scheme != "oci" or not parts.netloc or not parts.path.strip("/"):
            raise CacheError(f"not a cache URL (want oci://HOST[:PORT]/REPO): {text!r}")
        if "@" in parts.netloc:
            raise CacheError("put registry credentials in ~/.docker/config.json, not in the cache URL")
        repo = parts.path.strip("/")
        if not re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*", repo):
            raise CacheError(f"not a valid repository name: {repo!r}", where=text)
        query = parse_qs(parts.query, keep_blank_values=True)
        if "plain-http" in query and plain_http is None:
            v = query["plain-http"][-1].lower()
            plain_http = v in ("", "1", "true", "yes", "on")
        return cls(registry=parts.netloc, repository=repo, plain_http=plain_http)

    def base_url(self) -> str:
        plain = self.plain_http
        if plain is None:
            host = self.registry
            hostname = host.split("]")[0][1:] if host.startswith("[") else host.rsplit(":", 1)[0]
            plain = hostname in ("localhost", "127.0.0.1", "::1")
        return f"{'http' if plain else 'https'}://{self.registry}"

    def __str__(self) -> str:
        q = "" if self.plain_http is None else ("?plain-http" if self.plain_http else "?plain-http=false")
        return f"oci://{self.registry}/{self.repository}{q}"


# -- keys and signatures ---------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise CacheError(f"{what} is not base64") from None


def _split_named(text: str, what: str) -> tuple[str, bytes]:
    name, sep, data = text.strip().partition(":")
    if not sep or not name or not data:
        raise CacheError(f"{what} must look like NAME:BASE64, got {text.strip()[:40]!r}")
    return name, _unb64(data, what)


def generate_key(path: Path, name: Optional[str] = None) -> str:
    """Write a new ed25519 secret key to `path` (mode 0600, Nix's format: `name:base64(seed‖public)`)
    and return the public key text `name:base64(public)` to give to `TrustedKeys`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name = name or f"{socket.gethostname()}-1"
    if ":" in name or not name.strip():
        raise CacheError(f"key name must be non-empty and without ':': {name!r}")
    priv = Ed25519PrivateKey.generate()
    seed = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{name}:{_b64(seed + pub)}\n")
    return f"{name}:{_b64(pub)}"


class Signer:
    """An ed25519 secret key: signs cache entries as `name:base64(signature)`."""

    def __init__(self, name: str, seed: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        self.public_bytes = self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)

    @classmethod
    def from_text(cls, text: str) -> "Signer":
        name, raw = _split_named(text, "secret key")
        if len(raw) not in (32, 64):
            raise CacheError(f"secret key {name!r} has {len(raw)} bytes, want 64 (or a 32-byte seed)")
        signer = cls(name, raw[:32])
        if len(raw) == 64 and raw[32:] != signer.public_bytes:
            raise CacheError(f"secret key {name!r} is corrupt: its public half does not match")
        return signer

    @classmethod
    def from_file(cls, path: Path) -> "Signer":
        try:
            return cls.from_text(Path(path).read_text())
        except OSError as e:
            raise CacheError(f"cannot read secret key: {e.strerror}", where=str(path)) from None

    def secret_text(self) -> str:
        """The secret key in file format (for shipping to workers; handle with care)."""
        return f"{self.name}:{_b64(self._seed + self.public_bytes)}"

    @property
    def public_key(self) -> str:
        return f"{self.name}:{_b64(self.public_bytes)}"

    def sign(self, payload: bytes) -> str:
        return f"{self.name}:{_b64(self._key.sign(payload))}"


class TrustedKeys:
    """Public keys entries must be signed by (`name:base64`, as Nix's trusted-public-keys)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: dict[str, bytes] = {}
        for k in keys:
            self.add(k)

    def add(self, text: str) -> None:
        name, raw = _split_named(text, "public key")
        if len(raw) != 32:
            raise CacheError(f"public key {name!r} has {len(raw)} bytes, want 32")
        self._keys[name] = raw

    @classmethod
    def from_file(cls, path: Path) -> "TrustedKeys":
        """One key per line (or several per line, space separated); `#` starts a comment."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise CacheError(f"cannot read trusted keys: {e.strerror}", where=str(path)) from None
        return cls(w for line in text.splitlines() for w in line.split("#", 1)[0].split())

    def names(self) -> list[str]:
        return sorted(self._keys)

    def texts(self) -> list[str]:
        return [f"{n}:{_b64(k)}" for n, k in sorted(self._keys.items())]

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, signatures: Sequence[str], payload: bytes) -> tuple[str, str]:
        """('ok', signer) | ('unsigned', '') | ('untrusted', names) | ('bad-signature', names)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if not signatures:
            return "unsigned", ""
        seen, bad = [], []
        for sig in signatures:
            name, _, data = sig.partition(":")
            seen.append(name)
            if name not in self._keys:
                continue
            try:
                raw = base64.b64decode(data, validate=True)
                Ed25519PublicKey.from_public_bytes(self._keys[name]).verify(raw, payload)
                return "ok", name
            except (InvalidSignature, ValueError):
                bad.append(name)
        if bad:
            return "bad-signature", ", ".join(bad)
        return "untrusted", ", ".join(seen)


def signed_payload(ann: dict, layer_digest: str, config_digest: str) -> bytes:
    """The bytes a signature covers, rebuilt from a manifest's fields."""
    return canonical_json({
        "format": SIGN_FORMAT,
        "build_key": ann.get(A_KEY, ""),
        "input_key": ann.get(A_INPUT_KEY, ""),
        "kind": ann.get(A_KIND, ""),
        "name": ann.get(A_NAME, ""),
        "version": ann.get(A_VERSION, ""),
        "content": ann.get(A_CONTENT, ""),
        "digest": ann.get(A_DIGEST, ""),
        "layer_digest": layer_digest,
        "config_digest": config_digest,
    })


# -- lookup results --------------------------------------------------------------------------

@attrs.frozen
class NearMiss:
    """The cache holds the same node (name + version) built for another variant or inputs."""

    key: str
    variant: dict
    axes: list[tuple[str, object, object]]  # (axis, theirs, ours) for each differing variant axis
    fields: list[str] = attrs.field(factory=list)  # other differing preimage fields (same variant)

    def describe(self) -> str:
        if self.axes:
            return "; ".join(f"{a}: cache has {_show(t)}, wanted {_show(o)}" for a, t, o in self.axes)
        if self.fields:
            return "same variant, other " + ", ".join(self.fields[:6]) + (" …" if len(self.fields) > 6 else "")
        return f"same node under key {self.key}"


def _show(v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


@attrs.frozen
class CacheHit:
    cache: str  # CacheRef text
    key: str
    manifest_digest: str
    layer_digest: str
    layer_size: int
    config_digest: str
    digest: str  # tree hash of the content
    kind: str  # build | fixed
    name: str
    version: Optional[str]
    input_key: str
    content: str  # dir | file | symlink
    signer: str
    variant: dict = attrs.field(factory=dict)

    ok = True


@attrs.frozen
class CacheMiss:
    cache: str
    key: str
    reason: str  # absent | unsigned | untrusted | bad-signature | unreachable
    detail: str = ""
    near_miss: Optional[list[NearMiss]] = None

    ok = False

    def line(self) -> str:
        text = f"{self.cache}: {self.reason}" + (f" ({self.detail})" if self.detail else "")
        if self.near_miss:
            text += "; near miss: " + self.near_miss[0].describe()
        return text


# -- tar of an entry -------------------------------------------------------------------------

def _content_kind(path: Path) -> str:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def unpack_entry(layer: Path, dest: Path, content: str) -> Path:
    """Unpack a cache layer (gzip tar) to `dest` (which must not exist); returns the content path.

    The layer's content is verified afterwards by tree hash, but unpacking itself must be safe
    on any bytes: no absolute names or `..`, nothing written through a symlink, no specials,
    no duplicates. Symlink targets are kept as they are (a root file system has absolute
    ones); they are created, never followed.
    """
    dest.mkdir(parents=True)
    kinds: dict[str, str] = {"": "dir"}

    def bad(msg: str) -> CacheError:
        return CacheError(f"unsafe cache layer: {msg}", where=str(layer))

    try:
        with tarfile.open(layer, mode="r:gz") as tar:
            for m in tar:
                name = m.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.rstrip("/")
                parts = name.split("/")
                if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    raise bad(f"member name {m.name!r}")
                if name in kinds:
                    raise bad(f"member {name!r} appears twice")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    k = kinds.get(parent)
                    if k is None:
                        os.mkdir(dest / parent, 0o755)
                        kinds[parent] = "dir"
                    elif k != "dir":
                        raise bad(f"member {name!r} is below a {k}")
                path = dest / name
                if m.isdir():
                    os.mkdir(path, 0o755)
                    os.chmod(path, 0o755)
                    kinds[name] = "dir"
                elif m.isreg():
                    mode = 0o755 if m.mode & 0o100 else 0o644
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                    with os.fdopen(fd, "wb") as out:
                        os.fchmod(out.fileno(), mode)
                        src = tar.extractfile(m)
                        assert src is not None
                        shutil.copyfileobj(src, out, 1 << 20)
                    kinds[name] = "file"
                elif m.issym():
                    os.symlink(m.linkname, path)
                    kinds[name] = "symlink"
                else:
                    raise bad(f"member {name!r} is not a file, directory or symlink")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, CacheError):
            raise
        raise CacheError(f"cannot unpack cache layer: {e}", where=str(layer)) from None
    if content == "dir":
        os.chmod(dest, 0o755)
        return dest
    if set(kinds) != {"", _CONTENT_MEMBER}:
        raise bad(f"a {content} entry must hold exactly one member named {_CONTENT_MEMBER!r}")
    return dest / _CONTENT_MEMBER


def _slug(text: str, limit: int) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit]
    return s if s and (s[0].isalnum() or s[0] == "_") else "_" + s[: limit - 1]


def alias_prefix(name: str, version: Optional[str]) -> str:
    return f"{_slug(name, 60)}--{_slug(version or '', 30)}--"


# -- the cache -------------------------------------------------------------------------------

_ssl_lock = threading.Lock()
_ssl_ctx = None


def _ssl_context():
    """One TLS context per process (loading the CA bundle costs ~0.2 s): workers open a cache
    per task configuration, and the planner one per substituter."""
    global _ssl_ctx
    with _ssl_lock:
        if _ssl_ctx is None:
            import ssl

            import certifi

            _ssl_ctx = ssl.create_default_context(cafile=certifi.where())
        return _ssl_ctx


class BinaryCache:
    """One OCI repository used as a binary cache: `lookup`, `fetch`, `push`.

    `trusted` lists the keys an entry's signature must verify against; a cache opened with a
    `signer` also trusts that signer's own public key. Thread-safe.
    """

    UNREACHABLE_RETRY_S = 30.0

    def __init__(self, ref: Union[CacheRef, str], *, trusted: Optional[TrustedKeys] = None,
                 signer: Optional[Signer] = None, timeout: float = 60.0, transport=None) -> None:
        from .oci.registry import RegistryClient

        self.ref = CacheRef.parse(ref) if isinstance(ref, str) else ref
        self.trusted = TrustedKeys(trusted.texts() if trusted is not None else ())
        self.signer = signer
        if signer is not None:
            self.trusted.add(signer.public_key)
        if transport is None:
            import httpx

            transport = httpx.HTTPTransport(verify=_ssl_context())
        self.client = RegistryClient(self.ref.base_url(), self.ref.repository, timeout=timeout, transport=transport)
        self._down: Optional[tuple[float, str]] = None
        self._lock = threading.Lock()
        self._present: set[str] = set()  # keys this process pushed or verified as present

    def __str__(self) -> str:
        return str(self.ref)

    def close(self) -> None:
        self.client.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _unreachable(self, detail: str) -> None:
        with self._lock:
            self._down = (time.monotonic(), detail)

    def _is_down(self) -> Optional[str]:
        with self._lock:
            if self._down and time.monotonic() - self._down[0] < self.UNREACHABLE_RETRY_S:
                return self._down[1]
            self._down = None
            return None

    def _get_manifest(self, ref: str) -> Optional[tuple[str, dict]]:
        """(digest, document) of a manifest by tag, None when absent; OciError when unreachable."""
        import hashlib

        resp = self.client._send("GET", self.client._url(f"manifests/{ref}"),
                                 headers={"Accept": MEDIA_MANIFEST}, what=f":{ref}")
        try:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise self.client._fail(resp, "manifest GET", f":{ref}")
            data = resp.read()
        finally:
            resp.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise CacheError("manifest is not a JSON object", where=f"{self.ref}:{ref}")
        return digest, doc

    def tags(self) -> list[str]:
        """Every tag of the repository (paginated GET /v2/<name>/tags/list)."""
        import httpx

        out: list[str] = []
        url = self.client._url("tags/list?n=1000")
        for _page in range(10000):
            resp = self.client._send("GET", url, what=":tags")
            try:
                if resp.status_code == 404:
                    return out  # the repository does not exist yet
                if resp.status_code != 200:
                    raise self.client._fail(resp, "tags GET", ":tags")
                doc = json.loads(resp.read())
                link = resp.headers.get("link", "")
            finally:
                resp.close()
            out.extend(doc.get("tags") or [])
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
            if not m:
                break
            url = str(httpx.URL(self.client.base_url + "/").join(m.group(1)))
        return out

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, build_key: str, *, preimage: Optional[dict] = None) -> Union[CacheHit, CacheMiss]:
        """Is there a valid, trusted entry under `build_key`? With `preimage` (the resolved
        preimage the key was computed from), an absent entry also reports near misses."""
        where = str(self.ref)
        down = self._is_down()
        if down:
            return CacheMiss(where, build_key, "unreachable", down)
        try:
            got = self._get_manifest(build_key)
        except OciError as e:
            self._unreachable(e.line())
            return CacheMiss(where, build_key, "unreachable", e.line())
        except CacheError as e:
            return CacheMiss(where, build_key, "bad-signature", e.message)
        if got is None:
            near = None
            if preimage is not None:
                try:
                    near = self.near_misses(build_key, preimage) or None
                except (OciError, CacheError):
                    near = None
            return CacheMiss(where, build_key, "absent", "", near)
        mdigest, doc = got
        return self._check(build_key, mdigest, doc)

    def _check(self, build_key: str, mdigest: str, doc: dict) -> Union[CacheHit, CacheMiss]:
        where = str(self.ref)
        ann = doc.get("annotations") or {}
        layers = doc.get("layers") or []
        config = doc.get("config") or {}
        if (doc.get("artifactType") != ARTIFACT_TYPE or config.get("mediaType") != MEDIA_PREIMAGE
                or len(layers) != 1 or not isinstance(ann, dict)):
            return CacheMiss(where, build_key, "bad-signature", "not a planner store entry")
        sigs = (ann.get(A_SIGNATURES) or "").split()
        status, who = self.trusted.verify(sigs, signed_payload(ann, layers[0].get("digest", ""),
                                                                config.get("digest", "")))
        if status == "unsigned":
            return CacheMiss(where, build_key, "unsigned", "the entry carries no signature")
        if status == "untrusted":
            return CacheMiss(where, build_key, "untrusted",
                             f"signed by {who}; trusted: {', '.join(self.trusted.names()) or 'none'}")
        if status == "bad-signature":
            return CacheMiss(where, build_key, "bad-signature",
                             f"signature by {who} does not match the entry (tampered or corrupt)")
        if ann.get(A_KEY) != build_key:
            return CacheMiss(where, build_key, "bad-signature",
                             f"the tag holds an entry signed for key {ann.get(A_KEY)!r}")
        try:
            variant = json.loads(ann.get(A_VARIANT) or "{}")
        except ValueError:
            variant = {}
        return CacheHit(cache=where, key=build_key, manifest_digest=mdigest,
                        layer_digest=layers[0]["digest"], layer_size=int(layers[0].get("size", 0)),
                        config_digest=config["digest"], digest=ann.get(A_DIGEST, ""), kind=ann.get(A_KIND, "build"),
                        name=ann.get(A_NAME, ""), version=ann.get(A_VERSION) or None,
                        input_key=ann.get(A_INPUT_KEY, ""), content=ann.get(A_CONTENT, "dir"), signer=who,
                        variant=variant if isinstance(variant, dict) else {})

    def near_misses(self, build_key: str, preimage: dict, *, limit: int = 8) -> list[NearMiss]:
        """Entries of the same name and version under other keys, with what differs."""
        prefix = alias_prefix(str(preimage.get("name", "")), preimage.get("version"))
        cands = [t for t in self.tags() if t.startswith(prefix) and not t.endswith(build_key)]
        ours_variant = preimage.get("variant") or {}
        out: list[NearMiss] = []
        for tag in sorted(cands)[:limit * 4]:
            got = self._get_manifest(tag)
            if got is None:
                continue
            ann = got[1].get("annotations") or {}
            if ann.get(A_NAME) != preimage.get("name") or (ann.get(A_VERSION) or None) != preimage.get("version"):
                continue
            try:
                theirs = json.loads(ann.get(A_VARIANT) or "{}")
            except ValueError:
                continue
            axes = [(a, theirs.get(a), ours_variant.get(a)) for a in sorted(set(theirs) | set(ours_variant))
                    if theirs.get(a) != ours_variant.get(a)]
            fields: list[str] = []
            if not axes:
                fields = self._differing_fields(got[1], preimage)
            out.append(NearMiss(ann.get(A_KEY, tag), theirs, axes, fields))
            if len(out) >= limit:
                break
        out.sort(key=lambda n: (len(n.axes) == 0, len(n.axes), n.key))
        return out

    def _differing_fields(self, doc: dict, preimage: dict) -> list[str]:
        try:
            with tempfile.TemporaryDirectory(prefix="planner-cache-") as tmp:
                p = Path(tmp) / "config"
                self.client.pull_blob(doc["config"]["digest"], p)
                theirs = json.loads(p.read_bytes())
        except (OciError, KeyError, ValueError):
            return []
        out: list[str] = []
        for k in sorted(set(theirs) | set(preimage)):
            a, b = theirs.get(k), preimage.get(k)
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                out += [f"{k}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
            else:
                out.append(k)
        return out

    # -- fetch -------------------------------------------------------------------------------

    def fetch(self, hit: CacheHit, store: Store) -> Entry:
        """Download, verify and add a hit to `store`; returns the (possibly existing) entry."""
        if hit.cache != str(self.ref):
            raise CacheError(f"hit of {hit.cache} fetched through {self.ref}")
        with store.key_lock(hit.key):
            existing = store.lookup(hit.key)
            if existing is not None:
                return existing
            work = store.new_build_dir(hit.key + "-subst")
            try:
                cfg = work / "config.json"
                self.client.pull_blob(hit.config_digest, cfg)
                try:
                    preimage = json.loads(cfg.read_bytes())
                except ValueError:
                    raise CacheError("preimage is not JSON", where=f"{self.ref}:{hit.key}") from None
                if key_of(preimage) != hit.key:
                    raise CacheError(f"preimage hashes to {key_of(preimage)}, not the entry's key",
                                     where=f"{self.ref}:{hit.key}")
                if hit.kind == "fixed" and preimage.get("fixed") != hit.digest:
                    raise CacheError("fixed-output entry's digest does not match its key", where=f"{self.ref}:{hit.key}")
                layer = work / "layer.tar.gz"
                got = self.client.pull_blob(hit.layer_digest, layer)
                if hit.layer_size and got.size != hit.layer_size:
                    raise CacheError(f"layer has {got.size} bytes, manifest says {hit.layer_size}",
                                     where=f"{self.ref}:{hit.key}")
                content = unpack_entry(layer, work / "unpacked", hit.content)
                layer.unlink()
                try:  # hashes the tree once, and refuses it unless it is the signed digest
                    entry = store.add(hit.key, hit.name, hit.version, content, kind=hit.kind, digest=hit.digest)
                except StoreError as e:
                    raise CacheError(f"{e.message} (the signed digest)", where=f"{self.ref}:{hit.key}") from None
            except OciError as e:
                raise CacheError(f"fetch failed: {e.message}", where=f"{self.ref}:{hit.key}") from None
            finally:
                remove_tree(work)
        store.put_preimage(hit.key, preimage)
        if hit.kind == "build" and hit.input_key:
            store.realise(hit.input_key, hit.key, entry.digest)
        with self._lock:
            self._present.add(hit.key)
        return entry

    # -- push --------------------------------------------------------------------------------

    def remember(self, hit: "CacheHit") -> None:
        """Note a verified hit as present, so that `has` needs no second round trip."""
        with self._lock:
            self._present.add(hit.key)

    def has(self, key: str) -> bool:
        """Whether a valid trusted entry exists (remembered once seen)."""
        with self._lock:
            if key in self._present:
                return True
        hit = self.lookup(key)
        if hit.ok:
            with self._lock:
                self._present.add(key)
        return hit.ok

    def push(self, build_key: str, entry: Entry, preimage: dict, input_key: str, *,
             force: bool = False) -> str:
        """Upload `entry` under `build_key`; returns 'pushed' or 'present'.

        A valid trusted entry already there is kept ('present'), like a Nix cache; an invalid
        one (unsigned, badly signed, other content) is replaced. Blobs first, manifest last.
        """
        from .oci.descriptor import write_blob
        from .oci.layer import LayerSource, write_layer

        if self.signer is None:
            raise CacheError(f"no signing key for {self.ref}: pass --signing-key (planner keys generate)")
        if key_of(preimage) != build_key:
            raise CacheError(f"preimage hashes to {key_of(preimage)}, not {build_key}", where=entry.name)
        if not force:
            with self._lock:
                if build_key in self._present:
                    return "present"
            cur = self.lookup(build_key)
            if cur.ok and cur.digest == entry.digest:  # type: ignore[union-attr]
                with self._lock:
                    self._present.add(build_key)
                return "present"
            if not cur.ok and cur.reason == "unreachable":  # type: ignore[union-attr]
                raise CacheError(f"cannot push: {cur.detail}", where=str(self.ref))  # type: ignore[union-attr]
        content = _content_kind(entry.path)
        version = _entry_version(entry)
        store_tmp = entry.path.parent / "tmp"  # big entries: stage the layer on the store's disk
        with tempfile.TemporaryDirectory(prefix="push-", dir=store_tmp if store_tmp.is_dir() else None) as tmp:
            blobs = Path(tmp) / "blobs"
            prefix = "/" if content == "dir" else "/" + _CONTENT_MEMBER
            layer = write_layer([LayerSource(entry.path, prefix)], blobs, source_date_epoch=LAYER_EPOCH,
                                compression="gzip")
            config = write_blob(blobs, canonical_json(preimage), MEDIA_PREIMAGE)
            ann = {
                A_KEY: build_key,
                A_INPUT_KEY: input_key,
                A_DIGEST: entry.digest,
                A_KIND: entry.kind,
                A_NAME: entry.name,
                A_VERSION: version or "",
                A_CONTENT: content,
                A_VARIANT: canonical_json(preimage.get("variant") or {}).decode(),
            }
            ann[A_SIGNATURES] = self.signer.sign(signed_payload(ann, layer.descriptor.digest, config.digest))
            manifest = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": config.to_json(),
                "layers": [layer.descriptor.to_json()],
                "annotations": ann,
            }
            data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
            try:
                for desc in (layer.descriptor, config):
                    if not self.client.blob_exists(desc.digest, push=True):
                        from .oci.descriptor import blob_path

                        self.client.push_blob(blob_path(blobs, desc.digest), desc)
                if entry.kind == "build":
                    self.client.push_manifest(data, MEDIA_MANIFEST, alias_prefix(entry.name, version) + build_key)
                self.client.push_manifest(data, MEDIA_MANIFEST, build_key)
            except OciError as e:
                raise CacheError(f"push failed: {e.message}", where=f"{self.ref}:{build_key}") from None
        with self._lock:
            self._present.add(build_key)
        return "pushed"

    def push_from_store(self, store: Store, key: str, input_key: str = "") -> str:
        """Push an entry already in `store`, taking its preimage from the store's index.

        A fixed-output entry's preimage is {fixed: tree, unpacked}, rebuilt from its key."""
        entry = store.lookup(key)
        if entry is None:
            raise CacheError(f"no valid store entry for key {key}")
        if entry.kind == "fixed":
            for unpacked in (True, False):
                pre = {"fixed": entry.digest, "unpacked": unpacked}
                if key_of(pre) == key:
                    return self.push(key, entry, pre, key)
            raise CacheError(f"fixed-output entry {entry.path.name} does not match its key")
        pre = store.preimage(key)
        if pre is None:
            raise CacheError(f"the store has no preimage for {entry.path.name}: rebuild it to push it")
        return self.push(key, entry, pre, input_key)


def _entry_version(entry: Entry) -> Optional[str]:
    """The version part of a store entry's basename `<key>-<name>[-<version>]`."""
    base = entry.path.name
    stem = f"{entry.key}-{entry.name}"
    if base.startswith(stem + "-"):
        return base[len(stem) + 1:]
    return None


# -- several caches, closures, and why ------------------------------------------------------

def lookup_any(caches: Sequence[BinaryCache], build_key: str, *, preimage: Optional[dict] = None
               ) -> tuple[Optional[tuple[BinaryCache, CacheHit]], list[CacheMiss]]:
    """The first cache holding a valid entry, and the misses of those tried before it."""
    misses: list[CacheMiss] = []
    for c in caches:
        r = c.lookup(build_key, preimage=preimage)
        if r.ok:
            return (c, r), misses  # type: ignore[return-value]
        misses.append(r)  # type: ignore[arg-type]
    return None, misses


def substitute(caches: Sequence[BinaryCache], store: Store, build_key: str) -> Optional[Entry]:
    """Fetch `build_key` from the first cache that has it (valid and trusted), else None."""
    found, _ = lookup_any(caches, build_key)
    if found is None:
        return None
    cache, hit = found
    return cache.fetch(hit, store)


@attrs.frozen
class MissReport:
    category: str  # never-built | evicted | unsigned | untrusted | bad-signature | unreachable | near-miss
    detail: str
    misses: list[CacheMiss] = attrs.field(factory=list)


def classify_miss(misses: Sequence[CacheMiss], *, built_before: bool) -> MissReport:
    """One cause for a node no substituter could provide (`planner why`).

    A refused entry (unsigned, untrusted, bad signature) wins: the bytes exist but may not be
    used. Then unreachable caches (when none answered), then near misses (name the differing
    axis), then `evicted` (this store built or fetched it once: the entry was collected since),
    else `never-built`."""
    misses = list(misses)
    for reason in ("bad-signature", "untrusted", "unsigned"):
        for m in misses:
            if m.reason == reason:
                return MissReport(reason, f"{m.cache}: {m.detail}", misses)
    if misses and all(m.reason == "unreachable" for m in misses):
        return MissReport("unreachable", "; ".join(f"{m.cache}: {m.detail}" for m in misses), misses)
    for m in misses:
        if m.near_miss:
            return MissReport("near-miss", f"{m.cache} has it for another variant: {m.near_miss[0].describe()}",
                              misses)
    unreachable = [m for m in misses if m.reason == "unreachable"]
    note = f" ({len(unreachable)} cache(s) unreachable)" if unreachable else ""
    if built_before:
        return MissReport("evicted", "built before, but no longer in the store or any cache" + note, misses)
    return MissReport("never-built", "no cache has it and it was never built here" + note, misses)


def push_closure(cache: BinaryCache, store: Store, nodes: Iterable[tuple[str, str]], *,
                 inputs: Iterable[str] = (), progress=None) -> dict[str, int]:
    """`planner store push`: push (input key, build key) pairs and fixed-output entries by key.

    `progress` gets planner.progress events (one start and one done per entry). Returns
    counts {'pushed': n, 'present': m}."""
    emit = progress or (lambda kind, data: None)
    items = [(bkey, input_key) for input_key, bkey in nodes] + [(key, key) for key in inputs]
    emit("plan", {"total": len(items), "todo": len(items), "cached": []})
    counts = {"pushed": 0, "present": 0}
    for key, input_key in items:
        e = store.lookup(key)
        label = e.path.name if e is not None else key
        emit("start", label)
        try:
            got = cache.push_from_store(store, key, input_key)
        except PlannerError as exc:
            emit("failed", {"node": label, "error": exc.message})
            raise
        counts[got] += 1
        emit("done", {"node": label, "status": got, "seconds": 0.0})
    return counts


def push_run(cache: BinaryCache, store: Store, record: dict, *, with_inputs: bool = True,
             progress=None) -> dict[str, int]:
    """Push everything a run record produced (its nodes) and, optionally, the inputs it used."""
    nodes = [(n["key"], n["build_key"]) for n in record.get("nodes", [])
             if n.get("build_key") and n.get("path") and n.get("action") in ("built", "reused", "substituted", "checked")]
    inputs: list[str] = []
    if with_inputs:
        by_path = {str(e.path): e.key for e in store.entries()}
        inputs = [by_path[p] for p in record.get("inputs", []) if p in by_path]
    return push_closure(cache, store, nodes, inputs=inputs, progress=progress)


def pull_closure(caches: Sequence[BinaryCache], store: Store, plan, node_ids: Optional[Iterable[str]] = None
                 ) -> tuple[dict[str, Entry], dict[str, list[CacheMiss]]]:
    """`planner store pull`: substitute a plan's closure, dependencies first.

    A node's build key needs its dependencies' output digests, so a node whose dependency is
    missing is itself reported missing (with no misses of its own). Returns (entries, misses)."""
    from .build import build_key as bkey_of
    from .graph import resolved_preimage

    ids = plan.closure(node_ids if node_ids is not None else plan.roots)
    got: dict[str, Entry] = {}
    missing: dict[str, list[CacheMiss]] = {}
    for nid in ids:
        node = plan.nodes[nid]
        if any(d not in got for d in node.deps.values()):
            missing[nid] = []
            continue
        deps = {m: got[d] for m, d in node.deps.items()}
        key = bkey_of(node, deps)
        e = store.lookup(key)
        if e is None:
            pre = resolved_preimage(node, {node.deps[m]: x.digest for m, x in deps.items()})
            found, misses = lookup_any(caches, key, preimage=pre)
            if found is None:
                missing[nid] = misses
                continue
            e = found[0].fetch(found[1], store)
        store.realise(node.key, key, e.digest)
        got[nid] = e
    return got, missing
