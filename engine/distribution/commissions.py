"""The money split of one sale through the agent tree (级差 and 推广员 commissions).

`split_sale` is a pure function: it reads nothing but its argument, writes nothing, and
returns the same `Split` for the same `Sale`. Posting the split to the ledger, holding
commissions T+N and reversing them on refunds belong to the callers; keeping the arithmetic
here, apart from SQL and locks, is what lets it be tested exhaustively.

The model, in integer minor units (分) throughout — no float is ever produced:

- The sale: `quantity` units at `unit_price`, the retail price the buyer paid per unit, so
  the buyer pays `unit_price * quantity`.
- The chain: the selling agent first, then its parent, up to the top-level agent, whose
  parent is the platform. Each link carries that agent's unit cost for the SKU — what it
  pays its parent (or, at the top, the platform) per unit. An empty chain is a direct sale
  by the platform.
- The selling agent earns its margin, `(unit_price - its cost) * quantity`, less the
  promoter's commission.
- Every ancestor earns the differential (级差) `(its child's cost - its own cost) *
  quantity`: it bought at its cost and, in effect, resold to its child at the child's cost.
- The platform's revenue is the top agent's cost * quantity (the retail amount on a direct
  sale); its gross profit is that revenue less `cost_basis * quantity`, where the cost
  basis is the batch unit cost or the supplier cost.
- A promoter (推广员) holds no stock and sits outside the tree. It earns either a rate in
  basis points of the buyer's total or a fixed amount per unit. That commission comes out
  of the selling agent's margin (out of the platform's margin over its cost basis on a
  direct sale): the seller chose to sell through the link, and taking it from anyone else
  would change prices the seller's ancestors agreed to. A commission larger than that
  margin is refused rather than silently capped, because a cap would pay the promoter less
  than configured without anyone noticing.
- Rounding: a rate commission is floored to the fen over the whole sale amount (not per
  unit, which would lose up to a fen per unit), and the remainder stays with the selling
  agent, who pays the commission. Every other amount is an exact product of integers, so
  the shares always add up to exactly what the buyer paid.

Every party on the path gets exactly one `Share`, even when it earns 0 (an ancestor at
the same cost as its child), so the breakdown names everyone the sale went through;
whoever posts the split skips the zero lines.

Validation happens before any arithmetic, in a fixed order so one input always gets one
code: the quantity, each amount (an integer, not negative), the promoter's settings,
repeated agents, the cost-basis floor, the price order along the path, and last the
promoter's commission against the seller's margin. Error details name agents by id but
never quote an amount: a sub-agent's sale can fail on its ancestors' costs, which are not
its business.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from engine.errors import DomainError

# 100% in basis points: a promoter can be given at most the whole sale amount (and is then
# still limited by the seller's margin).
BASIS_POINTS = 10_000

PLATFORM = "platform"


class CommissionError(StrEnum):
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    NEGATIVE_AMOUNT = "negative_amount"
    INVALID_PROMOTER = "invalid_promoter"
    INVALID_PROMOTER_RATE = "invalid_promoter_rate"
    DUPLICATE_AGENT = "duplicate_agent"
    BELOW_COST_BASIS = "below_cost_basis"
    PRICE_BELOW_COST = "price_below_cost"
    PROMOTER_EXCEEDS_MARGIN = "promoter_exceeds_margin"


class ShareKind(StrEnum):
    MARGIN = "margin"
    DIFFERENTIAL = "differential"
    PROMOTER = "promoter"
    REVENUE = "revenue"


def agent_party(agent_id: int) -> str:
    return f"agent:{agent_id}"


def promoter_party(promoter_id: int) -> str:
    return f"promoter:{promoter_id}"


@dataclass(frozen=True)
class AgentCost:
    """One agent on the path and its unit cost for the SKU being sold."""

    agent_id: int
    unit_cost: int


@dataclass(frozen=True)
class Promoter:
    """A promoter paid either `rate_bp` of the sale amount or `per_unit` per unit sold.

    Exactly one of the two is set: a promoter paid both ways would make "the commission"
    ambiguous in statements and in refunds.
    """

    promoter_id: int
    rate_bp: int | None = None
    per_unit: int | None = None


@dataclass(frozen=True)
class Sale:
    quantity: int
    unit_price: int
    # The selling agent first, the top-level agent last; empty for a direct sale.
    chain: tuple[AgentCost, ...]
    cost_basis: int
    promoter: Promoter | None = None


@dataclass(frozen=True)
class Share:
    party: str
    kind: ShareKind
    amount: int


@dataclass(frozen=True)
class Split:
    """Who gets what of the buyer's total; the shares always sum to `buyer_total`."""

    buyer_total: int
    # The platform's cost (batch or supplier) for the units sold: part of its revenue,
    # not a share of its own, so that the shares add up to what the buyer paid.
    cost_basis_total: int
    shares: tuple[Share, ...]

    def __iter__(self) -> Iterator[Share]:
        return iter(self.shares)

    @property
    def distributed(self) -> int:
        return sum(share.amount for share in self.shares)

    @property
    def platform_revenue(self) -> int:
        return self.amount_for(PLATFORM)

    @property
    def platform_gross_profit(self) -> int:
        return self.platform_revenue - self.cost_basis_total

    @property
    def commissions(self) -> int:
        """Everything paid to agents and the promoter: the buyer's total less the platform's."""
        return self.distributed - self.platform_revenue

    @property
    def conserved(self) -> bool:
        """True when not a fen is created or lost and nobody is charged for the sale."""
        return (
            self.distributed == self.buyer_total
            and all(share.amount >= 0 for share in self.shares)
            and self.platform_gross_profit >= 0
        )

    def amount_for(self, party: str) -> int:
        return sum(share.amount for share in self.shares if share.party == party)


