"""OCI image layout directories (spec: image-layout.md): write, read, export as a tar.

The top-level index.json tags each CUDA variant's image index with its variant name and, in
addition, each platform manifest inside it as `<variant>-<os>-<arch>`: umoci (and other tools)
refuse a tag that resolves to a nested index, so they need a tag that names one manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import attrs

from ..errors import OciError
from ..hashing import canonical_json
from .descriptor import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_INDEX,
    Descriptor,
    blob_path,
    sha256_file,
)
from .layer import TarEntry, write_tar_entries

LAYOUT_VERSION = "1.0.0"
# The image-layout ref.name grammar's component (annotations.md: alphanum (separator alphanum)*),
# its separators limited to one of [._-], and the distribution spec's 128 characters: a tag skopeo,
# umoci and a registry all take. CUDA variant names are checked against the same (recipes/validate.py).
_TAG_RE = re.compile(r"(?=.{1,128}\Z)[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")


@attrs.frozen
class LayoutImage:
    """One tagged entry of a layout: `descriptor` is an image index (its platform manifests get
    tags too) or a single image manifest. Its blobs must already be written."""

    tag: str
    descriptor: Descriptor


@attrs.frozen
class Layout:
    path: Path
    manifests: tuple[Descriptor, ...]  # the entries of the top-level index.json

    @property
    def blobs_dir(self) -> Path:
        return self.path / "blobs"

    def tags(self) -> tuple[str, ...]:
        return tuple(t for d in self.manifests if (t := d.annotation(ANNOTATION_REF_NAME)) is not None)

    def resolve(self, tag: str) -> Descriptor:
        found = [d for d in self.manifests if d.annotation(ANNOTATION_REF_NAME) == tag]
        if not found:
            raise OciError(f"no tag {tag!r} (tags: {', '.join(self.tags()) or 'none'})", where=str(self.path))
        if len(found) > 1:
            raise OciError(f"tag {tag!r} is listed {len(found)} times", where=str(self.path))
        return found[0]

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.blobs_dir, digest)

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob's bytes, checked against the descriptor's size and digest."""
        path = self.blob_path(desc.digest)
        from ..safetree import MAX_METADATA

        if desc.size > MAX_METADATA:  # manifests, indexes and configs are read whole in-process
            raise OciError(f"blob of {desc.size} bytes is larger than {MAX_METADATA >> 20} MiB, refused",
                           where=str(path))
        data = _read_file(path, "blob missing from layout")
        if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise OciError("blob does not match its descriptor", where=str(path))
        return data

    def read_json(self, desc: Descriptor) -> dict[str, Any]:
        try:
            doc = json.loads(self.read_blob(desc))
        except (ValueError, UnicodeDecodeError):
            raise OciError("not JSON", where=str(self.blob_path(desc.digest))) from None
        if not isinstance(doc, dict):
            raise OciError("not a JSON object", where=str(self.blob_path(desc.digest)))
        return doc

    def children(self, desc: Descriptor) -> list[Descriptor]:
        """Descriptors a manifest or index refers to (configs and layers are leaves)."""
        where = str(self.blob_path(desc.digest))
        if desc.media_type in INDEX_TYPES:
            doc = self.read_json(desc)
            return [Descriptor.from_json(m, where=where) for m in doc.get("manifests", [])]
        if desc.media_type in MANIFEST_TYPES:
            doc = self.read_json(desc)
            if "config" not in doc:
                raise OciError("manifest has no config", where=where)
            return [Descriptor.from_json(doc["config"], where=where)] + [
                Descriptor.from_json(layer, where=where) for layer in doc.get("layers", [])
            ]
        return []

    def walk(self, desc: Descriptor) -> list[Descriptor]:
        """Everything reachable from `desc`, children before parents, each digest once: the
        order in which a registry accepts them."""
        out: list[Descriptor] = []
        seen: set[str] = set()

        def visit(d: Descriptor) -> None:
            if d.digest in seen:
                return
            seen.add(d.digest)
            for child in self.children(d):
                visit(child)
            out.append(d)

        visit(desc)
        return out

    def platform_manifests(self, desc: Descriptor) -> list[Descriptor]:
        if desc.media_type not in INDEX_TYPES:
            return [desc]
        return [m for m in self.children(desc) if m.media_type in MANIFEST_TYPES]


