"""Goals (issue 5) and the chart. The suite reports whether each goal is met; it never fails
on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# name -> (field path in the report, comparison, target)
GOALS: dict[str, dict[str, Any]] = {
    "pool_vs_redis_py": {"path": ["ratios", "pool_vs_redis_py"], "op": ">=", "target": 5.0},
    "pool_vs_evalsha": {"path": ["ratios", "pool_vs_evalsha"], "op": ">=", "target": 1.5},
    "engine_vs_skip_locked": {
        "path": ["ratios", "engine_vs_skip_locked"],
        "op": ">=",
        "target": 10.0,
    },
    "http_vs_noop": {"path": ["ratios", "http_vs_noop"], "op": ">=", "target": 0.5},
    "http_vs_skip_locked": {"path": ["ratios", "http_vs_skip_locked"], "op": ">=", "target": 3.0},
    "http_p99_ms_at_80pct": {"path": ["http", "p99_ms_at_80pct"], "op": "<", "target": 50.0},
    "decrypt_per_s_core": {"path": ["decrypt_per_s_core"], "op": ">=", "target": 2_000_000},
    "import_1m_s": {"path": ["import_1m_s"], "op": "<=", "target": 10.0},
    "duplicates": {"path": ["duplicates"], "op": "==", "target": 0},
    "oversells": {"path": ["oversells"], "op": "==", "target": 0},
}


def _get(report: dict[str, Any], path: list[str]) -> Any:
    value: Any = report
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def evaluate_goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, goal in GOALS.items():
        value = _get(report, goal["path"])
        target, op = goal["target"], goal["op"]
        if value is None:
            met = False
        elif op == ">=":
            met = value >= target
        elif op == "<=":
            met = value <= target
        elif op == "<":
            met = value < target
        else:
            met = value == target
        out[name] = {"value": value, "op": op, "target": target, "met": bool(met)}
    return out


def draw_chart(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    bars: list[tuple[str, float, str]] = []  # label, per second, colour
    lat: list[tuple[str, float, float, float]] = []  # label, p50, p95, p99
    colours = {
        "kami": "tab:blue",
        "redis_py": "tab:orange",
        "redis_benchmark": "tab:gray",
        "skip_locked": "tab:red",
        "noop": "tab:green",
    }
    pool = report.get("pool", {})
    for impl in ("kami", "redis_py", "redis_benchmark"):
        for c, r in pool.get(impl, {}).items():
            if isinstance(r, dict) and r.get("per_s"):
                short = "EVALSHA" if impl == "redis_benchmark" else impl
                bars.append((f"pool\n{short}\nc={c}", r["per_s"], colours[impl]))
                if r.get("p99_ms") is not None:
                    lat.append((f"pool {impl} c={c}", r["p50_ms"], r["p95_ms"], r["p99_ms"]))
    engine = report.get("engine", {})
    for impl in ("kami", "skip_locked"):
        r = engine.get(impl)
        if r:
            bars.append((f"engine\n{impl}", r["per_s"], colours[impl]))
            lat.append((f"engine {impl}", r["p50_ms"], r["p95_ms"], r["p99_ms"]))
    http = report.get("http", {})
    for name, colour in (
        ("kami_saturation", "kami"),
        ("kami_at_80pct", "kami"),
        ("noop", "noop"),
        ("skip_locked", "skip_locked"),
    ):
        r = http.get(name)
        if isinstance(r, dict) and r.get("peak_rps") is not None:
            bars.append(
                (
                    f"http\n{name}",
                    r["peak_rps"] if name != "kami_at_80pct" else r["ok_rps"],
                    colours[colour],
                )
            )
            lat.append((f"http {name}", r["p50_ms"], r["p95_ms"], r["p99_ms"]))
    imp = report.get("import")
    if imp:
        bars.append(("import\nkeys/s", imp["per_s"], colours["kami"]))

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 11))
    ax1.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    ax1.set_xticks(range(len(bars)), [b[0].replace("_", " ") for b in bars], fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("per second (log)")
    for i, b in enumerate(bars):
        ax1.annotate(f"{b[1]:,.0f}", (i, b[1]), ha="center", va="bottom", fontsize=7)
    machine = report.get("machine", {})
    commit = report.get("commit", {}).get("sha", "")[:10]
    load = (machine.get("loadavg_at_start") or [None])[0]
    ax1.set_title(
        f"Kami bench ({report.get('kind')}) {report.get('timestamp')} @ {commit} - "
        f"{machine.get('cores')} cores {machine.get('cpu_model')}"
        + (f", load {load:.1f} at start" if isinstance(load, float) else ""),
        fontsize=9,
    )
    xs = range(len(lat))
    width = 0.27
    for k, (name, colour) in enumerate(
        (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red"))
    ):
        ax2.bar(
            [x + (k - 1) * width for x in xs],
            [row[k + 1] or 0 for row in lat],
            width,
            label=name,
            color=colour,
        )
    ax2.set_xticks(list(xs), [row[0] for row in lat], rotation=35, ha="right", fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency ms (log)")
    ax2.legend()
    ax2.set_title("latency percentiles per scenario", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
