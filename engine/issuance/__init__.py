"""The hot path: reserve in Redis (Rust pool), record in PostgreSQL (group commit), decrypt."""
