"""Image references (`host[:port]/name[:tag][@digest]`, split the way docker does it) and the
registry credentials a docker config.json holds for them."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import attrs

from ..errors import OciError
from .descriptor import check_digest

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
# The distribution spec's grammar (docs/spec.md, "pulling manifests"): a tag goes into a URL as it
# is written, so '#' or '?' in it would name another tag than the one printed.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_HOST_RE = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                      r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")


@attrs.frozen
class Credentials:
    username: str
    password: str = attrs.field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@attrs.frozen
class Reference:
    """`host[:port]/path/name[:tag][@sha256:...]`, split the way docker does it."""

    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest = text.partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
        else:
            registry, path = "docker.io", rest
        name, colon, tag = path.rpartition(":")
        if not colon or "/" in tag:
            name, tag = path, ""
        if not _HOST_RE.fullmatch(registry):
            raise OciError(f"not an image reference: {text!r}: the registry {registry!r} is not host[:port]")
        if not name or not _NAME_RE.fullmatch(name):
            raise OciError(f"not an image reference: {text!r}: the repository {name!r} is not "
                           "[a-z0-9]+((.|_|__|-+)[a-z0-9]+)* components separated by '/'")
        if colon and not _TAG_RE.fullmatch(tag):
            raise OciError(f"not an image reference: {text!r}: the tag {tag!r} is not "
                           "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
        if registry == "docker.io" and "/" not in name:
            name = "library/" + name
        return cls(
            registry=registry,
            repository=name,
            tag=tag or None,
            digest=check_digest(digest, what=text) if digest else None,
        )

    def base_url(self, *, plain_http: bool | None = None) -> str:
        host = DOCKER_HUB if self.registry == "docker.io" else self.registry
        if plain_http is None:
            # Loopback registries speak plain HTTP, as docker assumes for localhost.
            hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0][1:]
            plain_http = hostname in ("localhost", "127.0.0.1", "::1")
        return f"{'http' if plain_http else 'https'}://{host}"


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def load_docker_credentials(registry: str, config: Path | None = None) -> Credentials | None:
    """Basic credentials for `registry` (host[:port]) from a docker config.json `auths` entry's
    base64 `auth` field, or None. Credential helpers and identity tokens are not supported."""
    path = config or docker_config_path()
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise OciError("not JSON", where=str(path)) from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = {registry}
    if registry in ("docker.io", DOCKER_HUB, "index.docker.io"):
        wanted |= {"docker.io", "index.docker.io", _DOCKER_HUB_AUTH_KEY}
    for key, entry in sorted(auths.items()):
        host = re.sub(r"^https?://", "", key).split("/", 1)[0]
        if (key in wanted or host in wanted) and isinstance(entry, dict) and entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise OciError(f"auths entry for {key} has a malformed 'auth' field", where=str(path)) from None
            if not sep:
                raise OciError(f"auths entry for {key} has a malformed 'auth' field", where=str(path))
            return Credentials(user, password)
    return None
