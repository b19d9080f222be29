//! Key pools in Redis: entries move between available, held and issued atomically, one Lua
//! script call per batch of coalesced requests on a pool shard.
//!
//! Layout and contracts are described in `lua/lib.lua` (keys) and `client.rs` (API).

pub mod client;
pub mod coalescer;
pub mod keys;
pub mod scripts;

pub use client::{Entry, Pool, PoolConfig, Request, Stock};
