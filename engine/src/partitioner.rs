//! Which partition an address belongs to: `murmur2(utf8(id)) mod N`, exactly the Kafka Java
//! client's default partitioner, so any Kafka tool that produces with the id as key lands a
//! record on the partition our engine expects.

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a function id among `partitions` partitions.
pub fn partition_for(id: &str, partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(id.as_bytes()) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of the Kafka Java client's own murmur2 test.
    #[test]
    fn matches_the_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), *want, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for id in ["", "1", "socks", "user-42", "ünïcödé"] {
            let p = partition_for(id, 8);
            assert!((0..8).contains(&p));
            assert_eq!(p, partition_for(id, 8));
        }
    }
}
