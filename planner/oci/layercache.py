"""A persistent, content-addressed cache of compressed layers, shared by image builds.

An image node's key changes with anything its attestations name (the whole lock), but a layer's
bytes depend only on what `LayerKey` lists. So an attestation-only change finds every layer
here and re-links it instead of staging and compressing it again (for slime: a 6 GB base
layer, minutes of deflate).

Layout of the cache folder (the store's `cache/layers/`):

    records/<key digest>.json   one `CachedLayer`: the key it answers and the layer's facts
    blobs/<sha256 hex>          the compressed layer, a hard link of a built output's blob
                                where the file system allows it, else a copy
    tmp/                        writes in progress; every write is temp + rename

The cache is untrusted input: a record is used only if it parses, answers exactly the key asked
and names a blob that hashes to its recorded digest and size. The blob is linked into the new
layout first and the linked file is hashed, so a blob swapped after the check cannot slip in.
Anything else is a miss: the record is dropped with one log line and the layer is rebuilt.
Writers race harmlessly: both write the same bytes under the same names, each by rename.
`Store.gc` drops blobs no store entry links any more (link count 1); a record whose blob is
gone is a miss. A hard link shares its inode with a store entry: a blob damaged in place is
damaged in both (as with `nix-store --optimise`); `store verify` finds it there, the check
above here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Literal, Optional

import attrs

from ..hashing import canonical_json
from .descriptor import Descriptor, blob_path, sha256_file
from .facts import WheelFacts
from .layer import Layer

# Bump whenever `write_layer` or the image builder's staging could write other bytes for the
# same key (tar normalisation, gzip framing, wheel installation): old records then never match.
LAYER_FORMAT = 1
_MAX_RECORD = 1 << 20
_CHUNK = 1 << 20


@attrs.frozen
class LayerKey:
    """Everything a compressed layer's bytes depend on."""

    kind: Literal["base", "wheels"]
    recipes: tuple[str, ...]  # the group's recipes in order (the base: its one recipe)
    entries: tuple[str, ...]  # store digests of their outputs, in the same order
    source_date_epoch: int
    compression: str
    compressor: str  # compressor_id(...) with the pinned zlib/zstd actually used
    compressor_files: str  # sha256 of the build root's compressor files; "" for the host's
    format: int = LAYER_FORMAT
    # sha256 of the whiteouts that delete what lower layers' replaced distributions had
    # (`sitepackages.layer_whiteouts`); left out of the digest when "", so records of layers that
    # replace nothing keep their keys.
    whiteouts: str = ""

    def digest(self) -> str:
        data = _converter().unstructure(self)
        if not self.whiteouts:
            del data["whiteouts"]
        return hashlib.sha256(canonical_json(data)).hexdigest()


@attrs.frozen
class CachedLayer:
    """What a build needs of a layer besides its bytes: the manifest's descriptor and diff_id,
    the history line and the SBOM's wheel facts."""

    key: LayerKey
    layer: Layer
    what: str
    wheels: tuple[WheelFacts, ...] = ()


def _converter():
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_unstructure_hook(Descriptor, lambda d: d.to_json())
    conv.register_structure_hook(Descriptor, lambda doc, _t: Descriptor.from_json(doc, where="layer cache record"))
    return conv


