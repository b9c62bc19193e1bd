"""OCI descriptors, platforms, media types and the content-addressed blob directory.

A descriptor is the only way one OCI document refers to another (spec: descriptor.md), so
everything in planner.oci returns and accepts these frozen values rather than raw dicts.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import attrs

from ..errors import OciError
from ..hashing import canonical_json

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Docker's equivalents: only read (pulled base images), never written.
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

INDEX_TYPES = frozenset({MEDIA_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST})

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_COPY_CHUNK = 1 << 20

Annotations = tuple[tuple[str, str], ...]


def to_annotations(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Annotations:
    # Stored sorted and immutable so two descriptors with the same annotations compare equal
    # and serialise identically whatever order the caller built them in.
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    out = tuple(sorted((str(k), str(v)) for k, v in items))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise OciError(f"duplicate annotation keys: {sorted(keys)}")
    return out


def check_digest(digest: str, *, what: str = "digest") -> str:
    if not _DIGEST_RE.match(digest):
        raise OciError(f"not a sha256 digest: {digest!r}", where=what)
    return digest


@attrs.frozen
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm64` (gets variant v8, as the OCI platform table says) or
        `os/arch/variant`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise OciError(f"not a platform: {text!r} (want os/arch[/variant])")
        variant = parts[2] if len(parts) == 3 else None
        if variant is None and parts[1] == "arm64":
            variant = "v8"
        return cls(os=parts[0], architecture=parts[1], variant=variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def tag_suffix(self) -> str:
        # `linux-arm64`, not `linux-arm64-v8`: v8 is the only arm64 we make, and the short form
        # is what users type.
        return f"{self.os}-{self.architecture}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Platform:
        return cls(os=doc["os"], architecture=doc["architecture"], variant=doc.get("variant"))


@attrs.frozen
class Descriptor:
    media_type: str
    digest: str = attrs.field(validator=lambda _i, _a, v: check_digest(v))
    size: int
    annotations: Annotations = attrs.field(default=(), converter=to_annotations)
    platform: Platform | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def with_annotations(self, extra: Mapping[str, str]) -> Descriptor:
        merged = dict(self.annotations)
        merged.update(extra)
        return attrs.evolve(self, annotations=merged)

    def with_platform(self, platform: Platform | None) -> Descriptor:
        return attrs.evolve(self, platform=platform)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, where: str = "descriptor") -> Descriptor:
        try:
            return cls(
                media_type=doc["mediaType"],
                digest=check_digest(doc["digest"], what=where),
                size=int(doc["size"]),
                annotations=doc.get("annotations"),
                platform=Platform.from_json(doc["platform"]) if doc.get("platform") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OciError(f"malformed descriptor ({e!r})", where=where) from None


def blob_path(blobs_dir: Path, digest: str) -> Path:
    algo, _, hexpart = check_digest(digest).partition(":")
    return blobs_dir / algo / hexpart


class AtomicBlob:
    """A blob being written: a temp file beside its final place, renamed there once its digest
    is known. The name is random but never part of any output; the mode is fixed (0644) so the
    caller's umask does not leak into an exported layout."""

    def __init__(self, blobs_dir: Path) -> None:
        self.dir = blobs_dir / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.dir)
        os.fchmod(fd, 0o644)
        self.tmp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def commit(self, media_type: str, *, expect_digest: str | None = None) -> Descriptor:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = "sha256:" + self.sha.hexdigest()
        if expect_digest is not None and digest != expect_digest:
            self.tmp.unlink(missing_ok=True)
            raise OciError(f"digest mismatch: got {digest}", where=f"blob {expect_digest}")
        final = self.dir / digest.split(":", 1)[1]
        # Content-addressed: an existing blob of that name already holds these bytes.
        os.replace(self.tmp, final)
        return Descriptor(media_type=media_type, digest=digest, size=self.size)

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicBlob:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def write_blob(blobs_dir: Path, data: bytes, media_type: str) -> Descriptor:
    """Write `data` to blobs_dir/sha256/<hex> atomically; return its descriptor."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    final = blob_path(blobs_dir, digest)
    if final.is_file() and final.stat().st_size == len(data):
        return Descriptor(media_type=media_type, digest=digest, size=len(data))
    with AtomicBlob(blobs_dir) as blob:
        blob.write(data)
        return blob.commit(media_type)


def write_json_blob(blobs_dir: Path, doc: Mapping[str, Any], media_type: str) -> Descriptor:
    # Canonical JSON (sorted keys, no whitespace) so a document's digest is a function of its
    # content only.
    return write_blob(blobs_dir, canonical_json(doc), media_type)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- descriptors inside a pulled document (untrusted: every field checked) ----------------------

def descriptor_from(value: object, *, field: str, where: str, kind: str = "manifest") -> Descriptor:
    """A descriptor inside a pulled document, every field type-checked first (Descriptor.from_json
    would take a list for a media type, "5" or 5.5 for a size): one OciError naming the field."""

    def bad(what: str) -> OciError:
        return OciError(f"{kind} field {field}{what}", where=where)

    if not isinstance(value, dict):
        raise bad(" is not a descriptor object")
    if not isinstance(value.get("mediaType"), str):
        raise bad(".mediaType is not a string")
    digest = value.get("digest")
    try:
        check_digest(digest if isinstance(digest, str) else "")
    except OciError:
        raise bad(f".digest {str(digest)[:80]!r} is not sha256:<64 hex digits>") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(".size is not a byte count")
    platform = value.get("platform")
    if platform is not None and not (
            isinstance(platform, dict) and isinstance(platform.get("os"), str)
            and isinstance(platform.get("architecture"), str) and isinstance(platform.get("variant", ""), str)):
        raise bad(".platform is not an object with os and architecture strings")
    annotations = value.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise bad(".annotations is not a map of strings")
    return Descriptor.from_json(value, where=f"{where} {field}")


def _list_field(doc: dict[str, Any], name: str, *, where: str, kind: str, required: bool) -> list[Any]:
    value = doc.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise OciError(f"{kind} field {name} is not a list", where=where)
    return value


def iter_manifest_children(doc: dict[str, Any], *, where: str, media_type: str | None = None) -> Iterator[Descriptor]:
    """Descriptors a pulled manifest/index document refers to: an index's `manifests`, an image
    manifest's `config` then `layers` (by `media_type`, else by the document's keys). Any field
    of another shape is one OciError naming it."""
    is_index = media_type in INDEX_TYPES if media_type is not None else "manifests" in doc
    if is_index:
        for i, m in enumerate(_list_field(doc, "manifests", where=where, kind="index", required=True)):
            yield descriptor_from(m, field=f"manifests[{i}]", where=where, kind="index")
    else:
        yield descriptor_from(doc.get("config"), field="config", where=where)
        for i, layer in enumerate(_list_field(doc, "layers", where=where, kind="manifest", required=False)):
            yield descriptor_from(layer, field=f"layers[{i}]", where=where)
