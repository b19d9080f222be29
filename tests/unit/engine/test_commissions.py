"""The money split of a sale: worked examples, every refusal, and properties.

The exhaustive test compares `split_sale` with an oracle written differently (each party
buys at its cost and resells at the next price down the path), so it does not just
restate the implementation.
"""

from __future__ import annotations

import copy
import itertools
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.distribution.commissions import (
    BASIS_POINTS,
    PLATFORM,
    AgentCost,
    CommissionError,
    Promoter,
    Sale,
    Share,
    ShareKind,
    Split,
    split_sale,
)
from engine.errors import DomainError

MAX_PRICE = 10**10

# 省代 (agent 1) buys at ¥10.00, 市代 (agent 2) at ¥12.00, VIP (agent 3) at ¥15.00; the
# buyer pays ¥19.90 a unit for 3 units; the batch cost the platform ¥8.00 a unit.
CHAIN = (AgentCost(3, 1500), AgentCost(2, 1200), AgentCost(1, 1000))


def _sale(**changes: Any) -> Sale:
    fields: dict[str, Any] = {
        "quantity": 3,
        "unit_price": 1990,
        "chain": CHAIN,
        "cost_basis": 800,
        "promoter": None,
    }
    fields.update(changes)
    return Sale(**fields)


def _refusal(sale: Sale) -> DomainError:
    with pytest.raises(DomainError) as caught:
        split_sale(sale)
    return caught.value


# --- worked examples ---------------------------------------------------------------------


def test_three_level_chain() -> None:
    split = split_sale(_sale())

    assert split.shares == (
        Share("agent:3", ShareKind.MARGIN, 1470),  # (1990 - 1500) * 3
        Share("agent:2", ShareKind.DIFFERENTIAL, 900),  # (1500 - 1200) * 3
        Share("agent:1", ShareKind.DIFFERENTIAL, 600),  # (1200 - 1000) * 3
        Share("platform", ShareKind.REVENUE, 3000),  # 1000 * 3
    )
    assert split.buyer_total == 5970
    assert split.cost_basis_total == 2400
    assert split.platform_revenue == 3000
    assert split.platform_gross_profit == 600
    assert split.commissions == 2970
    assert split.distributed == 5970
    assert split.conserved
    assert list(split) == list(split.shares)


def test_three_level_chain_with_a_promoter_rate() -> None:
    # 5% of ¥59.70 is 298.5 fen: the promoter gets 298, the half fen stays with the VIP.
    split = split_sale(_sale(promoter=Promoter(5, rate_bp=500)))

    assert split.shares == (
        Share("promoter:5", ShareKind.PROMOTER, 298),
        Share("agent:3", ShareKind.MARGIN, 1470 - 298),
        Share("agent:2", ShareKind.DIFFERENTIAL, 900),
        Share("agent:1", ShareKind.DIFFERENTIAL, 600),
        Share("platform", ShareKind.REVENUE, 3000),
    )
    assert split.conserved


def test_three_level_chain_with_a_fixed_promoter_amount() -> None:
    split = split_sale(_sale(promoter=Promoter(5, per_unit=100)))

    assert split.amount_for("promoter:5") == 300
    assert split.amount_for("agent:3") == 1170
    # The ancestors and the platform are untouched by the promoter.
    assert split.amount_for("agent:2") == 900
    assert split.amount_for("agent:1") == 600
    assert split.platform_revenue == 3000
    assert split.conserved


def test_ancestor_at_its_childs_cost_is_listed_with_zero() -> None:
    split = split_sale(_sale(chain=(AgentCost(3, 1500), AgentCost(2, 1500), AgentCost(1, 1000))))

    assert split.shares[1] == Share("agent:2", ShareKind.DIFFERENTIAL, 0)
    assert split.amount_for("agent:1") == 1500
    assert split.conserved


def test_direct_sale_goes_to_the_platform() -> None:
    split = split_sale(_sale(quantity=2, chain=()))

    assert split.shares == (Share(PLATFORM, ShareKind.REVENUE, 3980),)
    assert split.platform_gross_profit == 3980 - 1600
    assert split.commissions == 0
    assert split.conserved


