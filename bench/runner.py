"""`python -m bench`: start the stores and a Kami server (or use --target), run every
scenario and baseline in one invocation against the same PostgreSQL and Redis, then write
bench/results/<timestamp>.json, latest.json and a chart."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import baseline_redis as rb
from bench import server_metrics, skip_locked
from bench.http_load import LoadResult, paced_users, ramp_locust, run_locust
from bench.report import GOALS, draw_chart, evaluate_goals

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NAMESPACE = "kami"
PRICE = 1
DEPOSIT = 10**12


@dataclass(frozen=True)
class Sizes:
    pool_takes: int  # takes per (implementation, concurrency)
    pool_concurrency: tuple[int, ...]
    engine_requests: int
    engine_concurrency: tuple[int, ...]
    sale_keys: int
    users: int
    # Each saturation run steps through these user counts, ramp_step_s seconds each.
    ramp_users: tuple[int, ...]
    ramp_step_s: int
    paced_s: int
    import_keys: int
    micro_filter: str


QUICK = Sizes(
    pool_takes=8_000,
    pool_concurrency=(1, 16, 256),
    engine_requests=4_000,
    engine_concurrency=(64, 256),
    sale_keys=40_000,
    users=48,
    ramp_users=(48, 128),
    ramp_step_s=4,
    paced_s=5,
    import_keys=100_000,
    micro_filter="decrypt_many or encrypt_many or fingerprint_many or terms",
)
FULL = Sizes(
    pool_takes=40_000,
    pool_concurrency=(1, 16, 256),
    engine_requests=20_000,
    engine_concurrency=(64, 256),
    sale_keys=200_000,
    users=96,
    ramp_users=(48, 96, 192, 288),
    ramp_step_s=12,
    paced_s=30,
    import_keys=1_000_000,
    micro_filter="",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        # How busy the machine already was: the load generator, the server and both
        # stores share it, and so may anything else running.
        "loadavg_at_start": list(os.getloadavg()),
    }


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], ready_url: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited early; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} not ready; see {log_path}")
                time.sleep(0.2)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


# ---------------------------------------------------------------- setup over HTTP


def setup_sale(base_url: str, token: str, skus: list[str]) -> dict[str, Any]:
    operator = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=operator, timeout=120) as c:
        for sku in skus:
            r = c.post(
                "/v1/products",
                json={"sku": sku, "name": "秒杀 bench", "type": "card", "price": 1990},
            )
            r.raise_for_status()
        level = c.post(
            "/v1/agent-levels",
            json={
                "name": f"bench-{secrets.token_hex(3)}",
                "rank": 1,
                "prices": dict.fromkeys(skus, PRICE),
            },
        )
        level.raise_for_status()
        agent = c.post("/v1/agents", json={"name": "bench shop", "level_id": level.json()["id"]})
        agent.raise_for_status()
        agent_id = agent.json()["id"]
        c.post(f"/v1/agents/{agent_id}/deposits", json={"amount": DEPOSIT}).raise_for_status()
        key = c.post(f"/v1/agents/{agent_id}/api-keys")
        key.raise_for_status()
    return {"agent_id": agent_id, "api_key": key.json()["key"]}


async def import_codes(env: dict[str, str], sku: str, count: int, tmp: Path) -> float:
    """Generate `count` codes into a TXT file and import them end to end; returns seconds."""
    from engine.inventory.importer import import_file

    path = tmp / f"{sku}.txt"
    with path.open("w") as f:
        token = secrets.token_hex(8)
        for n in range(count):
            f.write(f"{sku}-{token}-{n:08d}\n")
    started = time.perf_counter()
    report = await import_file(
        env["KAMI_DATABASE_URL"],
        env["KAMI_REDIS_URL"],
        NAMESPACE,
        base64.b64decode(env["KAMI_MASTER_KEY"]),
        sku=sku,
        path=path,
        name=path.name,
        expires_at=None,
        unit_cost=0,
        file_format=None,
        column=None,
    )
    elapsed = time.perf_counter() - started
    path.unlink()
    if report.batch.accepted != count:
        raise RuntimeError(f"import accepted {report.batch.accepted} of {count}")
    return elapsed


# ---------------------------------------------------------------- scenarios


def micro(sizes: Sizes, out_dir: Path) -> dict[str, Any]:
    path = out_dir / "micro.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "bench" / "micro"),
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-o",
        "timeout=600",
        "--benchmark-only",
        "--benchmark-min-rounds=3",
        f"--benchmark-json={path}",
    ]
    if sizes.micro_filter:
        command += ["-k", sizes.micro_filter]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log(f"micro benchmarks failed:\n{done.stdout[-2000:]}")
        return {"error": done.stdout[-2000:]}
    data = json.loads(path.read_text())
    return {
        b["name"]: {
            "min_s": b["stats"]["min"],
            "mean_s": b["stats"]["mean"],
            "rounds": b["stats"]["rounds"],
            **b.get("extra_info", {}),
        }
        for b in data["benchmarks"]
    }


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    s = sorted(latencies)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


async def pool_scenario(env: dict[str, str], sizes: Sizes) -> dict[str, Any]:
    from engine._core import Pool

    redis_url = env["KAMI_REDIS_URL"]
    pool = Pool(redis_url, namespace=NAMESPACE)
    client = rb.redis_py_client(redis_url, max(sizes.pool_concurrency))
    sha = await rb.load_script(client)
    blob = secrets.token_bytes(65)  # the pool moves opaque ciphertext: a realistic size
    results: dict[str, Any] = {"kami": {}, "redis_py": {}, "redis_benchmark": {}}
    run = secrets.token_hex(3)

    async def fresh_pool(name: str, count: int) -> str:
        sku = f"BENCH-POOL-{run}-{name}".upper()
        for start in range(0, count, 20_000):
            chunk = [(start + i + 1, blob, 0) for i in range(min(20_000, count - start))]
            await pool.load(sku, chunk)
        return sku

    for c in sizes.pool_concurrency:
        sku = await fresh_pool(f"k{c}", sizes.pool_takes)

        async def kami_take(holder: str, sku: str = sku) -> None:
            await pool.take(sku, holder, 1)

        ok, seconds, lat = await rb.take_until(kami_take, c, sizes.pool_takes, "h")
        results["kami"][str(c)] = {
            "takes": ok,
            "seconds": seconds,
            "per_s": ok / seconds,
            **_percentiles(lat),
        }
        log(f"pool kami c={c}: {ok / seconds:,.0f} takes/s")

        sku = await fresh_pool(f"r{c}", sizes.pool_takes)
        tag = rb.shard_tag(NAMESPACE, sku)

        async def py_take(holder: str, tag: str = tag) -> None:
            reply = await rb.redis_py_take(client, sha, tag, holder)
            if reply[0] != 0:
                raise RuntimeError(f"redis_py take failed: {reply!r}")

        ok, seconds, lat = await rb.take_until(py_take, c, sizes.pool_takes, "h")
        results["redis_py"][str(c)] = {
            "takes": ok,
            "seconds": seconds,
            "per_s": ok / seconds,
            **_percentiles(lat),
        }
        log(f"pool redis_py c={c}: {ok / seconds:,.0f} takes/s")

    binary = rb.redis_benchmark_binary()
    if binary is None:
        results["redis_benchmark"] = {
            "skipped": "no redis-benchmark or valkey-benchmark binary on PATH"
        }
    else:
        for c in sizes.pool_concurrency:
            # More entries than requests, so no call hits the cheap out-of-stock path.
            n = sizes.pool_takes * 4
            sku = await fresh_pool(f"b{c}", n + n // 10)
            res = await asyncio.to_thread(
                rb.redis_benchmark_evalsha,
                binary,
                redis_url,
                sha,
                rb.shard_tag(NAMESPACE, sku),
                requests=n,
                concurrency=c,
            )
            left = (await pool.stock(sku))[0]
            results["redis_benchmark"][str(c)] = {
                "requests": n,
                "per_s": res.per_s,
                "p50_ms": res.p50_ms,
                "entries_taken": n + n // 10 - left,
                "binary": binary,
            }
            log(f"pool redis-benchmark EVALSHA c={c}: {res.per_s:,.0f}/s")
    await client.aclose()
    return results


async def engine_scenario(
    env: dict[str, str], sizes: Sizes, sku: str, agent_id: int, skip_sku: str
) -> dict[str, Any]:
    from engine._core import Pool
    from engine.crypto.keyring import load_keyring
    from engine.issuance.service import IssuanceService
    from engine.metrics import GC_PAUSES
    from engine.principals import AgentKey

    GC_PAUSES.watch()  # this process's full collections go into the group-commit figures

    timings: dict[str, list[float]] = {}

    def logged(q: Any) -> None:
        timings.setdefault(" ".join(q.query.split())[:70], []).append(q.elapsed)

    async def init(conn: asyncpg.Connection) -> None:
        if os.environ.get("BENCH_QUERY_LOG"):
            conn.add_query_logger(logged)

    db = await asyncpg.create_pool(env["KAMI_DATABASE_URL"], min_size=10, max_size=10, init=init)
    try:
        async with db.acquire() as conn:
            keyring = await load_keyring(conn, base64.b64decode(env["KAMI_MASTER_KEY"]))
            row = await conn.fetchrow(
                "SELECT k.id, k.mode, a.level_id FROM api_keys k "
                "JOIN agents a ON a.id = k.agent_id "
                "WHERE k.agent_id = $1",
                agent_id,
            )
        assert row is not None
        agent = AgentKey(
            key_id=row["id"], agent_id=agent_id, level_id=row["level_id"], mode=row["mode"]
        )
        service = IssuanceService(db, Pool(env["KAMI_REDIS_URL"], namespace=NAMESPACE), keyring)
        run = secrets.token_hex(4)

        async def issue(holder: str) -> None:
            issuance = await service.issue(
                agent,
                sku=sku,
                quantity=1,
                reference=None,
                idempotency_key=f"eng-{run}-{holder}",
                request_hash=b"\0" * 32,
            )
            assert len(issuance.keys) == 1

        await issue("warm")
        kami: dict[str, Any] = {}
        base: dict[str, Any] = {}

        async def skip(holder: str) -> None:
            async with db.acquire() as conn:
                code = await skip_locked.take_one(conn, skip_sku, f"eng-{run}-{holder}")
            assert code is not None

        for c in sizes.engine_concurrency:
            before = _in_process_metrics()
            ok, seconds, lat = await rb.take_until(issue, c, sizes.engine_requests, f"e{c}")
            after = _in_process_metrics()
            kami[str(c)] = {
                "issuances": ok,
                "seconds": seconds,
                "per_s": ok / seconds,
                **_percentiles(lat),
                # Flushes, their sizes and durations, the engine's own latency, the GC.
                "group_commit": server_metrics.window(before, after),
            }
            log(
                f"engine kami c={c}: {ok / seconds:,.0f} issuances/s {kami[str(c)]['group_commit']}"
            )
            ok, seconds, lat = await rb.take_until(skip, c, sizes.engine_requests, f"s{c}")
            base[str(c)] = {
                "issuances": ok,
                "seconds": seconds,
                "per_s": ok / seconds,
                **_percentiles(lat),
            }
            log(f"engine skip_locked c={c}: {ok / seconds:,.0f} issuances/s")
        await service.close()
        for q, t in sorted(timings.items(), key=lambda kv: -sum(kv[1]))[:12]:
            log(f"  query {sum(t) * 1000:8.0f} ms total {len(t):6d} calls  {q}")
    finally:
        await db.close()
    top = str(max(sizes.engine_concurrency))
    return {
        "db_pool_size": 10,
        "kami_by_concurrency": kami,
        "skip_locked_by_concurrency": base,
        "headline_concurrency": int(top),
        "kami": kami[top],
        "skip_locked": base[top],
    }


def _in_process_metrics() -> dict[str, server_metrics.Buckets]:
    """This process's own exposition, as a server's /metrics would give it."""
    from engine.metrics import render

    return server_metrics.parse(render().decode())


async def check_sale(database_url: str, sku: str, imported: int) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT "
            "(SELECT count(*) FROM issuances WHERE sku = $1) AS issuances, "
            "(SELECT coalesce(sum(quantity), 0) FROM issuances WHERE sku = $1) AS quantity, "
            "(SELECT count(*) FROM issuance_keys ik JOIN issuances i ON i.id = ik.issuance_id "
            "  WHERE i.sku = $1) AS key_rows, "
            "(SELECT count(DISTINCT ik.card_key_id) FROM issuance_keys ik "
            "  JOIN issuances i ON i.id = ik.issuance_id WHERE i.sku = $1) AS distinct_keys, "
            "(SELECT count(*) FROM card_keys c JOIN products p ON p.id = c.product_id "
            "  WHERE p.sku = $1 AND c.state = 'issued') AS marked_issued",
            sku,
        )
    finally:
        await conn.close()
    assert row is not None
    r = {k: int(v) for k, v in row.items()}
    r["imported"] = imported
    r["duplicates"] = r["key_rows"] - r["distinct_keys"]
    # Sold more than there was, or a key delivered that the inventory does not show as sold.
    r["oversells"] = max(0, r["quantity"] - imported) + abs(r["distinct_keys"] - r["marked_issued"])
    return r


def start_profiles(
    pids: list[int], seconds: int, out: Path
) -> list[tuple[Path, subprocess.Popen[bytes]]]:
    """py-spy on each server worker (raw collapsed stacks), for the profile section of
    docs/BENCHMARKS.md. --nonblocking: the workers are not paused while sampled."""
    spy = Path(sys.executable).with_name("py-spy")
    started = []
    for pid in pids:
        path = out / f"profile-{pid}.txt"
        command = [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "50",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(path),
        ]
        started.append(
            (path, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        )
    return started


def summarize_profiles(
    profiles: list[tuple[Path, subprocess.Popen[bytes]]], top: int = 25
) -> dict[str, Any]:
    """Self and inclusive sample shares per function over all workers' collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for path, proc in profiles:
        proc.wait(timeout=60)
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [
                f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 2)[-1] + ")"
                if " (" in f
                else f
                for f in stack.split(";")
            ]
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return {"samples": 0}

    def share(d: dict[str, int]) -> dict[str, float]:
        return {
            k: round(100 * v / total, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        }

    return {
        "samples": total,
        "self_pct": share(own),
        "inclusive_pct": share(inclusive),
        "files": [str(p) for p, _ in profiles],
    }


def http_scenarios(
    sizes: Sizes,
    base_url: str,
    skip_url: str | None,
    api_key: str,
    sku: str,
    out: Path,
    processes: int,
    profile_pids: list[int] | None = None,
) -> dict[str, Any]:
    runs: dict[str, LoadResult] = {}
    # What the server measured itself over each Kami run (see bench/server_metrics.py).
    seen_by_server: dict[str, dict[str, Any]] = {}
    steps, step_s = sizes.ramp_users, sizes.ramp_step_s
    ramp_s = len(steps) * (step_s + 3)  # + Locust's start and stop per step
    log(f"http: kami saturation, users {steps} for {step_s}s each")
    profiles = start_profiles(profile_pids, max(ramp_s - 4, 2), out) if profile_pids else []
    scraped = server_metrics.scrape(base_url)
    runs["kami_saturation"] = ramp_locust(
        "kami_saturation",
        base_url,
        out,
        steps=steps,
        seconds=step_s,
        api_key=api_key,
        sku=sku,
        processes=processes,
    )
    profile = summarize_profiles(profiles) if profiles else None
    after_ramp = server_metrics.scrape(base_url)
    seen_by_server["kami_saturation"] = server_metrics.window(scraped, after_ramp)
    peak = runs["kami_saturation"].peak_rps
    users, per_user = paced_users(0.8 * peak, 16)
    log(f"http: kami at 80% of peak ({0.8 * peak:,.0f}/s: {users} users x {per_user:.1f}/s)")
    runs["kami_at_80pct"] = run_locust(
        "kami_at_80pct",
        base_url,
        out,
        users=users,
        seconds=sizes.paced_s,
        user_rps=per_user,
        api_key=api_key,
        sku=sku,
        processes=processes,
    )
    seen_by_server["kami_at_80pct"] = server_metrics.window(
        after_ramp, server_metrics.scrape(base_url)
    )
    log("http: no-op endpoint saturation")
    runs["noop"] = ramp_locust(
        "noop", base_url, out, steps=steps, seconds=step_s, mode="noop", processes=processes
    )
    if skip_url is not None:
        log("http: skip_locked saturation")
        runs["skip_locked"] = ramp_locust(
            "skip_locked",
            skip_url,
            out,
            steps=steps,
            seconds=step_s,
            sku=f"{sku}-SKIP",
            processes=processes,
        )
    for name, r in runs.items():
        log(
            f"  {name}: peak {r.peak_rps:,.0f}/s ok {r.ok_rps:,.0f}/s "
            f"p50 {r.p50_ms} p99 {r.p99_ms} errors {r.errors}"
            + (f" steps {[(int(x['users']), x['ok_rps']) for x in r.steps]}" if r.steps else "")
            + (f" server {seen_by_server[name]}" if seen_by_server.get(name) else "")
        )
    result: dict[str, Any] = {name: r.as_dict() for name, r in runs.items()}
    for name, figures in seen_by_server.items():
        result[name]["server"] = figures
    if profile is not None:
        result["profile"] = profile
    return result


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled-down run (< 2 min)")
    parser.add_argument(
        "--target",
        help="benchmark this running Kami (needs KAMI_ADMIN_TOKEN, "
        "KAMI_DATABASE_URL, KAMI_REDIS_URL, KAMI_MASTER_KEY of that deployment)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument(
        "--server", choices=["granian", "uvicorn"], default=os.environ.get("KAMI_SERVER", "granian")
    )
    parser.add_argument("--locust-processes", type=int, default=2)
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated scenarios to skip: micro,pool,engine,http,import",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, CSVs)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server workers during the saturation run (own server only)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    from engine.logging import configure

    configure("warning", "console")  # the engine's debug lines would cost more than the work
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="kami-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"{'quick' if args.quick else 'full'} run; scratch in {work}")

    report: dict[str, Any] = {
        "timestamp": stamp,
        "kind": "quick" if args.quick else "full",
        "commit": git_commit(),
        "machine": machine(),
        "config": {
            "server": args.server,
            "workers": args.workers,
            "locust_processes": args.locust_processes,
            "sizes": sizes.__dict__,
            "target": args.target,
        },
    }

    with contextlib.ExitStack() as stack:
        if args.target:
            env = {
                k: os.environ[k]
                for k in (
                    "KAMI_DATABASE_URL",
                    "KAMI_REDIS_URL",
                    "KAMI_MASTER_KEY",
                    "KAMI_ADMIN_TOKEN",
                )
            }
            base_url = args.target.rstrip("/")
        else:
            from engine.storage.embedded import EmbeddedStores

            stores = EmbeddedStores(work / "var").start()
            stack.callback(stores.stop)
            assert stores.database_url is not None
            assert stores.redis_url is not None
            env = {
                "KAMI_DATABASE_URL": stores.database_url,
                "KAMI_REDIS_URL": stores.redis_url,
                "KAMI_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
                "KAMI_ADMIN_TOKEN": "kami_admin_" + secrets.token_urlsafe(24),
            }
            port = free_port()
            server_env = {
                k: v for k, v in os.environ.items() if not k.startswith(("KAMI_", "PROMETHEUS_"))
            }
            server_env.update(
                env,
                KAMI_LOG_LEVEL="warning",
                KAMI_SERVER=args.server,
                KAMI_DATA_DIR=str(work / "srv"),
            )
            kami = str(Path(sys.executable).with_name("kami"))
            log(f"starting kami serve ({args.server}, {args.workers} workers)")
            server = stack.enter_context(
                process(
                    [
                        kami,
                        "serve",
                        "--port",
                        str(port),
                        "--workers",
                        str(args.workers),
                        "--no-demo",
                    ],
                    server_env,
                    f"http://127.0.0.1:{port}/readyz",
                    work / "kami.log",
                )
            )
            base_url = f"http://127.0.0.1:{port}"
        report["stores"] = {"embedded": not args.target, "same_for_all_baselines": True}

        run = secrets.token_hex(3).upper()
        sale_sku, engine_sku, import_sku = f"SALE-{run}", f"ENGINE-{run}", f"IMPORT-{run}"
        setup = setup_sale(base_url, env["KAMI_ADMIN_TOKEN"], [sale_sku, engine_sku, import_sku])

        async def prepare() -> None:
            log(
                f"importing {sizes.sale_keys:,} sale keys and {sizes.engine_requests:,} engine keys"
            )
            await import_codes(env, sale_sku, sizes.sale_keys, work)
            await import_codes(
                env, engine_sku, len(sizes.engine_concurrency) * sizes.engine_requests + 1, work
            )
            conn = await asyncpg.connect(env["KAMI_DATABASE_URL"])
            try:
                await skip_locked.prepare(
                    conn,
                    f"{engine_sku}-SKIP",
                    len(sizes.engine_concurrency) * sizes.engine_requests + 1,
                )
                await skip_locked.prepare(conn, f"{sale_sku}-SKIP", sizes.sale_keys)
            finally:
                await conn.close()

        asyncio.run(prepare())

        if "micro" not in skip:
            log("micro benchmarks (pytest-benchmark)")
            report["micro"] = micro(sizes, work)
        if "pool" not in skip:
            report["pool"] = asyncio.run(pool_scenario(env, sizes))
        if "engine" not in skip:
            report["engine"] = asyncio.run(
                engine_scenario(env, sizes, engine_sku, setup["agent_id"], f"{engine_sku}-SKIP")
            )
        if "http" not in skip:
            skip_port = free_port()
            skip_env = dict(
                os.environ, BENCH_SKIP_DSN=env["KAMI_DATABASE_URL"], PYTHONPATH=str(ROOT)
            )
            skip_server = stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "bench.skip_locked",
                        args.server,
                        str(skip_port),
                        str(args.workers),
                    ],
                    skip_env,
                    f"http://127.0.0.1:{skip_port}/livez",
                    work / "skip_locked.log",
                )
            )
            pids = None
            if args.profile and not args.target:
                import psutil

                pids = [c.pid for c in psutil.Process(server.pid).children(recursive=True)]
            report["http"] = http_scenarios(
                sizes,
                base_url,
                f"http://127.0.0.1:{skip_port}",
                setup["api_key"],
                sale_sku,
                work,
                args.locust_processes,
                pids,
            )
            skip_server.send_signal(signal.SIGINT)
            created = sum(
                r["requests"] - r["failures"]
                for k, r in report["http"].items()
                if k.startswith("kami_")
            )
            check = asyncio.run(check_sale(env["KAMI_DATABASE_URL"], sale_sku, sizes.sale_keys))
            check["responses_201"] = created
            check["issued_equals_201"] = int(check["issuances"] == created)
            report["sale_check"] = check
            log(f"sale check: {check}")
        if "import" not in skip:
            log(f"import: {sizes.import_keys:,} generated keys end to end (import_file)")
            seconds = asyncio.run(import_codes(env, import_sku, sizes.import_keys, work))
            report["import"] = {
                "keys": sizes.import_keys,
                "seconds": seconds,
                "per_s": sizes.import_keys / seconds,
                "import_1m_s": seconds * 1_000_000 / sizes.import_keys,
                "extrapolated": sizes.import_keys != 1_000_000,
            }
            log(f"import: {seconds:.2f}s ({sizes.import_keys / seconds:,.0f} keys/s)")

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = round(time.time() - started, 1)
    summarize(report)
    path = args.out / f"{stamp}.json"
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    path.write_text(text + "\n")
    (args.out / "latest.json").write_text(text + "\n")
    chart = draw_chart(report, args.out / f"{stamp}.png")
    if chart is not None:
        (args.out / "latest.png").write_bytes(chart.read_bytes())
    log(f"wrote {path} and latest.json; {report['elapsed_s']}s")
    for name, goal in report["goals"].items():
        log(
            f"  goal {name}: {'met' if goal['met'] else 'NOT met'} "
            f"({goal['value']} {goal['op']} {goal['target']}?)"
        )
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def summarize(report: dict[str, Any]) -> None:
    """The headline fields, each with the raw figures it is computed from."""
    pool = report.get("pool", {})
    top = str(max((int(c) for c in pool.get("kami", {})), default=0))
    kami_pool = pool.get("kami", {}).get(top, {}).get("per_s")
    redis_py = pool.get("redis_py", {}).get(top, {}).get("per_s")
    evalsha = pool.get("redis_benchmark", {}).get(top, {}).get("per_s")
    engine = report.get("engine", {})
    http = report.get("http", {})
    sat, at80 = http.get("kami_saturation", {}), http.get("kami_at_80pct", {})
    micro_results = report.get("micro", {})
    decrypt = micro_results.get("test_decrypt_many", {}).get("entries_per_s")
    check = report.get("sale_check", {})
    report["ratios"] = {
        "pool_vs_redis_py": _ratio(kami_pool, redis_py),
        "pool_vs_evalsha": _ratio(kami_pool, evalsha),
        "engine_vs_skip_locked": _ratio(
            engine.get("kami", {}).get("per_s"), engine.get("skip_locked", {}).get("per_s")
        ),
        "http_vs_noop": _ratio(sat.get("peak_rps"), http.get("noop", {}).get("peak_rps")),
        "http_vs_skip_locked": _ratio(
            sat.get("peak_rps"), http.get("skip_locked", {}).get("peak_rps")
        ),
    }
    report["ratio_inputs"] = {
        "pool_vs_redis_py": {
            "concurrency": int(top),
            "kami_takes_per_s": kami_pool,
            "redis_py_takes_per_s": redis_py,
        },
        "pool_vs_evalsha": {
            "concurrency": int(top),
            "kami_takes_per_s": kami_pool,
            "redis_benchmark_evalsha_per_s": evalsha,
        },
        "engine_vs_skip_locked": {
            "kami_per_s": engine.get("kami", {}).get("per_s"),
            "skip_locked_per_s": engine.get("skip_locked", {}).get("per_s"),
        },
        "http_vs_noop": {
            "issuance_peak_rps": sat.get("peak_rps"),
            "noop_peak_rps": http.get("noop", {}).get("peak_rps"),
        },
        "http_vs_skip_locked": {
            "issuance_peak_rps": sat.get("peak_rps"),
            "skip_locked_peak_rps": http.get("skip_locked", {}).get("peak_rps"),
        },
    }
    report["http"] = {
        **http,
        "peak_rps": sat.get("peak_rps"),
        "p50_ms": at80.get("p50_ms"),
        "p95_ms_at_80pct": at80.get("p95_ms"),
        "p99_ms_at_80pct": at80.get("p99_ms"),
        "rps_at_80pct": at80.get("ok_rps"),
        "errors_by_code": {
            k: v["errors"] for k, v in http.items() if isinstance(v, dict) and "errors" in v
        },
    }
    report["decrypt_per_s_core"] = decrypt
    report["import_1m_s"] = report.get("import", {}).get("import_1m_s")
    report["import_1m_extrapolated"] = report.get("import", {}).get("extrapolated")
    report["duplicates"] = check.get("duplicates")
    report["oversells"] = check.get("oversells")
    report["goals"] = evaluate_goals(report)
    report["goal_targets"] = GOALS
