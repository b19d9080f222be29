"""Storage: PostgreSQL (the source of truth), Redis/Valkey, the embedded default, migrations."""
