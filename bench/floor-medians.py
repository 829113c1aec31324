#!/usr/bin/env python3
"""Medians per server and scenario of a ../shared/perf/floor_compare.sh output, as a Markdown
table: calls/s, server CPU us per call (with the rounds' range), PostgreSQL CPU us per call,
and the server CPU and calls/s as ratios to the floor (`pg`).

Usage: bench/floor-medians.py OUTPUT [NAME=LABEL ...]   (e.g. project=after project-b=before)
"""
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) < 6 or not parts[2].isdigit():
        continue
    try:
        rows[(parts[0], parts[1])].append(tuple(float(x) for x in parts[3:6]))
    except ValueError:
        continue
labels = dict(arg.split("=", 1) for arg in sys.argv[2:])
servers = list(dict.fromkeys(server for server, _ in rows))
scenarios = list(dict.fromkeys(scenario for _, scenario in rows))


def median(server, scenario, i):
    values = [r[i] for r in rows.get((server, scenario), [])]
    return statistics.median(values) if values else None


print("| scenario | server | calls/s | server µs/call (rounds) | PostgreSQL µs/call "
      "| server CPU / floor | calls/s / floor |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for scenario in scenarios:
    for server in servers:
        if (server, scenario) not in rows:
            continue
        cps, srv, pg = (median(server, scenario, i) for i in range(3))
        spread = sorted(r[1] for r in rows[(server, scenario)])
        floor_srv, floor_cps = median("pg", scenario, 1), median("pg", scenario, 0)
        ratio = f"{srv / floor_srv:.2f}x" if floor_srv else "-"
        cps_ratio = f"{cps / floor_cps:.2f}x" if floor_cps else "-"
        print(f"| {scenario} | {labels.get(server, server)} | {cps:,.0f} | {srv:.1f} "
              f"({spread[0]:.0f}-{spread[-1]:.0f}) | {pg:.1f} | {ratio} | {cps_ratio} |"
              .replace(",", " "))
