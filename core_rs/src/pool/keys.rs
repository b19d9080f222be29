//! Key names, entry packing and shard choice: the pure parts of the pool layout.

use crate::error::{CoreError, CoreResult};

/// Entry ids and priorities travel through Lua as doubles: above 2^53 they would round.
pub const MAX_EXACT: u64 = 1 << 53;
/// Upper bound of one request's quantity: with `max_batch` this bounds a script call's work.
pub const MAX_QUANTITY: u64 = 100;
pub const MAX_NAME: usize = 200;
pub const MAX_CIPHERTEXT: usize = 4096;

/// The hash tag of one pool shard, `{<namespace>:pool:<sku>:<shard>}`: every key of the
/// shard is this tag plus a suffix, so all of them live in one cluster slot.
pub fn shard_tag(namespace: &str, sku: &str, shard: u32) -> String {
    format!("{{{namespace}:pool:{sku}:{shard}}}")
}

/// A namespace or SKU must not be able to break out of the hash tag or the key grammar.
pub fn check_name(what: &str, name: &str) -> CoreResult<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(CoreError::InvalidArgument(format!(
            "{what} must be 1..={MAX_NAME} bytes"
        )));
    }
    if name
        .bytes()
        .any(|b| matches!(b, b'{' | b'}' | b'|') || b.is_ascii_control() || b == b' ')
    {
        return Err(CoreError::InvalidArgument(format!(
            "{what} must not contain braces, '|', spaces or control characters"
        )));
    }
    Ok(())
}

pub fn check_holder(holder: &str) -> CoreResult<()> {
    if holder.is_empty() || holder.len() > MAX_NAME {
        return Err(CoreError::InvalidArgument(format!(
            "holder must be 1..={MAX_NAME} bytes"
        )));
    }
    Ok(())
}

pub fn check_quantity(quantity: u64) -> CoreResult<()> {
    if quantity == 0 || quantity > MAX_QUANTITY {
        return Err(CoreError::InvalidArgument(format!(
            "quantity must be 1..={MAX_QUANTITY}"
        )));
    }
    Ok(())
}

/// The bucket of a (priority, batch) pair: `"<priority>|<batch>"`. Lua splits it again to
/// re-file released entries, and uses the priority text as the ZSET score unchanged.
pub fn bucket(priority: i64, batch: u64) -> CoreResult<String> {
    if priority.unsigned_abs() >= MAX_EXACT || batch >= MAX_EXACT {
        return Err(CoreError::InvalidArgument(
            "priority and batch must be within ±2^53".into(),
        ));
    }
    Ok(format!("{priority}|{batch}"))
}

/// An entry as stored in Redis: 8-byte big-endian id, then the ciphertext.
pub fn pack(id: u64, ciphertext: &[u8]) -> CoreResult<Vec<u8>> {
    if id >= MAX_EXACT {
        return Err(CoreError::InvalidArgument(
            "entry id must be below 2^53".into(),
        ));
    }
    if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT {
        return Err(CoreError::InvalidArgument(format!(
            "ciphertext must be 1..={MAX_CIPHERTEXT} bytes"
        )));
    }
    let mut out = Vec::with_capacity(8 + ciphertext.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(ciphertext);
    Ok(out)
}

/// Split a stored entry into (id, ciphertext) without copying the ciphertext twice.
pub fn unpack(mut packed: Vec<u8>) -> CoreResult<(u64, Vec<u8>)> {
    if packed.len() <= 8 {
        return Err(CoreError::Integrity(format!(
            "stored entry of {} bytes is too short",
            packed.len()
        )));
    }
    let ciphertext = packed.split_off(8);
    let mut id = [0u8; 8];
    id.copy_from_slice(&packed);
    Ok((u64::from_be_bytes(id), ciphertext))
}

/// FNV-1a: a hash that is the same in every process and every build, so every worker
/// sends a holder to the same first shard.
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shards a holder's request visits, in order: a start spread by the holder's hash,
/// then the others. Deterministic per holder so a retry goes where the first try went.
pub fn shard_order(holder: &str, shards: u32) -> Vec<u32> {
    let shards = shards.max(1);
    let start = u32::try_from(stable_hash(holder.as_bytes()) % u64::from(shards)).unwrap_or(0);
    (0..shards).map(|i| (start + i) % shards).collect()
}

/// The shard an entry is loaded into: fixed per id, so loading the same entry twice (in
/// any chunking) meets the same high-water mark.
pub fn entry_shard(id: u64, shards: u32) -> u32 {
    u32::try_from(id % u64::from(shards.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_one_slot() {
        assert_eq!(shard_tag("kami", "SKU-1", 3), "{kami:pool:SKU-1:3}");
    }

    #[test]
    fn names_cannot_escape_the_tag() {
        assert!(check_name("sku", "ok-SKU_1.a").is_ok());
        for bad in ["", "a{b", "a}b", "a|b", "a b", "a\nb"] {
            assert!(check_name("sku", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("sku", &"x".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn pack_round_trips_and_orders_by_id() {
        let p = pack(42, b"cipher").ok();
        assert_eq!(p.as_deref().map(<[u8]>::len), Some(14));
        let back = p.map(unpack);
        assert!(matches!(back, Some(Ok((42, ref c))) if c == b"cipher"));
        assert!(pack(MAX_EXACT, b"x").is_err());
        assert!(pack(1, b"").is_err());
        assert!(matches!(unpack(vec![0; 8]), Err(CoreError::Integrity(_))));
    }

    #[test]
    fn buckets_and_bounds() {
        assert_eq!(bucket(-5, 7).ok().as_deref(), Some("-5|7"));
        assert!(bucket(i64::MAX, 0).is_err());
        assert!(check_quantity(0).is_err());
        assert!(check_quantity(101).is_err());
        assert!(check_quantity(100).is_ok());
    }

    #[test]
    fn shard_order_visits_every_shard_once_and_is_stable() {
        let order = shard_order("order-1", 4);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(order, shard_order("order-1", 4));
        assert_eq!(shard_order("x", 1), vec![0]);
        // Holders spread over shards.
        let starts: std::collections::HashSet<u32> = (0..64)
            .map(|i| shard_order(&format!("h{i}"), 4)[0])
            .collect();
        assert_eq!(starts.len(), 4);
        assert_eq!(entry_shard(10, 4), 2);
        assert_eq!(entry_shard(10, 0), 0);
    }
}
