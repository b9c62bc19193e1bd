"""Binary cache references (`oci://HOST[:PORT]/REPO`), the entry format's media types and annotations."""

from __future__ import annotations

import json
import re
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import attrs

from ..errors import PlannerError

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


class CacheUnreachable(CacheError):
    """A fetch the cache did not answer (network, timeout, 5xx): the entry is not known bad."""


_NETWORK = re.compile(r"^(?:GET|HEAD) failed: |^blob download failed: |: HTTP (?:5\d\d|429|408)\b")


def network_failure(message: str) -> bool:
    """Whether an OciError message (planner/oci/registry.py) says the registry did not answer,
    rather than answered with bytes that are not the entry's."""
    return bool(_NETWORK.search(message))


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
