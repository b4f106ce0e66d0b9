"""How soon after a dependency comes up does each waiter let the pod go on? And how fast does it start?

Side by side in one run, for a TCP listener and an HTTP server that flip from down (refused /
503) to up (listening / 200) at a random moment, the time from "up" to the waiter's exit for:

  depgate     `python -m depgate wait tcp|http --period=1` (backoff from 50 ms, capped at 1 s, jitter)
  fixed-1s    a minimal fixed-interval loop, as wait-for-it / dockerize / wait4x poll (every 1 s)
  fixed-2s    the same every 2 s, as kubernetes-entrypoint and k8s-wait-for poll

All three run at once, as subprocesses, against the same dependency in every trial. Then the
waiter's start-up: `python -m depgate wait tcp` against an already-open port (median of 20 runs)
beside `python -c pass`, the interpreter's floor.

    .venv/bin/python bench/waiter_bench.py [--trials 30] [--out bench/results/waiter.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PYTHON = sys.executable
HERE = Path(__file__).resolve().parent

# A fixed-interval poller written like wait-for-it's loop: try, and if not up, sleep the interval.
POLLER = r"""
import socket, sys, time, urllib.request
kind, target, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
attempts = 0
while True:
    attempts += 1
    try:
        if kind == "tcp":
            host, port = target.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        with urllib.request.urlopen(target, timeout=1) as resp:
            if resp.status == 200:
                break
    except OSError:
        pass
    time.sleep(interval)
