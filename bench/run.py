"""Run every benchmark, one after another, and write bench/results/*.json and bench/results/README.md.

    .venv/bin/python bench/run.py                 # default sizes (about 50 minutes: the churn loop is 30)
    .venv/bin/python bench/run.py --quick         # small sizes, into bench/results/quick/ (about 2 minutes)
    .venv/bin/python bench/run.py --only status_latency --only restart_writes

Each control-plane benchmark starts its own private plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) and stops it at the end. The README table is built
from the JSON files in the output directory, so a partial run keeps the other rows (each JSON says
when and at which commit it was measured).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import HERE, RESULTS, TABLE_HEAD, Row, fmt_ms

# name -> (script, default args, --quick args). The waiter benchmark is someone else's script:
# run as is, its JSON named after it (bench/results/waiter.json stays the one its README quotes).
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "reconcile_latency": ("reconcile_latency.py", [], ["--policies", "20"]),
    "status_latency": ("status_latency.py", [], ["--changes", "30"]),
    "restart_writes": ("restart_writes.py", [], ["--policies", "20"]),
    "burst": ("burst.py", [], ["--policies", "100"]),
    "churn_memory": ("churn_memory.py", [], ["--minutes", "6", "--warmup", "1", "--policies", "10"]),
    "waiter_bench": ("waiter_bench.py", [], ["--trials", "5", "--startup-runs", "5"]),
    "webhook_latency": ("webhook_latency.py", [], ["--reviews", "100", "--creates", "60", "--rounds", "2"]),
    "noise": ("noise.py", [], ["--quick"]),  # default: 3,000 ConfigMaps x3 + 1,000 Secrets + 300 pods
}


def waiter_rows(doc: dict[str, Any]) -> list[Row]:
    """bench/waiter_bench.py writes no rows of its own: make them from its JSON."""
    rows = []
    for kind, per in (doc.get("latency") or {}).items():
        d, one, two = per["depgate"], per["fixed-1s"], per["fixed-2s"]
        for q in ("p50", "p99"):
            slowest = ", p99 = the slowest" if q == "p99" else ""
            what = (f"{kind}: dependency up -> `depgate wait {kind} --period=1` exits, vs fixed-interval pollers "
                    f"in the same trials ({doc.get('trials_per_kind')} trials{slowest})")
            ours, p1, p2 = d[f"{q}_ms"], one[f"{q}_ms"], two[f"{q}_ms"]
            rows.append(Row("waiter_bench", what, f"{q} {fmt_ms(ours)}", f"{q} {fmt_ms(p1)} (1 s); {fmt_ms(p2)} (2 s)",
                            f"{ours / p1:.2f}x; {ours / p2:.2f}x", "-", None))
    st = doc.get("startup") or {}
    if st:
        rows.append(Row("waiter_bench", f"start-up of `depgate wait tcp` (median of {st.get('runs')}, bytecode "
                                        "cached) vs `python -c pass`",
                        f"{st['depgate_wait_tcp_cached_median_ms']} ms", f"{st['python_c_pass_median_ms']} ms",
                        f"{st['depgate_wait_tcp_cached_median_ms'] / st['python_c_pass_median_ms']:.1f}x", "-", None))
    return rows


def by_how_much(r: Row) -> str:
    """'1.9x over the goal' for a ratio goal; '' when the row is not a ratio against a ratio goal."""
    try:
        got, goal = float(r.ratio.rstrip("x")), float(r.goal.lstrip("<= ").rstrip("x"))
    except ValueError:
        return ""
    return f"{got / goal:.1f}x over the goal"


def notes(name: str, doc: dict[str, Any]) -> list[str]:
    """What to read next to the rows: sizes, when, where, and where depgate's time goes."""
    m = doc.get("machine") or {}
    when = m.get("date") or "?"
    commit = (m.get("git_commit") or "?")[:10]
    if name == "waiter_bench":
        mach = doc.get("machine") or {}
        return [f"- **waiter_bench**: {doc.get('trials_per_kind')} trials per kind; {mach.get('cpus')} CPUs, load "
                f"at end {mach.get('loadavg_at_end')} (its JSON records no date or commit)."]
    dirty = m.get("operator_tree_dirty")
    dirty_note = f", with uncommitted {', '.join(dirty)}" if dirty else ""
    out = [f"- **{name}** ({when}, commit `{commit}`{dirty_note};"
           f" load {m.get('loadavg_start')} -> {m.get('loadavg_end')}): params `{json.dumps(doc.get('params'))}`."]
    if name == "reconcile_latency":
        sp = doc.get("depgate_split") or {}
        per = doc.get("per_policy") or {}
        out.append(
            "  Where depgate's time goes (p50 from the policy's create): Kopf's finalizer lands at "
            f"{fmt_ms(sp.get('create_to_finalizer', {}).get('p50_ms', 0))}, the init containers at "
            f"{fmt_ms(sp.get('create_to_init_containers', {}).get('p50_ms', 0))}, the status at "
            f"{fmt_ms(sp.get('create_to_status', {}).get('p50_ms', 0))}; a reconcile took "
            f"{doc.get('mean_reconcile_ms')} ms on average (depgate_reconcile_duration_seconds), "
            f"{per.get('reconciles')} reconciles and {per.get('api_server_reads_depgate')} reads per policy "
            f"(floor: 1 apply, {per.get('api_server_reads_floor')} reads); creates took "
            f"{fmt_ms((doc.get('create_round_trip') or {}).get('p50_ms', 0))} (p50).")
        st = doc.get("startup") or {}
        if st:
            first = (st.get("drift_probes_s_ms") or [[0, 0]])[0]
            out.append(f"  Start-up, measured apart: with {st.get('deployments_in_operator_namespace')} Deployments "
                       f"in its namespace, the operator restored a stripped Deployment promptly (< 0.5 s) only from "
                       f"{st.get('drift_prompt_after_start_s')} s after its start (first probe, at {first[0]} s: "
                       f"{fmt_ms(first[1])}); the measured rounds start after that.")
        cpu = doc.get("operator_cpu") or {}
        if cpu:
            out.append(f"  The operator process used {cpu.get('percent_of_one_core_mean')}% of one core on average "
                       f"(busiest second: {cpu.get('percent_max_1s')}%). The slowest depgate samples, with the "
                       "operator's CPU and reconciles in the second before each: "
                       + "; ".join(f"round {s['round']} at {s['at_s']} s: {fmt_ms(s['depgate_ms'])} (floor "
                                   f"{fmt_ms(s['floor_ms'])}), CPU {s.get('cpu_percent')}%, "
                                   f"{s.get('reconciles_per_s', '?')} reconciles/s, "
                                   f"{s.get('deployment_events_per_s', '?')} Deployment events/s"
                                   for s in doc.get("slowest_depgate") or []) + ".")
    if name == "status_latency":
        lat = doc.get("latency") or {}
        out.append(f"  Each change follows the previous one's status after a random pause of up to "
                   f"{(doc.get('params') or {}).get('gap_s')} s: changes a few per second, the busy case "
                   f"(fastest {fmt_ms(lat.get('min_ms', 0))}); `--gap 3` spaces them out. "
                   f"{(doc.get('per_change') or {}).get('reconciles')} reconciles and "
                   f"{(doc.get('per_change') or {}).get('api_server_reads')} reads per change.")
    if name == "status_latency" and doc.get("missed"):
        out.append(f"  {doc['missed']} changes never showed within the per-change timeout (counted as infinite).")
    if name == "burst":
        d, f = doc.get("depgate") or {}, doc.get("floor") or {}
        out.append(f"  Creating the {d.get('policies')} policies took {d.get('create_all_s')} s (depgate's side) and "
                   f"{f.get('create_all_s')} s (floor's); depgate ran {d.get('reconciles')} reconciles; its RSS was "
                   f"{d.get('rss_idle_before_mib')} MiB idle before the burst and {d.get('rss_after_mib')} MiB after; "
                   f"it went quiet {d.get('settle_s')} s after the last Applied; "
                   f"{(d.get('operator_log') or {}).get('tracebacks')} tracebacks in its log.")
    if name == "churn_memory":
        ch, rss = doc.get("changes") or {}, doc.get("rss_mib") or {}
        out.append(f"  Changes: {json.dumps(ch)}; after the loop every policy converged in "
                   f"{doc.get('converged_after_loop_s')} s; {doc.get('reconciles')} reconciles in all; RSS start "
                   f"{rss.get('start')} MiB, peak {rss.get('peak')} MiB; "
                   f"{(doc.get('operator_log') or {}).get('tracebacks')} tracebacks in the operator's log.")
    if name == "webhook_latency":
        by = doc.get("handler_count_by_outcome") or {}
        out.append(f"  Jobs created suspended (no pods); the handler answered {json.dumps(by)} (by outcome); "
                   f"the API server's own mean per call of the webhook: {doc.get('api_server_call_mean_ms')} ms; "
                   f"{(doc.get('operator_log') or {}).get('tracebacks')} tracebacks in the operator's log.")
    if name == "noise":
        b, d, op = doc.get("baseline") or {}, doc.get("depgate") or {}, doc.get("operator") or {}
        rs = doc.get("restart") or {}
        size = (doc.get("params") or {}).get("unrelated_writes")
        out.append(f"  The noise ({size} writes) took {b.get('noise_s')} s "
                   f"without the operator (writes sent in {b.get('writes_done_s')} s, pods ready at "
                   f"{b.get('pods_ready_s')} s) and {d.get('noise_s')} s with it; the operator used "
                   f"{d.get('operator_cpu_seconds_during_noise')} s of CPU during it and "
                   f"{d.get('operator_cpu_seconds_until_quiet')} s until it went quiet "
                   f"{d.get('operator_quiet_after_noise_s')} s after it (idle: {op.get('idle_cpu_percent')}% of a "
                   f"core; a flip costs {op.get('cpu_ms_per_flip_idle')} ms; {d.get('flips_under_noise')} flips "
                   f"under the noise); {d.get('operator_reconciles')} reconciles meanwhile. Restarts: among the "
                   f"unrelated objects {json.dumps(rs.get('among_unrelated'))}; with them deleted "
                   f"{json.dumps(rs.get('unrelated_deleted'))}; "
                   f"{((doc.get('operator_log') or {}).get('through_noise') or {}).get('tracebacks')} tracebacks in "
                   "the operator's log through the noise.")
    if name == "restart_writes":
        r = doc.get("restart") or {}
        shut = (doc.get("operator_log") or {}).get("first_shutdown") or {}
        out.append(f"  Stop took {r.get('stop_seconds')} s ({shut.get('warnings')} warnings, {shut.get('errors')} "
                   f"errors logged while stopping); metrics up {r.get('metrics_up_seconds')} s after the start; "
                   f"changed objects: {json.dumps(doc.get('changed')) if doc.get('changed') else 'none'}.")
    return out


