"""What a failed connection really met: refused, a name that did not resolve, TLS, a timeout.

httpx, httpcore and distributed wrap the socket's own exception; the user needs the innermost
one, in words, with what to try next. Standard library only.
"""

from __future__ import annotations

import errno
import socket
import ssl


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException)
                                                   else None)


def reason(exc: BaseException) -> str:
    """'connection refused (nothing listens there)', 'name not resolved (DNS): …', 'TLS: …',
    'timed out', or the innermost message."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {e.verify_message or e.reason}"
        if isinstance(e, ssl.SSLError):
            hint = " (a plain-HTTP server? try --plain-http)" if "WRONG_VERSION_NUMBER" in str(e) or \
                "wrong version number" in str(e) else ""
            return f"TLS handshake failed: {e.reason or e}{hint}"
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"name not resolved (DNS): {e.strerror or e}"
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused (nothing listens on that port)"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, (TimeoutError, socket.timeout)):
            return "timed out"
    text = " ".join(str(chain[-1]).split()) or type(chain[-1]).__name__
    # httpx/httpcore spell errno texts inside their own messages.
    low = " ".join(str(e) for e in chain).lower()
    if "connection refused" in low:
        return "connection refused (nothing listens on that port)"
    if "name or service not known" in low or "temporary failure in name resolution" in low \
            or "nodename nor servname" in low:
        return f"name not resolved (DNS): {text}"
    if "certificate verify failed" in low:
        return f"TLS certificate not trusted: {text}"
    if "ssl" in low or "tls" in low:
        return f"TLS handshake failed: {text}"
    if "timed out" in low or "timeout" in low:
        return f"timed out: {text}"
    return text
