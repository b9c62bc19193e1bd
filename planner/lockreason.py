"""Why an input is unlocked, in words that do not depend on where the lock was made.

The fetch error that left an input unlocked names whatever that machine tried: a mirror's
`file:///home/…` path, a temporary folder, the package index it was configured with, its apt
sources, its resolver's wording. A lock must be the same bytes wherever `planner lock` runs, so
the `reason` it records is built only from the input's declaration (its kind, the host of the
URL the recipe gives, the apt suite it wants) and a fixed vocabulary; the machine's own error is
printed where it happened (`planner lock`'s stderr). `lock --check` refuses a reason the planner
would not write (`allowed`), so a lock carried from elsewhere or edited by hand is found.

Pure functions, standard library only.
"""

from __future__ import annotations

import itertools
import re
from typing import Optional
from urllib.parse import urlsplit

SUFFIX = " where this lock was made"

# Markers of the three facts a reason can state, matched in the lower-cased error text.
_UNREACHABLE = ("name not resolved", "could not resolve host", "name or service not known",
                "temporary failure in name resolution", "connection refused", "connection reset",
                "timed out", "network is unreachable", "no route to host", "failed to connect",
                "unable to access", "tls handshake", "certificate not trusted", "get failed")
_INCOMPLETE = ("missing blob", "did not send all necessary objects", "not our ref", "bad object",
               "unable to read", "is not reachable from any branch", "missing object", "no such commit")
_NOT_FOUND = ("404", "not found", "no such file", "does not exist", "no sdist", "no matching distribution",
              "could not find a version", "has no linux/", "does not appear to be a git repository",
              "repository not found", "couldn't find remote ref", "no branch or tag named")


def place(kind: str, url: Optional[str]) -> str:
    """Where the recipe says the input comes from, without anything a machine adds: the host of
    an http(s)/git/ssh URL or a registry reference; the index or apt sources in general."""
    if kind == "pypi":
        return "the package index"
    if kind == "apt":
        return "the apt sources"
    if not url:
        return "its origin"
    if kind == "image":
        host = url.split("/", 1)[0] if "/" in url else ""
        return host if "." in host or ":" in host or host == "localhost" else "the registry"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "its origin"
    if parts.scheme in ("http", "https", "git", "ssh", "git+ssh") and host:
        return host
    return "its origin"  # a local path or file URL: never written into a lock


def _compose(where: str, unreachable: bool, incomplete: bool, not_found: bool) -> str:
    # An unreachable origin is the whole reason: what mirrors had (or lacked) depends on which
    # mirrors this machine was given, and a lock made with `--mirror` must be the bytes of one
    # made without (a mirror that lacks the input changes nothing the origin would have said).
    if unreachable:
        return f"{where} could not be reached{SUFFIX}"
    facts = []
    if incomplete:
        facts.append("no source tried had it complete")
    if not_found:
        facts.append("no source tried had it")
    if not facts:
        facts.append(f"could not be fetched from {where} or a mirror")
    return "; ".join(facts) + SUFFIX


def portable(kind: str, url: Optional[str], suite: Optional[str], message: str) -> str:
    """The reason to record for an input of this declaration that failed with `message`."""
    # The markers are matched in the error's words, not in the URLs it names: a loopback port
    # such as 40421 holds "404", a path may hold "not found".
    low = re.sub(r"[a-z][a-z0-9+.-]*://\S*", " ", message.lower())
    if kind == "apt":
        if suite and (f"wants {suite.lower()}" in low or f"not {suite.lower()}" in low):
            return f"wants {suite}, which the apt sources{SUFFIX} do not offer"
        if "not available" in low:
            return f"not offered for one of its platforms by the apt sources{SUFFIX}"
    return _compose(place(kind, url), any(m in low for m in _UNREACHABLE), any(m in low for m in _INCOMPLETE),
                    any(m in low for m in _NOT_FOUND))


def allowed(kind: str, url: Optional[str], suite: Optional[str]) -> frozenset[str]:
    """Every reason `portable` can give for this declaration."""
    where = place(kind, url)
    out = {_compose(where, *flags) for flags in itertools.product((False, True), repeat=3)}
    if kind == "apt":
        out.add(f"not offered for one of its platforms by the apt sources{SUFFIX}")
        if suite:
            out.add(f"wants {suite}, which the apt sources{SUFFIX} do not offer")
    return frozenset(out)
