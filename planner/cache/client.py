"""`BinaryCache`: one OCI repository of signed store entries (lookup, fetch, push)."""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import OciError, StoreError
from ..hashing import canonical_json, key_of
from ..store import Entry, Store, remove_tree
from .ref import CacheUnreachable, network_failure as _network_failure
from .ref import ARTIFACT_TYPE, A_CONTENT, A_DIGEST, A_INPUT_KEY, A_KEY, A_KIND, A_NAME, A_SIGNATURES, A_VARIANT, A_VERSION, CacheError, CacheRef, LAYER_EPOCH, MEDIA_MANIFEST, MEDIA_PREIMAGE, _CONTENT_MEMBER
from .signing import Signer, TrustedKeys, signed_payload
from .results import CacheHit, CacheMiss, NearMiss
from .entry import _content_kind, alias_prefix, unpack_entry

if TYPE_CHECKING:
    from ..oci.descriptor import Descriptor

# All pages of a tag list together: a cache of ~100k entries (two tags each) lists ~15 MiB.
_TAGS_LIMIT = 64 << 20

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
        from ..oci.registry import RegistryClient

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

    def forget_unreachable(self) -> None:
        """Ask again at the next request. A worker keeps one cache per process across tasks:
        a task retried after one transient failure (a 5xx) must not fail at once on the
        memory of it."""
        with self._lock:
            self._down = None

    def _is_down(self) -> Optional[str]:
        with self._lock:
            if self._down and time.monotonic() - self._down[0] < self.UNREACHABLE_RETRY_S:
                return f"{self._down[1]} (not asked again for {self.UNREACHABLE_RETRY_S:.0f} s after that failure)"
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
            data = self.client.read_small(resp, "manifest", f":{ref}")
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
        """Every tag of the repository (paginated GET /v2/<name>/tags/list).

        Bounded whatever the registry answers: each page by `read_small`, all of them together
        by _TAGS_LIMIT bytes, and a next Link to a page already read ends in an error, not a loop."""
        out: list[str] = []
        url = self.client._url("tags/list?n=1000")
        seen: set[str] = set()
        total = 0
        for _page in range(10000):
            seen.add(str(url))
            resp = self.client._send("GET", url, what=":tags")
            try:
                if resp.status_code == 404:
                    return out  # the repository does not exist yet
                if resp.status_code != 200:
                    raise self.client._fail(resp, "tags GET", ":tags")
                data = self.client.read_small(resp, "tag list", ":tags")
                link = resp.headers.get("link", "")
            finally:
                resp.close()
            total += len(data)
            if total > _TAGS_LIMIT:
                raise CacheError(f"tag list is larger than {_TAGS_LIMIT >> 20} MiB, refused", where=f"{self.ref} tags")
            out.extend(_tag_page(data, where=f"{self.ref} tags"))
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
            if not m:
                break
            # Another host gets the next page's request without our credentials (`_send`);
            # plain http behind an https cache is refused.
            url = self.client.resolve_link(m.group(1), header="tag list's next Link")
            if str(url) in seen:
                raise CacheError("tag list's next Link goes back to a page already read", where=f"{self.ref} tags")
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
            # Remembered without the entry it was asking for: what later lookups of other
            # keys report is the cache's state, not this key's.
            self._unreachable(e.message)
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
        try:
            entry = _parse_entry(doc, where=f"{where}:{build_key}")
        except CacheError as e:
            # A registry's garbage is a miss, never a crash: the node builds here instead.
            return CacheMiss(where, build_key, "bad-signature", e.message)
        if entry is None:
            return CacheMiss(where, build_key, "bad-signature", "not a planner store entry")
        ann, layer, config = entry
        sigs = (ann.get(A_SIGNATURES) or "").split()
        status, who = self.trusted.verify(sigs, signed_payload(ann, layer.digest, config.digest))
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
        variant = _json_object(ann.get(A_VARIANT))
        return CacheHit(cache=where, key=build_key, manifest_digest=mdigest,
                        layer_digest=layer.digest, layer_size=layer.size,
                        config_digest=config.digest, digest=ann.get(A_DIGEST, ""), kind=ann.get(A_KIND, "build"),
                        name=ann.get(A_NAME, ""), version=ann.get(A_VERSION) or None,
                        input_key=ann.get(A_INPUT_KEY, ""), content=ann.get(A_CONTENT, "dir"), signer=who,
                        variant=variant if variant is not None else {})

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
            ann = got[1].get("annotations")
            if not _string_map(ann):
                continue  # another tag's garbage says nothing about this node
            if ann.get(A_NAME) != preimage.get("name") or (ann.get(A_VERSION) or None) != preimage.get("version"):
                continue
            theirs = _json_object(ann.get(A_VARIANT))
            if theirs is None:
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
        from ..oci.descriptor import descriptor_from

        try:
            config = descriptor_from(doc.get("config"), field="config", where=str(self.ref))
            with tempfile.TemporaryDirectory(prefix="planner-cache-") as tmp:
                p = Path(tmp) / "config"
                self.client.pull_blob(config.digest, p, size=config.size)
                theirs = json.loads(_read_small(p, f"{self.ref} config"))
        except (OciError, ValueError, CacheError):
            return []
        if not isinstance(theirs, dict):
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
                    preimage = json.loads(_read_small(cfg, f"{self.ref}:{hit.key}"))
                except ValueError:
                    raise CacheError("preimage is not JSON", where=f"{self.ref}:{hit.key}") from None
                if key_of(preimage) != hit.key:
                    raise CacheError(f"preimage hashes to {key_of(preimage)}, not the entry's key",
                                     where=f"{self.ref}:{hit.key}")
                if hit.kind == "fixed" and preimage.get("fixed") != hit.digest:
                    raise CacheError("fixed-output entry's digest does not match its key", where=f"{self.ref}:{hit.key}")
                layer = work / "layer.tar.gz"
                got = self.client.pull_blob(hit.layer_digest, layer, size=hit.layer_size)
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
                if _network_failure(e.message):
                    # The cache did not answer (a timeout, a 5xx, a connection cut mid-blob):
                    # nothing is known of the entry, and what follows would fail the same way.
                    self._unreachable(e.message)
                    raise CacheUnreachable(f"fetch failed: {e.message}", where=f"{self.ref}:{hit.key}") from None
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

        A valid trusted entry already there is kept ('present'), whatever its digest: first
        writer wins, as in a Nix cache (another planner may have verified and used it); an
        invalid one (unsigned, untrusted, badly signed) is replaced. `force` replaces even a
        valid one. Blobs first, manifest last.
        """
        from ..oci.descriptor import write_blob
        from ..oci.layer import LayerSource, write_layer

        if self.signer is None:
            raise CacheError(f"no signing key for {self.ref}: pass --signing-key (planner keys generate)")
        if key_of(preimage) != build_key:
            raise CacheError(f"preimage hashes to {key_of(preimage)}, not {build_key}", where=entry.name)
        if not force:
            with self._lock:
                if build_key in self._present:
                    return "present"
            cur = self.lookup(build_key)
            if cur.ok:
                with self._lock:
                    self._present.add(build_key)
                return "present"
            if not cur.ok and cur.reason == "unreachable":  # type: ignore[union-attr]
                raise CacheUnreachable(f"cannot push: {cur.detail}", where=str(self.ref))  # type: ignore[union-attr]
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
                        from ..oci.descriptor import blob_path

                        self.client.push_blob(blob_path(blobs, desc.digest), desc)
                if entry.kind == "build":
                    self.client.push_manifest(data, MEDIA_MANIFEST, alias_prefix(entry.name, version) + build_key)
                self.client.push_manifest(data, MEDIA_MANIFEST, build_key)
            except OciError as e:
                failed = CacheUnreachable if _network_failure(e.message) else CacheError
                raise failed(f"push failed: {e.message}", where=f"{self.ref}:{build_key}") from None
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


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _json_object(text: Optional[str]) -> Optional[dict]:
    """An annotation holding a JSON object (the variant), or None when it holds anything else."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_entry(doc: dict, *, where: str) -> Optional[tuple[dict, "Descriptor", "Descriptor"]]:
    """(annotations, layer, config) of a store entry's manifest, every field type-checked; None
    when it is plainly not one (another artifact type); CacheError naming the malformed field."""
    from ..oci.descriptor import descriptor_from

    config = doc.get("config")
    if (doc.get("artifactType") != ARTIFACT_TYPE or not isinstance(config, dict)
            or config.get("mediaType") != MEDIA_PREIMAGE):
        return None
    ann, layers = doc.get("annotations", {}), doc.get("layers")
    if not _string_map(ann):
        raise CacheError("malformed manifest: field annotations is not a map of strings", where=where)
    if not isinstance(layers, list) or len(layers) != 1:
        raise CacheError("malformed manifest: field layers is not a list of one layer", where=where)
    try:
        return (ann, descriptor_from(layers[0], field="layers[0]", where=where),
                descriptor_from(config, field="config", where=where))
    except OciError as e:
        raise CacheError(f"malformed {e.message}", where=where) from None  # "manifest field …"


def _tag_page(data: bytes, *, where: str) -> list[str]:
    """The tags of one tag-list page: `{"tags": [str, ...]}` (null when the repository is empty)."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    well_formed = tags is None or isinstance(tags, list) and all(isinstance(t, str) for t in tags)
    if not isinstance(doc, dict) or not well_formed:
        raise CacheError("tag list is not {\"tags\": [strings]}", where=where)
    return tags or []


def _read_small(path: Path, where: str) -> bytes:
    """A cache's config blob (a preimage: small), read whole, so capped."""
    from ..errors import UnsafeTree
    from ..safetree import read_limited

    try:
        with open(path, "rb") as f:
            return read_limited(f, what="config blob", where=where)
    except UnsafeTree as e:
        raise CacheError(e.message, where=where) from None
