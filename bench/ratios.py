#!/usr/bin/env python3
"""Throughput of pg_exactly against the reference PL/pgSQL, side by side, with pgbench.

For a workload directory bench/NAME/ holding reference.sql (the reference implementation,
loaded once) and pairs ours_CASE.pgbench / reference_CASE.pgbench, this runs every case at
every client count for several rounds, ours and the reference back to back in alternating
order, and prints the median of the per-round ratios (ours / reference). The machine is
shared and noisy: compare the ratios, not the absolute numbers.

A case whose script starts with `-- pgbench: OPTIONS` (e.g. `-c 16 -t 13`) runs with those
options instead of at each client count for --seconds. A script line `-- pgoptions: OPTIONS`
(e.g. `-c exactly.early_lock_release=on`) sets the sessions' settings (PGOPTIONS) for that
script. A `ceiling_CASE.pgbench` beside a case is run in the same rounds and reported as
what ours reaches of it (e.g. the reference with synchronous_commit = off: the physical
limit for a hot row). A `reset.sql` in the workload directory runs before every pgbench run
(e.g. to empty the tables). --cases picks cases by name.

Expects PGHOST/PGPORT/PGUSER of a running cluster with pg_exactly installed (bench/run).
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def psql(sql):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True)


def pgbench(script, options):
    """Transactions per second of one pgbench run."""
    reset = script.parent / "reset.sql"
    psql(reset.read_text() if reset.exists() else "VACUUM")  # both sides start alike
    pgoptions = re.search(r"^-- pgoptions: (.*)$", script.read_text(), re.M)
    env = dict(os.environ, PGOPTIONS=pgoptions.group(1)) if pgoptions else None
    # `-- pgbench-define: NAME=VALUE` lines give a variable its value before the first transaction
    defines = [f"-D{d}" for d in re.findall(r"^-- pgbench-define: (\S+)$", script.read_text(), re.M)]
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", *defines, *options, "-f", str(script)],
                         check=True, capture_output=True, text=True, env=env).stdout
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed and int(failed.group(1)) > 0:
        sys.exit(f"{script.name}: {failed.group(1)} transactions failed\n{out}")
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def rate(x):
    """A rate for people: whole numbers from 100 on, 4 significant digits below."""
    return f"{x:.0f}" if x >= 100 else f"{x:.4g}"


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", help="a directory under bench/, e.g. invoices")
    parser.add_argument("--clients", default="1,8,32,100")
    parser.add_argument("--seconds", type=int, default=10, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per point")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args()

    workload = BENCH / args.workload
    psql((workload / "reference.sql").read_text())
    cases = sorted(p.name[len("ours_"):-len(".pgbench")] for p in workload.glob("ours_*.pgbench"))
    if args.cases:
        cases = [c for c in cases if c in args.cases.split(",")]
    clients = [int(c) for c in args.clients.split(",")]

    rows = []
    for case in cases:
        ours, reference = workload / f"ours_{case}.pgbench", workload / f"reference_{case}.pgbench"
        fixed = re.match(r"-- pgbench: (.*)", ours.read_text())
        points = [fixed.group(1).split()] if fixed else [
            ["-c", str(c), "-j", str(min(c, 2)), "-T", str(args.seconds)] for c in clients]
        ceiling = workload / f"ceiling_{case}.pgbench"
        for options in points:
            c = int(options[options.index("-c") + 1])
            ratios, ours_tps, ref_tps, of_ceiling = [], [], [], []
            for r in range(args.rounds):
                # alternate who goes first, so a drift in machine speed hits both alike
                if r % 2 == 0:
                    o = pgbench(ours, options); f = pgbench(reference, options)
                else:
                    f = pgbench(reference, options); o = pgbench(ours, options)
                ours_tps.append(o); ref_tps.append(f); ratios.append(o / f)
                line = f"{case} clients={c} round={r + 1}: ours {rate(o)}/s reference {rate(f)}/s ratio {o / f:.2f}"
                if ceiling.exists():
                    top = pgbench(ceiling, options)
                    of_ceiling.append(o / top)
                    line += f" ceiling {rate(top)}/s ours/ceiling {o / top:.2f}"
                print(line, file=sys.stderr, flush=True)
            rows.append((case, c, statistics.median(ours_tps), statistics.median(ref_tps),
                         statistics.median(ratios), ratios,
                         statistics.median(of_ceiling) if of_ceiling else None))

    print(f"### {args.workload}: ours / reference PL/pgSQL\n")
    print(f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    server = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SHOW server_version"],
                            check=True, capture_output=True, text=True).stdout.split()[0]
    pg = os.environ.get("PG_MAJORS", "15").split()[0]
    print(f"- machine: {os.cpu_count()} cores, {cpu_model()}; PostgreSQL {server}, release build")
    print(f"- command: `{'' if pg == '15' else f'PG={pg} '}bash bench/run {args.workload} --clients {args.clients} "
          f"--seconds {args.seconds} --rounds {args.rounds}`")
    print(f"- pgbench -M prepared, {args.seconds} s per run unless the case says otherwise, "
          f"{args.rounds} rounds per point, order alternating; ratio = median of the per-round ratios\n")
    print("| case | clients | ours (calls/s, median) | reference (calls/s, median) | ratio | per-round ratios | of the ceiling |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for case, c, o, f, ratio, ratios, of_ceiling in rows:
        top = f"{of_ceiling:.0%}" if of_ceiling is not None else ""
        print(f"| {case} | {c} | {rate(o)} | {rate(f)} | **{ratio:.2f}x** | {' '.join(f'{x:.2f}' for x in ratios)} | {top} |")


if __name__ == "__main__":
    main()
