#!/usr/bin/env python3
"""Turns a bench/run.sh result directory into report.md (tables, ratios, targets) and
latency.svg (p50 and p99 per scenario at 32 calls in flight). Standard library only."""

import json
import sys
from pathlib import Path


def lines(path: Path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(out: Path) -> None:
    results = lines(out / "results.jsonl")
    floors = lines(out / "pgbench.jsonl")
    pgbench = {r["concurrency"]: r["tps"] for r in floors if r.get("tls", True)}
    pgbench_no_tls = {r["concurrency"]: r["tps"] for r in floors if r.get("tls") is False}
    rss = {r["label"]: r["peak_rss_kib"] for r in lines(out / "rss.jsonl")}
    machine = json.loads((out / "machine.json").read_text())
    by = {(r["label"], r["scenario"], r["concurrency"]): r for r in results}
    levels = sorted({r["concurrency"] for r in results if r["label"] in ("sqlite", "postgres")})
    scenarios = []
    for r in results:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])

    def rate(label, scenario, c):
        r = by.get((label, scenario, c))
        return r["calls_per_second"] if r else None

    md = []
    md.append(f"Machine: {machine['nproc']} cores ({machine['cpu']}), "
              f"{machine['memory_kib'] // 1024} MiB, PostgreSQL {machine['postgres']}; "
              f"{machine['duration']} per run after warm-up, server pool {machine['pool']} "
              "connections. Server, load generator and database share the machine.\n")
    for label in ("postgres", "sqlite"):
        md.append(f"\n### {label}: calls/s, p50 / p99 latency (ms)\n")
        md.append("| scenario | " + " | ".join(f"{c} in flight" for c in levels) + " |")
        md.append("|---|" + "---|" * len(levels))
        for scenario in scenarios:
            cells = []
            for c in levels:
                r = by.get((label, scenario, c))
                if not r:
                    cells.append("")
                    continue
                errors = sum(r["errors"].values())
                cell = (f"{r['calls_per_second']:.0f}/s, {r['latency_ms']['p50']:.2f} / "
                        f"{r['latency_ms']['p99']:.2f}")
                if errors:
                    cell += f", {errors} errors"
                cells.append(cell)
            md.append(f"| {scenario} | " + " | ".join(cells) + " |")

    md.append("\n### Ratios, side by side in this run\n")
    md.append("| ratio | " + " | ".join(f"{c}" for c in levels) + " |")
    md.append("|---|" + "---|" * len(levels))

    def ratio_row(name, num, den):
        cells = []
        for c in levels:
            a, b = num(c), den(c)
            cells.append(f"{a / b:.2f}" if a and b else "")
        md.append(f"| {name} | " + " | ".join(cells) + " |")

    ratio_row("PostgreSQL keyed creates/s / pgbench tx/s (same SQL)",
              lambda c: rate("postgres", "create-keyed", c), lambda c: pgbench.get(c))
    ratio_row("the same, both without TLS",
              lambda c: rate("postgres-no-tls", "create-keyed", c), lambda c: pgbench_no_tls.get(c))
    # A gRPC call answered from memory (health) and the SQL alone (pgbench) are the two floors
    # under a keyed create; the service cannot beat their sum, whatever its own code costs.
    ratio_row("ceiling of that ratio: health / (health + pgbench)",
              lambda c: rate("postgres", "health", c),
              lambda c: (rate("postgres", "health", c) or 0) + (pgbench.get(c) or 0) or None)
    for label in ("postgres", "sqlite"):
        ratio_row(f"{label}: keyed / unkeyed create",
                  lambda c, l=label: rate(l, "create-keyed", c),
                  lambda c, l=label: rate(l, "create-unkeyed", c))
        ratio_row(f"{label}: replay / get",
                  lambda c, l=label: rate(l, "replay", c), lambda c, l=label: rate(l, "get", c))
    md.append("\npgbench tx/s: " + ", ".join(f"{c} clients {pgbench[c]:.0f}" for c in sorted(pgbench)))
    if pgbench_no_tls:
        md.append("\npgbench tx/s without TLS: "
                  + ", ".join(f"{c} clients {pgbench_no_tls[c]:.0f}" for c in sorted(pgbench_no_tls)))
        md.append("\nPostgreSQL without TLS, create-keyed: "
                  + ", ".join(f"{c} in flight {rate('postgres-no-tls', 'create-keyed', c):.0f}/s"
                              for c in levels if rate("postgres-no-tls", "create-keyed", c)))

    # CPU per call: the steadiest figure on a machine whose cores the load generator, the server
    # and the database share. Floors: the transport alone (health, answered from memory) and
    # pgbench running the service's own keyed-create statement.
    pg_db_cpu = {r["concurrency"]: r.get("database_cpu_us_per_tx") for r in floors if r.get("tls", True)}
    md.append("\n### CPU per call (microseconds: server / database), and ratios to the floors\n")
    md.append("| scenario | " + " | ".join(f"{c} in flight" for c in levels) + " |")
    md.append("|---|" + "---|" * len(levels))
    for label in ("postgres", "sqlite"):
        for scenario in scenarios:
            cells = []
            for c in levels:
                r = by.get((label, scenario, c))
                server = r and r.get("server_cpu_us_per_call")
                health = by.get((label, "health", c))
                health = health and health.get("server_cpu_us_per_call")
                if not server:
                    cells.append("")
                    continue
                cell = f"{server:.0f}"
                database = r.get("database_cpu_us_per_call")
                if label == "postgres" and database is not None:
                    cell += f" / {database:.0f}"
                if health:
                    cell += f" ({server / health:.1f}x health)"
                cells.append(cell)
            md.append(f"| {label} {scenario} | " + " | ".join(cells) + " |")
    md.append("| pgbench keyed-create SQL (database CPU per transaction) | "
              + " | ".join(f"{pg_db_cpu[c]:.0f}" if pg_db_cpu.get(c) else "" for c in levels) + " |")

    scale_labels = sorted({r["label"] for r in results if r["label"].startswith("pg-") and r["label"] != "pg-empty"})
    md.append("\n### Scale: 32 in flight, PostgreSQL\n")
    md.append("| key table | create-keyed calls/s | replay calls/s | create-keyed p99 ms |")
    md.append("|---|---|---|---|")
    for label in ["pg-empty", *scale_labels]:
        ck, rp = by.get((label, "create-keyed", 32)), by.get((label, "replay", 32))
        if ck and rp:
            md.append(f"| {label} | {ck['calls_per_second']:.0f} | {rp['calls_per_second']:.0f} | "
                      f"{ck['latency_ms']['p99']:.2f} |")

    md.append("\n### Targets\n")
    md.append("| target | measured | met |")
    md.append("|---|---|---|")

    def target(name, value, ok, fmt="{:.2f}"):
        shown = fmt.format(value) if value is not None else "n/a"
        md.append(f"| {name} | {shown} | {'yes' if ok else 'no'} |")

    for c in levels:
        k, p = rate("postgres", "create-keyed", c), pgbench.get(c)
        if k and p:
            target(f"keyed creates/s >= 0.8 x pgbench at {c}", k / p, k / p >= 0.8)
    for label in ("postgres", "sqlite"):
        worst = min((rate(label, "create-keyed", c) / rate(label, "create-unkeyed", c)
                     for c in levels if rate(label, "create-keyed", c) and rate(label, "create-unkeyed", c)),
                    default=None)
        target(f"{label}: keyed >= 0.85 x unkeyed (worst level)", worst, worst is not None and worst >= 0.85)
        worst = min((rate(label, "replay", c) / rate(label, "get", c)
                     for c in levels if rate(label, "replay", c) and rate(label, "get", c)), default=None)
        target(f"{label}: replay >= 1.0 x get (worst level)", worst, worst is not None and worst >= 1.0)
    r32 = by.get(("postgres", "create-keyed", 32))
    if r32:
        p99 = r32["latency_ms"]["p99"]
        target("p99 keyed create at 32 in flight on PostgreSQL <= 5 ms", p99, p99 <= 5.0, "{:.2f} ms")
    empty = by.get(("pg-empty", "create-keyed", 32))
    for label in scale_labels:
        for scenario in ("create-keyed", "replay"):
            e, s = by.get(("pg-empty", scenario, 32)), by.get((label, scenario, 32))
            if e and s:
                ratio = s["calls_per_second"] / e["calls_per_second"]
                target(f"{scenario} with {label} >= 0.9 x near-empty", ratio, ratio >= 0.9)
    def cpu(label, scenario, c, key="server_cpu_us_per_call"):
        r = by.get((label, scenario, c))
        return r.get(key) if r else None

    health32 = cpu("postgres", "health", 32)
    for scenario, bound in (("get", 2.5), ("create-keyed", 3.5)):
        s = cpu("postgres", scenario, 32)
        if s and health32:
            target(f"server CPU per {scenario} <= {bound}x health (PostgreSQL, 32)", s / health32,
                   s / health32 <= bound, "{:.2f}x")
    replay, get = cpu("postgres", "replay", 32), cpu("postgres", "get", 32)
    if replay and get:
        target("server CPU per replay <= per get (PostgreSQL, 32)", replay / get, replay <= get, "{:.2f}x")
    db, floor = cpu("postgres", "create-keyed", 32, "database_cpu_us_per_call"), pg_db_cpu.get(32)
    if db and floor:
        target("database CPU per keyed create <= pgbench's per transaction (32)", db / floor,
               db <= floor, "{:.2f}x")
    for label, kib in rss.items():
        target(f"{label}: server peak RSS (64 in flight) <= 64 MiB", kib / 1024, kib / 1024 <= 64, "{:.1f} MiB")
    _ = empty

    (out / "report.md").write_text("\n".join(md) + "\n")
    write_svg(out / "latency.svg", by, scenarios)
    print("\n".join(md))


