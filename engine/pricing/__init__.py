"""What an agent pays per unit for a SKU: one pure function, `quote`, with its breakdown.

`quote` reads nothing but its arguments. The issuance hot path (through the cached terms
of engine.issuance.terms), the order path and the price list all call it, so a price is
the same wherever it is shown or charged. The model, in integer minor units (分):

1. The base price of the level for the SKU: its absolute price when it sets one (a
   per-SKU override), else the retail price less the level-wide discount, else the retail
   price.
2. The quantity tier (价格阶梯): from `min_quantity` units in one purchase the unit price
   is the tier's. The lowest applicable price wins, so a larger quantity never pays more
   per unit than a smaller one, even if the stored tiers were out of order.
3. The parent's price: a sub-agent pays at least what its parent set for it,
   `max(price after tier, parent_price)`.

Rounding: a discount is applied to the unit price and rounded *up* to the fen,
`ceil(retail * (10000 - discount_bp) / 10000)`: the platform never sells below the
configured discount by a fraction of a fen, and the amount is then an exact integer
product, `unit_price * quantity`.

The cost basis (what a key cost the platform, engine.distribution.levels) travels with
the terms; `Quote.covers_cost_basis` tells whether the price is above that floor, and the
callers refuse a sale that is not (`price_below_cost_basis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from engine.errors import DomainError

BASIS_POINTS = 10_000


class PricingError(StrEnum):
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    TIERS_OUT_OF_ORDER = "tiers_out_of_order"
    INVALID_DISCOUNT = "invalid_discount"
    PRICE_BELOW_COST_BASIS = "price_below_cost_basis"


class PriceSource(StrEnum):
    LEVEL_PRICE = "level_price"
    DISCOUNT = "discount"
    RETAIL = "retail"


class StepKind(StrEnum):
    RETAIL = "retail"
    LEVEL_PRICE = "level_price"
    DISCOUNT = "discount"
    TIER = "tier"
    PARENT_PRICE = "parent_price"


@dataclass(frozen=True)
class Tier:
    min_quantity: int
    unit_price: int


@dataclass(frozen=True)
class SkuPricing:
    """A level's terms for one SKU, as stored (and cached)."""

    retail_price: int
    level_price: int | None = None
    discount_bp: int | None = None
    tiers: tuple[Tier, ...] = ()
    cost_basis: int = 0

    @property
    def source(self) -> PriceSource:
        if self.level_price is not None:
            return PriceSource.LEVEL_PRICE
        if self.discount_bp is not None:
            return PriceSource.DISCOUNT
        return PriceSource.RETAIL

    @property
    def base_price(self) -> int:
        if self.level_price is not None:
            return self.level_price
        if self.discount_bp is not None:
            return discounted(self.retail_price, self.discount_bp)
        return self.retail_price


@dataclass(frozen=True)
class PriceStep:
    """One line of the breakdown: what set the unit price at this step."""

    kind: StepKind
    unit_price: int
    discount_bp: int | None = None
    min_quantity: int | None = None


@dataclass(frozen=True)
class Quote:
    quantity: int
    unit_price: int
    amount: int
    base_price: int
    source: PriceSource
    # The tier that lowered the price, if one did.
    tier: Tier | None
    # True when the parent's price for this agent raised it.
    parent_price_applied: bool
    cost_basis: int
    steps: tuple[PriceStep, ...]

    @property
    def covers_cost_basis(self) -> bool:
        return self.unit_price >= self.cost_basis


def _require_amount(value: object, name: str) -> None:
    # bool is an int subclass, and a float must never become fractional fen.
    if type(value) is not int or value < 0:
        raise DomainError(PricingError.INVALID_AMOUNT, f"{name} must be a non-negative integer.")


def discounted(retail_price: int, discount_bp: int) -> int:
    """The retail price less `discount_bp` basis points, rounded up to the fen."""
    _require_amount(retail_price, "The retail price")
    if type(discount_bp) is not int or not 0 <= discount_bp <= BASIS_POINTS:
        raise DomainError(
            PricingError.INVALID_DISCOUNT, f"A discount is 0 to {BASIS_POINTS} basis points."
        )
    # Ceiling division on non-negative integers.
    return -(-retail_price * (BASIS_POINTS - discount_bp) // BASIS_POINTS)


def quote(pricing: SkuPricing, quantity: int, *, parent_price: int | None = None) -> Quote:
    """The unit price and amount of `quantity` units under `pricing`, with the breakdown."""
    if type(quantity) is not int or quantity < 1:
        raise DomainError(PricingError.INVALID_QUANTITY, "The quantity must be at least 1.")
    _require_amount(pricing.retail_price, "The retail price")
    _require_amount(pricing.cost_basis, "The cost basis")
    if pricing.level_price is not None:
        _require_amount(pricing.level_price, "The level price")
    if parent_price is not None:
        _require_amount(parent_price, "The parent's price")

    steps = [PriceStep(StepKind.RETAIL, pricing.retail_price)]
    base = pricing.base_price
    if pricing.source is PriceSource.LEVEL_PRICE:
        steps.append(PriceStep(StepKind.LEVEL_PRICE, base))
    elif pricing.source is PriceSource.DISCOUNT:
        steps.append(PriceStep(StepKind.DISCOUNT, base, discount_bp=pricing.discount_bp))

    unit, applied = base, None
    for tier in pricing.tiers:
        _require_amount(tier.unit_price, "A tier's unit price")
        if tier.min_quantity <= quantity and tier.unit_price < unit:
            unit, applied = tier.unit_price, tier
    if applied is not None:
        steps.append(PriceStep(StepKind.TIER, unit, min_quantity=applied.min_quantity))

    raised = parent_price is not None and parent_price > unit
    if raised:
        assert parent_price is not None
        unit = parent_price
        steps.append(PriceStep(StepKind.PARENT_PRICE, unit))

    return Quote(
        quantity=quantity,
        unit_price=unit,
        amount=unit * quantity,
        base_price=base,
        source=pricing.source,
        tier=applied,
        parent_price_applied=raised,
        cost_basis=pricing.cost_basis,
        steps=tuple(steps),
    )


def validate_tiers(tiers: Sequence[Tier], base_price: int, *, sku: str = "") -> None:
    """Refuse tiers that are not in order: thresholds from 2 up, each higher than the one
    before, each price strictly below the previous one (the first below the base price).

    A tier that does not lower the price, or a list the reader must sort to understand,
    is a configuration mistake; refusing it keeps what operators see equal to what
    `quote` does.
    """
    previous_quantity, previous_price = 1, base_price
    for position, tier in enumerate(tiers):
        _require_amount(tier.unit_price, "A tier's unit price")
        if type(tier.min_quantity) is not int or tier.min_quantity <= previous_quantity:
            raise DomainError(
                PricingError.TIERS_OUT_OF_ORDER,
                f"Tier {position} of {sku or 'the SKU'}: min_quantity must be above "
                f"{previous_quantity} (tiers are listed by rising quantity, from 2).",
                sku=sku,
                tier=position,
            )
        if tier.unit_price >= previous_price:
            raise DomainError(
                PricingError.TIERS_OUT_OF_ORDER,
                f"Tier {position} of {sku or 'the SKU'}: its unit price must be below the "
                "previous tier's (the first below the level's base price).",
                sku=sku,
                tier=position,
            )
        previous_quantity, previous_price = tier.min_quantity, tier.unit_price


def lowest_price(pricing: SkuPricing) -> int:
    """The lowest unit price `pricing` can give (any quantity, no parent price)."""
    return min([pricing.base_price, *(tier.unit_price for tier in pricing.tiers)])
