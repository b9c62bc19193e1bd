"""A small OCI distribution API client (spec: distribution-spec spec.md) on httpx.

Pushes keep every digest: blobs and documents are sent as the exact bytes of the layout, and
the registry's Docker-Content-Digest answer is checked against ours. Pulls by digest verify
sha256 before anything is renamed into place.

Credentials and tokens live only in request headers: they are never logged, never part of a
URL, and never in an exception message (those name the registry, repository and digest only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import attrs
import httpx

from ..errors import OciError
from ..netdiag import reason
from ..safetree import MAX_METADATA
from .descriptor import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    Descriptor,
    iter_manifest_children,
    check_digest,
)
from .layout import Layout, read_layout
from .reference import Credentials, Reference, docker_config_path, load_docker_credentials  # noqa: F401  (Reference, docker_config_path: re-exported)

_MANIFEST_ACCEPT = ", ".join([MEDIA_INDEX, MEDIA_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST])
_CHUNK = 1 << 20
# Every answer is read against a bound, whatever the registry sends: a HEAD, upload or PUT
# answer carries headers and at most a short JSON error; a token is a few KiB of JWT.
_ANSWER_LIMIT = 64 << 10
_TOKEN_LIMIT = 1 << 20
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


@attrs.frozen
class PulledManifest:
    descriptor: Descriptor
    data: bytes
    # What the document refers to, every field type-checked when it was pulled: an index's
    # manifests, or an image manifest's config then layers.
    children: tuple[Descriptor, ...] = ()

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.data)
        if not isinstance(doc, dict):
            raise OciError("manifest is not a JSON object", where=self.descriptor.digest)
        return doc


@attrs.frozen
class PushResult:
    descriptor: Descriptor  # what the tag (or digest) now points at
    reference: str
    blobs_uploaded: int
    blobs_skipped: int
    manifests_pushed: int
    manifests_skipped: int
    bytes_uploaded: int


class RegistryClient:
    def __init__(
        self,
        base_url: str,
        repository: str,
        *,
        credentials: Credentials | None = None,
        docker_config: Path | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.userinfo:
            raise OciError("put credentials in ~/.docker/config.json, not in the registry URL")
        self.base_url = str(url).rstrip("/")
        self._base = httpx.URL(self.base_url + "/")
        self.repository = repository
        self.registry = url.netloc.decode()
        # Read the docker config only when a registry asks for credentials: an anonymous
        # push must not fail on someone's unrelated config.
        self._credentials = credentials
        self._docker_config = docker_config
        self._credentials_loaded = credentials is not None
        self._authorization: str | None = None
        self._tokens: dict[str, str] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, tail: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{tail}"

    def _where(self, what: str = "") -> str:
        return f"{self.registry}/{self.repository}{what}"

    def _creds(self) -> Credentials | None:
        if not self._credentials_loaded:
            self._credentials = load_docker_credentials(self.registry, self._docker_config)
            self._credentials_loaded = True
        return self._credentials

    def _authenticate(self, challenge: str, *, push: bool) -> None:
        scheme, params = _parse_challenge(challenge)
        creds = self._creds()
        if scheme == "basic":
            if creds is None:
                raise OciError("registry wants credentials; none found in docker config", where=self._where())
            self._authorization = creds.basic()
            return
        if scheme != "bearer" or "realm" not in params:
            raise OciError(f"unsupported authentication challenge ({scheme or 'none'})", where=self._where())
        scope = params.get("scope", "")
        if push and scope.startswith(f"repository:{self.repository}:"):
            scope = f"repository:{self.repository}:pull,push"
        if scope in self._tokens:
            self._authorization = self._tokens[scope]
            return
        # The realm may be another host (Docker Hub's is auth.docker.io), but never plain http
        # behind an https registry: the credentials go there.
        realm = self.resolve_link(params["realm"], header="token realm")
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        headers = {"Authorization": creds.basic()} if creds else {}
        try:
            resp = self._http.send(self._http.build_request("GET", realm, params=query, headers=headers), stream=True)
        except httpx.HTTPError as e:
            raise OciError(f"token request failed: {reason(e)}", where=self._where()) from None
        if resp.status_code != 200:
            resp.close()
            # The body of a token endpoint is not shown: it is not ours to print.
            raise OciError(f"token request refused: HTTP {resp.status_code}", where=self._where())
        body = self.read_small(resp, "token answer", "", limit=_TOKEN_LIMIT)
        try:
            doc = json.loads(body)
            token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise OciError("token endpoint answered without a token", where=self._where())
        self._authorization = self._tokens[scope] = "Bearer " + token

    def _same_origin(self, url: httpx.URL) -> bool:
        return _origin(url) == _origin(self._base)

    def resolve_link(self, link: str, *, header: str) -> httpx.URL:
        """A URL a registry answered with (an upload's Location, a tag list's next Link, a
        token realm), resolved against the registry. It may name another host, which `_send`
        gives no credentials; it may not leave http(s), nor go from https down to http."""
        try:
            url = self._base.join(link)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise OciError(f"{header} is not a URL", where=self._where()) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise OciError(f"{header} is not an http(s) URL", where=self._where())
        if self._base.scheme == "https" and url.scheme != "https":
            raise OciError(f"{header} leaves https for plain http, refused", where=self._where())
        return url

    def _send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], bytes | BinaryIO] | None = None,
        push: bool = False,
        what: str = "",
    ) -> httpx.Response:
        """One request, authenticated when the registry asks. The answer comes back unread:
        the caller reads it with a bound (`read_small`, `pull_blob`, `_fail`) or closes it, so
        no body is ever read whole on a registry's word."""
        target = httpx.URL(url)
        # The registry's credentials go to the registry's own origin only: a Location or Link
        # naming another host or port, or plain http, gets the request without them.
        ours = self._same_origin(target)
        # `body` is a factory so a request refused with 401 can be replayed after authenticating.
        for attempt in (0, 1):
            req_headers = dict(headers or {})
            if self._authorization and ours:
                req_headers["Authorization"] = self._authorization
            content = body() if body is not None else None
            try:
                request = self._http.build_request(method, target, headers=req_headers, content=content)
                # Redirects are followed for blob downloads only; httpx drops Authorization
                # when a redirect leaves the registry's origin.
                resp = self._http.send(request, stream=True, follow_redirects=(method == "GET"))
            except httpx.HTTPError as e:
                raise OciError(f"{method} failed: {reason(e)}", where=self._where(what)) from None
            finally:
                if content is not None and not isinstance(content, bytes):
                    content.close()
            # Another origin's challenge (the target's, or a redirect's) is not answered: that
            # would hand it our credentials.
            if resp.status_code != 401 or attempt == 1 or not self._same_origin(resp.url):
                return resp
            challenge = resp.headers.get("www-authenticate", "")
            resp.close()
            self._authenticate(challenge, push=push)
        raise AssertionError("unreachable")

    def read_small(self, resp: httpx.Response, what: str, where: str, *, limit: int = MAX_METADATA) -> bytes:
        """A manifest's, index's, listing's or answer's body, read whole in-process: capped, streamed."""
        from ..errors import UnsafeTree
        from ..safetree import read_limited

        try:
            return read_limited(resp.iter_bytes(_CHUNK), what=what, where=self._where(where), limit=limit)
        except UnsafeTree as e:
            raise OciError(e.message, where=self._where(where)) from None
        except httpx.HTTPError as e:
            raise OciError(f"{resp.request.method} failed: {reason(e)}", where=self._where(where)) from None
        finally:
            resp.close()

    def _fail(self, resp: httpx.Response, action: str, what: str) -> OciError:
        detail = ""
        try:
            body = b""
            for chunk in resp.iter_bytes(_ANSWER_LIMIT):  # an error body is read for its message only
                body += chunk
                if len(body) > _ANSWER_LIMIT:
                    raise ValueError("error body too long")
            errors = json.loads(body).get("errors") or []
            if errors and isinstance(errors[0], dict):
                detail = f" {str(errors[0].get('code', ''))[:100]}: {str(errors[0].get('message', ''))[:200]}"
        except Exception:  # noqa: BLE001 - an unreadable error body just gives a shorter message
            pass
        finally:
            resp.close()
        return OciError(f"{action}: HTTP {resp.status_code}{detail}", where=self._where(what))

    # -- blobs ---------------------------------------------------------------------------------

    def _answer(self, resp: httpx.Response, what: str) -> None:
        """Read (and drop) a success answer's body, bounded: a HEAD, upload or PUT answer says
        what it has to say in its status and headers."""
        self.read_small(resp, "registry answer", what, limit=_ANSWER_LIMIT)

    def _exists(self, kind: str, digest: str, push: bool, headers: dict | None = None) -> bool:
        """HEAD of a blob or manifest: 200 yes, 404 no, anything else an error."""
        resp = self._send("HEAD", self._url(f"{kind}s/{digest}"), headers=headers, push=push, what=f"@{digest}")
        if resp.status_code not in (200, 404):
            raise self._fail(resp, f"{kind} HEAD", f"@{digest}")
        self._answer(resp, f"@{digest}")
        return resp.status_code == 200

    def blob_exists(self, digest: str, *, push: bool = False) -> bool:
        return self._exists("blob", digest, push)

    def push_blob(self, path: Path, desc: Descriptor) -> None:
        """Monolithic upload: POST an upload session, then PUT the whole blob with ?digest=."""
        what = f"@{desc.digest}"
        resp = self._send("POST", self._url("blobs/uploads/"), push=True, what=what)
        if resp.status_code != 202 or "location" not in resp.headers:
            raise self._fail(resp, "starting blob upload", what)
        self._answer(resp, what)
        location = self.resolve_link(resp.headers["location"], header="upload Location")
        put_url = location.copy_merge_params({"digest": desc.digest})
        resp = self._send(
            "PUT",
            put_url,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            body=lambda: open(path, "rb"),
            push=True,
            what=what,
        )
        if resp.status_code != 201:
            raise self._fail(resp, "uploading blob", what)
        self._answer(resp, what)
        got = resp.headers.get("docker-content-digest")
        if got and got != desc.digest:
            raise OciError(f"registry stored the blob as {got[:100]!r}", where=self._where(what))

    def pull_blob(self, digest: str, dest: Path, *, size: int | None = None) -> Descriptor:
        """Download a blob to `dest`, verifying sha256 before it appears there.

        `size` is the descriptor's: a registry sending more is cut off there, so a 150-byte
        layer served as 200 MiB writes 150 bytes, not 200 MiB. Without it the blob is taken
        for metadata (a config, a preimage) and held to MAX_METADATA."""
        check_digest(digest)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise OciError(f"blob size {size!r} is not a byte count", where=self._where(f"@{digest}"))
        limit = size if size is not None else MAX_METADATA
        too_big = (f"blob larger than its descriptor ({size} bytes)" if size is not None
                   else f"blob larger than {MAX_METADATA >> 20} MiB, the bound for one without a size")
        what = f"@{digest}"
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        resp = self._send("GET", self._url(f"blobs/{digest}"), what=what)
        if resp.status_code != 200:
            raise self._fail(resp, "blob GET", what)
        # An announced length past the bound is refused before a byte is written (a length of
        # encoded bytes says nothing of the decoded ones, so only for an unencoded body).
        announced = resp.headers.get("content-length", "")
        plain = resp.headers.get("content-encoding", "identity") == "identity"
        if plain and announced.isdigit() and int(announced) > limit:
            resp.close()
            raise OciError(too_big, where=self._where(what))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        sha = hashlib.sha256()
        got_size = 0
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                for chunk in resp.iter_bytes(_CHUNK):
                    got_size += len(chunk)
                    if got_size > limit:
                        raise OciError(too_big, where=self._where(what))
                    sha.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size is not None and got_size != size:
                raise OciError(f"blob has {got_size} bytes, its descriptor says {size}", where=self._where(what))
            got = "sha256:" + sha.hexdigest()
            if got != digest:
                raise OciError(f"downloaded bytes have digest {got}", where=self._where(what))
            os.replace(tmp, dest)
        except httpx.HTTPError as e:
            Path(tmp).unlink(missing_ok=True)
            raise OciError(f"blob download failed: {reason(e)}", where=self._where(what)) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            resp.close()
        return Descriptor(media_type="application/octet-stream", digest=digest, size=got_size)

    # -- manifests -----------------------------------------------------------------------------

    def manifest_exists(self, digest: str, *, push: bool = False) -> bool:
        return self._exists("manifest", digest, push, {"Accept": _MANIFEST_ACCEPT})

    def push_manifest(self, data: bytes, media_type: str, ref: str) -> str:
        """PUT a manifest or index (exact bytes) under a tag or its digest; returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        what = f":{ref}" if not ref.startswith("sha256:") else f"@{ref}"
        if ref.startswith("sha256:") and ref != digest:
            raise OciError(f"manifest bytes have digest {digest}", where=self._where(what))
        resp = self._send(
            "PUT",
            self._url(f"manifests/{ref}"),
            headers={"Content-Type": media_type},
            body=lambda: data,
            push=True,
            what=what,
        )
        if resp.status_code not in (200, 201):
            raise self._fail(resp, "manifest PUT", what)
        self._answer(resp, what)
        got = resp.headers.get("docker-content-digest")
        if got and got != digest:
            raise OciError(f"registry stored the manifest as {got[:100]!r}, not {digest}", where=self._where(what))
        return digest

    def pull_manifest(self, ref_or_digest: str) -> PulledManifest:
        """GET a manifest or index by tag or digest; by digest, the bytes are verified. The
        document's shape is checked here, once: its mediaType, and every descriptor it holds
        (`PulledManifest.children`)."""
        by_digest = ref_or_digest.startswith("sha256:")
        what = f"@{ref_or_digest}" if by_digest else f":{ref_or_digest}"
        resp = self._send("GET", self._url(f"manifests/{ref_or_digest}"), headers={"Accept": _MANIFEST_ACCEPT},
                          what=what)
        if resp.status_code != 200:
            raise self._fail(resp, "manifest GET", what)
        data = self.read_small(resp, "manifest", what)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = ref_or_digest if by_digest else resp.headers.get("docker-content-digest")
        if expected and expected != digest:
            raise OciError(f"manifest bytes have digest {digest}, expected {expected[:100]!r}",
                           where=self._where(what))
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise OciError("manifest is not a JSON object", where=self._where(what))
        declared = doc.get("mediaType")
        if declared is not None and not isinstance(declared, str):
            raise OciError("manifest field mediaType is not a string", where=self._where(what))
        media_type = declared or resp.headers.get("content-type", "").split(";")[0].strip()
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            raise OciError(f"unexpected manifest media type {media_type[:100]!r}", where=self._where(what))
        children = tuple(iter_manifest_children(doc, where=self._where(what), media_type=media_type))
        return PulledManifest(Descriptor(media_type=media_type, digest=digest, size=len(data)), data, children)

    # -- layouts -------------------------------------------------------------------------------

    def push_layout(self, layout: Path | Layout, ref: str, *, tag_for: str) -> PushResult:
        """Push what the layout tag `tag_for` points at (an index with its manifests, or one
        manifest) and tag it `ref` in this repository (a `sha256:` ref pushes by digest only).

        Blobs are HEADed first and skipped when present; manifests go by digest, children
        before parents; the top document goes last, so the tag never points at something
        incomplete."""
        lay = layout if isinstance(layout, Layout) else read_layout(Path(layout))
        top = lay.resolve(tag_for)
        uploaded = skipped = pushed = m_skipped = nbytes = 0
        for desc in lay.walk(top):
            is_doc = desc.media_type in INDEX_TYPES | MANIFEST_TYPES
            if desc is top or desc.digest == top.digest:
                continue
            if is_doc:
                if self.manifest_exists(desc.digest, push=True):
                    m_skipped += 1
                    continue
                self.push_manifest(lay.read_blob(desc), desc.media_type, desc.digest)
                pushed += 1
            else:
                if self.blob_exists(desc.digest, push=True):
                    skipped += 1
                    continue
                path = lay.blob_path(desc.digest)
                if not path.is_file() or path.stat().st_size != desc.size:
                    raise OciError("blob missing or of the wrong size", where=str(path))
                self.push_blob(path, desc)
                uploaded += 1
                nbytes += desc.size
        self.push_manifest(lay.read_blob(top), top.media_type, ref)
        pushed += 1
        return PushResult(
            descriptor=Descriptor(media_type=top.media_type, digest=top.digest, size=top.size),
            reference=f"{self.registry}/{self.repository}{'@' if ref.startswith('sha256:') else ':'}{ref}",
            blobs_uploaded=uploaded,
            blobs_skipped=skipped,
            manifests_pushed=pushed,
            manifests_skipped=m_skipped,
            bytes_uploaded=nbytes,
        )


def client_for(reference: Reference, *, plain_http: bool | None = None, docker_config: Path | None = None) -> RegistryClient:
    return RegistryClient(
        reference.base_url(plain_http=plain_http), reference.repository, docker_config=docker_config
    )


def push_layout(
    layout: Path,
    ref: str,
    *,
    tag_for: str,
    plain_http: bool | None = None,
    docker_config: Path | None = None,
) -> PushResult:
    """Push layout tag `tag_for` to `ref` (`host[:port]/name:tag`)."""
    reference = Reference.parse(ref)
    with client_for(reference, plain_http=plain_http, docker_config=docker_config) as client:
        return client.push_layout(layout, reference.ref, tag_for=tag_for)
