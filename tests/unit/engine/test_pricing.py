"""The price of (SKU, quantity, level): worked examples, refusals, an exhaustive check
against an oracle written differently (Fractions and a scan by threshold), properties."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import DomainError
from engine.pricing import (
    BASIS_POINTS,
    PriceSource,
    PricingError,
    SkuPricing,
    StepKind,
    Tier,
    discounted,
    lowest_price,
    quote,
    validate_tiers,
)

# Retail ¥19.90; the level pays ¥15.00, ¥14.00 from 10 units, ¥12.50 from 100.
TIERED = SkuPricing(
    retail_price=1990,
    level_price=1500,
    tiers=(Tier(10, 1400), Tier(100, 1250)),
    cost_basis=800,
)


# --- worked examples ---------------------------------------------------------------------


def test_the_tier_of_the_quantity_sets_the_price() -> None:
    assert [quote(TIERED, q).unit_price for q in (1, 9, 10, 99, 100, 1000)] == [
        1500,
        1500,
        1400,
        1400,
        1250,
        1250,
    ]
    big = quote(TIERED, 120)
    assert big.amount == 120 * 1250
    assert big.tier == Tier(100, 1250)
    assert big.source is PriceSource.LEVEL_PRICE
    assert big.base_price == 1500
    assert [(s.kind, s.unit_price) for s in big.steps] == [
        (StepKind.RETAIL, 1990),
        (StepKind.LEVEL_PRICE, 1500),
        (StepKind.TIER, 1250),
    ]
    assert big.steps[-1].min_quantity == 100
    assert big.covers_cost_basis


def test_a_discount_off_retail_rounds_up_to_the_fen() -> None:
    # 15% off ¥19.90 is ¥16.915: the level pays ¥16.92.
    found = quote(SkuPricing(retail_price=1990, discount_bp=1500), 3)
    assert (found.unit_price, found.amount, found.source) == (1692, 5076, PriceSource.DISCOUNT)
    assert found.steps[1].kind is StepKind.DISCOUNT
    assert found.steps[1].discount_bp == 1500
    assert discounted(1990, 0) == 1990
    assert discounted(1990, BASIS_POINTS) == 0
    assert discounted(1, 1) == 1  # 0.9999 fen is charged as a whole fen


def test_an_absolute_price_overrides_the_discount() -> None:
    found = quote(SkuPricing(retail_price=1990, level_price=1800, discount_bp=5000), 1)
    assert (found.unit_price, found.source) == (1800, PriceSource.LEVEL_PRICE)


def test_without_a_level_price_or_discount_the_retail_price_applies() -> None:
    found = quote(SkuPricing(retail_price=1990), 2)
    assert (found.unit_price, found.amount, found.source) == (1990, 3980, PriceSource.RETAIL)
    assert [s.kind for s in found.steps] == [StepKind.RETAIL]


def test_the_parent_price_is_a_floor_over_the_level_price() -> None:
    above = quote(TIERED, 100, parent_price=1300)
    assert above.unit_price == 1300
    assert above.parent_price_applied
    assert above.steps[-1].kind is StepKind.PARENT_PRICE
    below = quote(TIERED, 1, parent_price=1000)
    assert below.unit_price == 1500
    assert not below.parent_price_applied


def test_the_cost_basis_is_reported_not_applied() -> None:
    found = quote(SkuPricing(retail_price=1990, level_price=700, cost_basis=800), 1)
    assert found.unit_price == 700
    assert not found.covers_cost_basis


def test_lowest_price_is_the_lowest_tier_or_the_base() -> None:
    assert lowest_price(TIERED) == 1250
    assert lowest_price(SkuPricing(retail_price=1990, discount_bp=1000)) == 1791


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [0, -1, True, 1.0, "1"])
def test_a_quantity_is_a_positive_integer(quantity: object) -> None:
    with pytest.raises(DomainError) as caught:
        quote(TIERED, quantity)  # type: ignore[arg-type]
    assert caught.value.code is PricingError.INVALID_QUANTITY


@pytest.mark.parametrize(
    "pricing",
    [
        SkuPricing(retail_price=-1),
        SkuPricing(retail_price=1.5),  # type: ignore[arg-type]
        SkuPricing(retail_price=100, level_price=-1),
        SkuPricing(retail_price=100, cost_basis=-1),
        SkuPricing(retail_price=100, tiers=(Tier(2, -5),)),
    ],
)
def test_amounts_are_non_negative_integers(pricing: SkuPricing) -> None:
    with pytest.raises(DomainError) as caught:
        quote(pricing, 5)
    assert caught.value.code is PricingError.INVALID_AMOUNT


@pytest.mark.parametrize("bp", [-1, BASIS_POINTS + 1, 1.5])
def test_a_discount_is_0_to_10000_basis_points(bp: object) -> None:
    with pytest.raises(DomainError) as caught:
        quote(SkuPricing(retail_price=100, discount_bp=bp), 1)  # type: ignore[arg-type]
    assert caught.value.code is PricingError.INVALID_DISCOUNT


@pytest.mark.parametrize(
    "tiers",
    [
        (Tier(1, 1400),),  # quantity 1 is the base price
        (Tier(100, 1250), Tier(10, 1400)),  # listed out of order
        (Tier(10, 1400), Tier(10, 1300)),  # the same threshold twice
        (Tier(10, 1400), Tier(100, 1400)),  # does not lower the price
        (Tier(10, 1400), Tier(100, 1450)),  # raises it
        (Tier(10, 1500),),  # not below the base price
    ],
)
def test_tiers_out_of_order_are_refused(tiers: tuple[Tier, ...]) -> None:
    with pytest.raises(DomainError) as caught:
        validate_tiers(tiers, 1500, sku="VIP")
    assert caught.value.code is PricingError.TIERS_OUT_OF_ORDER


def test_tiers_in_order_are_accepted() -> None:
    validate_tiers(TIERED.tiers, 1500)
    validate_tiers((), 0)


# --- exhaustive, against an oracle ---------------------------------------------------------


def _oracle(
    retail: int,
    level_price: int | None,
    bp: int | None,
    tiers: tuple[Tier, ...],
    quantity: int,
    parent: int | None,
) -> int:
    if level_price is not None:
        unit = Fraction(level_price)
    elif bp is not None:
        unit = Fraction(retail) * Fraction(BASIS_POINTS - bp, BASIS_POINTS)
    else:
        unit = Fraction(retail)
    price = math.ceil(unit)
    # The tier with the highest threshold the quantity reaches (tiers are in order here).
    reached = [t for t in sorted(tiers, key=lambda t: t.min_quantity) if t.min_quantity <= quantity]
    if reached and reached[-1].unit_price < price:
        price = reached[-1].unit_price
    return max(price, parent) if parent is not None else price


def test_every_small_case_matches_the_oracle() -> None:
    tier_sets = [(), (Tier(3, 7),), (Tier(2, 9), Tier(4, 5)), (Tier(2, 3), Tier(3, 2), Tier(5, 0))]
    cases = 0
    for retail, level_price, bp, tiers, quantity, parent in itertools.product(
        range(0, 23, 3),
        (None, 0, 6, 11),
        (None, 0, 1, 3333, 5000, 9999, 10_000),
        tier_sets,
        range(1, 7),
        (None, 0, 4, 8),
    ):
        pricing = SkuPricing(
            retail_price=retail, level_price=level_price, discount_bp=bp, tiers=tiers
        )
        found = quote(pricing, quantity, parent_price=parent)
        expected = _oracle(retail, level_price, bp, tiers, quantity, parent)
        assert found.unit_price == expected, (pricing, quantity, parent)
        assert found.amount == expected * quantity
        assert found.steps[-1].unit_price == found.unit_price
        cases += 1
    assert cases == 8 * 4 * 7 * 4 * 6 * 4


# --- properties --------------------------------------------------------------------------

_prices = st.integers(min_value=0, max_value=10**9)


@st.composite
def _monotone_tiers(draw: st.DrawFn, base: int) -> tuple[Tier, ...]:
    thresholds = sorted(draw(st.sets(st.integers(2, 500), max_size=6)))
    tiers, price = [], base
    for threshold in thresholds:
        if price == 0:
            break
        price = draw(st.integers(0, price - 1))
        tiers.append(Tier(threshold, price))
    return tuple(tiers)


@st.composite
def _pricings(draw: st.DrawFn) -> SkuPricing:
    retail = draw(_prices)
    level_price = draw(st.none() | _prices)
    bp = draw(st.none() | st.integers(0, BASIS_POINTS))
    pricing = SkuPricing(retail_price=retail, level_price=level_price, discount_bp=bp)
    tiers = draw(_monotone_tiers(pricing.base_price))
    return SkuPricing(retail_price=retail, level_price=level_price, discount_bp=bp, tiers=tiers)


@given(
    _pricings(),
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.none() | _prices,
)
def test_a_larger_quantity_never_pays_more_per_unit(
    pricing: SkuPricing, a: int, b: int, parent: int | None
) -> None:
    validate_tiers(pricing.tiers, pricing.base_price)  # the generated tiers are in order
    small, large = sorted((a, b))
    assert (
        quote(pricing, large, parent_price=parent).unit_price
        <= quote(pricing, small, parent_price=parent).unit_price
    )


@given(_pricings(), st.integers(1, 1000), st.none() | _prices)
def test_a_quote_is_between_its_floors_and_its_base(
    pricing: SkuPricing, quantity: int, parent: int | None
) -> None:
    found = quote(pricing, quantity, parent_price=parent)
    assert found.amount == found.unit_price * quantity
    assert lowest_price(pricing) <= found.unit_price or found.parent_price_applied
    assert found.unit_price <= max(pricing.base_price, parent or 0)
    if parent is not None:
        assert found.unit_price >= parent


@given(
    st.lists(st.tuples(st.integers(-5, 300), st.integers(0, 5000)), min_size=1, max_size=6),
    st.integers(0, 5000),
)
def test_tiers_are_accepted_exactly_when_in_order(raw: list[tuple[int, int]], base: int) -> None:
    tiers = [Tier(q, p) for q, p in raw]
    quantities = [1, *(t.min_quantity for t in tiers)]
    prices = [base, *(t.unit_price for t in tiers)]
    in_order = all(x < y for x, y in itertools.pairwise(quantities)) and all(
        x > y for x, y in itertools.pairwise(prices)
    )
    if in_order:
        validate_tiers(tiers, base)
    else:
        with pytest.raises(DomainError) as caught:
            validate_tiers(tiers, base)
        assert caught.value.code is PricingError.TIERS_OUT_OF_ORDER


def test_every_code_of_levels_and_pricing_has_a_status() -> None:
    from api.problems import STATUS_BY_CODE
    from engine.distribution.levels import LevelError
    from engine.distribution.sub_agents import SubAgentError
    from engine.distribution.tree import TreeError
    from engine.distribution.upgrades import UpgradeError

    for enum in (PricingError, LevelError, SubAgentError, TreeError, UpgradeError):
        for code in enum:
            assert code.value in STATUS_BY_CODE, code
