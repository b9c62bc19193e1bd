"""Tree hash v1 against the reference test vectors, and canonical JSON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planner.hashing import (base32, canonical_json, file_digest, file_sha256_and_blake3, key_of,
                             tree_digest)


def _mk(root: Path, entries: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in entries.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if spec is None:
            p.mkdir(exist_ok=True)
        elif isinstance(spec, str):
            os.symlink(spec, p)
        else:
            data, mode = spec
            p.write_bytes(data)
            os.chmod(p, mode)
    return root


V2 = {"a.txt": (b"hello\n", 0o644)}
V3 = {**V2, "run.sh": (b"#!/bin/sh\necho hi\n", 0o755)}
V4 = {**V2, "link": "a.txt", "sub/b": (b"", 0o600), "empty": None,
      "sub/deeper/c.bin": (bytes(range(256)) * 4, 0o700)}
V5 = {"B": (b"B", 0o644), "a": (b"a", 0o644), "_": (b"_", 0o644), "é": (b"e-acute", 0o644),
      "a.b": (b"dot", 0o644), "a-b": (b"dash", 0o644)}
V6 = {n: (b"same", m) for n, m in [("x700", 0o700), ("x744", 0o744), ("f600", 0o600), ("f664", 0o664)]}


@pytest.mark.parametrize("entries,expected", [
    ({}, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
    (V2, "126e6be9fa7af898675e2ac600f56d8751742d378b1992ce6ecf8c08080b8eda"),
    (V3, "59f618c12f542692a9ab955a185781414e98ea721656d6f6d4d88760cd0e1a57"),
    (V4, "9a9eaef9f605fc159bc994b8eedbf4e27d473b8920d49384fdc0444bda9ee142"),
    (V5, "0dd961daacfcf47df38936afc435a78f02c91c026ab43e4ff4a2d668008aa781"),
    (V6, "a7820978be0e36b2a7edadc6acb4711caa4262e44b43802f2f744a3d74a3908d"),
], ids=["v1", "v2", "v3", "v4", "v5", "v6"])
def test_reference_vectors(tmp_path: Path, entries: dict, expected: str) -> None:
    assert tree_digest(_mk(tmp_path / "t", entries)) == "blake3:" + expected


def test_file_vector(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    assert file_digest(p) == "blake3:8e4c7c1b99dbfd50e7a95185fead5ee1448fa904a2fdd778eaf5f2dbfd629a99"
    sha, b3 = file_sha256_and_blake3(p)
    assert sha == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert b3 == file_digest(p)


def test_large_files_hash_like_small_ones(tmp_path: Path) -> None:
    # Large files take the thread-pool / mmap path; the digest must not depend on it.
    import blake3

    data = os.urandom(3 << 20)
    root = _mk(tmp_path / "t", {"big": (data, 0o644)})
    inner = blake3.blake3(data).digest()
    expected = blake3.blake3(b"f" + b"big" + b"\0" + inner).hexdigest()
    assert tree_digest(root) == "blake3:" + expected


def test_times_and_owners_do_not_matter(tmp_path: Path) -> None:
    a = _mk(tmp_path / "a", V3)
    before = tree_digest(a)
    os.utime(a / "a.txt", (0, 0))
    os.chmod(a / "a.txt", 0o664)
    assert tree_digest(a) == before
    os.chmod(a / "a.txt", 0o744)
    assert tree_digest(a) != before


def test_special_files_are_errors(tmp_path: Path) -> None:
    root = _mk(tmp_path / "t", V2)
    os.mkfifo(root / "fifo")
    with pytest.raises(Exception, match="fifo"):
        tree_digest(root)


def test_canonical_json_is_stable_and_refuses_floats() -> None:
    assert canonical_json({"b": 1, "a": [2, "é"]}) == '{"a":[2,"é"],"b":1}'.encode()
    with pytest.raises(TypeError, match="float"):
        canonical_json({"x": 1.5})
    k = key_of({"a": 1})
    assert len(k) == 32 and set(k) <= set("0123456789abcdfghijklmnpqrsvwxyz")
    assert key_of({"a": 1}) == k != key_of({"a": 2})
    assert base32(b"\0" * 20) == "0" * 32


def test_canonical_json_is_json_dumps_byte_for_byte() -> None:
    """The encoder made once (`hashing._encoder`) writes what json.dumps with the canonical
    arguments writes: escapes, non-ASCII, big integers, key order, nesting."""
    import json
    import random

    rng = random.Random(3)
    leaves = ["", "a", "ü ✓ \"q\" \\ \n\t\x01\x7f\u2028\ud7ff", "x" * 50, 0, -5, 2**70, True, False, None]

    def value(depth: int = 0) -> object:
        c = rng.random()
        if depth > 3 or c < 0.3:
            return rng.choice(leaves)
        if c < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(["a", "b", "Z", "é", "", "k1", "k10"]) + str(rng.randint(0, 3)): value(depth + 1)
                for _ in range(rng.randint(0, 5))}

    for _ in range(3000):
        v = value()
        want = json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert canonical_json(v, check=False) == want
        assert canonical_json(v) == want


def test_base32_fast_path_matches_the_bitwise_definition():
    """Keys (20 bytes) take the digits two at a time from a table (RFC 4648's 5-bit groups in
    Nix's alphabet): the same digits as the bit loop that defines them, for every length that
    takes either path."""
    import random

    from planner.hashing import _B32, base32

    def by_bits(raw: bytes) -> str:
        n, out = int.from_bytes(raw, "big"), []
        for _ in range((len(raw) * 8 + 4) // 5):
            out.append(_B32[n & 31])
            n >>= 5
        return "".join(reversed(out))

    rnd = random.Random(1772022058)
    for length in (0, 1, 5, 7, 10, 20, 32, 40):
        for _ in range(300):
            raw = bytes(rnd.randrange(256) for _ in range(length))
            assert base32(raw) == by_bits(raw), (length, raw.hex())
    assert base32(b"\xff" * 20) == "z" * 32 and base32(b"\x00" * 20) == "0" * 32


def test_preimage_canonical_is_the_canonical_json_of_to_json() -> None:
    """`Preimage.canonical` joins the canonical JSON of a preimage from its parts: byte for
    byte `canonical_json(to_json())` (what keys were always the hash of), for random preimages
    of every shape: optional fields present or not, escapes and non-ASCII in every string,
    nested settings, inputs, patches, images (which take the general path)."""
    import random

    from planner.derivation import BuilderSpec, ImageFields, InputPin, PatchPin, Preimage, Variant

    rng = random.Random(17)
    texts = ["", "a", "n9990", "ü ✓ \"q\" \\ \n\t\x01\x7f\u2028", "x" * 40, "Z", "é", "k10", "k1"]

    def text() -> str:
        return rng.choice(texts) + rng.choice(["", str(rng.randint(0, 99))])

    def names(n: int) -> dict:
        return {text(): text() for _ in range(rng.randint(0, n))}

    def json_value(depth: int = 0) -> object:
        c = rng.random()
        if depth > 2 or c < 0.4:
            return rng.choice([text(), 0, -3, 2**70, True, False, None])
        if c < 0.7:
            return [json_value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {text(): json_value(depth + 1) for _ in range(rng.randint(0, 4))}

    def maybe(value):
        return value if rng.random() < 0.5 else None

    for _ in range(4000):
        image = None
        if rng.random() < 0.1:
            image = ImageFields(image={"base": text(), "layers": [[text()]]}, platforms=(text(),),
                                cuda_variants=names(2), requires=maybe({text(): [text()]}), compressor=maybe(text()),
                                attest=maybe(names(2)))
        pre = Preimage(
            name=text(), version=text(),
            variant=Variant(platform=maybe(text()), cuda=maybe(tuple(text() for _ in range(rng.randint(0, 3)))),
                            host=maybe(text())),
            builder=BuilderSpec(kind=text(), version=rng.randint(0, 3),
                                settings={text(): json_value() for _ in range(rng.randint(0, 3))},
                                script=rng.choice([None, "", text()])),
            env=names(3), inputs={text(): InputPin(tree=text(), unpacked=rng.random() < 0.5) for _ in range(rng.randint(0, 3))},
            patches=tuple(PatchPin(name=text(), strip=rng.randint(0, 2), tree=text()) for _ in range(rng.randint(0, 2))),
            deps=names(4), source_date_epoch=rng.randint(0, 2**40), impure=rng.random() < 0.5,
            host=maybe(names(6)), resources=maybe({"cores": rng.randint(1, 64)}), image=image,
            resolved=rng.random() < 0.3, unavailable=maybe(text()))
        want = canonical_json(pre.to_json(), check=False)
        assert pre.canonical() == want, want
        assert pre.key() == key_of(pre.to_json())
