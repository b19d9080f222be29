"""Double-entry ledger in integer minor units: accounts, immutable journal entries."""
