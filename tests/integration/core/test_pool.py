"""The Redis pool against a real server: exactly-once under concurrency, holds and TTLs,
idempotency, all-or-nothing bundles, lost servers and Redis Cluster."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
import redis

from engine import HoldNotFound, OutOfStock, Overloaded, Pool, PoolUnavailable
from tests.integration.core.servers import Server

T0 = 1_800_000_000_000  # a fixed "now" for tests that move the clock


def ct(entry_id: int) -> bytes:
    """A stand-in ciphertext: the pool never looks inside (68 bytes, like a real one)."""
    return entry_id.to_bytes(8, "big") + b"\xa5" * 60


def entries(ids: range, priority: int = 0) -> list[tuple[int, bytes, int]]:
    return [(i, ct(i), priority) for i in ids]


async def take_all(pool: Pool, sku: str, n: int, prefix: str) -> tuple[list[int], int]:
    """`n` concurrent single-entry takes; returns the ids taken and the OutOfStock count."""
    results = await asyncio.gather(
        *(pool.take(sku, f"{prefix}-{i}", 1) for i in range(n)), return_exceptions=True
    )
    taken: list[int] = []
    out = 0
    for r in results:
        if isinstance(r, OutOfStock):
            out += 1
        elif isinstance(r, BaseException):
            raise r
        else:
            assert len(r) == 1
            assert r[0][1] == ct(r[0][0])
            taken.append(r[0][0])
    return taken, out


async def test_1000_concurrent_takes_on_600_issue_each_entry_once(pool: Pool) -> None:
    assert await pool.load("HOT", entries(range(1, 601))) == 600
    taken, out = await take_all(pool, "HOT", 1000, "order")
    assert len(taken) == 600
    assert out == 400
    assert sorted(taken) == list(range(1, 601))
    assert await pool.stock("HOT") == (0, 0, 600)


WORKER = """
import asyncio, json, sys
from engine import OutOfStock, Pool

async def main():
    url, ns, worker = sys.argv[1], sys.argv[2], sys.argv[3]
    pool = Pool(url, namespace=ns)
    results = await asyncio.gather(
        *(pool.take("HOT", f"p{worker}-{i}", 1) for i in range(250)), return_exceptions=True
    )
    ids, out = [], 0
    for r in results:
        if isinstance(r, OutOfStock):
            out += 1
        elif isinstance(r, BaseException):
            raise r
        else:
            ids.extend(e[0] for e in r)
    print(json.dumps({"ids": ids, "out": out}))