def test_direct_sale_promoter_is_paid_by_the_platform() -> None:
    split = split_sale(_sale(quantity=2, chain=(), promoter=Promoter(9, rate_bp=1000)))

    assert split.shares == (
        Share("promoter:9", ShareKind.PROMOTER, 398),
        Share(PLATFORM, ShareKind.REVENUE, 3980 - 398),
    )
    assert split.conserved


def test_promoter_may_take_the_whole_margin() -> None:
    split = split_sale(_sale(promoter=Promoter(5, per_unit=490)))
    assert split.amount_for("agent:3") == 0
    assert split.conserved

    direct = split_sale(_sale(chain=(), promoter=Promoter(5, per_unit=1190)))
    assert direct.platform_revenue == direct.cost_basis_total
    assert direct.platform_gross_profit == 0


def test_rate_is_floored_over_the_whole_sale_not_per_unit() -> None:
    # 1 bp of 3 x 1990 = 0.597 fen -> 0; 1 bp of 1000 x 1990 = 199 fen exactly; per unit
    # it would have been 1000 x floor(0.199) = 0.
    assert split_sale(_sale(promoter=Promoter(5, rate_bp=1))).amount_for("promoter:5") == 0
    big = split_sale(_sale(quantity=1000, promoter=Promoter(5, rate_bp=1)))
    assert big.amount_for("promoter:5") == 199


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"quantity": 0}, CommissionError.INVALID_QUANTITY),
        ({"quantity": -1}, CommissionError.INVALID_QUANTITY),
        ({"quantity": True}, CommissionError.INVALID_QUANTITY),
        ({"unit_price": 19.9}, CommissionError.INVALID_AMOUNT),
        ({"cost_basis": Decimal(800)}, CommissionError.INVALID_AMOUNT),
        ({"chain": (AgentCost(3, 1500.0),)}, CommissionError.INVALID_AMOUNT),  # type: ignore[arg-type]
        ({"promoter": Promoter(5, per_unit=1.5)}, CommissionError.INVALID_AMOUNT),  # type: ignore[arg-type]
        ({"unit_price": -1}, CommissionError.NEGATIVE_AMOUNT),
        ({"cost_basis": -1}, CommissionError.NEGATIVE_AMOUNT),
        ({"chain": (AgentCost(3, -1),)}, CommissionError.NEGATIVE_AMOUNT),
        ({"promoter": Promoter(5, per_unit=-1)}, CommissionError.NEGATIVE_AMOUNT),
        ({"promoter": Promoter(5)}, CommissionError.INVALID_PROMOTER),
        ({"promoter": Promoter(5, rate_bp=100, per_unit=1)}, CommissionError.INVALID_PROMOTER),
        ({"promoter": Promoter(5, rate_bp=-1)}, CommissionError.INVALID_PROMOTER_RATE),
        ({"promoter": Promoter(5, rate_bp=10_001)}, CommissionError.INVALID_PROMOTER_RATE),
        ({"promoter": Promoter(5, rate_bp=2.5)}, CommissionError.INVALID_PROMOTER_RATE),  # type: ignore[arg-type]
        (
            {"chain": (AgentCost(3, 1500), AgentCost(2, 1200), AgentCost(3, 1000))},
            CommissionError.DUPLICATE_AGENT,
        ),
        (
            {"chain": (AgentCost(3, 1500), AgentCost(2, 1200), AgentCost(1, 700))},
            CommissionError.BELOW_COST_BASIS,
        ),
        ({"chain": (), "unit_price": 799}, CommissionError.BELOW_COST_BASIS),
        ({"unit_price": 1499}, CommissionError.PRICE_BELOW_COST),
        (
            {"chain": (AgentCost(3, 1500), AgentCost(2, 1600), AgentCost(1, 1000))},
            CommissionError.PRICE_BELOW_COST,
        ),
        ({"promoter": Promoter(5, per_unit=491)}, CommissionError.PROMOTER_EXCEEDS_MARGIN),
        # 25% of 5970 = 1492 > the VIP's margin of 1470.
        ({"promoter": Promoter(5, rate_bp=2500)}, CommissionError.PROMOTER_EXCEEDS_MARGIN),
        (
            {"chain": (), "promoter": Promoter(5, per_unit=1191)},
            CommissionError.PROMOTER_EXCEEDS_MARGIN,
        ),
    ],
)
def test_refusals(changes: dict[str, Any], code: CommissionError) -> None:
    error = _refusal(_sale(**changes))
    assert error.code is code
    assert error.detail