def _read_file(path: Path, missing: str) -> bytes:
    """A layout's file, never through a link (a build's output may hold one to a host file,
    whose bytes must not become the image's) nor from a FIFO: refused, naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OciError(missing, where=str(path)) from None
    except OSError as exc:  # ELOOP: a link
        raise OciError(f"not a regular file ({exc.strerror})", where=str(path)) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OciError("not a regular file", where=str(path))
        from ..safetree import MAX_METADATA

        data = f.read(MAX_METADATA + 1)
        if len(data) > MAX_METADATA:
            raise OciError(f"larger than {MAX_METADATA >> 20} MiB, refused", where=str(path))
        return data


def _read_index_json(path: Path) -> tuple[Descriptor, ...]:
    f = path / "index.json"
    try:
        doc = json.loads(_read_file(f, "not an OCI layout (no index.json)"))
    except ValueError:
        raise OciError("index.json is not JSON", where=str(f)) from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise OciError("index.json: schemaVersion is not 2", where=str(f))
    return tuple(Descriptor.from_json(m, where=str(f)) for m in doc.get("manifests", []))


def read_layout(path: Path) -> Layout:
    path = Path(path)
    for d in ("blobs", "blobs/sha256"):  # the blobs' folders, never links out of the layout
        if os.path.islink(path / d):
            raise OciError(f"{d} is a symbolic link, not a folder", where=str(path))
    try:
        marker = json.loads(_read_file(path / "oci-layout", "not an OCI layout (no oci-layout file)"))
    except ValueError:
        raise OciError("oci-layout is not JSON", where=str(path / "oci-layout")) from None
    if not isinstance(marker, dict) or marker.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise OciError(f"unsupported imageLayoutVersion {marker!r}", where=str(path / "oci-layout"))
    return Layout(path=path, manifests=_read_index_json(path))


def index_digest(output: Path) -> Optional[str]:
    """The digest of the image index a layout's top-level index.json points at, if any."""
    index = output / "index.json"
    if not os.path.lexists(index):
        return None
    try:
        data = json.loads(_read_file(index, "no index.json"))  # (bounded; never through a link)
    except ValueError:
        raise OciError("index.json is not JSON", where=str(index)) from None
    manifests = data.get("manifests") if isinstance(data, dict) else None
    for m in manifests if isinstance(manifests, list) else ():
        if isinstance(m, dict) and m.get("mediaType") == "application/vnd.oci.image.index.v1+json":
            digest = m.get("digest")
            return digest if isinstance(digest, str) else None
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_blob(src_blobs: Path, dest_blobs: Path, desc: Descriptor) -> None:
    dst = blob_path(dest_blobs, desc.digest)
    if dst.is_file():
        return
    src = blob_path(src_blobs, desc.digest)
    if not src.is_file():
        raise OciError("blob not found", where=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_blob(layout: Layout, desc: Descriptor, *, verify: bool) -> None:
    path = layout.blob_path(desc.digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise OciError("blob missing from layout", where=str(path)) from None
    if size != desc.size:
        raise OciError(f"blob is {size} bytes, descriptor says {desc.size}", where=str(path))
    if verify and sha256_file(path) != desc.digest:
        raise OciError("blob content does not match its digest", where=str(path))


def index_entries(layout: Layout, images: Sequence[LayoutImage], *, platform_tags: bool = True) -> list[Descriptor]:
    """The entries of index.json: each image under its tag, then (for an index, unless not
    `platform_tags`) each of its platform manifests under `<tag>-<os>-<arch>`, in the caller's
    order."""
    entries: list[Descriptor] = []
    tags: set[str] = set()

    def add(desc: Descriptor, tag: str) -> None:
        if not _TAG_RE.match(tag):
            raise OciError(f"not a valid tag: {tag!r}", where=str(layout.path))
        if tag in tags:
            raise OciError(f"tag {tag!r} used twice", where=str(layout.path))
        tags.add(tag)
        entries.append(desc.with_annotations({ANNOTATION_REF_NAME: tag}))

    for image in images:
        add(image.descriptor, image.tag)
        if platform_tags and image.descriptor.media_type in INDEX_TYPES:
            for m in layout.platform_manifests(image.descriptor):
                if m.platform is None:
                    raise OciError("index entry has no platform", where=m.digest)
                add(m, f"{image.tag}-{m.platform.tag_suffix()}")
    return entries


def write_layout(
    dest: Path,
    images: Sequence[LayoutImage],
    *,
    blobs_from: Path | None = None,
    verify: bool = False,
    platform_tags: bool = True,
) -> Layout:
    """Make `dest` an OCI layout whose index.json lists `images` (and per-platform tags,
    unless not `platform_tags`).

    Blobs are expected under dest/blobs already (write layers and documents there directly);
    with `blobs_from`, any reachable blob missing there is copied from that blobs directory.
    Every reachable blob is checked for presence and size, and for its digest with `verify`.
    index.json is replaced atomically, so readers never see a half-written layout.
    """
    dest = Path(dest)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout = Layout(path=dest, manifests=())
    for image in images:
        # Documents first (to read their children), then everything they reach.
        if blobs_from is not None:
            stack = [image.descriptor]
            while stack:
                d = stack.pop()
                _copy_blob(blobs_from, layout.blobs_dir, d)
                stack.extend(layout.children(d))
        for d in layout.walk(image.descriptor):
            _check_blob(layout, d, verify=verify)
    entries = index_entries(layout, images, platform_tags=platform_tags)
    _atomic_write(dest / "oci-layout", canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    doc = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [e.to_json() for e in entries]}
    _atomic_write(dest / "index.json", canonical_json(doc))
    return Layout(path=dest, manifests=tuple(entries))


def _archive_entries(layout: Layout, documents: Path) -> Iterator[tuple[bytes, TarEntry]]:
    """The archive's members: index.json and oci-layout from `documents`, and every blob the
    layout's manifests reach, each checked to be a regular file holding the bytes its digest
    names (an archive is what others trust as this image)."""
    digests: set[str] = set()
    for top in layout.manifests:
        digests.update(d.digest for d in layout.walk(top))
    paths: list[tuple[bytes, TarEntry]] = [
        (b"blobs", TarEntry("dir", 0o755, None)),
        (b"blobs/sha256", TarEntry("dir", 0o755, None)),
        (b"index.json", _file_entry(documents / "index.json")),
        (b"oci-layout", _file_entry(documents / "oci-layout")),
    ]
    for digest in digests:
        p = layout.blob_path(digest)
        entry = _file_entry(p)
        if sha256_file(p) != digest:
            raise OciError("blob content does not match its digest", where=str(p))
        paths.append((os.fsencode(f"blobs/sha256/{digest.split(':', 1)[1]}"), entry))
    return iter(sorted(paths))


def _file_entry(path: Path) -> TarEntry:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise OciError("missing from layout", where=str(path)) from None
    if not stat.S_ISREG(st.st_mode):  # a link would copy what it points at into the archive
        raise OciError("not a regular file", where=str(path))
    return TarEntry("file", 0o644, os.fsencode(path), size=st.st_size)


def export_oci_archive(layout: Path, out: "Path | BinaryIO", *, source_date_epoch: int = 0,
                       tag: Optional[str] = None) -> "Path | BinaryIO":
    """A deterministic uncompressed tar of the layout (what `oci-archive:` reads): only
    index.json, oci-layout and the blobs reachable from index.json, sorted, mtime fixed.

    `tag`: only that entry of the layout, alone in the archive's index.json under that name
    (a tool reading `oci-archive:OUT.tar` without a name takes the one image there), with the
    blobs it reaches. `out`: a path (written whole, then renamed into place: a regular file
    or nothing there, never a link, a FIFO or a device replaced), or an open binary stream."""
    lay = read_layout(layout)
    with contextlib.ExitStack() as stack:
        documents = lay.path
        if tag is not None:  # (its own index.json and oci-layout, in a folder of their own)
            lay = Layout(path=lay.path, manifests=tuple(
                index_entries(lay, [LayoutImage(tag, lay.resolve(tag))], platform_tags=False)))
            documents = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".export-")))
            doc = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [e.to_json() for e in lay.manifests]}
            (documents / "index.json").write_bytes(canonical_json(doc))
            (documents / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        entries = _archive_entries(lay, documents)  # (every check before the first byte is written)
        if not isinstance(out, (str, os.PathLike)):
            write_tar_entries(entries, out, mtime=source_date_epoch)
            out.flush()
            return out
        return _write_file(Path(out), lambda f: write_tar_entries(entries, f, mtime=source_date_epoch))


def check_archive_path(out: Path) -> None:
    """OUT may be new or a regular file (replaced whole); anything else is refused before any
    work: a link (written through, it would replace what it names), a FIFO, a device."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OciError(f"cannot write the archive: {exc.strerror}", where=str(out)) from None
    if not stat.S_ISREG(st.st_mode):
        from ..safetree import kind_of

        raise OciError(f"is {kind_of(st.st_mode)}, not a file an archive may replace (give a new name, or - for standard "
                       "output)", where=str(out))


def _write_file(out: Path, write) -> Path:
    check_archive_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=out.parent)
    except OSError as exc:
        raise OciError(f"cannot write the archive: {exc.strerror or exc}", where=str(out)) from None
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_archive_path(out)  # (made meanwhile: still never replaced)
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk: named by the file it was writing, none of it left
            raise OciError(f"cannot write the archive: {exc.strerror or exc}", where=str(out)) from None
        raise
    return out
