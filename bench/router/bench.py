#!/usr/bin/env python3
"""pg_exactly_router against direct calls, and four shards against one, with pgbench.

Started by bench/router/run, which starts five clusters under $ROUTER_BENCH_DIR: shard0 ..
shard3 (pg_exactly, numbered 0-3 by exactly.set_shard) and router, each on a unix socket in
its own directory (ports 5432-5436). This script fills the shards (shard.sql), creates two
router databases in the router cluster, r1 (server `exactly` with one partition: shard0)
and r4 (four partitions: shard0-shard3), and runs:

1. overhead: the same pgbench script run directly on shard0 (`direct`), through r1 and
   through r4, at each of --clients: routed/direct throughput ratios, and the latency a
   routed call adds (pgbench's mean latency, routed minus direct, within one round);
2. scale: the hot workload (one tenant) and the spread workload (100 tenants) through r1
   and r4, at each of --scale-clients, with the CPU each cluster used. The spread workload
   also runs without the router on one shard (`direct`) and on all four at once (`direct4`:
   one pgbench per shard with a quarter of the clients), to tell what four clusters on this
   machine cost from what the router costs.

Each pgbench run lasts --seconds; its first second is left out of every figure (backends
starting, the router's backends opening their connections to the shards, which PL/Proxy then
keeps): rates, latencies and CPU are those of the rest of the run, from pgbench's progress
report (-P 1) and CPU samples taken at the end of the first second and at the end.

Every point is run --rounds times; in each round every case runs once, the order rotating
from round to round so that a drift in the machine's speed hits all cases alike. Results are
medians of per-round ratios (or differences): the machine is shared and noisy.

CPU of a cluster: utime + stime of its postmaster and every living child (from
/proc/PID/stat), plus the postmaster's cutime + cstime (the children it has reaped:
backends that ended during the run). pgbench's: its process's, from /proc and getrusage.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_DIR = Path(os.environ["ROUTER_BENCH_DIR"])
BUILD = os.environ.get("ROUTER_BENCH_BUILD", "release")
SHARDS = 4
NAMES = [f"shard{k}" for k in range(SHARDS)] + ["router"]
PORTS = {name: 5432 + i for i, name in enumerate(NAMES)}
TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count()


def case_runs(case, clients):
    """The pgbench processes of a case: (cluster, database, clients, protocol) each."""
    return {
        "direct": [("shard0", "postgres", clients, "prepared")],
        "direct_unprepared": [("shard0", "postgres", clients, "extended")],
        "r1": [("router", "r1", clients, "prepared")],
        "r4": [("router", "r4", clients, "prepared")],
        "direct4": [(f"shard{k}", "postgres", max(clients // SHARDS, 1), "prepared") for k in range(SHARDS)],
    }[case]


CASE_LABEL = {"direct": "direct, shard0", "direct_unprepared": "direct, shard0, unprepared (-M extended)", "r1": "router, 1 partition", "r4": "router, 4 partitions",
              "direct4": "direct, 4 shards at once"}

# workload -> (script, query counting the calls a shard has served, or None)
WORKLOADS = {
    "invoices_spread": ("invoices_spread.pgbench",
                        "SELECT coalesce(sum(next_value), 0) FROM exactly.invoice_sequences"),
    "invoices_hot": ("invoices_hot.pgbench",
                     "SELECT coalesce(sum(next_value), 0) FROM exactly.invoice_sequences"),
    "ledger_spread": ("ledger_spread.pgbench", "SELECT coalesce(sum(entries), 0) FROM exactly.accounts"),
    "find_existing": ("find_existing.pgbench", None),
}
OVERHEAD_WORKLOADS = ["invoices_spread", "ledger_spread", "find_existing"]
# workload -> the cases of the scale part
SCALE_WORKLOADS = {"invoices_hot": ["r1", "r4"], "invoices_spread": ["r1", "r4", "direct", "direct4"]}


def env_of(cluster, db="postgres"):
    return dict(os.environ, PGHOST=str(BENCH_DIR / cluster), PGPORT=str(PORTS[cluster]),
                PGUSER="postgres", PGDATABASE=db)


def psql(cluster, *commands, db="postgres", variables=(), file=None):
    """Runs each command (its own transaction); returns the last one's unaligned output."""
    argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for v in variables:
        argv += ["-v", v]
    for c in commands:
        argv += ["-c", c]
    if file:
        argv += ["-f", str(file)]
    out = subprocess.run(argv, env=env_of(cluster, db), check=True, capture_output=True, text=True)
    return out.stdout.strip()


