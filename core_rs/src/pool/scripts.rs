//! The Lua scripts, each the shared prelude (`lua/lib.lua`: key layout and helpers) plus a
//! body. `redis::Script` sends EVALSHA and, on NOSCRIPT (after a restart or SCRIPT FLUSH),
//! SCRIPT LOAD followed by EVALSHA again.

use redis::Script;

/// reserve / confirm / release / take for a batch of requests on one pool shard.
pub const OPS: &str = concat!(include_str!("lua/lib.lua"), include_str!("lua/ops.lua"));
/// load, rebuild (clear first) and drain.
pub const LOAD: &str = concat!(include_str!("lua/lib.lua"), include_str!("lua/load.lua"));
/// stock, expire, holders, exists.
pub const ADMIN: &str = concat!(include_str!("lua/lib.lua"), include_str!("lua/admin.lua"));

pub struct Scripts {
    pub ops: Script,
    pub load: Script,
    pub admin: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            ops: Script::new(OPS),
            load: Script::new(LOAD),
            admin: Script::new(ADMIN),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_have_the_prelude_and_distinct_hashes() {
        let s = Scripts::new();
        assert!(OPS.contains("local function pop") && OPS.contains("kind"));
        assert_ne!(s.ops.get_hash(), s.load.get_hash());
        assert_ne!(s.ops.get_hash(), s.admin.get_hash());
    }
}
