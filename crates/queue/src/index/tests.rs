//! Unit tests of the scheduling index: strict priority and FIFO, overdue ads first, aging
//! and its tie-breaks, paused partitions and masks, positions.

use super::*;

const STRICT: Rules = Rules { anti_starvation: false, aging_step_ms: 0 };
const FAR: i64 = i64::MAX / 4;

fn drain(ix: &mut Index, now: i64, rules: Rules) -> Vec<AdKey> {
    std::iter::from_fn(|| ix.pop(now, rules, ALL_PARTITIONS).map(|(k, _)| k)).collect()
}

#[test]
fn strict_priority_then_fifo() {
    let mut ix = Index::default();
    // key = 10 * priority + arrival order
    let mut seq = 0;
    for (key, p) in [(11, 1), (51, 5), (31, 3), (52, 5), (12, 1), (32, 3)] {
        seq += 1;
        ix.push(key, p, seq, seq as i64, FAR);
    }
    assert_eq!(drain(&mut ix, 100, STRICT), vec![51, 52, 31, 32, 11, 12]);
}

#[test]
fn an_overdue_ad_jumps_the_queue() {
    let mut ix = Index::default();
    ix.push(1, 1, 1, 0, 1_000); // low priority, max wait 1 s
    for i in 0..10 {
        ix.push(100 + i, 5, 10 + i as u64, 500, FAR);
    }
    let rules = Rules { anti_starvation: true, aging_step_ms: 0 };
    assert_eq!(ix.pop(999, rules, ALL_PARTITIONS).unwrap().0, 100, "not overdue yet");
    assert_eq!(ix.pop(1_000, rules, ALL_PARTITIONS).unwrap().0, 1, "overdue: served first");
    // Without anti-starvation the deadline is ignored.
    ix.push(2, 1, 2, 0, 1_000);
    assert_eq!(ix.pop(5_000, STRICT, ALL_PARTITIONS).unwrap().0, 101);
}

#[test]
fn aging_lifts_a_waiting_ad_above_younger_high_priority_ones() {
    let mut ix = Index::default();
    let rules = Rules { anti_starvation: true, aging_step_ms: 1_000 };
    ix.push(1, 2, 1, 0, FAR); // priority 2 at t=0
    ix.push(2, 5, 2, 2_500, FAR); // priority 5 at t=2.5 s
    // At t=2.9 s the old ad has aged to 4: the priority-5 ad goes first.
    assert_eq!(ix.peek(1, 2_900, rules)[0].key, 2);
    // At t=3 s it has aged to 5 and waited longer: it goes first.
    let p = ix.peek(2, 3_000, rules);
    assert_eq!((p[0].key, p[0].effective, p[1].key), (1, 5, 2));
}

#[test]
fn paused_partitions_and_masks_are_skipped() {
    let mut ix = Index::default();
    ix.push(5, 5, 1, 0, FAR);
    ix.push(3, 3, 2, 0, FAR);
    ix.set_paused(5, true);
    assert_eq!(ix.pop(1, STRICT, ALL_PARTITIONS).unwrap().0, 3);
    assert!(ix.pop(1, STRICT, ALL_PARTITIONS).is_none(), "the paused ad stays queued");
    ix.set_paused(5, false);
    assert!(ix.pop(1, STRICT, 0b0_1111).is_none(), "mask without priority 5");
    assert_eq!(ix.pop(1, STRICT, 0b1_0000).unwrap().0, 5);
}

#[test]
fn reprioritize_keeps_the_place_in_time_and_position_counts_ahead() {
    let mut ix = Index::default();
    ix.push(1, 1, 1, 10, FAR);
    ix.push(2, 3, 2, 20, FAR);
    ix.push(3, 3, 3, 30, FAR);
    assert_eq!(ix.position(1), Some(2));
    assert_eq!(ix.set_priority(1, 3), Some(1));
    assert_eq!(ix.position(1), Some(0), "it was enqueued first, so it leads priority 3");
    assert_eq!(ix.position(3), Some(2));
    assert_eq!(drain(&mut ix, 100, STRICT), vec![1, 2, 3]);
    assert!(ix.is_empty());
}

#[test]
fn remove_takes_an_ad_out_everywhere() {
    let mut ix = Index::default();
    ix.push(1, 2, 1, 0, 100);
    assert_eq!(ix.remove(1), Some((2, 1, 0)));
    assert!(ix.remove(1).is_none());
    let rules = Rules { anti_starvation: true, aging_step_ms: 10 };
    assert!(ix.pop(1_000, rules, ALL_PARTITIONS).is_none());
}