def test_price_below_cost_names_the_agents_at_fault() -> None:
    error = _refusal(_sale(chain=(AgentCost(3, 1500), AgentCost(2, 1600), AgentCost(1, 1000))))
    assert error.extra == {"agent_id": 3, "parent_id": 2}


def test_refusals_never_quote_an_ancestors_cost() -> None:
    # A sub-agent whose sale fails must not learn what its ancestors pay.
    chain = (AgentCost(3, 154_321), AgentCost(2, 176_543), AgentCost(1, 123_457))
    for sale in (
        _sale(unit_price=200_000, chain=chain),
        _sale(unit_price=200_000, cost_basis=160_000, chain=chain),
    ):
        error = _refusal(sale)
        text = f"{error.detail} {error.extra}"
        assert not any(str(link.unit_cost) in text for link in chain)


def test_checks_run_in_the_documented_order() -> None:
    # Below the basis and out of order at once: the floor is reported first.
    both = _sale(chain=(AgentCost(3, 1500), AgentCost(2, 1600), AgentCost(1, 700)))
    assert _refusal(both).code is CommissionError.BELOW_COST_BASIS
    # A bad quantity wins over everything else.
    assert _refusal(_sale(quantity=0, unit_price=-5)).code is CommissionError.INVALID_QUANTITY


# --- properties ----------------------------------------------------------------------------


