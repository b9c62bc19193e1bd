"""Content hashing: tree hash v1 (BLAKE3 Merkle tree), file digests and canonical JSON.

Tree hash v1 is fixed by shared/reference/tree-hash.md: kind byte + name + NUL + child digest
over children sorted by raw name bytes; only the owner-executable bit counts; symlinks hash their
target; no times, owners or archive format. Pure functions plus the file reads they need.

Imports beyond os and blake3 are made where they are used: `planner store verify` and the
no-op path load this module, and each of json, hashlib, base64, pathlib and concurrent.futures
costs milliseconds to import.
"""

from __future__ import annotations

import os
import stat

import blake3

from .errors import PlannerError

TYPE_CHECKING = False  # typing itself is a slow import
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Iterable

PREFIX = "blake3:"
_CHUNK = 1 << 20
# Files below this size are hashed inline; larger ones go to the thread pool (blake3 and
# hashlib release the GIL on large buffers, so threads give real parallelism).
_PARALLEL_MIN = 256 << 10


class TreeHashError(PlannerError):
    pass


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def format_digest(raw: bytes) -> str:
    return PREFIX + raw.hex()


def parse_digest(text: str) -> bytes:
    if not text.startswith(PREFIX) or len(text) != len(PREFIX) + 64:
        raise TreeHashError(f"not a blake3 digest: {text!r}")
    return bytes.fromhex(text[len(PREFIX):])


def _file_blake3(path: str | os.PathLike[str]) -> bytes:
    h = blake3.blake3()
    size = os.path.getsize(path)
    if size >= 64 << 20:
        # Large files: blake3's own multithreaded mmap path.
        h.update_mmap(os.fsdecode(path))
        return h.digest()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """`blake3:<hex>` of one file's bytes: the tree hash of a single-file input."""
    return format_digest(_file_blake3(path))


def bytes_digest(data: bytes) -> str:
    return format_digest(blake3.blake3(data).digest())


def file_sha256_and_blake3(path: str | os.PathLike[str]) -> tuple[str, str]:
    """sha256 hex and blake3 digest of one file, both computed concurrently over one read.

    Each chunk is handed to sha256 on a worker thread while blake3 runs on this one; both
    release the GIL, so the pair costs about as much as sha256 alone.
    """
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    sha = hashlib.sha256()
    b3 = blake3.blake3()
    with ThreadPoolExecutor(max_workers=1) as pool, open(path, "rb") as f:
        pending = None
        while chunk := f.read(4 << 20):
            if pending is not None:
                pending.result()
            pending = pool.submit(sha.update, chunk)
            b3.update(chunk)
        if pending is not None:
            pending.result()
    return sha.hexdigest(), format_digest(b3.digest())


def _node_entry(kind: bytes, name: bytes, digest: bytes) -> bytes:
    return kind + name + b"\0" + digest


def _kind_of(st: os.stat_result, path: str) -> bytes:
    if stat.S_ISLNK(st.st_mode):
        return b"l"
    if stat.S_ISDIR(st.st_mode):
        return b"d"
    if stat.S_ISREG(st.st_mode):
        return b"x" if st.st_mode & stat.S_IXUSR else b"f"
    raise TreeHashError(f"not a file, directory or symlink: {path}")