def _require_amount(value: int, name: str) -> None:
    # `type(...) is` rather than isinstance: bool is an int subclass, and a float or a
    # Decimal that slipped past the type checker must not turn into fractional fen.
    if type(value) is not int:
        raise DomainError(
            CommissionError.INVALID_AMOUNT, f"{name} must be an integer amount in minor units."
        )
    if value < 0:
        raise DomainError(CommissionError.NEGATIVE_AMOUNT, f"{name} must not be negative.")


def _validate_promoter(promoter: Promoter) -> None:
    if (promoter.rate_bp is None) == (promoter.per_unit is None):
        raise DomainError(
            CommissionError.INVALID_PROMOTER,
            "A promoter is paid either a rate or a fixed amount per unit, exactly one.",
            promoter_id=promoter.promoter_id,
        )
    if promoter.per_unit is not None:
        _require_amount(promoter.per_unit, "The promoter's amount per unit")
    if promoter.rate_bp is not None and (
        type(promoter.rate_bp) is not int or not 0 <= promoter.rate_bp <= BASIS_POINTS
    ):
        raise DomainError(
            CommissionError.INVALID_PROMOTER_RATE,
            f"The promoter's rate must be 0 to {BASIS_POINTS} basis points.",
            promoter_id=promoter.promoter_id,
        )


def _validate_path(sale: Sale) -> None:
    # An agent twice on its own path means a cycle in the tree; it would be paid twice.
    seen: set[int] = set()
    for link in sale.chain:
        if link.agent_id in seen:
            raise DomainError(
                CommissionError.DUPLICATE_AGENT,
                f"Agent {link.agent_id} appears twice on the path of the sale.",
                agent_id=link.agent_id,
            )
        seen.add(link.agent_id)

    # The floor first: every price on the path, and the retail price of a direct sale,
    # must cover what the goods cost the platform. (With a chain, retail below the basis
    # is caught below as retail under the seller's cost, which is itself >= the basis.)
    for link in sale.chain:
        if link.unit_cost < sale.cost_basis:
            raise DomainError(
                CommissionError.BELOW_COST_BASIS,
                f"Agent {link.agent_id}'s unit cost is below the platform's cost basis.",
                agent_id=link.agent_id,
            )
    if not sale.chain and sale.unit_price < sale.cost_basis:
        raise DomainError(
            CommissionError.BELOW_COST_BASIS,
            "The unit price is below the platform's cost basis.",
        )

    # Then the order along the path: nobody sells below what they paid.
    if sale.chain and sale.unit_price < sale.chain[0].unit_cost:
        raise DomainError(
            CommissionError.PRICE_BELOW_COST,
            f"The unit price is below selling agent {sale.chain[0].agent_id}'s unit cost.",
            agent_id=sale.chain[0].agent_id,
        )
    for child, parent in zip(sale.chain, sale.chain[1:], strict=False):
        if parent.unit_cost > child.unit_cost:
            raise DomainError(
                CommissionError.PRICE_BELOW_COST,
                f"Agent {child.agent_id}'s unit cost is below its parent agent "
                f"{parent.agent_id}'s unit cost.",
                agent_id=child.agent_id,
                parent_id=parent.agent_id,
            )