class LayerCache:
    """The cache in folder `root` (created on first write)."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self.root = Path(root)
        self.log = log

    def _record_path(self, key: LayerKey) -> Path:
        return self.root / "records" / f"{key.digest()}.json"

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / blob_path(self.root, digest).name  # checked: sha256 hex only

    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def _read(self, key: LayerKey) -> Optional[CachedLayer]:
        path = self._record_path(key)
        try:
            raw = _read_regular(path, _MAX_RECORD + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._drop(path, f"unreadable record ({exc.strerror})")
            return None
        try:
            if len(raw) > _MAX_RECORD:
                raise ValueError("too large")
            rec = _converter().structure(json.loads(raw), CachedLayer)
        except Exception as exc:  # noqa: BLE001 - any malformed record is a miss, never a failure
            self._drop(path, f"unreadable record ({type(exc).__name__})")
            return None
        if rec.key != key:
            self._drop(path, "its record answers another key")
            return None
        return rec

    def _drop(self, path: Path, why: str) -> None:
        self.log(f"layer cache: dropped {path.name}: {why}; rebuilding the layer")
        try:
            path.unlink()
        except OSError:
            pass

    def fetch(self, key: LayerKey, blobs_dir: Path) -> Optional[CachedLayer]:
        """The cached layer for `key`, its blob verified and linked into `blobs_dir/sha256/`;
        None on a miss (nothing is left in `blobs_dir` then)."""
        rec = self._read(key)
        if rec is None:
            return None
        desc = rec.layer.descriptor
        src = self._blob(desc.digest)
        final = blob_path(blobs_dir, desc.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".cached-", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            try:
                tmp.unlink()
                _link_or_copy(src, tmp)
            except FileNotFoundError:
                self._drop(self._record_path(key), f"blob {desc.hex} is gone")
                return None
            except OSError as exc:
                self.log(f"layer cache: cannot use blob {desc.hex} ({exc.strerror}); rebuilding the layer")
                return None
            if not stat.S_ISREG(os.lstat(tmp).st_mode):  # a link to a symlink: never followed
                self._drop(self._record_path(key), f"blob {desc.hex} is not a regular file")
                _unlink(src)
                return None
            got, size = _sha256(tmp)
            if got != desc.digest or size != desc.size:
                self._drop(self._record_path(key), f"blob {desc.hex} hashes to {got} ({size} bytes), "
                                                   f"recorded {desc.digest} ({desc.size} bytes)")
                _unlink(src)
                return None
            # No chmod: the inode may be shared with a read-only store entry. Its mode is 0444
            # (the store's) or 0644 (AtomicBlob's), never the umask's.
            os.replace(tmp, final)
            tmp = None  # type: ignore[assignment]
            return rec
        finally:
            if tmp is not None:
                _unlink(tmp)

    def put(self, rec: CachedLayer, blobs_dir: Path) -> None:
        """Keep `rec` and its blob (from `blobs_dir`). A cache that cannot be written costs
        the next build time, never this one: failures are logged and ignored."""
        desc = rec.layer.descriptor
        try:
            tmpdir = self._tmp()
            (self.root / "blobs").mkdir(exist_ok=True)
            (self.root / "records").mkdir(exist_ok=True)
            blob_tmp = Path(tempfile.mkdtemp(prefix="put-", dir=tmpdir))
            try:
                _link_or_copy(blob_path(blobs_dir, desc.digest), blob_tmp / "blob")
                os.replace(blob_tmp / "blob", self._blob(desc.digest))
                text = canonical_json(_converter().unstructure(rec))
                (blob_tmp / "record").write_bytes(text)
                os.replace(blob_tmp / "record", self._record_path(rec.key))
            finally:
                shutil.rmtree(blob_tmp, ignore_errors=True)
        except OSError as exc:
            self.log(f"layer cache: could not keep layer {desc.digest}: {exc.strerror}")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A symlink stays a symlink (never followed): the caller refuses anything not regular."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
        shutil.copyfile(src, dst, follow_symlinks=False)


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; a symlink, FIFO or device is an OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def compressor_files(root: Path, compression: str) -> str:
    """sha256 over the build root's compressor files (its libz; its zstd and libzstd): the
    pinned compressor's exact bytes, which its version string alone does not name."""
    from .zlibpin import find_libz
    from .zstdpin import elf_interpreter, resolve_inside

    if compression == "gzip":
        files = [find_libz(root)]
    else:
        exe = resolve_inside(root, "usr/bin/zstd")
        libdir = resolve_inside(root, elf_interpreter(exe)).parent
        files = [exe] + sorted(p for p in libdir.glob("libzstd.so*") if p.is_file() and not p.is_symlink())
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode() + b"\0")
    return "sha256:" + h.hexdigest()
