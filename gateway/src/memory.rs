//! Giving memory back: the start-up pages of code and constants once the
//! server runs, and what the allocator freed after a burst of load.
//!
//! Start-up (config parsing and validation, TLS and certificate set-up,
//! the loader's relocations, pingora's bootstrap) runs code and reads data
//! that the steady state never touches again, and the kernel maps 64 KiB
//! around each page it faults in. Measured on a sidecar pair at 1k
//! requests/s: of about 10 MiB of the binary's code resident, 2.4 MiB was
//! touched in 10 s; of 2.4 MiB of its read-only data, 0.4 MiB. Once the
//! server runs, its mappings of the binary's read-only segments are
//! dropped (`MADV_DONTNEED`); pages the process uses again come back from
//! the page cache on their next touch. The pages themselves stay in the
//! page cache, shared and reclaimable: this lowers the process's resident
//! set, not what the host has cached.
//!
//! The shared libraries' code and constants (the C library, the math
//! library, the loader) are dropped the same way: start-up and the
//! loader's symbol lookups touched much of them, a request little.
//!
//! Only mappings the process cannot have written are dropped: private
//! file mappings that are not writable and hold no private page, that is
//! the code and the read-only segments (headers, symbol tables,
//! relocations, `.rodata`, unwind tables). Never a writable mapping, nor
//! the RELRO segment, which the loader wrote before making it read-only
//! (its pages are private), nor a mapping a debugger's breakpoint wrote.
//!
//! Start-up does not end the moment the listeners run: the first request
//! sets up the first connections (a sidecar's first mTLS handshake on both
//! sides, certificate checks, the HTTP/2 handshake), code a pooled
//! connection does not run again, and the listeners' own set-up races the
//! first release. So the pages are dropped once more when start-up has
//! settled ([`release_once_settled`]): at the first second without a new
//! request after the first request, or 30 s after the server runs,
//! whichever comes first. Measured on a sidecar pair (plain release
//! build) started as the bench starts it: 12.6 and 15.6 MiB resident after
//! its readiness request, 7.3 and 6.6 MiB three seconds later, with 2.1
//! and 1.3 MiB of code; a request faults back what it uses.
//!
//! Memory freed after a burst of load is given back too, without waiting
//! for the next request: the allocator (mimalloc) keeps a thread's
//! emptied pages until that thread allocates again, so a sidecar that went
//! quiet after a burst held the burst's peak (measured: 35 MiB against 14
//! before it). Each listener's thread asks the allocator to give back what
//! it freed once a second ([`give_back_freed_memory`]).

// The `madvise` and `mi_collect` calls below and the profiling runtime's
// reset; nothing else in this module is unsafe.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a listener's thread gives freed memory back.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Every this many collections, the forced one ([`give_back_freed_memory`]).
const FORCE_EVERY: u32 = 10;

/// How long a second must pass without a new request, after the first,
/// for start-up to count as settled.
const SETTLE_QUIET: Duration = Duration::from_secs(1);

/// Start-up counts as settled this long after the server runs even when
/// requests never stopped (or never came).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Requests started since the process began, counted until start-up has
/// settled (then no longer: one shared counter written by every worker
/// thread would cost each request a contended cache line).
static REQUESTS_STARTED: AtomicU64 = AtomicU64::new(0);
static SETTLED: AtomicBool = AtomicBool::new(false);

