"""Signing cache entries: ed25519 keys in Nix's `name:base64` format, trusted keys, the signed payload."""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..hashing import canonical_json
from .ref import A_CONTENT, A_DIGEST, A_INPUT_KEY, A_KEY, A_KIND, A_NAME, A_VERSION, CacheError, SIGN_FORMAT

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise CacheError(f"{what} is not base64") from None


def bad_key_name(name: str) -> Optional[str]:
    """Why `name` cannot name a key, or None. Signatures are stored space-separated, one
    `name:base64` each, and trusted keys are read one word each: a name is one word of
    printable characters without ':'."""
    if not name:
        return "is empty"
    if ":" in name:
        return "contains ':'"
    if any(c.isspace() or not c.isprintable() for c in name):
        return "contains whitespace or a control character (a signature made with it could never verify)"
    return None


def _split_named(text: str, what: str, *, secret: bool = False) -> tuple[str, bytes]:
    # Nothing of the value is ever shown, a public key's included: what is given as one may
    # be a secret key pasted into the wrong option, and an error line ends up in CI logs.
    name, sep, data = text.strip().partition(":")
    if not sep or not name or not data:
        raise CacheError(f"{what} must look like NAME:BASE64 (its text is not shown)")
    why = bad_key_name(name)
    if why:
        raise CacheError(f"{what}'s name {why}: it must be one word without ':'")
    return name, _unb64(data, what)


def generate_key(path: Path, name: Optional[str] = None) -> str:
    """Write a new ed25519 secret key to `path` (mode 0600, Nix's format: `name:base64(seed‖public)`)
    and return the public key text `name:base64(public)` to give to `TrustedKeys`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name = name or f"{socket.gethostname()}-1"
    why = bad_key_name(name)
    if why:
        raise CacheError(f"key name {name!r} {why}: it must be one word without ':'")
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
        name, raw = _split_named(text, "secret key", secret=True)
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
        except UnicodeDecodeError:
            raise CacheError("secret key is not text (NAME:BASE64, as `planner keys generate` writes)",
                             where=str(path)) from None
        except CacheError as e:
            raise CacheError(e.message, where=str(path)) from None

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
        # Several keys may share a name (a rotation: the old `ci-1` and the new `ci-1`, both
        # trusted for a while): a signature by that name is tried against each of them.
        self._keys: dict[str, list[bytes]] = {}
        for k in keys:
            self.add(k)

    def add(self, text: str) -> None:
        name, raw = _split_named(text, "public key")
        if len(raw) != 32:
            raise CacheError(f"public key {name!r} has {len(raw)} bytes, want 32")
        have = self._keys.setdefault(name, [])
        if raw not in have:
            have.append(raw)

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
        return [f"{n}:{_b64(k)}" for n, ks in sorted(self._keys.items()) for k in ks]

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def __len__(self) -> int:
        return sum(len(ks) for ks in self._keys.values())

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
            except ValueError:
                bad.append(name)
                continue
            for key in self._keys[name]:
                try:
                    Ed25519PublicKey.from_public_bytes(key).verify(raw, payload)
                    return "ok", name
                except (InvalidSignature, ValueError):
                    pass
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