def _small_file_blake3(path: bytes) -> bytes:
    """BLAKE3 of a small file with os.open/os.read: `open()` adds an fstat, an isatty ioctl
    and a buffer per file, which was a third of `planner store verify` on small entries."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        h = blake3.blake3(os.read(fd, _PARALLEL_MIN))
        while more := os.read(fd, _CHUNK):  # read to the end, whatever the size said
            h.update(more)
    finally:
        os.close(fd)
    return h.digest()


def tree_digest_raw(root: str | os.PathLike[str], *, exclude: Iterable[str] = (),
                    everywhere: bool = False) -> bytes:
    """Raw 32-byte tree hash of a file, symlink or directory.

    `exclude` names top-level entries to leave out, or with `everywhere` entries at any depth
    (`.git` of a path source and of the repositories vendored in it: what its copy leaves out).
    """
    root_b = os.fsencode(root)
    st = os.lstat(root_b)
    kind = _kind_of(st, os.fsdecode(root_b))
    if kind == b"l":
        return blake3.blake3(os.readlink(root_b)).digest()
    if kind != b"d":
        return _file_blake3(root_b)

    excluded = {os.fsencode(e) for e in exclude}
    # Walk once, collecting every directory's children with the digests known so far (small
    # files and symlinks); big files go to a pool, and directories are folded bottom-up. Per
    # entry this is the cost of `planner store verify`, so the loop keeps to plain operations.
    later: dict[bytes, Any] = {}  # path -> digest of a subdirectory, or the future of a big file
    dirs: list[tuple[bytes, list[tuple[bytes, bytes, Any]]]] = []
    pool = None  # started at the first big file: most trees (and store entries) have none
    S_IFMT, S_IFREG, S_IFDIR, S_IFLNK, S_IXUSR = stat.S_IFMT, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IXUSR
    b3, readlink = blake3.blake3, os.readlink
    try:
        stack = [root_b]
        while stack:
            d = stack.pop()
            children: list[tuple[bytes, bytes, Any]] = []
            with os.scandir(d) as it:
                for e in it:
                    name = e.name
                    if excluded and name in excluded and (everywhere or d == root_b):
                        continue
                    st_e = e.stat(follow_symlinks=False)
                    mode = st_e.st_mode
                    fmt = S_IFMT(mode)
                    if fmt == S_IFREG:
                        if st_e.st_size >= _PARALLEL_MIN:
                            if pool is None:
                                from concurrent.futures import ThreadPoolExecutor

                                pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2)))
                            later[e.path] = pool.submit(_file_blake3, e.path)
                            digest = None
                        else:
                            digest = _small_file_blake3(e.path)
                        children.append((name, b"x" if mode & S_IXUSR else b"f", digest))
                    elif fmt == S_IFDIR:
                        stack.append(e.path)
                        children.append((name, b"d", None))
                    elif fmt == S_IFLNK:
                        children.append((name, b"l", b3(readlink(e.path)).digest()))
                    else:
                        raise TreeHashError(f"not a file, directory or symlink: {os.fsdecode(e.path)}")
            dirs.append((d, children))
        for p, fut in list(later.items()):
            later[p] = fut.result()
    finally:
        if pool is not None:
            pool.shutdown()

    join = os.path.join
    digest = b""
    for d, children in reversed(dirs):
        children.sort()  # by name: names are unique in a directory, so nothing else is compared
        digest = b3(b"".join([k + name + b"\0" + (dg if dg is not None else later[join(d, name)])
                              for name, k, dg in children])).digest()
        later[d] = digest
    return digest  # the root's: folded last


def tree_digest(root: str | os.PathLike[str], *, exclude: Iterable[str] = (), everywhere: bool = False) -> str:
    """`blake3:<hex>` tree hash v1 of a directory, file or symlink."""
    return format_digest(tree_digest_raw(root, exclude=exclude, everywhere=everywhere))


def tree_kind(path: str | os.PathLike[str]) -> str:
    return _kind_of(os.lstat(path), str(path)).decode()


# Canonical JSON: sorted keys, no insignificant whitespace, UTF-8, no floats (a float's text
# form is not stable across implementations, so preimages must not contain any).
def _check_no_floats(value: Any, path: str = "$") -> None:
    if isinstance(value, float):
        raise TypeError(f"float in canonical JSON at {path}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"non-string key in canonical JSON at {path}")
            _check_no_floats(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_floats(v, f"{path}[{i}]")


_ENCODE = None


def canonical_json(value: Any, *, check: bool = True) -> bytes:
    global _ENCODE
    if check:
        _check_no_floats(value)
    if _ENCODE is None:
        _ENCODE = _encoder()
    return _ENCODE(value).encode()


def _encoder():
    """`json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`: the
    same C encoder json.dumps makes for those arguments, made once. json.dumps makes a new
    encoder object, and a new C encoder, for every call: more than half the cost of a small
    preimage's JSON (a plan of 10,000 nodes encodes 10,000). Unlike json.dumps it does not
    look for reference cycles, which a preimage (a tree of JSON values) cannot have."""
    import json
    from json import encoder as enc

    if enc.c_make_encoder is None:  # an interpreter without the C accelerator
        return lambda value: json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    default = json.JSONEncoder().default
    make = enc.c_make_encoder(None, default, enc.encode_basestring, None, ":", ",", True, False, True)
    return lambda value: "".join(make(value, 0))


_B32 = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32 alphabet (no e, o, u, t)



def base32(raw: bytes) -> str:
    """Nix-style base32 of a digest (lowercase, unambiguous alphabet)."""
    if len(raw) == 20:  # a key: the one length a plan encodes 10,000 times
        # Each 5-bit digit moved into a byte of its own by five mask-and-shift steps on one
        # 256-bit int, then every byte mapped to its digit at once: a third of a loop over
        # the 32 digits (two at a time from a table of 1,024, which was most of a key's cost).
        n = int.from_bytes(raw, "big")
        for low, high, shift in _SPREAD:
            n = (n & low) | ((n & high) << shift)
        return n.to_bytes(32, "big").translate(_DIGITS).decode("ascii")
    n = int.from_bytes(raw, "big")
    out = []
    for _ in range((len(raw) * 8 + 4) // 5):
        out.append(_B32[n & 31])
        n >>= 5
    return "".join(reversed(out))


def _spread_steps() -> tuple[tuple[int, int, int], ...]:
    """(low mask, high mask, shift) per halving: 32 digits of 5 bits packed in 160 bits, made
    2 chunks of 16 at a 128-bit stride, then 4 of 8 at 64, ..., then 32 of 1 at 8."""
    steps = []
    digits, stride = 32, 256
    while digits > 1:
        half = digits // 2 * 5  # the bits of half a chunk's digits
        low = high = 0
        for chunk in range(256 // stride):
            low |= ((1 << half) - 1) << (chunk * stride)
            high |= ((1 << half) - 1) << (chunk * stride + half)
        steps.append((low, high, stride // 2 - half))
        digits, stride = digits // 2, stride // 2
    return tuple(steps)


_SPREAD = _spread_steps()
_DIGITS = bytes.maketrans(bytes(range(32)), _B32.encode())


def key_of(preimage: Any) -> str:
    """Input key of a derivation: blake3 of its canonical JSON preimage, 32 base32 characters."""
    # Preimages are built from validated recipes (settings are checked for floats when a recipe
    # is loaded), so the float walk is skipped here: it was a fifth of planning time.
    return key_from_json(canonical_json(preimage, check=False))


def key_from_json(canonical: bytes) -> str:
    """`key_of` of the value whose canonical JSON is `canonical`."""
    return base32(blake3.blake3(canonical).digest(length=20))


def encode_value(value: Any) -> str:
    """One JSON value as `canonical_json` writes it (as text; no float check): what a caller
    that joins a canonical document from its parts (`Preimage.canonical`) encodes each part
    with. A plain string goes straight to the encoder's own string encoder."""
    global _ENCODE, _STRING
    kind = type(value)
    if kind is str:
        if _STRING is None:
            from json.encoder import encode_basestring

            _STRING = encode_basestring
        return _STRING(value)
    if kind is int:
        return int.__repr__(value)  # what the encoder writes for an int
    if kind is dict and not value:
        return "{}"
    if _ENCODE is None:
        _ENCODE = _encoder()
    return _ENCODE(value)


_STRING = None


def path_of(p: str | os.PathLike[str]) -> Path:
    from pathlib import Path

    return Path(p)