asyncio.run(main())
"""


async def test_4_processes_share_one_pool_exactly_once(
    pool: Pool, redis_url: str, namespace: str
) -> None:
    await pool.load("HOT", entries(range(1, 601)))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            redis_url,
            namespace,
            str(w),
            stdout=asyncio.subprocess.PIPE,
        )
        for w in range(4)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert all(p.returncode == 0 for p in procs)
    reports = [json.loads(out) for out, _ in outputs]
    ids = [i for r in reports for i in r["ids"]]
    assert sorted(ids) == list(range(1, 601))
    assert sum(r["out"] for r in reports) == 400
    assert await pool.stock("HOT") == (0, 0, 600)


async def test_concurrent_retries_of_one_holder_reserve_once(pool: Pool) -> None:
    await pool.load("S", entries(range(1, 11)))
    results = await asyncio.gather(*(pool.reserve("S", "order-1", 3, 60_000) for _ in range(50)))
    assert all(r == results[0] for r in results)
    assert [e[0] for e in results[0]] == [1, 2, 3]
    # A retry asking for more still gets the first hold, never more.
    assert await pool.reserve("S", "order-1", 5, 60_000) == results[0]
    assert await pool.stock("S") == (7, 3, 0)
    # Retried takes of one holder in one batch get the same entries too.
    takes = await asyncio.gather(*(pool.take("S", "order-2", 2) for _ in range(50)))
    assert all(t == takes[0] for t in takes)
    assert await pool.stock("S") == (5, 3, 2)


async def test_hold_lifecycle_confirm_release_idempotency(pool: Pool) -> None:
    await pool.load("S", entries(range(1, 6)))
    held = await pool.reserve("S", "a", 2, 60_000)
    assert await pool.confirm("S", "a") == [e[0] for e in held]
    assert await pool.confirm("S", "a") == [e[0] for e in held]  # idempotent
    with pytest.raises(HoldNotFound):
        await pool.release("S", "a")  # issued entries do not come back
    with pytest.raises(HoldNotFound):
        await pool.confirm("S", "nobody")
    b = await pool.reserve("S", "b", 2, 60_000)
    assert await pool.release("S", "b") == 2
    with pytest.raises(HoldNotFound):
        await pool.release("S", "b")
    # Released entries are first in line again.
    assert await pool.take("S", "c", 2) == b
    assert await pool.stock("S") == (1, 0, 4)
    assert sorted(await pool.holders("S")) == ["a", "c"]


async def test_ttl_expiry_with_a_controlled_clock(pool: Pool) -> None:
    pool.clock_ms = T0
    assert pool.clock_ms == T0
    await pool.load("S", entries(range(1, 6)))
    await pool.reserve("S", "late", 3, 1_000)
    await pool.reserve("S", "swept", 1, 1_000)
    pool.clock_ms = T0 + 999
    assert await pool.stock("S") == (1, 4, 0)
    pool.clock_ms = T0 + 1_000
    # Expired holds return by themselves on the next access...
    with pytest.raises(HoldNotFound):
        await pool.confirm("S", "late")
    assert await pool.stock("S") == (5, 0, 0)
    # ...or by the sweeper, which takes an explicit time too.
    await pool.reserve("S", "x", 2, 500)
    assert await pool.expire("S", now_ms=T0 + 1_499) == 0
    assert await pool.expire("S", now_ms=T0 + 1_500) == 1
    assert await pool.stock("S") == (5, 0, 0)
    pool.clock_ms = None
    assert pool.clock_ms is None
    # With Redis TIME, a 60 s hold is alive.
    await pool.reserve("S", "y", 1, 60_000)
    assert await pool.expire("S") == 0


async def test_priority_batches_and_load_idempotency(pool: Pool) -> None:
    assert await pool.load("S", entries(range(10, 13), priority=5), batch=2) == 3
    assert await pool.load("S", entries(range(1, 4), priority=1), batch=1) == 3
    # Loading again (any order, any chunking) changes nothing, also for held/issued ones.
    await pool.take("S", "t", 1)
    assert await pool.load("S", entries(range(12, 9, -1), priority=5), batch=2) == 0
    assert await pool.load("S", entries(range(1, 4), priority=1), batch=1) == 0
    assert await pool.stock("S") == (5, 0, 1)
    # Lowest priority first; a pinned batch takes from that batch only.
    assert [e[0] for e in await pool.take("S", "u", 2)] == [2, 3]
    assert [e[0] for e in await pool.take("S", "v", 2, batch=2)] == [10, 11]
    with pytest.raises(OutOfStock):
        await pool.reserve("S", "w", 2, 1_000, batch=2)
    with pytest.raises(OutOfStock):
        await pool.take("S", "w", 1, batch=7)
    assert await pool.stock("S") == (1, 0, 5)


async def test_load_sorted_bulk_is_idempotent_across_chunks(pool: Pool) -> None:
    # More entries than one script call carries, so the chunks are pipelined.
    ids = list(range(1, 10_001))
    assert await pool.load_sorted("B", ids, [ct(i) for i in ids], priority=3, batch=4) == 10_000
    # A repeat that overlaps what was loaded adds only the new tail, in order.
    more = list(range(9_001, 12_001))
    assert await pool.load_sorted("B", more, [ct(i) for i in more], priority=3, batch=4) == 2_000
    # The same bucket through `load`: already there, nothing added.
    assert await pool.load("B", entries(range(5, 8), priority=3), batch=4) == 0
    assert await pool.stock("B") == (12_000, 0, 0)
    taken, _ = await take_all(pool, "B", 12_000, "bulk")
    assert sorted(taken) == list(range(1, 12_001))
    with pytest.raises(OutOfStock):
        await pool.take("B", "after", 1)


async def test_load_sorted_refuses_unordered_or_mismatched_input(pool: Pool) -> None:
    with pytest.raises(ValueError, match="increasing"):
        await pool.load_sorted("B", [2, 1], [ct(2), ct(1)], priority=0, batch=1)
    with pytest.raises(ValueError, match="increasing"):
        await pool.load_sorted("B", [1, 1], [ct(1), ct(1)], priority=0, batch=1)
    with pytest.raises(ValueError, match="same length"):
        await pool.load_sorted("B", [1, 2], [ct(1)], priority=0, batch=1)
    with pytest.raises(ValueError, match="ciphertext"):
        await pool.load_sorted("B", [1], [b""], priority=0, batch=1)
    assert not await pool.exists("B")


async def test_parked_entries_are_invisible_until_activated(pool: Pool, redis_url: str) -> None:
    await pool.rebuild("K", [], issued=0)  # the product's (empty) pool
    ids = list(range(1, 9_001))
    assert await pool.park_sorted("K", ids, [ct(i) for i in ids], priority=2, batch=9) == 9_000
    # Parked: nothing to take, nothing counted.
    assert await pool.stock("K") == (0, 0, 0)
    with pytest.raises(OutOfStock):
        await pool.take("K", "early", 1)
    # A retried park replaces what the first attempt left, it does not add to it.
    assert await pool.park_sorted("K", ids, [ct(i) for i in ids], priority=2, batch=9) == 9_000
    assert await pool.activate_parked("K", priority=2, batch=9, last_id=9_000) == 9_000
    assert await pool.stock("K") == (9_000, 0, 0)
    # Loading the same batch again adds nothing: the high-water mark was set.
    assert (
        await pool.load_sorted("K", ids[:10], [ct(i) for i in ids[:10]], priority=2, batch=9) == 0
    )
    taken, _ = await take_all(pool, "K", 9_000, "parked")
    assert sorted(taken) == ids


async def test_activation_refuses_a_live_bucket_or_a_missing_pool(pool: Pool) -> None:
    await pool.rebuild("K", [], issued=0)
    await pool.load_sorted("K", [1, 2], [ct(1), ct(2)], priority=0, batch=1)
    await pool.park_sorted("K", [1, 2, 3], [ct(1), ct(2), ct(3)], priority=0, batch=1)
    # The bucket is live already: refused, and the parked copy is dropped (no duplicates).
    assert await pool.activate_parked("K", priority=0, batch=1, last_id=3) is None
    assert (
        await pool.load_sorted("K", [1, 2, 3], [ct(i) for i in (1, 2, 3)], priority=0, batch=1) == 1
    )
    assert await pool.stock("K") == (3, 0, 0)
    # No pool at all (Redis lost it): refused, so the caller rebuilds from PostgreSQL.
    await pool.park_sorted("GONE", [5], [ct(5)], priority=0, batch=2)
    assert await pool.activate_parked("GONE", priority=0, batch=2, last_id=5) is None
    assert not await pool.exists("GONE")


async def test_unparked_entries_never_become_available(pool: Pool) -> None:
    await pool.rebuild("K", [], issued=0)
    await pool.park_sorted("K", [7, 8], [ct(7), ct(8)], priority=0, batch=3)
    await pool.unpark("K", priority=0, batch=3)
    assert await pool.activate_parked("K", priority=0, batch=3, last_id=8) == 0
    assert await pool.stock("K") == (0, 0, 0)


async def test_out_of_stock_holds_nothing_and_others_in_batch_succeed(pool: Pool) -> None:
    await pool.load("S", entries(range(1, 4)))
    results = await asyncio.gather(
        pool.take("S", "big", 5), pool.take("S", "small", 2), return_exceptions=True
    )
    assert isinstance(results[0], OutOfStock)
    assert results[1] == [(1, ct(1)), (2, ct(2))]
    assert await pool.stock("S") == (1, 0, 2)


async def test_take_many_is_all_or_nothing(pool: Pool) -> None:
    await pool.load("A", entries(range(1, 6)))
    await pool.load("B", entries(range(100, 101)))
    with pytest.raises(OutOfStock):
        await pool.take_many([("A", 2), ("B", 2)], "bundle-1")
    assert await pool.stock("A") == (5, 0, 0)
    assert await pool.stock("B") == (1, 0, 0)
    got = await pool.take_many([("A", 2), ("B", 1)], "bundle-2")
    assert got == {"A": [(1, ct(1)), (2, ct(2))], "B": [(100, ct(100))]}
    assert await pool.take_many([("A", 2), ("B", 1)], "bundle-2") == got  # retry
    assert await pool.stock("A") == (3, 0, 2)
    assert await pool.stock("B") == (0, 0, 1)
    with pytest.raises(ValueError, match="twice"):
        await pool.take_many([("A", 1), ("A", 1)], "bundle-3")
    # A holder's live hold in one pool becomes that pool's part of the bundle.
    await pool.load("B", entries(range(101, 104)))
    held = await pool.reserve("A", "bundle-4", 2, 60_000)
    got = await pool.take_many([("A", 2), ("B", 1)], "bundle-4")
    assert got["A"] == held
    assert await pool.stock("A") == (1, 0, 4)
    # Concurrent bundles never split a pool's last entries between them.
    results = await asyncio.gather(
        *(pool.take_many([("A", 1), ("B", 1)], f"race-{i}") for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, OutOfStock) for r in results) == 4
    assert await pool.stock("A") == (0, 0, 5)
    assert await pool.stock("B") == (1, 0, 3)


async def test_noscript_after_flush_is_reloaded(pool: Pool, redis_url: str) -> None:
    await pool.load("S", entries(range(1, 4)))
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    client.close()
    assert len(await pool.take("S", "h", 1)) == 1


async def test_rebuild_drain_exists(pool: Pool) -> None:
    assert not await pool.exists("S")
    await pool.load("S", entries(range(1, 6)))
    await pool.take("S", "h", 2)
    assert await pool.exists("S")
    n = await pool.rebuild("S", [(i, ct(i), 0, 0) for i in range(3, 9)], issued=2)
    assert n == 6
    assert await pool.stock("S") == (6, 0, 2)
    assert await pool.holders("S") == []
    assert await pool.drain("S") == 6
    assert not await pool.exists("S")
    assert await pool.stock("S") == (0, 0, 0)


async def test_bad_arguments_are_value_errors(pool: Pool) -> None:
    with pytest.raises(ValueError, match="quantity"):
        await pool.take("S", "h", 0)
    with pytest.raises(ValueError, match="quantity"):
        await pool.take("S", "h", 101)
    with pytest.raises(ValueError, match="sku"):
        await pool.take("a{b}", "h", 1)
    with pytest.raises(ValueError, match="2\\^53"):
        await pool.load("S", [(2**53, b"x", 0)])
    with pytest.raises(ValueError, match="URL"):
        Pool("nope://x")


async def test_full_queue_raises_overloaded(redis_url: str, namespace: str) -> None:
    pool = Pool(redis_url, namespace=namespace, max_queue=2, max_batch=1)
    await pool.load("S", entries(range(1, 501)))
    results = await asyncio.gather(
        *(pool.take("S", f"h{i}", 1) for i in range(500)), return_exceptions=True
    )
    overloaded = sum(isinstance(r, Overloaded) for r in results)
    ok = sum(isinstance(r, list) for r in results)
    assert overloaded > 0
    assert ok + overloaded == 500
    assert (await pool.stock("S"))[2] == ok


async def test_unreachable_redis_is_pool_unavailable_quickly() -> None:
    pool = Pool("redis://127.0.0.1:1", timeout_ms=500)
    started = time.monotonic()
    with pytest.raises(PoolUnavailable):
        await pool.take("S", "h", 1)
    assert time.monotonic() - started < 5
    # TLS to a server that speaks plain text fails the same way, without hanging.
    tls = Pool("rediss://127.0.0.1:1", timeout_ms=500)
    with pytest.raises(PoolUnavailable):
        await tls.exists("S")


async def test_unix_sockets(private_server: Server) -> None:
    for scheme in ("unix", "redis+unix"):
        pool = Pool(f"{scheme}://{private_server.socket}", namespace=scheme.replace("+", "-"))
        await pool.load("S", entries(range(1, 3)))
        assert len(await pool.take("S", "h", 1)) == 1


async def test_redis_killed_mid_run_then_rebuilt_issues_nothing_twice(
    private_server: Server,
) -> None:
    pool = Pool(private_server.url, namespace="kill", timeout_ms=500)
    all_ids = range(1, 401)
    await pool.load("S", entries(all_ids))
    # What PostgreSQL would have recorded: only takes whose result came back.
    issued: list[int] = []
    unavailable = 0
    enough = asyncio.Event()

    async def buyer(n: int) -> None:
        nonlocal unavailable
        for k in range(40):
            try:
                got = await pool.take("S", f"b{n}-{k}", 1)
            except PoolUnavailable:
                unavailable += 1
                return
            issued.extend(e[0] for e in got)
            if len(issued) >= 50:
                enough.set()
            await asyncio.sleep(0.002)

    buyers = asyncio.gather(*(buyer(n) for n in range(10)))
    await enough.wait()
    private_server.kill()
    started = time.monotonic()
    await buyers
    assert unavailable > 0
    with pytest.raises(PoolUnavailable):
        await pool.stock("S")
    assert time.monotonic() - started < 10

    private_server.start()  # an empty server: everything in Redis is lost
    for _ in range(50):
        try:
            if not await pool.exists("S"):
                break
        except PoolUnavailable:
            await asyncio.sleep(0.1)
    assert not await pool.exists("S")
    truth = [i for i in all_ids if i not in set(issued)]
    await pool.rebuild("S", [(i, ct(i), 0, 0) for i in truth], issued=len(issued))
    rest, out = await take_all(pool, "S", len(truth) + 10, "after")
    assert out == 10
    everything = issued + rest
    assert len(everything) == len(set(everything)) == 400


async def test_cluster_sharded_pool_1000_vs_600(cluster_urls: list[str]) -> None:
    pool = Pool(cluster_urls, cluster=True, shards=4, namespace="kc")
    await pool.drain("HOT")
    assert await pool.load("HOT", entries(range(1, 601))) == 600
    client = redis.RedisCluster.from_url(cluster_urls[0])
    slots = {client.keyslot(f"{{kc:pool:HOT:{s}}}") for s in range(4)}
    nodes = {client.get_node_from_key(f"{{kc:pool:HOT:{s}}}").name for s in range(4)}
    client.close()
    assert len(slots) == 4
    assert len(nodes) > 1  # the shards really live on different nodes
    taken, out = await take_all(pool, "HOT", 1000, "order")
    assert sorted(taken) == list(range(1, 601))
    assert out == 400
    assert await pool.stock("HOT") == (0, 0, 600)
    # Holds and bundles work across slots too. (One request is served by one shard, so
    # each shard needs the quantity: 10 entries per shard here.)
    await pool.load("A", entries(range(1, 41)))
    await pool.load("B", entries(range(1, 41)))
    held = await pool.reserve("A", "r", 1, 60_000)
    assert await pool.confirm("A", "r") == [held[0][0]]
    got = await pool.take_many([("A", 1), ("B", 2)], "bundle")
    assert len(got["A"]) == 1
    assert len(got["B"]) == 2


async def test_issued_records_are_kept_between_one_and_two_periods(
    redis_url: str, namespace: str
) -> None:
    pool = Pool(redis_url, namespace=namespace, issued_ttl_ms=1_000)
    pool.clock_ms = T0
    await pool.load("S", entries(range(1, 11)))
    first = await pool.take("S", "h", 1)
    pool.clock_ms = T0 + 1_000  # a new generation starts; the record moves to the old one
    assert await pool.take("S", "h", 1) == first
    assert await pool.confirm("S", "h") == [first[0][0]]
    pool.clock_ms = T0 + 2_000  # the old generation is dropped
    again = await pool.take("S", "h", 1)
    assert again != first
    assert await pool.stock("S") == (8, 0, 2)


async def test_sharded_pool_on_one_server_finds_each_holders_shard(
    redis_url: str, namespace: str
) -> None:
    pool = Pool(redis_url, namespace=namespace, shards=3)
    assert pool.shards == 3
    assert await pool.load("S", entries(range(1, 31))) == 30
    assert await pool.load("S", entries(range(1, 31))) == 0
    held = {h: await pool.reserve("S", h, 2, 60_000) for h in ("a", "b", "c", "d")}
    assert await pool.stock("S") == (22, 8, 0)
    assert await pool.confirm("S", "a") == [e[0] for e in held["a"]]
    assert await pool.release("S", "b") == 2
    assert await pool.reserve("S", "c", 2, 60_000) == held["c"]
    assert await pool.stock("S") == (24, 4, 2)
    assert sorted(await pool.holders("S")) == ["a", "c", "d"]
    # Takes move on to the next shard until every shard is empty.
    taken = await take_all(pool, "S", 30, "t")
    assert len(taken[0]) == 24
    assert await pool.stock("S") == (0, 4, 26)
    assert await pool.drain("S") == 0
