"""A TCP proxy on loopback that can black-hole the connections it carries: stop forwarding bytes,
both ways, without closing anything (as a dead route or a stuck middlebox does; the client sees an
open connection that never delivers another byte). Connections opened after that are forwarded
as usual, so a client that gives up on a silent connection and opens a new one gets through.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    holed: bool = False


@dataclass
class BlackholeProxy:
    target: tuple[str, int]
    port: int = 0
    pairs: list[_Pair] = field(default_factory=list)
    accepted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> BlackholeProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        self._thread.start()
        return self

    def blackhole(self) -> int:
        """Stop forwarding on every connection open now; return how many that is."""
        with self._lock:
            live = [p for p in self.pairs if not p.holed]
            for p in live:
                p.holed = True
            return len(live)

    def held(self) -> int:
        """Black-holed connections the client still keeps open (it has not given up on them yet)."""
        with self._lock:
            return sum(1 for p in self.pairs if p.holed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for p in self.pairs:
                for s in (p.client, p.upstream):
                    with contextlib.suppress(OSError):
                        s.close()
        self._listener.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.data is None:
                    client, _addr = self._listener.accept()
                    try:
                        upstream = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        client.close()
                        continue
                    pair = _Pair(client, upstream)
                    with self._lock:
                        self.pairs.append(pair)
                        self.accepted += 1
                    sel.register(client, selectors.EVENT_READ, (pair, upstream))
                    sel.register(upstream, selectors.EVENT_READ, (pair, client))
                    continue
                pair, other = key.data
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                if pair.holed:
                    # Read what arrives and drop it: a client that closes its end is seen (so
                    # `held` drops), but not one byte goes through any more, either way.
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._close(sel, pair)
                    continue
                try:
                    data = src.recv(65536)
                    if data:
                        other.sendall(data)
                except OSError:
                    data = b""
                if not data:
                    self._close(sel, pair)
        sel.close()

    def _close(self, sel: selectors.BaseSelector, pair: _Pair) -> None:
        for s in (pair.client, pair.upstream):
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()
        with self._lock:
            if pair in self.pairs:
                self.pairs.remove(pair)


def proxied_kubeconfig(kubeconfig: str, port: int, tmp: Path) -> str:
    """The same identity, through the proxy on `port` (the API server's certificate names 127.0.0.1)."""
    cfg = json.loads(Path(kubeconfig).read_text())  # the suite writes kubeconfigs as JSON
    for c in cfg["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out = tmp / "proxied.kubeconfig"
    out.write_text(json.dumps(cfg))
    out.chmod(0o600)
    return str(out)
