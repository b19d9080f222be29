"""The retail price of a sub-store: its absolute price, else cost + markup, else list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.orders.stores import Markup, retail_price

costs = st.integers(min_value=0, max_value=10**10)


@given(cost=costs, rate_bp=st.integers(min_value=0, max_value=100_000))
def test_a_rate_markup_is_the_rate_of_the_cost_rounded_up(cost: int, rate_bp: int) -> None:
    price = retail_price(store_price=None, markup=Markup(rate_bp=rate_bp), cost=cost, list_price=1)
    margin = price - cost
    # Never below the cost; the margin is the rate, rounded up to the fen and no more.
    assert margin >= 0
    assert margin * 10_000 >= cost * rate_bp
    assert (margin - 1) * 10_000 < cost * rate_bp


@given(cost=costs, per_unit=st.integers(min_value=0, max_value=10**12))
def test_a_fixed_markup_adds_its_amount(cost: int, per_unit: int) -> None:
    price = retail_price(
        store_price=None, markup=Markup(per_unit=per_unit), cost=cost, list_price=1
    )
    assert price == cost + per_unit


@given(cost=costs, store_price=costs, list_price=costs)
def test_an_absolute_price_wins_and_no_markup_is_the_list_price(
    cost: int, store_price: int, list_price: int
) -> None:
    markup = Markup(rate_bp=500)
    assert (
        retail_price(store_price=store_price, markup=markup, cost=cost, list_price=list_price)
        == store_price
    )
    assert (
        retail_price(store_price=None, markup=None, cost=cost, list_price=list_price) == list_price
    )


def test_a_markup_is_a_rate_or_an_amount() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Markup()
    with pytest.raises(ValueError, match="exactly one"):
        Markup(rate_bp=1, per_unit=1)
    assert Markup(rate_bp=1000).apply(1499) == 1649  # 149.9 rounds up to 150