print(f"{attempts} attempts", file=sys.stderr)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flipping:
    """A dependency that is down until `up()`: a TCP port nobody listens on, or an HTTP 503."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.is_up = False
        self.listener: socket.socket | None = None
        self.httpd: ThreadingHTTPServer | None = None
        if kind == "tcp":
            self.port = free_port()
            self.target = f"127.0.0.1:{self.port}"
        else:
            flip = self

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    self.send_response(200 if flip.is_up else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                def log_message(self, format: str, *args: object) -> None:
                    pass

            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.httpd.daemon_threads = True
            self.port = int(self.httpd.server_address[1])
            self.target = f"http://127.0.0.1:{self.port}/healthz"
            threading.Thread(
                target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()

    def up(self) -> float:
        if self.kind == "tcp":
            self.listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self.is_up = True
        return time.monotonic()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def commands(kind: str, target: str) -> dict[str, list[str]]:
    if kind == "tcp":
        host, port = target.rsplit(":", 1)
        ours = ["tcp", f"--host={host}", f"--port={port}"]
    else:
        ours = ["http", f"--url={target}"]
    return {
        "depgate": [
            PYTHON,
            "-m",
            "depgate",
            "wait",
            *ours,
            "--period=1",
            "--timeout=60",
            "--termination-log=",
        ],
        "fixed-1s": [PYTHON, "-c", POLLER, kind, target, "1"],
        "fixed-2s": [PYTHON, "-c", POLLER, kind, target, "2"],
    }


def run_trial(kind: str, delay: float) -> dict[str, dict[str, float]]:
    """Start every waiter, bring the dependency up after `delay` s, time each exit from that moment."""
    dep = Flipping(kind)
    exits: dict[str, float] = {}
    codes: dict[str, int] = {}
    attempts: dict[str, float] = {}
    procs: dict[str, subprocess.Popen[str]] = {}
    threads = []
    try:
        for name, cmd in commands(kind, dep.target).items():
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def watch(name: str, proc: subprocess.Popen[str]) -> None:
            _, err = proc.communicate()
            exits[name] = time.monotonic()
            found = re.search(r"\((\d+) attempts?\)|(\d+) attempts", err)
            attempts[name] = float(next(g for g in found.groups() if g)) if found else float("nan")
            codes[name] = proc.returncode

        for name, proc in procs.items():
            t = threading.Thread(target=watch, args=(name, proc), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(delay)  # the bench's own schedule: the dependency comes up at a random moment
        if exits:
            raise SystemExit(f"{sorted(exits)} exited before the dependency was up")
        up_at = dep.up()
        for t in threads:
            t.join(30)
        failed = {name: codes.get(name) for name in procs if codes.get(name) != 0}
        if failed:
            raise SystemExit(f"waiters failed (exit codes): {failed}")
        return {name: {"latency": exits[name] - up_at, "attempts": attempts[name]} for name in procs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        dep.close()


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 30 samples, p99 is the largest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - start)
    return out


def startup(runs: int) -> dict[str, float]:
    """Median wall time of `depgate wait tcp` against an open port, and of `python -c pass`.

    "cached": bytecode compiled once into a private cache (PYTHONPYCACHEPREFIX), as in an image
    built with compileall; "uncached": PYTHONDONTWRITEBYTECODE=1, every start compiles the sources.
    """
    cached = dict(os.environ)
    cached.pop("PYTHONDONTWRITEBYTECODE", None)
    cached["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="depgate-bench-pyc-")
    uncached = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    uncached.pop("PYTHONPYCACHEPREFIX", None)
    floor = [PYTHON, "-c", "pass"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        wait = [
            PYTHON,
            "-m",
            "depgate",
            "wait",
            "tcp",
            "--host=127.0.0.1",
            f"--port={port}",
            "--termination-log=",
        ]
        timed(wait, 2, cached)  # fill the bytecode cache and the page cache
        timed(floor, 2, cached)
        ms = {
            "depgate_wait_tcp_cached": statistics.median(timed(wait, runs, cached)),
            "depgate_wait_tcp_uncached": statistics.median(timed(wait, runs, uncached)),
            "python_c_pass": statistics.median(timed(floor, runs, cached)),
        }
    result = {f"{k}_median_ms": round(v * 1000, 1) for k, v in ms.items()}
    result["overhead_cached_ms"] = round((ms["depgate_wait_tcp_cached"] - ms["python_c_pass"]) * 1000, 1)
    result["runs"] = runs
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30, help="trials per dependency kind (default 30)")
    ap.add_argument("--min-delay", type=float, default=1.0, help="earliest the dependency comes up (s)")
    ap.add_argument("--max-delay", type=float, default=6.0, help="latest the dependency comes up (s)")
    ap.add_argument("--startup-runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "waiter.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    waiters = list(commands("tcp", "127.0.0.1:1"))

    results: dict[str, object] = {}
    for kind in ("tcp", "http"):
        samples: dict[str, list[float]] = {w: [] for w in waiters}
        tries: dict[str, list[float]] = {w: [] for w in waiters}
        for i in range(args.trials):
            delay = rng.uniform(args.min_delay, args.max_delay)
            trial = run_trial(kind, delay)
            for w in waiters:
                samples[w].append(trial[w]["latency"])
                tries[w].append(trial[w]["attempts"])
            print(
                f"{kind} trial {i + 1}/{args.trials}: up at {delay:.2f}s; "
                + ", ".join(f"{w} {trial[w]['latency'] * 1000:.0f} ms" for w in waiters),
                file=sys.stderr,
            )
        results[kind] = {
            w: {
                "p50_ms": round(pct(samples[w], 50) * 1000, 1),
                "p99_ms": round(pct(samples[w], 99) * 1000, 1),
                "mean_ms": round(statistics.fmean(samples[w]) * 1000, 1),
                "mean_attempts": round(statistics.fmean(tries[w]), 1),
                "samples_ms": [round(s * 1000, 1) for s in samples[w]],
            }
            for w in waiters
        }

    start = startup(args.startup_runs)
    report = {
        "what": "seconds from dependency-up to waiter exit; waiter start-up time",
        "trials_per_kind": args.trials,
        "up_delay_s": [args.min_delay, args.max_delay],
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "latency": results,
        "startup": start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\ntime from dependency-up to waiter exit ({args.trials} trials per kind, up at "
        f"U({args.min_delay:g}, {args.max_delay:g}) s)"
    )
    print(f"{'kind':6} {'waiter':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'attempts':>9}")
    for kind, per in results.items():
        assert isinstance(per, dict)
        for w, r in per.items():
            cells = f"{r['p50_ms']:8.0f} {r['p99_ms']:8.0f} {r['mean_ms']:8.0f} {r['mean_attempts']:9.1f}"
            print(f"{kind:6} {w:10} {cells}")
    print(
        f"\nstart-up, median of {start['runs']:g}:"
        f" depgate wait tcp {start['depgate_wait_tcp_cached_median_ms']} ms"
        f" (bytecode cached; {start['depgate_wait_tcp_uncached_median_ms']} ms uncached),"
        f" python -c pass {start['python_c_pass_median_ms']} ms"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