def setup():
    for k in range(SHARDS):
        psql(f"shard{k}", file=HERE / "shard.sql", variables=[f"shard={k}"])
    options = lambda n: ", ".join(
        f"p{k} 'host={BENCH_DIR / f'shard{k}'} port={PORTS[f'shard{k}']} dbname=postgres'" for k in range(n))
    for db, n in (("r1", 1), ("r4", SHARDS)):
        psql("router", f"CREATE DATABASE {db}")
        psql("router", "CREATE EXTENSION pg_exactly_router CASCADE",
             f"CREATE SERVER exactly FOREIGN DATA WRAPPER plproxy OPTIONS ({options(n)})",
             "CREATE USER MAPPING FOR PUBLIC SERVER exactly OPTIONS (user 'postgres')", db=db)
        bad = psql("router", "SELECT string_agg(shard || ': ' || problem, '; ') FROM exactly.router_shards() WHERE NOT ok",
                   db=db)
        if bad:
            sys.exit(f"router database {db}: {bad}")


def keys_per_shard():
    """How the router r4 spreads the scripts' keys over its four shards."""
    def dist(expr, n):
        rows = psql("router", f"SELECT s, count(*) FROM (SELECT {expr} AS s FROM generate_series(1, {n}) i) x "
                              "GROUP BY s ORDER BY s", db="r4")
        counts = dict(line.split("|") for line in rows.splitlines())
        return " / ".join(counts.get(str(k), "0") for k in range(SHARDS))
    return {
        "tenants t1..t100": dist("exactly.shard_for('t' || i)", 100),
        "accounts account-1..10000": dist("exactly.shard_for('account-' || i)", 10000),
        "keys k1..k100000 of counter_caches": dist(
            "exactly.shard_for_row('counter_caches', jsonb_build_object('key', 'k' || i))", 100000),
        "tenant hot": f"shard {psql('router', 'SELECT exactly.shard_for($$hot$$)', db='r4')}",
    }