def readme(out_dir: Path, ran: dict[str, str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py` from the JSON files beside this one (each has the machine facts and every",
        "sample). Speed targets live here, as ratios against a baseline measured in the same run, never in",
        "timed unit tests. Poller baselines in `status_latency` are analytic (uniform phase: p50 = period/2,",
        "p99 = 0.99 x period).",
        "",
        "Run: `make bench` or `.venv/bin/python bench/run.py` (about 50 minutes, 30 of them the churn loop; `--quick`",
        "for a smoke run into",
        "`bench/results/quick/`, `--only NAME` for one); every script takes its own size flags (`--help`).",
        "",
        TABLE_HEAD,
    ]
    foot = []
    for name in BENCHES:
        f = out_dir / f"{name}.json"
        if not f.exists():
            continue
        doc = json.loads(f.read_text())
        rows = waiter_rows(doc) if name == "waiter_bench" else [Row(**r) for r in doc.get("rows") or []]
        lines += [r.markdown() for r in rows]
        foot += notes(name, doc)
        foot += [f"  Missed ({r.depgate.split()[0]}): {r.ratio} against a goal of {r.goal}, {miss}."
                 for r in rows if r.met is False and (miss := by_how_much(r))]
    facts = {}
    for name in BENCHES:
        f = out_dir / f"{name}.json"
        if f.exists():
            facts = json.loads(f.read_text()).get("machine") or facts
            if "platform" in facts:
                break
    lines += ["", f"Machine: {facts.get('cpus')} CPUs, {facts.get('platform')}, Python {facts.get('python')}, "
                  f"Kubernetes {facts.get('kubernetes')} (local plane from `depgate dev`), Kopf {facts.get('kopf')}, "
                  f"kubernetes client {facts.get('kubernetes_client')}. The CPUs are shared with other work: "
                  "see the load averages below.", ""]
    lines += foot
    chaos = out_dir / "chaos.json"
    if chaos.exists():
        doc = json.loads(chaos.read_text())
        m = doc.get("machine") or {}
        oc = doc.get("outcome") or {}
        lines += ["", "## The fault suite (`make chaos`)", "",
                  f"Written by `make chaos` (pytest -m chaos_long tests/chaos) on {m.get('date')} at commit "
                  f"`{(m.get('git_commit') or '?')[:10]}`, {m.get('cpus')} CPUs, Kubernetes {m.get('kubernetes')}: "
                  + ", ".join(f"{v} {k}" for k, v in oc.items() if v) + f" (exit status {doc.get('exit_status')}). "
                  "Each line is what one test measured:", ""]
        lines += [f"- {line}" for line in doc.get("report") or []]
    failed = {k: v for k, v in ran.items() if v != "ok"}
    if failed:
        lines += ["", "Failed in the last run (their rows, if any, are from an earlier run): "
                  + ", ".join(f"{k} ({v})" for k, v in failed.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run), into bench/results/quick/")
    ap.add_argument("--only", action="append", choices=list(BENCHES), help="run just this one (repeatable)")
    ap.add_argument("--readme-only", action="store_true", help="run nothing; rebuild README.md from the JSON files")
    ap.add_argument("--out-dir", type=Path, default=None, help="default bench/results (quick: bench/results/quick)")
    args = ap.parse_args(argv)
    out_dir = args.out_dir or (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [n for n in BENCHES if (not args.only or n in args.only) and (HERE / BENCHES[n][0]).exists()]
    if args.readme_only:
        todo = []
    ran: dict[str, str] = {}
    t0 = time.monotonic()
    for i, name in enumerate(todo, 1):
        script, full, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full), "--out",
               str(out_dir / f"{name}.json")]
        print(f"== [{i}/{len(todo)}] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t = time.monotonic()
        proc = subprocess.run(cmd, check=False)
        ran[name] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        print(f"== [{i}/{len(todo)}] {name}: {ran[name]} in {time.monotonic() - t:.0f}s "
              f"({time.monotonic() - t0:.0f}s so far)", file=sys.stderr, flush=True)
    text = readme(out_dir, ran)
    (out_dir / "README.md").write_text(text)
    print(text)
    print(f"wrote {out_dir / 'README.md'}", file=sys.stderr)
    return 0 if all(v == "ok" for v in ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