def write_svg(path: Path, by, scenarios) -> None:
    """Horizontal bars: p50 (solid) and p99 (light) per scenario at 32 in flight."""
    rows = []
    for label in ("postgres", "sqlite"):
        for scenario in scenarios:
            r = by.get((label, scenario, 32))
            if r:
                rows.append((f"{label} {scenario}", r["latency_ms"]["p50"], r["latency_ms"]["p99"]))
    if not rows:
        return
    width, left, bar, gap, top = 900, 230, 14, 8, 40
    peak = max(p99 for _, _, p99 in rows) or 1.0
    scale = (width - left - 80) / peak
    height = top + len(rows) * (bar + gap) + 40
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">Latency at 32 calls in flight (ms): '
           'p50 dark, p99 light</text>']
    for i, (name, p50, p99) in enumerate(rows):
        y = top + i * (bar + gap)
        svg.append(f'<text x="{left - 8}" y="{y + bar - 3}" text-anchor="end">{name}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{p99 * scale:.1f}" height="{bar}" fill="#9ecae1"/>')
        svg.append(f'<rect x="{left}" y="{y}" width="{p50 * scale:.1f}" height="{bar}" fill="#3182bd"/>')
        svg.append(f'<text x="{left + p99 * scale + 4:.1f}" y="{y + bar - 3}">{p50:.2f} / {p99:.2f}</text>')
    axis_y = top + len(rows) * (bar + gap) + 10
    svg.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - 80}" y2="{axis_y}" stroke="black"/>')
    for t in range(0, 6):
        v = peak * t / 5
        x = left + v * scale
        svg.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="black"/>')
        svg.append(f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle">{v:.1f}</text>')
    svg.append("</svg>")
    path.write_text("\n".join(svg) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
