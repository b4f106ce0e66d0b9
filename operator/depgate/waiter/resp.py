"""RESP (the Redis protocol), by hand: encode a command, parse one reply, judge it (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from depgate.waiter.reasons import Result, clean

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import TypeAlias
else:
    from depgate.waiter._record import dataclass

MAX_BULK = 1 << 20  # PING / AUTH never need more; anything bigger is not the answer we asked for
MAX_DEPTH = 8


class ProtocolError(ValueError):
    """The bytes are not a RESP reply."""


@dataclass(frozen=True)
class RespError:
    """An error reply: `-CODE rest of the message`."""

    message: str

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0] if self.message else ""


Reply: TypeAlias = str | bytes | int | RespError | list["Reply"] | None


def encode_command(args: Sequence[str | bytes]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode("utf-8") if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _line(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > MAX_BULK:
            raise ProtocolError("line too long")
        return None
    return buf[pos:end], end + 2


def _int(raw: bytes, what: str) -> int:
    text = raw.decode("ascii", "replace")
    body = text[1:] if text.startswith("-") else text
    if not body.isdigit():
        raise ProtocolError(f"bad {what}: {clean(text, 40)!r}")
    return int(text)


def parse_reply(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Reply, int] | None:
    """Parse one reply starting at `pos`; return (reply, next position), or None when incomplete."""
    if depth > MAX_DEPTH:
        raise ProtocolError("arrays nested too deep")
    if pos >= len(buf):
        return None
    kind = buf[pos : pos + 1]
    if kind not in (b"+", b"-", b":", b"$", b"*"):
        raise ProtocolError(_not_resp(buf, pos))
    got = _line(buf, pos + 1)
    if got is None:
        return None
    line, nxt = got
    if kind == b"+":
        return line.decode("utf-8", "replace"), nxt
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), nxt
    if kind == b":":
        return _int(line, "integer"), nxt
    if kind == b"$":
        size = _int(line, "bulk length")
        if size == -1:
            return None, nxt
        if size < 0 or size > MAX_BULK:
            raise ProtocolError(f"bulk length {size} out of range")
        if len(buf) < nxt + size + 2:
            return None
        if buf[nxt + size : nxt + size + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        return buf[nxt : nxt + size], nxt + size + 2
    if kind == b"*":
        count = _int(line, "array length")
        if count == -1:
            return None, nxt
        if count < 0 or count > 1024:
            raise ProtocolError(f"array length {count} out of range")
        items: list[Reply] = []
        for _ in range(count):
            sub = parse_reply(buf, nxt, depth + 1)
            if sub is None:
                return None
            item, nxt = sub
            items.append(item)
        return items, nxt
    raise AssertionError("unreachable")  # pragma: no cover


def _not_resp(buf: bytes, pos: int) -> str:
    head = buf[pos : pos + 12].decode("ascii", "replace")
    return f"not a Redis server (reply starts with {clean(head, 20)!r})"


def judge_error(err: RespError) -> Result:
    """Classify an error reply: LOADING -> Loading, NOAUTH/WRONGPASS/... -> Auth, else Protocol."""
    code = err.code.upper()
    text = clean(err.message)
    if code == "LOADING":
        return Result("Loading", text)
    if code in ("NOAUTH", "WRONGPASS", "NOPERM", "DENIED"):
        return Result("Auth", text)
    if code == "ERR" and ("password" in text.lower() or "auth" in text.lower()):
        return Result("Auth", text)
    return Result("Protocol", text)


def judge_auth(reply: Reply) -> Result | None:
    """None when AUTH was accepted (+OK); else why not."""
    if reply == "OK":
        return None
    if isinstance(reply, RespError):
        return judge_error(reply)
    return Result("Protocol", f"unexpected answer to AUTH: {clean(repr(reply), 60)}")


def judge_ping(reply: Reply) -> Result:
    if reply == "PONG":
        return Result("Ready", "PONG")
    if isinstance(reply, RespError):
        return judge_error(reply)
    return Result("Protocol", f"unexpected answer to PING: {clean(repr(reply), 60)}")