def postmaster_pid(cluster):
    return int((BENCH_DIR / cluster / "data" / "postmaster.pid").read_text().split()[0])


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name: [0] is state (field 3)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cpu_ticks():
    """Clock ticks used so far by each cluster (postmaster, its living and reaped children)."""
    pms = {postmaster_pid(c): c for c in NAMES}
    ticks = dict.fromkeys(NAMES, 0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            f = stat_fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        pid, ppid = int(entry.name), int(f[1])
        utime, stime, cutime, cstime = (int(x) for x in f[11:15])
        if pid in pms:
            ticks[pms[pid]] += utime + stime + cutime + cstime
        elif ppid in pms:
            ticks[pms[ppid]] += utime + stime
    return ticks


def machine_ticks():
    """(busy, total) clock ticks of all cores, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(f[:8])
    return total - f[3] - f[4], total


def served(workload, vacuum=False):
    """Per shard, the calls it has served so far (None when the workload has no counter).
    vacuum: first VACUUM pg_exactly's busy tables, so every run starts alike."""
    query = WORKLOADS[workload][1]
    commands = (["VACUUM exactly.invoice_sequences, exactly.accounts, exactly.payments"] if vacuum else []) + \
               ([query] if query else [])
    if not commands:
        return None
    with ThreadPoolExecutor(SHARDS) as pool:
        outs = list(pool.map(lambda k: psql(f"shard{k}", *commands), range(SHARDS)))
    return [int(out) for out in outs] if query else None


class Pgbench:
    """One pgbench process; a thread reads its progress report."""

    def __init__(self, script, cluster, db, clients, protocol, seconds):
        self.proc = subprocess.Popen(
            ["pgbench", "-n", "-M", protocol, "-P", "1", "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(seconds), "-f", str(script), db],
            env=env_of(cluster, db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = threading.Event()
        self.first_calls, self.progress, self.errors = 0.0, [], []
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        for line in self.proc.stderr:
            m = re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", line)
            if not m:
                self.errors.append(line)
            elif not self.first.is_set():
                self.first_calls = float(m.group(1)) * float(m.group(2))
                self.first.set()
            else:
                self.progress.append((float(m.group(2)), float(m.group(3))))
        self.first.set()  # pgbench ended (or failed) before its first report

    def finish(self, what):
        out = self.proc.stdout.read()
        self.thread.join()
        if self.proc.wait() != 0 or not self.progress:
            sys.exit(f"{what}: pgbench failed or ended within its first second\n{out}{''.join(self.errors)}")
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if failed and int(failed.group(1)) > 0:
            sys.exit(f"{what}: {failed.group(1)} transactions failed\n{out}")
        # the calls after the first progress report
        return int(re.search(r"number of transactions actually processed: (\d+)", out).group(1)) - round(self.first_calls)


def process_ticks(pid):
    f = stat_fields(pid)
    return int(f[11]) + int(f[12])


def run(workload, case, clients, seconds):
    """One run of a case (one pgbench, or one per shard for direct4), measured after its first second."""
    script = HERE / WORKLOADS[workload][0]
    before_served = served(workload, vacuum=True)
    time.sleep(0.2)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    benches = [Pgbench(script, cluster, db, c, protocol, seconds) for cluster, db, c, protocol in case_runs(case, clients)]
    for b in benches:
        b.first.wait()
    start_at, start_cpu, start_machine = time.monotonic(), cpu_ticks(), machine_ticks()
    try:
        start_pgbench = sum(process_ticks(b.proc.pid) for b in benches) / TICK
    except FileNotFoundError:
        start_pgbench = 0.0
    calls = sum(b.finish(f"{workload} {case} clients={clients}") for b in benches)
    end_at, end_machine = time.monotonic(), machine_ticks()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)  # backends of the run end, the postmasters reap them
    end_cpu = cpu_ticks()
    after_served = served(workload)
    pgbench_cpu = (children_after.ru_utime + children_after.ru_stime
                   - children_before.ru_utime - children_before.ru_stime) - start_pgbench
    wall = end_at - start_at
    cpu = {c: (end_cpu[c] - start_cpu[c]) / TICK for c in NAMES}
    busy = (end_machine[0] - start_machine[0]) / max(end_machine[1] - start_machine[1], 1)
    progress = [p for b in benches for p in b.progress]
    served_counts = None if before_served is None else [a - b for a, b in zip(after_served, before_served)]
    return {
        "tps": calls / wall,
        "calls": calls,
        # mean latency of the measured calls (each second's report weighted by its calls)
        "latency_ms": sum(t * l for t, l in progress) / max(sum(t for t, _ in progress), 1e-9),
        "cpu": cpu,
        "pgbench_cpu": pgbench_cpu,
        "busy": busy,
        # the part of the cores' busy time that was not our clusters' or pgbench's
        "others": max(busy - (sum(cpu.values()) + pgbench_cpu) / (wall * NCPU), 0),
        # per shard, its share of the run's calls (from its counters) applied to the measured calls
        "served": None if served_counts is None else
        [calls * s / sum(served_counts) if sum(served_counts) else 0 for s in served_counts],
    }


def run_point(workload, clients, cases, args):
    """rounds x cases, the order rotating; returns a list of {case: result} per round."""
    rounds = []
    for r in range(args.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        results = {case: run(workload, case, clients, args.seconds) for case in order}
        rounds.append(results)
        print(f"{workload} clients={clients} round={r + 1}: " + "  ".join(
            f"{case} {results[case]['tps']:.0f}/s {results[case]['latency_ms'] * 1000:.0f}us "
            f"(others {results[case]['others']:.0%})" for case in cases), file=sys.stderr, flush=True)
    return rounds


def med(xs):
    return statistics.median(xs)


def rate(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.4g}"


def per_1000(cpu_seconds, calls):
    """CPU milliseconds per 1,000 calls."""
    return 1e6 * cpu_seconds / calls if calls else float("nan")


def shards_cpu(x):
    return sum(x["cpu"][f"shard{k}"] for k in range(SHARDS))


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def print_overhead(overhead):
    print("#### Overhead of a routed call\n")
    print("The same script run directly on shard0, through router database r1 (one partition: shard0) and "
          "through r4 (four partitions, shard0-shard3). Added latency: routed minus direct mean latency per "
          "call in the same round (at 16 clients it includes waiting for a core).\n")
    print("| workload | clients | direct calls/s | 1 partition calls/s | 4 partitions calls/s "
          "| 1 partition / direct | 4 partitions / direct | added latency, 1 partition | added latency, 4 partitions "
          "| per-round ratios (1 p.; 4 p.) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for workload, c, rounds in overhead:
        cells = [workload, str(c)] + [rate(med([r[case]["tps"] for r in rounds])) for case in ("direct", "r1", "r4")]
        ratios = {case: [r[case]["tps"] / r["direct"]["tps"] for r in rounds] for case in ("r1", "r4")}
        added = {case: [1000 * (r[case]["latency_ms"] - r["direct"]["latency_ms"]) for r in rounds]
                 for case in ("r1", "r4")}
        cells += [f"**{med(ratios['r1']):.2f}x**", f"**{med(ratios['r4']):.2f}x**",
                  f"{med(added['r1']):+.0f} µs", f"{med(added['r4']):+.0f} µs",
                  " ".join(f"{x:.2f}" for x in ratios["r1"]) + "; " + " ".join(f"{x:.2f}" for x in ratios["r4"])]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Where the time and the CPU go (medians over the rounds, per call; router: the router cluster's "
          "processes, shards: the four shard clusters', pgbench: the client; machine busy: of all cores, "
          "in brackets the part that was not ours, i.e. other work on the machine):\n")
    print("| workload | clients | case | latency | router CPU | shards' CPU | pgbench CPU | machine busy (not ours) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for workload, c, rounds in overhead:
        for case in ("direct", "r1", "r4"):
            rs = [r[case] for r in rounds]
            router = med([1e6 * x["cpu"]["router"] / x["calls"] for x in rs])
            shards = med([1e6 * shards_cpu(x) / x["calls"] for x in rs])
            client = med([1e6 * x["pgbench_cpu"] / x["calls"] for x in rs])
            print(f"| {workload} | {c} | {CASE_LABEL[case]} | {med([x['latency_ms'] for x in rs]) * 1000:.0f} µs "
                  f"| {router:.0f} µs | {shards:.0f} µs | {client:.0f} µs "
                  f"| {med([x['busy'] for x in rs]):.0%} ({med([x['others'] for x in rs]):.0%}) |")
    print()


def print_scale(scale):
    print("#### Four shards against one\n")
    print("Through router r1 (shard0 alone) and r4 (shard0-shard3, each its own cluster); for the spread "
          "workload also without the router: the same clients on shard0 alone, and split over the four shards "
          "at once (one pgbench per shard, a quarter of the clients each).\n")
    print("| workload | clients | 1 shard calls/s | 4 shards calls/s | 4 shards / 1 shard | per-round ratios "
          "| without router: 4 shards / 1 shard (per round) | machine busy (not ours), 1 shard; 4 shards |")
    print("|---|---:|---:|---:|---:|---|---|---:|")
    for workload, c, rounds in scale:
        ratios = [r["r4"]["tps"] / r["r1"]["tps"] for r in rounds]
        direct = ""
        if "direct4" in rounds[0]:
            d = [r["direct4"]["tps"] / r["direct"]["tps"] for r in rounds]
            direct = (f"{med(d):.2f}x ({' '.join(f'{x:.2f}' for x in d)}; "
                      f"{rate(med([r['direct']['tps'] for r in rounds]))} → "
                      f"{rate(med([r['direct4']['tps'] for r in rounds]))} calls/s)")
        print(f"| {workload} | {c} | {rate(med([r['r1']['tps'] for r in rounds]))} "
              f"| {rate(med([r['r4']['tps'] for r in rounds]))} | **{med(ratios):.2f}x** "
              f"| {' '.join(f'{x:.2f}' for x in ratios)} | {direct} "
              f"| {med([r['r1']['busy'] for r in rounds]):.0%} ({med([r['r1']['others'] for r in rounds]):.0%}); "
              f"{med([r['r4']['busy'] for r in rounds]):.0%} ({med([r['r4']['others'] for r in rounds]):.0%}) |")
    print()
    print("CPU per cluster (medians over the rounds): CPU seconds in the measured part of a run, and CPU "
          "milliseconds per 1,000 calls, of all the run's calls and of the calls that shard served (its share "
          "of the run's calls, from its counters):\n")
    print("| workload | clients | case | process | CPU s | calls | ms per 1,000 calls (all) | ms per 1,000 calls served |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for workload, c, rounds in scale:
        for case in rounds[0]:
            rs = [r[case] for r in rounds]
            used = {"direct": ["shard0"], "r1": ["router", "shard0"],
                    "r4": ["router"] + [f"shard{k}" for k in range(SHARDS)],
                    "direct4": [f"shard{k}" for k in range(SHARDS)]}[case] + ["pgbench"]
            for proc in used:
                cpu = [x["pgbench_cpu"] if proc == "pgbench" else x["cpu"][proc] for x in rs]
                per_all = med([per_1000(cpu[i], rs[i]["calls"]) for i in range(len(rs))])
                if proc.startswith("shard"):
                    k = int(proc[5:])
                    calls = med([x["served"][k] for x in rs])
                    per_served = med([per_1000(cpu[i], rs[i]["served"][k]) for i in range(len(rs))])
                    served_cells = (f"{calls:.0f}", "" if per_served != per_served else f"{per_served:.0f}")
                else:
                    served_cells = (f"{med([x['calls'] for x in rs]):.0f}", f"{per_all:.0f}")
                print(f"| {workload} | {c} | {CASE_LABEL[case]} | {proc} | {med(cpu):.2f} | {served_cells[0]} "
                      f"| {per_all:.0f} | {served_cells[1]} |")
    print()
    for workload, c, rounds in scale:
        r1, r4 = [r["r1"] for r in rounds], [r["r4"] for r in rounds]
        router1 = med([per_1000(x["cpu"]["router"], x["calls"]) for x in r1])
        router4 = med([per_1000(x["cpu"]["router"], x["calls"]) for x in r4])
        shard1 = med([per_1000(x["cpu"]["shard0"], x["calls"]) for x in r1])
        shard4 = med([per_1000(shards_cpu(x), x["calls"]) for x in r4])
        each = " / ".join(f"{med([per_1000(x['cpu'][f'shard{k}'], x['calls']) for x in r4]):.0f}" for k in range(SHARDS))
        line = (f"- {workload}, {c} clients: per 1,000 calls, the router used {router1:.0f} ms of CPU with one "
                f"shard and {router4:.0f} ms with four; one shard alone {shard1:.0f} ms; four shards "
                f"{shard4:.0f} ms together (shard 0 / 1 / 2 / 3: {each} ms). ")
        if workload.endswith("hot"):
            line += ("Every call is on the tenant's one shard: the other shards idle, and four shards cannot "
                     "serve one key faster than one.")
        else:
            low, high = min(shard1, shard4), max(shard1, shard4)
            line += (f"CPU alone would let a core of a shard serve {1e6 / high:,.0f}-{1e6 / low:,.0f} calls/s of its "
                     f"keys and a core of the router route {1e6 / max(router1, router4):,.0f}-"
                     f"{1e6 / min(router1, router4):,.0f} calls/s: with the keys spread evenly over four shards of "
                     f"N cores each, about {4e6 / high:,.0f}-{4e6 / low:,.0f} x N calls/s, for which the router "
                     f"needs {4 * min(router1, router4) / high:.1f}-{4 * max(router1, router4) / low:.1f} x N cores "
                     "(CPU only: a call also waits for its commit's flush; here all five clusters and pgbench "
                     f"share {NCPU} cores).")
        print(line)
    print()


def print_protocol(protocol):
    print("#### A shard's side: prepared against unprepared statements\n")
    print("PL/Proxy sends each call to its shard as an unnamed statement (parse, bind, execute), so the shard "
          "parses and plans it on every call; pgbench -M extended does the same. Directly on shard0, one client:\n")
    print("| workload | prepared calls/s | unprepared calls/s | unprepared / prepared | added latency "
          "| shard CPU per call, prepared | unprepared |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for workload, c, rounds in protocol:
        ratio = med([r["direct_unprepared"]["tps"] / r["direct"]["tps"] for r in rounds])
        added = med([1000 * (r["direct_unprepared"]["latency_ms"] - r["direct"]["latency_ms"]) for r in rounds])
        cpu = {case: med([1e6 * shards_cpu(r[case]) / r[case]["calls"] for r in rounds])
               for case in ("direct", "direct_unprepared")}
        print(f"| {workload} | {rate(med([r['direct']['tps'] for r in rounds]))} "
              f"| {rate(med([r['direct_unprepared']['tps'] for r in rounds]))} | **{ratio:.2f}x** | {added:+.0f} µs "
              f"| {cpu['direct']:.0f} µs | {cpu['direct_unprepared']:.0f} µs |")
    print()


def installed():
    """Modification times of the installed pg_exactly and pg_exactly_router files."""
    def pg_config(flag):
        return subprocess.run(["pg_config", flag], check=True, capture_output=True, text=True).stdout.strip()
    files = [Path(pg_config("--pkglibdir")) / "pg_exactly.so"] + \
        sorted((Path(pg_config("--sharedir")) / "extension").glob("pg_exactly*"))
    return {str(f): f.stat().st_mtime for f in files if f.exists()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of one pgbench run, its first second unmeasured")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point")
    parser.add_argument("--clients", default="1,16", help="client counts of the overhead part")
    parser.add_argument("--scale-clients", default="16,64", help="client counts of the 1-vs-4-shards part")
    parser.add_argument("--parts", default="overhead,scale",
                        help="overhead, scale, protocol (not by default: a shard's prepared against unprepared calls)")
    args = parser.parse_args()
    if args.seconds < 2:
        sys.exit("--seconds: at least 2 (the first second is not measured)")
    parts = args.parts.split(",")

    print("== filling the shards; router databases r1 (1 partition) and r4 (4)", file=sys.stderr, flush=True)
    files_before = installed()
    setup()
    spread = keys_per_shard()
    server = psql("router", "SHOW server_version").split()[0]

    overhead, scale = [], []
    if "overhead" in parts:
        for workload in OVERHEAD_WORKLOADS:
            for c in (int(x) for x in args.clients.split(",")):
                overhead.append((workload, c, run_point(workload, c, ["direct", "r1", "r4"], args)))
    protocol = []
    if "protocol" in parts:
        for workload in OVERHEAD_WORKLOADS:
            protocol.append((workload, 1, run_point(workload, 1, ["direct", "direct_unprepared"], args)))
    if "scale" in parts:
        for workload, cases in SCALE_WORKLOADS.items():
            for c in (int(x) for x in args.scale_clients.split(",")):
                scale.append((workload, c, run_point(workload, c, cases, args)))

    command = ("bash bench/router/run" + (" --no-install" if BUILD != "release" else "")
               + f" --seconds {args.seconds} --rounds {args.rounds} --clients {args.clients}"
               + f" --scale-clients {args.scale_clients}"
               + (f" --parts {args.parts}" if args.parts != "overhead,scale" else ""))
    build = "release build" if BUILD == "release" else "the build installed beforehand (--no-install)"
    print("### router: routed calls against direct ones, four shards against one\n")
    print(f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"- machine: {NCPU} cores, {cpu_model()}; PostgreSQL {server}, pg_exactly {build}; "
          "five clusters (4 shards, 1 router) and pgbench all on these cores")
    print(f"- command: `{command}`")
    print(f"- pgbench -M prepared, {args.seconds} s per run of which the first second is not measured, "
          f"{args.rounds} rounds per point, order rotating; ratios and differences are medians of the per-round ones")
    print("- keys per shard through 4 partitions (shard 0 / 1 / 2 / 3): " +
          "; ".join(f"{k}: {v}" for k, v in spread.items()))
    if installed() != files_before:
        print("- **pg_exactly or pg_exactly_router was installed anew during this run**: backends started "
              "after that loaded the new library into databases created from the old scripts; run it again")
    if NCPU <= 4:
        print(f"- **{NCPU} cores cannot show much scaling**: the four shards, the router and pgbench share them, "
              "so four shards bring no more CPU than one; read the CPU per 1,000 calls to see what more cores "
              "would give")
    print()
    if overhead:
        print_overhead(overhead)
    if scale:
        print_scale(scale)
    if protocol:
        print_protocol(protocol)


if __name__ == "__main__":
    main()
