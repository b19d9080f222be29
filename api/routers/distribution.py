"""Distribution (operator): agent levels, agents, API keys, deposits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from starlette.responses import Response

from api.deps import OperatorDep, RuntimeDep
from api.idempotency import Written, json_response, operator_write, run_idempotent
from api.routers.levels import level_body
from api.schemas import (
    AgentCreate,
    AgentLevelCreate,
    AgentPublic,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeyUpdate,
    DepositCreate,
    DepositPublic,
    Id,
)
from api.schemas_levels import AgentLevelDetail
from engine import audit
from engine.auth import ApiKeyMode
from engine.distribution.keys import get_key, set_rate_limit
from engine.distribution.levels import level_detail
from engine.distribution.service import (
    Agent,
    create_agent,
    create_api_key,
    create_level,
    get_agent,
)
from engine.ledger.service import deposit
from engine.signing import configure
from engine.storage.db import Connection

router = APIRouter(prefix="/v1", tags=["distribution"])


def _agent(agent: Agent) -> dict[str, Any]:
    return AgentPublic(**vars(agent)).model_dump(mode="json")


@router.post(
    "/agent-levels",
    status_code=status.HTTP_201_CREATED,
    response_model=AgentLevelDetail,
    summary="Create an agent level with its prices and visible SKUs",
)
async def create_agent_level(
    body: AgentLevelCreate, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        level = await create_level(
            conn,
            name=body.name,
            rank=body.rank,
            prices=body.prices,
            visible_skus=body.visible_skus,
        )
        # The full level (discount, tiers, rules…), as GET and PATCH show it.
        return level_body(await level_detail(conn, level.id)), f"agent_level:{level.id}", None

    return await operator_write(
        request,
        runtime,
        operator,
        action="agent_level.created",
        payload=body.model_dump(mode="json"),
        work=work,
    )


@router.get("/agent-levels/{level_id}", response_model=AgentLevelDetail, summary="An agent level")
async def read_agent_level(level_id: Id, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    return json_response(200, level_body(await level_detail(runtime.db, level_id)))


@router.post(
    "/agents",
    status_code=status.HTTP_201_CREATED,
    response_model=AgentPublic,
    summary="Create an agent",
)
async def create(
    body: AgentCreate, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        agent = await create_agent(
            conn,
            name=body.name,
            level_id=body.level_id,
            parent_id=body.parent_id,
            credit_limit=body.credit_limit,
            max_depth=runtime.settings.agent_max_depth,
        )
        return _agent(agent), f"agent:{agent.id}", None

    return await operator_write(
        request,
        runtime,
        operator,
        action="agent.created",
        payload=body.model_dump(mode="json"),
        work=work,
    )


@router.get("/agents/{agent_id}", response_model=AgentPublic, summary="An agent and its balance")
async def read(agent_id: Id, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    return json_response(200, _agent(await get_agent(runtime.db, agent_id)))


@router.post(
    "/agents/{agent_id}/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key for an agent (the secret is shown once)",
)
async def create_key(
    agent_id: Id,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
    body: ApiKeyCreate | None = None,
) -> Response:
    options = body or ApiKeyCreate()
    mode = ApiKeyMode(options.mode)

    async def work(conn: Connection) -> Written:
        key_id, key, prefix = await create_api_key(
            conn, agent_id, mode, rate_limit_per_s=options.rate_limit_per_s
        )
        signing_secret = None
        if options.require_signature:
            state = await configure(
                conn, request.app.state.keyring.cipher, key_id, require_signature=True
            )
            signing_secret = state.new_secret
        created = ApiKeyCreated(
            id=key_id,
            key=key,
            mode=mode.value,
            prefix=prefix,
            require_signature=options.require_signature,
            signing_secret=signing_secret,
            rate_limit_per_s=options.rate_limit_per_s,
        )
        # The audit keeps the prefix, never the key or the signing secret.
        detail = {
            "key_id": key_id,
            "mode": mode.value,
            "prefix": prefix,
            "require_signature": options.require_signature,
            "rate_limit_per_s": options.rate_limit_per_s,
        }
        return created.model_dump(mode="json"), f"agent:{agent_id}", detail

    return await operator_write(
        request,
        runtime,
        operator,
        action="api_key.created",
        payload={
            "agent_id": agent_id,
            "mode": mode.value,
            "require_signature": options.require_signature,
            "rate_limit_per_s": options.rate_limit_per_s,
        },
        work=work,
    )


@router.patch(
    "/api-keys/{key_id}",
    response_model=ApiKeyPublic,
    summary="Change an API key: signed requests, signing secret, rate limit",
    description="Turning signing on for a key without a signing secret, or rotating it, "
    "returns the new `signing_secret`, once. `rate_limit_per_s` sets the key's requests per "
    "second (null: the deployment's default). Applies to every worker within seconds.",
)
async def update_key(
    key_id: Id,
    body: ApiKeyUpdate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            if "rate_limit_per_s" in body.model_fields_set:
                await set_rate_limit(conn, key_id, body.rate_limit_per_s)
            current = await get_key(conn, key_id)
            require = (
                body.require_signature
                if body.require_signature is not None
                else current.require_signature
            )
            state = await configure(
                conn,
                request.app.state.keyring.cipher,
                key_id,
                require_signature=require,
                rotate=body.rotate_signing_secret,
            )
            # The fields the request set, by name: a rate-limit change is not a signing
            # change, and the audit says which it was.
            detail = {
                "key_id": key_id,
                "fields": sorted(body.model_dump(exclude_unset=True)),
                "require_signature": state.require_signature,
                "secret_created": state.new_secret is not None,
                "rate_limit_per_s": current.rate_limit_per_s,
            }
            await audit.record(
                conn, operator.owner_label, "api_key.updated", f"agent:{state.agent_id}", detail
            )
        public = ApiKeyPublic(
            id=state.key_id,
            agent_id=state.agent_id,
            mode=state.mode,
            prefix=state.prefix,
            require_signature=state.require_signature,
            signing_secret=state.new_secret,
            rate_limit_per_s=current.rate_limit_per_s,
        )
        return json_response(200, public.model_dump(mode="json"))

    response = await run_idempotent(
        request,
        runtime,
        operator.owner_label,
        {"key_id": key_id, **body.model_dump(mode="json", exclude_unset=True)},
        run,
    )
    # This worker applies the change at once; the others when their cache entry expires.
    request.app.state.principals.forget_key(key_id)
    return response


@router.post(
    "/agents/{agent_id}/deposits",
    status_code=status.HTTP_201_CREATED,
    response_model=DepositPublic,
    summary="Credit an agent's prepaid balance (预存款) through the ledger",
)
async def create_deposit(
    agent_id: Id,
    body: DepositCreate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def work(conn: Connection) -> Written:
        agent = await get_agent(conn, agent_id)
        entry_id, balance = await deposit(
            conn,
            agent.id,
            body.amount,
            currency=agent.currency,
            reference=body.reference,
            mode=body.mode,
        )
        detail = {"entry_id": entry_id, "amount": body.amount, "mode": body.mode}
        return (
            DepositPublic(entry_id=entry_id, balance=balance).model_dump(),
            f"agent:{agent_id}",
            detail,
        )

    response = await operator_write(
        request,
        runtime,
        operator,
        action="deposit.created",
        payload={"agent_id": agent_id, **body.model_dump(mode="json")},
        work=work,
    )
    # This worker's issuance pre-check sees the new funds at once (others within a second).
    request.app.state.issuance.balances.forget(agent_id)
    return response
