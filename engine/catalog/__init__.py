"""Products: SKU, type (card | link | topup), price in minor units, currency, status."""
