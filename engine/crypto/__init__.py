"""Key management around the Rust `Cipher`: data keys in PostgreSQL, wrapped by the master key."""
