"""Batches of card keys: import with normalisation, encryption and duplicate detection."""