/// One more request started (any listener, any protocol).
pub(crate) fn request_started() {
    if !SETTLED.load(Ordering::Relaxed) {
        REQUESTS_STARTED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Blocks the calling thread until start-up has settled (the first
/// [`SETTLE_QUIET`] without a new request after the first request, or
/// [`SETTLE_LIMIT`] after the call), then drops the start-up pages again
/// ([`release_startup_pages`]). Call it once the server runs, on a thread
/// that has nothing else to do.
pub(crate) fn release_once_settled() -> std::io::Result<usize> {
    let running = Instant::now();
    let mut before = REQUESTS_STARTED.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(SETTLE_QUIET);
        let now = REQUESTS_STARTED.load(Ordering::Relaxed);
        if settled(before, now, running.elapsed()) {
            break;
        }
        before = now;
    }
    SETTLED.store(true, Ordering::Relaxed);
    forget_start_up_profile();
    release_startup_pages()
}

// A do-nothing `__llvm_profile_reset_counters`, weak: the LLVM profiling
// runtime that a `-Cprofile-generate` build links defines the real one,
// which then takes its place. Every other build calls this one.
core::arch::global_asm!(
    ".pushsection .text.__llvm_profile_reset_counters,\"ax\",%progbits",
    ".weak __llvm_profile_reset_counters",
    ".type __llvm_profile_reset_counters,%function",
    "__llvm_profile_reset_counters:",
    "ret",
    ".size __llvm_profile_reset_counters, . - __llvm_profile_reset_counters",
    ".popsection",
);

unsafe extern "C" {
    fn __llvm_profile_reset_counters();
}

/// In the instrumented build that trains the profile-guided one, run with
/// `MESHGATE_PGO_TRAINING` set (scripts/pgo-build.sh), drops the counts
/// start-up wrote, so the profile holds what the settled server runs;
/// otherwise nothing.
///
/// The profile-guided link puts the profile's functions first, most often
/// run first (scripts/pgo-order.py). Counted from the start, start-up's
/// loops (PEM and base64 decoding, config parsing, certificate checks) sat
/// among the request path's functions and spread it over more pages; the
/// kernel maps whole cached folios around a fault, so each stray function
/// cost a folio (bench/README.md has the figures). The call is compiled
/// into every build alike: code that differed between the instrumented
/// and the optimized build would lose its profile.
fn forget_start_up_profile() {
    // Only when the training asks: a coverage build (`-Cinstrument-coverage`)
    // links the same runtime, and its counts must keep start-up's.
    if std::env::var_os("MESHGATE_PGO_TRAINING").is_none() {
        return;
    }
    // Safety: takes no argument; the runtime's version only zeroes its
    // counters (one that another thread bumps meanwhile is off by one),
    // ours returns at once.
    unsafe { __llvm_profile_reset_counters() }
}

/// Whether start-up has settled, given the requests started at the last
/// check (`before`, [`SETTLE_QUIET`] ago) and now, `since_running` after
/// the server began to run.
fn settled(before: u64, now: u64, since_running: Duration) -> bool {
    (now > 0 && now == before) || since_running >= SETTLE_LIMIT
}

/// Until `shutdown` turns true: once a second, the allocator frees this
/// thread's emptied pages and returns the memory it freed more than its
/// purge delay (1 s) ago to the system; every [`FORCE_EVERY`] seconds it
/// does so with mimalloc's forced collection, which also visits the pages
/// that were full when last allocated from (the plain one skips them)
/// and returns what they freed at once. After a burst those pages are
/// most of what the burst freed: a client sidecar after 640 concurrent
/// requests held 8.8 MiB of anonymous memory after 10 s idle with the plain
/// collection alone and 4.7 with this, against 3.2 before the burst. The
/// forced collection walks all of the thread's pages: measured on a
/// sidecar pair through 1k requests/s, a burst and idle time, it took
/// 140-290 µs at the median (the plain one 6 µs) and at most 1.7 ms, when
/// it gave a burst back; forced every second it reached 8 ms and 0.4 ms
/// at the 90th percentile under load, hence once every ten.
///
/// Spawned beside each listener's accept loop (its HTTP/3 side runs on the
/// same runtime), so it runs on that listener's runtime; with one thread
/// per listener (a sidecar's default) that is the thread that served the
/// requests, with several it is whichever the runtime picks.
pub(crate) async fn give_back_freed_memory(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(COLLECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                let force = ticks.is_multiple_of(FORCE_EVERY);
                // Safety: `mi_collect` takes no pointer; it only walks the
                // calling thread's own heap and the shared arenas under
                // their locks, as any allocation may.
                unsafe { libmimalloc_sys::mi_collect(force) }
            }
        }
    }
}

/// One file mapping, from `/proc/self/smaps`.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    /// Private pages (`Anonymous:`), in KiB.
    private_kib: u64,
}

/// Drops the resident pages of the read-only file mappings (the
/// executable's and the shared libraries' code and constants) and returns
/// how many bytes of mappings were advised. Errors (no `/proc`, an
/// unexpected format) leave everything as it was.
pub(crate) fn release_startup_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in droppable(&file_mappings(&smaps)) {
        let len = m.end - m.start;
        let Some(addr) = std::ptr::NonNull::new(m.start as *mut std::ffi::c_void) else {
            continue;
        };
        // Safety: the range is a whole private mapping of a file that is
        // not writable and holds no private page, so its contents are the
        // file's; MADV_DONTNEED on such a mapping only unmaps the pages,
        // which fault back in from the file unchanged.
        unsafe { nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) }
            .map_err(std::io::Error::from)?;
        released += len;
    }
    Ok(released)
}

