"""Reason classes, the result of one attempt, and exception classification (pure)."""

from __future__ import annotations

import socket
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import Final, Literal, TypeAlias

    Reason: TypeAlias = Literal[
        "DNS",
        "Refused",
        "Timeout",
        "TLS",
        "HTTPStatus",
        "NotFound",
        "Forbidden",
        "Unauthorized",
        "ChecksumMismatch",
        "TooLarge",
        "ResponseTooLarge",
        "Loading",
        "Auth",
        "Protocol",
        "NotSatisfied",
        "Ready",
    ]
else:
    from depgate.waiter._record import dataclass

REASONS: Final[tuple[Reason, ...]] = (
    "DNS",
    "Refused",
    "Timeout",
    "TLS",
    "HTTPStatus",
    "NotFound",
    "Forbidden",
    "Unauthorized",
    "ChecksumMismatch",
    "TooLarge",
    "ResponseTooLarge",
    "Loading",
    "Auth",
    "Protocol",
    "NotSatisfied",
    "Ready",
)

# Failures that retrying at once would only repeat, at a cost (a whole download, a full read): the
# pause after one is the whole --period, even inside the fast window (see loop.run).
DETERMINISTIC: Final[frozenset[Reason]] = frozenset({"ChecksumMismatch", "TooLarge", "ResponseTooLarge"})

MAX_MESSAGE: Final = 400  # a long API server message plus our hint still fits


def clean(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line, printable, at most `limit` characters: safe for logs and the termination log."""
    out = "".join(ch if ch.isprintable() else " " for ch in text)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class Result:
    """What one attempt (or one observation inside a long attempt) found."""

    reason: Reason
    message: str

    @property
    def ready(self) -> bool:
        return self.reason == "Ready"

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class Failed(Exception):
    """Raised by a check for a classified failure."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.result = Result(reason, clean(message))


def classify(exc: BaseException) -> Result:
    """Map an exception raised during an attempt to a reason class and a stable message."""
    if isinstance(exc, Failed):
        return exc.result
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLError):
        if isinstance(exc, ssl.SSLCertVerificationError):
            detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            return Result("TLS", clean(f"certificate verify failed: {detail}"))
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return Result("TLS", "connection closed during the TLS handshake")
        return Result("TLS", clean(str(getattr(exc, "reason", None) or exc)))
    if ssl is not None and isinstance(exc, ssl.CertificateError):  # pragma: no cover - alias since 3.7
        return Result("TLS", clean(f"certificate error: {exc}"))
    client = sys.modules.get("http.client")
    if client is not None and isinstance(exc, client.HTTPException):
        if isinstance(exc, client.RemoteDisconnected):
            return Result("Protocol", "server closed the connection without a response")
        if isinstance(exc, client.IncompleteRead):
            return Result("Protocol", "response body ended early")
        return Result("Protocol", clean(f"bad HTTP response: {type(exc).__name__}"))
    if isinstance(exc, TimeoutError):
        return Result("Timeout", "no answer within the attempt timeout")
    if isinstance(exc, socket.gaierror):
        return Result("DNS", clean(exc.strerror or str(exc)).lower())
    if isinstance(exc, ConnectionRefusedError):
        return Result("Refused", "connection refused")
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return Result("Refused", "connection reset by peer")
    if isinstance(exc, OSError):
        return Result("Refused", clean(exc.strerror or str(exc)).lower())
    if isinstance(exc, ValueError | UnicodeError | KeyError | TypeError):
        return Result("Protocol", clean(f"unexpected answer: {type(exc).__name__}: {exc}"))
    return Result("Protocol", clean(f"{type(exc).__name__}: {exc}"))
