"""A TCP proxy on loopback that can black-hole the connections it carries: stop forwarding bytes,
both ways, without closing anything (as a dead route or a stuck middlebox does; the client sees an
open connection that never delivers another byte). Connections opened after that are forwarded
as usual, so a client that gives up on a silent connection and opens a new one gets through.

Each direction of each connection has its own thread with blocking I/O: a peer that reads slowly
(or not at all) holds up only its own direction, never the other connections.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    holed: bool = False
    closed: bool = False


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
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="blackhole-proxy", daemon=True)
        self._thread.start()
        return self

    def blackhole(self) -> int:
        """Stop forwarding on every connection open now; return how many that is."""
        with self._lock:
            live = [p for p in self.pairs if not p.holed and not p.closed]
            for p in live:
                p.holed = True
            return len(live)

    def held(self) -> int:
        """Black-holed connections the client still keeps open (it has not given up on them yet)."""
        with self._lock:
            return sum(1 for p in self.pairs if p.holed and not p.closed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            pairs = list(self.pairs)
        for p in pairs:
            self._close(p)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self.pairs.append(pair)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True,
                                 name="blackhole-pump").start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if pair.holed:
                    continue  # read and drop: a close is still seen, not one byte goes through
                dst.sendall(data)
        except OSError:
            pass
        self._close(pair)

    def _close(self, pair: _Pair) -> None:
        with self._lock:
            if pair.closed:
                return
            pair.closed = True
            if pair in self.pairs:
                self.pairs.remove(pair)
        for s in (pair.client, pair.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def proxied_kubeconfig(kubeconfig: str, port: int, tmp: Path) -> str:
    """The same identity, through the proxy on `port` (the API server's certificate names 127.0.0.1)."""
    cfg = json.loads(Path(kubeconfig).read_text())  # the suite writes kubeconfigs as JSON
    for c in cfg["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out = tmp / "proxied.kubeconfig"
    out.write_text(json.dumps(cfg))
    out.chmod(0o600)
    return str(out)