/// The mappings of files in `smaps` text, in address order.
fn file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    // Whether the mapping whose fields follow is a file's.
    let mut file = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // start-end perms offset dev inode [path]
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            file = path.starts_with('/');
            if file {
                out.push(Mapping {
                    start,
                    end,
                    perms: perms.to_owned(),
                    private_kib: 0,
                });
            }
        } else if file
            && first == "Anonymous:"
            && let Some(m) = out.last_mut()
        {
            m.private_kib = fields
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
        }
    }
    out
}

/// The private, read-only (`r--p`) or code (`r-xp`) mappings holding no
/// private page.
fn droppable(mappings: &[Mapping]) -> Vec<&Mapping> {
    mappings
        .iter()
        .filter(|m| m.private_kib == 0 && (m.perms == "r-xp" || m.perms == "r--p"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600000000-5600569000 r--p 00000000 08:01 42 /usr/bin/meshgate
Rss:                2400 kB
Anonymous:             0 kB
5600569000-560138b000 r-xp 00569000 08:01 42 /usr/bin/meshgate
Rss:               9800 kB
Anonymous:             0 kB
560138b000-5601436000 r--p 0138b000 08:01 42 /usr/bin/meshgate
Rss:                700 kB
Anonymous:           700 kB
5601436000-560143e000 rw-p 01436000 08:01 42 /usr/bin/meshgate
Anonymous:            32 kB
7f00000000-7f00100000 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f00100000-7f00110000 r--p 00100000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f00110000-7f00120000 r--s 00000000 08:01 9 /var/lib/shared.db
Anonymous:             0 kB
7f00200000-7f00300000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
";

    #[test]
    fn the_read_only_file_mappings_are_dropped() {
        let all = file_mappings(SMAPS);
        assert_eq!(all.len(), 7, "{all:?}");
        assert_eq!(all[2].private_kib, 700);
        let starts: Vec<usize> = droppable(&all).iter().map(|m| m.start).collect();
        // The executable's read-only data and code and the C library's
        // code; not the RELRO segment (written by the loader), the
        // writable data, a shared mapping, nor anonymous memory.
        assert_eq!(
            starts,
            [
                0x56_0000_0000,
                0x56_0056_9000,
                0x7f_0000_0000,
                0x7f_0010_0000
            ]
        );
    }

    #[test]
    fn a_written_code_page_keeps_its_mapping() {
        let smaps = SMAPS.replacen(
            "9800 kB\nAnonymous:             0 kB",
            "9800 kB\nAnonymous:             4 kB",
            1,
        );
        let starts: Vec<usize> = droppable(&file_mappings(&smaps))
            .iter()
            .map(|m| m.start)
            .collect();
        assert!(!starts.contains(&0x56_0056_9000), "{starts:x?}");
        assert_eq!(starts.len(), 3);
    }

    #[test]
    fn start_up_settles_after_a_quiet_second_past_the_first_request() {
        let second = Duration::from_secs(1);
        // No request yet: not settled until the limit.
        assert!(!settled(0, 0, 3 * second));
        assert!(settled(0, 0, SETTLE_LIMIT));
        // Requests still coming.
        assert!(!settled(1, 4, 3 * second));
        assert!(!settled(0, 1, second));
        // A second without a new one after the first.
        assert!(settled(1, 1, 2 * second));
        assert!(settled(7, 7, second));
        // Busy all along: settled at the limit anyway.
        assert!(settled(100, 200, SETTLE_LIMIT));
    }

    #[test]
    fn without_the_profiling_runtime_the_counter_reset_returns_at_once() {
        // This test binary has no `-Cprofile-generate`: the weak stand-in
        // is what runs, and a broken one would crash here. Called
        // directly: the environment variable is not set in tests.
        // Safety: as in `forget_start_up_profile`.
        unsafe { __llvm_profile_reset_counters() };
        forget_start_up_profile();
    }

    #[test]
    fn this_process_drops_its_pages_and_keeps_running() {
        let released = release_startup_pages().expect("release");
        assert!(released > 0, "no file mapping was dropped");
        // Code and constants that were just dropped still work.
        assert_eq!(format!("{:?}", droppable(&[])), "[]");
    }
}
