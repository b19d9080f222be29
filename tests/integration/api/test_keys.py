"""API keys: the rate limit per key, rotation with a grace period, revocation.

Time is injected (the rate limiter's clock, the principal cache's clocks), so windows,
grace periods and cache lifetimes are crossed without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.errors import DomainError
from engine.principals import CACHE_TTL_S, AgentKey, PrincipalCache
from engine.ratelimit import RateLimiter
from engine.settings import Settings
from engine.signing import sign
from tests.integration.issuance.conftest import Shop, make_shop


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
        yield c


@pytest.fixture
async def shop(client: httpx.AsyncClient, operator_token: str) -> Shop:
    return await make_shop(client, operator_token)


async def _new_key(shop: Shop, **options: object) -> tuple[int, str]:
    created = await shop.client.post(
        f"/v1/agents/{shop.agent_id}/api-keys", json=options, headers=shop.operator
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


async def _issue(shop: Shop, key: str) -> httpx.Response:
    return await shop.client.post(
        "/v1/issuances",
        json={"sku": shop.sku, "quantity": 1},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": secrets.token_hex(8)},
    )


# ---------------------------------------------------------------------------- rate limit


async def test_the_rate_limit_applies_and_resets(app: FastAPI, shop: Shop) -> None:
    clock = Clock(1_000_000.0)
    app.state.rate_limiter = RateLimiter(
        app.state.runtime.redis, app.state.settings.redis_namespace, clock=clock
    )
    key_id, key = await _new_key(shop, rate_limit_per_s=2)
    assert [(await _issue(shop, key)).status_code for _ in range(2)] == [201, 201]
    limited = await _issue(shop, key)
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["content-type"].startswith("application/problem+json")
    # Nothing was taken or charged for the refused request.
    assert (await shop.stock())["issued"] == 2
    assert await shop.balance() == 1_000_000 - 2 * shop.price
    # Other keys, even the same agent's, have budgets of their own.
    assert (await _issue(shop, shop.api_key)).status_code == 201

    # Half a second into the next second, half of the busy one still counts (2 x 0.5):
    # room for one more, not two. Refused requests did not count.
    clock.now += 1.5
    assert [(await _issue(shop, key)).status_code for _ in range(2)] == [201, 429]
    # Two seconds on, the window is empty again.
    clock.now += 2.0
    assert [(await _issue(shop, key)).status_code for _ in range(3)] == [201, 201, 429]

    # The operator lifts the limit: applied at once in this worker.
    patched = await shop.client.patch(
        f"/v1/api-keys/{key_id}", json={"rate_limit_per_s": 100}, headers=shop.operator
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["rate_limit_per_s"] == 100
    assert patched.json()["require_signature"] is False
    assert [(await _issue(shop, key)).status_code for _ in range(5)] == [201] * 5


async def test_a_key_without_a_limit_takes_the_setting(
    settings: Settings, operator_token: str
) -> None:
    app = create_app(settings.model_copy(update={"api_key_rate_limit_per_s": 1}))
    async with app.router.lifespan_context(app):
        app.state.rate_limiter = RateLimiter(
            app.state.runtime.redis, settings.redis_namespace, clock=Clock(2_000_000.0)
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
            shop = await make_shop(c, operator_token)
            assert (await _issue(shop, shop.api_key)).status_code == 201
            assert (await _issue(shop, shop.api_key)).status_code == 429
            # A key's own limit wins over the default.
            _, roomy = await _new_key(shop, rate_limit_per_s=10)
            assert [(await _issue(shop, roomy)).status_code for _ in range(3)] == [201] * 3


async def test_bad_rate_limits_are_refused(shop: Shop) -> None:
    for value in (0, -1, "10", 10**7):
        created = await shop.client.post(
            f"/v1/agents/{shop.agent_id}/api-keys",
            json={"rate_limit_per_s": value},
            headers=shop.operator,
        )
        assert created.status_code == 422, (value, created.text)


# ---------------------------------------------------------------------------- rotation


async def test_rotation_keeps_two_keys_active_then_one(app: FastAPI, shop: Shop) -> None:
    old_id, old = await _new_key(shop, rate_limit_per_s=50)
    rotated = await shop.client.post(
        f"/v1/api-keys/{old_id}/rotate", json={"grace_s": 3600}, headers=shop.operator
    )
    assert rotated.status_code == 201, rotated.text
    body = rotated.json()
    new_id, new = body["id"], body["key"]
    assert new.startswith("kami_live_") and new != old
    assert body["rotated_from"] == old_id and body["rate_limit_per_s"] == 50
    # Both work during the grace period.
    assert (await _issue(shop, old)).status_code == 201
    assert (await _issue(shop, new)).status_code == 201
    state = (await shop.client.get(f"/v1/api-keys/{old_id}", headers=shop.operator)).json()
    assert state["active"] is True and state["expires_at"] == body["previous_expires_at"]

    # A third active key in the chain is refused, from either end.
    for key_id in (old_id, new_id):
        again = await shop.client.post(f"/v1/api-keys/{key_id}/rotate", headers=shop.operator)
        assert again.status_code == 409 and again.json()["code"] == "rotation_in_progress"

    # Revoking the old key ends its grace at once; then the new key may rotate.
    revoked = await shop.client.delete(f"/v1/api-keys/{old_id}", headers=shop.operator)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert revoked.json()["revoked_at"] is not None
    refused = await _issue(shop, old)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"
    third = await shop.client.post(
        f"/v1/api-keys/{new_id}/rotate", json={"grace_s": 0}, headers=shop.operator
    )
    assert third.status_code == 201, third.text
    # No grace: the rotated key stops now, its successor works.
    assert (await _issue(shop, new)).status_code == 401
    assert (await _issue(shop, third.json()["key"])).status_code == 201


async def test_the_grace_period_ends_on_time_cached_or_not(app: FastAPI, shop: Shop) -> None:
    wall = Clock(time.time())
    app.state.principals = PrincipalCache(wall_clock=wall)
    old_id, old = await _new_key(shop)
    rotated = await shop.client.post(
        f"/v1/api-keys/{old_id}/rotate", json={"grace_s": 60}, headers=shop.operator
    )
    assert rotated.status_code == 201
    assert (await _issue(shop, old)).status_code == 201  # cached from here on
    wall.now += 61
    assert (await _issue(shop, old)).status_code == 401  # the cached principal expired
    app.state.principals.clear()
    assert (await _issue(shop, old)).status_code == 401  # and the database agrees
    assert (await _issue(shop, rotated.json()["key"])).status_code == 201


async def test_a_revoked_key_stops_in_other_workers_within_the_cache_ttl(
    app: FastAPI, shop: Shop
) -> None:
    key_id, key = await _new_key(shop)
    # Another worker's cache, with its own clock.
    monotonic = Clock(100.0)
    elsewhere = PrincipalCache(clock=monotonic)
    db = app.state.runtime.db
    seen = await elsewhere.authenticate(db, key)
    assert isinstance(seen, AgentKey) and seen.key_id == key_id

    revoked = await shop.client.post(f"/v1/api-keys/{key_id}/revoke", headers=shop.operator)
    assert revoked.status_code == 200
    # This worker refuses at once ...
    assert (await _issue(shop, key)).status_code == 401
    # ... the other until its cache entry expires, and not a moment after.
    monotonic.now += CACHE_TTL_S - 0.5
    assert await elsewhere.authenticate(db, key) == seen
    monotonic.now += 1.0
    assert await elsewhere.authenticate(db, key) is None

    # Revoking twice changes nothing more; unknown keys are 404 everywhere.
    twice = await shop.client.delete(f"/v1/api-keys/{key_id}", headers=shop.operator)
    assert twice.status_code == 200 and twice.json()["revoked_at"] == revoked.json()["revoked_at"]
    for method, path in (
        ("DELETE", "/v1/api-keys/999999999"),
        ("POST", "/v1/api-keys/999999999/rotate"),
        ("GET", "/v1/api-keys/999999999"),
        ("POST", f"/v1/api-keys/{key_id}/rotate"),  # revoked: nothing to rotate
    ):
        missing = await shop.client.request(method, path, headers=shop.operator)
        assert missing.status_code == 404, (method, path, missing.text)
        assert missing.json()["code"] == "api_key_not_found"


async def test_a_rotated_signing_key_keeps_its_signing_secret(shop: Shop) -> None:
    created = await shop.client.post(
        f"/v1/agents/{shop.agent_id}/api-keys",
        json={"require_signature": True},
        headers=shop.operator,
    )
    old_id, secret = created.json()["id"], created.json()["signing_secret"]
    rotated = await shop.client.post(f"/v1/api-keys/{old_id}/rotate", headers=shop.operator)
    assert rotated.status_code == 201, rotated.text
    assert rotated.json()["require_signature"] is True
    assert rotated.json()["signing_secret"] is None  # nothing new to hand out
    body = json.dumps({"sku": shop.sku, "quantity": 1}).encode()
    ts = str(int(time.time()))
    signed = await shop.client.post(
        "/v1/issuances",
        content=body,
        headers={
            "Authorization": f"Bearer {rotated.json()['key']}",
            "X-Kami-Timestamp": ts,
            "X-Kami-Signature": sign(secret, "POST", "/v1/issuances", ts, body),
            "Content-Type": "application/json",
            "Idempotency-Key": secrets.token_hex(8),
        },
    )
    assert signed.status_code == 201, signed.text
    unsigned = await _issue(shop, rotated.json()["key"])
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "invalid_signature"


async def test_key_writes_need_an_operator_and_are_idempotent(shop: Shop) -> None:
    key_id, _ = await _new_key(shop)
    agent = await shop.client.post(f"/v1/api-keys/{key_id}/rotate", headers=shop.agent())
    assert agent.status_code == 403
    headers = {**shop.operator, "Idempotency-Key": secrets.token_hex(8)}
    first = await shop.client.post(
        f"/v1/api-keys/{key_id}/rotate", json={"grace_s": 10}, headers=headers
    )
    again = await shop.client.post(
        f"/v1/api-keys/{key_id}/rotate", json={"grace_s": 10}, headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    conflict = await shop.client.post(
        f"/v1/api-keys/{key_id}/rotate", json={"grace_s": 11}, headers=headers
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"
    bad = await shop.client.post(
        f"/v1/api-keys/{key_id}/rotate", json={"grace_s": -1}, headers=shop.operator
    )
    assert bad.status_code == 422


async def test_concurrent_requests_never_exceed_the_limit(app: FastAPI, shop: Shop) -> None:
    # Every request lands in one frozen second: exactly the limit gets through, whatever
    # the interleaving (INCR is atomic in Redis, shared by every worker).
    app.state.rate_limiter = RateLimiter(
        app.state.runtime.redis, app.state.settings.redis_namespace, clock=Clock(3_000_000.25)
    )
    _, key = await _new_key(shop, rate_limit_per_s=7)
    responses = await asyncio.gather(*(_issue(shop, key) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 7 + [429] * 13
    assert (await shop.stock())["issued"] == 7


async def test_concurrent_rotations_leave_one_successor(shop: Shop) -> None:
    key_id, _ = await _new_key(shop)
    responses = await asyncio.gather(
        *(
            shop.client.post(f"/v1/api-keys/{key_id}/rotate", headers=shop.operator)
            for _ in range(4)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"rotation_in_progress"}


async def test_an_agents_keys_are_listed_without_secrets(shop: Shop) -> None:
    first, _ = await _new_key(shop)
    rotated = await shop.client.post(f"/v1/api-keys/{first}/rotate", headers=shop.operator)
    successor = rotated.json()["id"]
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"agent_id": shop.agent_id, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = await shop.client.get("/v1/api-keys", params=params, headers=shop.operator)
        assert page.status_code == 200, page.text
        seen.extend(page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    # The shop's own key, the first and its successor, oldest first.
    assert [k["id"] for k in seen][-2:] == [first, successor]
    assert seen[-1]["rotated_from"] == first and all(k["active"] for k in seen)
    assert all("key" not in k and "secret_hash" not in k for k in seen)
    bad = await shop.client.get(
        "/v1/api-keys", params={"agent_id": shop.agent_id, "cursor": "zz"}, headers=shop.operator
    )
    assert bad.status_code == 422
    nobody = await shop.client.get(
        "/v1/api-keys", params={"agent_id": 999_999_999}, headers=shop.operator
    )
    assert nobody.status_code == 404 and nobody.json()["code"] == "agent_not_found"


async def test_the_limiter_matches_its_model_and_never_passes_the_limit(app: FastAPI) -> None:
    """Random request times against real Redis, compared with the window's definition:
    admitted when this second's admitted count + 1 + the previous second's x the share
    of it still covered stays within the limit. In no one-second bucket are more than
    `limit` requests admitted."""
    redis = app.state.runtime.redis
    for seed in range(6):
        rng = random.Random(seed)
        limit = rng.randint(1, 6)
        clock = Clock(4_000_000.0 + 100 * seed)
        limiter = RateLimiter(
            redis, f"{app.state.settings.redis_namespace}:model{seed}", clock=clock
        )
        admitted: collections.Counter[int] = collections.Counter()
        for _ in range(150):
            clock.now += rng.choice((0.0, 0.01, 0.1, 0.3, 0.7, 1.3))
            second = int(clock.now)
            expected = (
                admitted[second] + 1 + admitted[second - 1] * (1.0 - (clock.now - second)) <= limit
            )
            if expected:
                await limiter.check(seed + 1, limit)  # admitted: raises nothing
                admitted[second] += 1
            else:
                with pytest.raises(DomainError) as refused:
                    await limiter.check(seed + 1, limit)
                assert refused.value.code == "rate_limited", (seed, clock.now)
        assert max(admitted.values()) <= limit
