//! Micro-benchmark of the dedup window: ns per insert at steady state.
use adflow_domain::dedup::{DedupWindow, key};
use std::time::Instant;

fn main() {
    let d = DedupWindow::<()>::new(600_000, 2_000_000);
    let ids: Vec<String> =
        (0..4_000_000u64).map(|i| format!("{:032x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
    for (round, chunk) in ids.chunks(1_000_000).enumerate() {
        let t = Instant::now();
        for id in chunk {
            d.insert(key(id), 1_000 + round as i64);
        }
        println!(
            "round {round}: {:.0} ns/insert, len {}, {:.1} bytes/id",
            t.elapsed().as_nanos() as f64 / chunk.len() as f64,
            d.len(),
            d.memory_bytes() as f64 / d.len() as f64
        );
    }
}
