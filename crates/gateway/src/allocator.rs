//! The allocator: mimalloc, told to return freed memory to the OS at once.
//!
//! mimalloc (v3, as built by `libmimalloc-sys`) keeps freed pages for a second before
//! purging them. Under load the gateway frees request buffers and commit batches at a
//! high rate, so that second held 40-60 MB more resident memory (BENCHMARKS.md, "Memory",
//! issue 12 item 10). An operator's `MIMALLOC_PURGE_DELAY` still wins.
#![allow(unsafe_code)]

#[cfg(test)]
use libmimalloc_sys::mi_option_get;
use libmimalloc_sys::{mi_option_set, mi_option_t};
use std::ffi::c_long;

/// `mi_option_purge_delay`: entry 15 of `mi_option_e` in mimalloc.h (v3), which
/// `libmimalloc-sys` 0.1.49 does not name. `tests::the_index_names_the_purge_delay`
/// checks it against the option's built-in default.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Milliseconds freed memory waits before it goes back to the OS.
const PURGE_DELAY_MS: c_long = 0;

/// Purges freed memory at once, unless `MIMALLOC_PURGE_DELAY` is set.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; the purge delay
    // is read on every purge, and mimalloc allows options to change at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// The purge delay in effect, ms.
#[cfg(test)]
fn purge_delay_ms() -> c_long {
    // SAFETY: mi_option_get reads an integer from mimalloc's option table.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set");
            return;
        }
        // mimalloc v3's built-in purge delay is 1000 ms; no neighbouring option has it.
        assert_eq!(purge_delay_ms(), 1000, "option 15 is not mimalloc's purge delay");
        tune();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