def _validate(sale: Sale) -> None:
    if type(sale.quantity) is not int or sale.quantity < 1:
        raise DomainError(CommissionError.INVALID_QUANTITY, "The quantity must be at least 1.")
    _require_amount(sale.unit_price, "The unit price")
    _require_amount(sale.cost_basis, "The cost basis")
    for link in sale.chain:
        _require_amount(link.unit_cost, f"Agent {link.agent_id}'s unit cost")
    if sale.promoter is not None:
        _validate_promoter(sale.promoter)
    _validate_path(sale)


def _promoter_commission(promoter: Promoter, buyer_total: int, quantity: int) -> int:
    if promoter.rate_bp is not None:
        # Floor division on non-negative integers: the promoter gets whole fen, and the
        # fraction stays with the seller, who pays the commission.
        return buyer_total * promoter.rate_bp // BASIS_POINTS
    assert promoter.per_unit is not None  # _validate guarantees exactly one is set
    return promoter.per_unit * quantity


def split_sale(sale: Sale) -> Split:
    """Split what the buyer paid among the seller, its ancestors, a promoter and the platform.

    Raises `DomainError` with a `CommissionError` code when the sale is not valid; see the
    module docstring for the model and the order of the checks.
    """
    _validate(sale)
    quantity = sale.quantity
    buyer_total = sale.unit_price * quantity
    cost_basis_total = sale.cost_basis * quantity

    # What the seller keeps before the promoter: over its own cost, or for the platform
    # selling directly, over the cost basis (a promoter must not push it below cost).
    seller_cost = sale.chain[0].unit_cost if sale.chain else sale.cost_basis
    seller_margin = (sale.unit_price - seller_cost) * quantity

    shares: list[Share] = []
    promoter_cut = 0
    if sale.promoter is not None:
        promoter_cut = _promoter_commission(sale.promoter, buyer_total, quantity)
        if promoter_cut > seller_margin:
            raise DomainError(
                CommissionError.PROMOTER_EXCEEDS_MARGIN,
                "The promoter's commission is larger than the seller's margin on this sale.",
                promoter_id=sale.promoter.promoter_id,
            )
        shares.append(
            Share(promoter_party(sale.promoter.promoter_id), ShareKind.PROMOTER, promoter_cut)
        )

    if not sale.chain:
        shares.append(Share(PLATFORM, ShareKind.REVENUE, buyer_total - promoter_cut))
        return Split(buyer_total, cost_basis_total, tuple(shares))

    seller = sale.chain[0]
    shares.append(
        Share(agent_party(seller.agent_id), ShareKind.MARGIN, seller_margin - promoter_cut)
    )
    for child, ancestor in zip(sale.chain, sale.chain[1:], strict=False):
        shares.append(
            Share(
                agent_party(ancestor.agent_id),
                ShareKind.DIFFERENTIAL,
                (child.unit_cost - ancestor.unit_cost) * quantity,
            )
        )
    shares.append(Share(PLATFORM, ShareKind.REVENUE, sale.chain[-1].unit_cost * quantity))
    return Split(buyer_total, cost_basis_total, tuple(shares))
