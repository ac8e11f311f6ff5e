//! Cost of the scheduling index's operations with 10k, 100k and 1M ads queued:
//! enqueue, dequeue (anti-starvation on) and reprioritize, in ns per operation.
//! `cargo run --release -p adflow-queue --example queue_ops`

use adflow_queue::index::{ALL_PARTITIONS, Index, Rules};
use std::time::Instant;

fn rng(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() {
    let rules = Rules { anti_starvation: true, aging_step_ms: 60_000 };
    let ops = 200_000u64;
    println!("{:>9} {:>14} {:>14} {:>18}", "queued", "enqueue ns", "dequeue ns", "reprioritize ns");
    for n in [10_000u64, 100_000, 1_000_000] {
        let mut ix = Index::default();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut seq = 0u64;
        for _ in 0..n {
            seq += 1;
            let p = (rng(&mut s) % 5 + 1) as u8;
            ix.push(seq as u128, p, seq, seq as i64, seq as i64 + 300_000);
        }
        let now = seq as i64;
        // Steady state: each round enqueues one ad and dequeues one, so n stays constant.
        let t = Instant::now();
        let mut keys = Vec::with_capacity(ops as usize);
        for _ in 0..ops {
            seq += 1;
            let p = (rng(&mut s) % 5 + 1) as u8;
            ix.push(seq as u128, p, seq, seq as i64, seq as i64 + 300_000);
            keys.push(seq as u128);
        }
        let enqueue = t.elapsed().as_nanos() as f64 / ops as f64;
        let t = Instant::now();
        for _ in 0..ops {
            std::hint::black_box(ix.pop(now, rules, ALL_PARTITIONS));
        }
        let dequeue = t.elapsed().as_nanos() as f64 / ops as f64;
        // Reprioritize queued ads picked at random.
        let queued: Vec<u128> = ix.iter().map(|(k, _, _)| k).collect();
        let picks: Vec<u128> =
            (0..ops).map(|_| queued[(rng(&mut s) % queued.len() as u64) as usize]).collect();
        let t = Instant::now();
        for (i, k) in picks.iter().enumerate() {
            std::hint::black_box(ix.set_priority(*k, (i % 5 + 1) as u8));
        }
        let repri = t.elapsed().as_nanos() as f64 / ops as f64;
        assert_eq!(ix.len() as u64, n);
        drop(keys);
        println!("{n:>9} {enqueue:>14.0} {dequeue:>14.0} {repri:>18.0}");
    }
}