@st.composite
def valid_sales(draw: st.DrawFn) -> Sale:
    depth = draw(st.integers(0, 8))
    # Sorted prices along the path: the basis lowest, then the top agent's cost, ... the
    # seller's cost, and the retail price highest.
    prices = sorted(
        draw(st.lists(st.integers(0, MAX_PRICE), min_size=depth + 2, max_size=depth + 2))
    )
    basis, *costs_top_down, retail = prices
    ids = draw(st.lists(st.integers(1, 10**9), min_size=depth, max_size=depth, unique=True))
    chain = tuple(AgentCost(i, c) for i, c in zip(ids, reversed(costs_top_down), strict=True))
    quantity = draw(st.integers(1, 1000))
    margin = (retail - (chain[0].unit_cost if chain else basis)) * quantity
    total = retail * quantity
    kind = draw(st.sampled_from(["none", "rate", "fixed"]))
    promoter = None
    if kind == "rate":
        # The largest rate whose floored commission still fits in the margin.
        top = BASIS_POINTS if total == 0 else min(BASIS_POINTS, margin * BASIS_POINTS // total)
        promoter = Promoter(draw(st.integers(1, 10**9)), rate_bp=draw(st.integers(0, top)))
    elif kind == "fixed":
        per_unit = draw(st.integers(0, margin // quantity))
        promoter = Promoter(draw(st.integers(1, 10**9)), per_unit=per_unit)
    return Sale(quantity, retail, chain, basis, promoter)


@given(valid_sales())
def test_money_is_conserved(sale: Sale) -> None:
    split = split_sale(sale)

    assert split.buyer_total == sale.unit_price * sale.quantity
    assert sum(share.amount for share in split.shares) == split.buyer_total
    assert all(type(share.amount) is int and share.amount >= 0 for share in split.shares)
    assert split.platform_revenue == split.cost_basis_total + split.platform_gross_profit
    assert split.platform_gross_profit >= 0
    assert split.conserved
    # One line per party on the path, and the promoter if there is one.
    parties = [share.party for share in split.shares]
    assert len(parties) == len(set(parties)) == len(sale.chain) + 1 + (sale.promoter is not None)


@given(valid_sales(), valid_sales())
def test_split_depends_only_on_its_input(sale: Sale, other: Sale) -> None:
    before = copy.deepcopy(sale)
    first = split_sale(sale)
    split_sale(other)
    assert split_sale(sale) == first
    assert split_sale(copy.deepcopy(sale)) == first
    assert sale == before


amounts = st.one_of(
    st.integers(-5, MAX_PRICE),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, max_value=1e10, min_value=-1e10),
)


@given(
    quantity=st.one_of(st.integers(-3, 1000), st.booleans()),
    unit_price=amounts,
    cost_basis=amounts,
    chain=st.lists(st.builds(AgentCost, st.integers(1, 4), amounts), max_size=8).map(tuple),
    promoter=st.one_of(
        st.none(),
        st.builds(
            Promoter,
            st.integers(1, 9),
            st.one_of(st.none(), st.integers(-5, 20_000)),
            st.one_of(st.none(), amounts),
        ),
    ),
)
def test_any_input_is_split_exactly_or_refused_with_a_code(
    quantity: int,
    unit_price: int,
    cost_basis: int,
    chain: tuple[AgentCost, ...],
    promoter: Promoter | None,
) -> None:
    outcome: Split | DomainError
    try:
        outcome = split_sale(Sale(quantity, unit_price, chain, cost_basis, promoter))
    except DomainError as error:
        outcome = error
    if isinstance(outcome, DomainError):
        assert isinstance(outcome.code, CommissionError)
    else:
        assert outcome.conserved


# --- exhaustive small range ----------------------------------------------------------------


def _oracle(sale: Sale) -> CommissionError | dict[str, int]:
    """The split as money flowing down the path: everyone buys at its cost and resells at
    the next price down; the platform buys at the basis and resells at the top price."""
    costs = [link.unit_cost for link in sale.chain]
    if len({link.agent_id for link in sale.chain}) < len(sale.chain):
        return CommissionError.DUPLICATE_AGENT
    # The prices the platform's goods are bought at: the top agent's cost or, on a direct
    # sale, the retail price; all of them when there is a chain, as each is checked.
    if min(costs or [sale.unit_price]) < sale.cost_basis:
        return CommissionError.BELOW_COST_BASIS
    ladder = [*reversed(costs), sale.unit_price]  # the top agent's cost ... retail
    if ladder != sorted(ladder):
        return CommissionError.PRICE_BELOW_COST
    q = sale.quantity
    # Each agent sells at the price just below it on the ladder.
    expected = {PLATFORM: ladder[0] * q}
    top_down = list(reversed(sale.chain))
    for rung, link in enumerate(top_down):
        expected[f"agent:{link.agent_id}"] = (ladder[rung + 1] - link.unit_cost) * q
    seller = f"agent:{sale.chain[0].agent_id}" if sale.chain else PLATFORM
    if sale.promoter is not None:
        if sale.promoter.rate_bp is not None:
            cut = int(Fraction(sale.unit_price * q * sale.promoter.rate_bp, BASIS_POINTS))
        else:
            assert sale.promoter.per_unit is not None
            cut = sale.promoter.per_unit * q
        floor = sale.cost_basis * q if seller == PLATFORM else 0
        if expected[seller] - cut < floor:
            return CommissionError.PROMOTER_EXCEEDS_MARGIN
        expected[seller] -= cut
        expected[f"promoter:{sale.promoter.promoter_id}"] = cut
    return expected


def _amounts(split: Split) -> dict[str, int]:
    return {share.party: share.amount for share in split.shares}


def test_exhaustive_small_range() -> None:
    promoters = [
        None,
        Promoter(7, rate_bp=0),
        Promoter(7, rate_bp=3333),
        Promoter(7, rate_bp=BASIS_POINTS),
        Promoter(7, per_unit=0),
        Promoter(7, per_unit=1),
    ]
    small = range(4)
    checked = refused = 0
    for depth in range(4):
        # Distinct costs are not required, so ties (and thus zero differentials) are covered;
        # every ordering of the costs, including the invalid ones, is tried.
        for costs in itertools.product(small, repeat=depth):
            chain = tuple(AgentCost(100 + level, c) for level, c in enumerate(costs))
            for price, basis, quantity, promoter in itertools.product(
                small, small, (1, 2), promoters
            ):
                sale = Sale(quantity, price, chain, basis, promoter)
                expected = _oracle(sale)
                if isinstance(expected, CommissionError):
                    assert _refusal(sale).code is expected, sale
                    refused += 1
                else:
                    split = split_sale(sale)
                    assert _amounts(split) == expected, sale
                    assert split.conserved, sale
                checked += 1
    assert checked == (1 + 4 + 16 + 64) * 4 * 4 * 2 * len(promoters)
    # Both sides of every check were exercised.
    assert 0 < refused < checked
