//! The shard function: actor key → shard number.
//!
//! FNV-1a (64 bit) is used because it is tiny, has no seed and gives the same
//! answer on every platform and in every release: the shard of a key is part of
//! the wire contract and must never change for a running cluster.

/// Number of shards. Fixed for the life of a cluster.
pub const SHARD_COUNT: u16 = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The shard that owns `key`.
pub fn shard(key: &str) -> u16 {
    let mut hash = FNV_OFFSET;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    // SHARD_COUNT fits in u16, so the remainder does too.
    (hash % u64::from(SHARD_COUNT)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable() {
        // Pinned values: changing them would re-route every live session.
        assert_eq!(shard("session-1"), 77);
        assert_eq!(shard(""), (0xcbf2_9ce4_8422_2325u64 % 1024) as u16);
        assert_eq!(shard("a"), (0xaf63_dc4c_8601_ec8cu64 % 1024) as u16);
        assert_eq!(shard("session-1"), shard("session-1"));
    }

    #[test]
    fn shards_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let s = shard(&format!("{i:08x}-session"));
            assert!(s < SHARD_COUNT);
            seen.insert(s);
        }
        assert!(seen.len() > 1000, "only {} shards used", seen.len());
    }
}
