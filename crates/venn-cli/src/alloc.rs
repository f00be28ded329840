//! The process allocator: mimalloc, returning freed memory at once.
//!
//! The PSI engine allocates and frees buffers of hundreds of megabytes per
//! phase (rows, OKVS, VOLE vectors, tags). With glibc each large buffer is
//! its own mapping: freed to the kernel, then page-faulted back in by the
//! next phase — 13% of a 2^22-row RR22 run was page faults and `munmap`.
//! mimalloc reuses its arenas instead. Its default keeps freed pages for a
//! second before returning them (`purge_delay` 1000 ms in mimalloc v3),
//! which raised peak RSS by ~30% here; purging at once keeps the peak at
//! glibc's level and most of the speed.
//!
//! Measured on the 16-core device machine, RR22, 2^24 rows each, two
//! processes: glibc 10.1–10.5 s; mimalloc 8.2–9.2 s at +20% peak RSS;
//! mimalloc with immediate purge 8.1–9.0 s at glibc's RSS (3.6 GB).
//!
//! Transparent huge pages are off for our allocations (`allow_thp` 0). On a
//! VM whose host takes back freed guest memory (virtio-balloon free page
//! reporting, as on the 2-vCPU CI machine), the first touch of a 2 MiB page
//! costs far more than 512 touches of 4 KiB pages: 0.4 GB/s against 1.8 GB/s
//! measured here. RR22 at 2^20, both parties, `compare.sh`: 1.48–1.61 s
//! without THP against 1.76–1.90 s with it (same runs, alternated), and
//! ~15% less peak RSS. Where huge pages are warm they are faster to touch,
//! but a PSI job's memory is mostly fresh.
//!
//! **Small inputs keep their freed memory** ([`fit_to_input`]). Returning
//! memory at once has a price: the next phase faults the same amount back
//! in, and on this VM a fresh 4 KiB page costs ~2 µs (the host backs it
//! again). A 2^20-row RR22 receiver touched ~500 MB of pages for a 175 MB
//! peak. For inputs up to [`RETAIN_MAX_INPUT`] bytes the PSI commands
//! therefore do not purge during the run: RR22 at 2^20, both parties, two sets of
//! alternated runs an hour apart: 1.25–1.46 s against 1.57–1.73 s, then
//! 1.39–1.54 s against 1.48–1.57 s (the system time per party fell from
//! ~0.31 to ~0.19 s both times), page faults 126k → 61k (receiver),
//! peak RSS 175 → 250–270 MB (receiver) and 175 → 220–250 MB (sender),
//! still under half of SecretFlow's 520–710 MB. At 2^22 rows the same
//! switch saved ~0.5 s of 4.3–4.9 s but raised the sender's peak from
//! 640 MB to 720–750 MB, SecretFlow's own level, so larger inputs keep
//! purging at once: there the peak matters more than the faults.
//!
//! **A small input's memory goes back while its output syncs.** Kept
//! memory has its own price at the end: the kernel frees it when the
//! process exits, 10–20 ms for the ~160 MB a 2^20-row RR22 party holds,
//! and a caller waiting for the process waits for that. So such a run
//! keeps freed memory with a purge delay of an hour ([`RETAIN_DELAY`]:
//! nothing is returned during the run, but mimalloc marks what is freed),
//! and when the engine says it is finishing (its output is being synced to
//! disk, `venn_psi::memory::Phase::Finishing`) a thread returns all of it
//! ([`purge_now`]) while the main thread waits on the disk. Measured at
//! 2^20 rows, both parties, 24 alternated pairs: the exit went from 10–20
//! to 5–9 ms after the commit, and the connector's time from its start by
//! a median of 13 ms (17 of 24 pairs faster). A thread's `mi_collect`
//! only reaches the pages of its own heap and the arenas' free ranges, so
//! each thread of the pool (where most buffers were built and freed)
//! collects its own heap too (`rayon::broadcast`): the anonymous memory
//! left for the exit to tear down was still 35–65 MB a party without it.
//!
//! **Batches keep freed memory for 10 ms** ([`batches`]). A large input's
//! protocol runs in batches (`venn_psi`'s session), and each batch frees
//! and the next allocates about the same buffers within milliseconds; with
//! an immediate purge every batch faulted its predecessor's pages back in.
//! The engine tells the allocator when batches start and end
//! (`venn_psi::memory`), and meanwhile freed memory waits 10 ms before it
//! is returned. RR22 at 2^22 rows (four batches), both parties, three
//! alternated sets: page faults 430k → ~360k (receiver) and 305k → ~270k
//! (sender), 4.57–4.73 s → 4.31–4.40 s, peak RSS 388–406 → 404–429 MB
//! (receiver) and 356 → 356–363 MB (sender). Keeping freed memory through
//! the whole run instead (10 ms from the start) saved more time but put the
//! sender's peak, in its grouping, at 394–402 MB; never purging during the
//! batches kept 100 MB more at either party; 5 and 20 ms were no better.
//!
//! An operator can still override both: `MIMALLOC_PURGE_DELAY` and
//! `MIMALLOC_ALLOW_THP` in the environment win over the defaults set here.

use std::sync::atomic::{AtomicI64, Ordering};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h).
/// The Rust bindings (`libmimalloc-sys` 0.1.49, pinned exactly in
/// Cargo.toml) do not export it; `option_indices` checks the index against
/// the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`, likewise (checked by `option_indices`).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Inputs up to this size (bytes of the input file) keep freed memory for
/// reuse instead of returning it (module docs): 48 MiB is ~2.5 million rows
/// of an 18-digit ID column, where the extra peak measured ≤ 100 MB.
pub(crate) const RETAIN_MAX_INPUT: u64 = 48 << 20;

/// Chooses the purge policy for a PSI run on `input` (module docs): a small
/// input keeps freed memory until it finishes, a large one purges at once. An input
/// that cannot be read keeps the default (the run reports the error).
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
pub(crate) fn fit_to_input(input: &std::path::Path) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(meta) = std::fs::metadata(input) else {
        return;
    };
    let delay = purge_delay_for(meta.len());
    RUN_DELAY.store(delay as i64, Ordering::Relaxed);
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores a value in mimalloc's static option
    // table (no pointers; any thread, any time); mimalloc reads
    // `purge_delay` each time it schedules a purge. The id is checked by
    // `option_indices`.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
    }
}

/// The purge delay [`fit_to_input`] chose, for [`batches`] to restore.
static RUN_DELAY: AtomicI64 = AtomicI64::new(0);

/// How long protocol batches keep freed memory, in ms ([`batches`]).
const BATCH_PURGE_DELAY: i64 = 10;

/// The engine's [`venn_psi::memory::Hook`]: while protocol batches run,
/// freed memory waits [`BATCH_PURGE_DELAY`] ms before it goes back to the
/// system; then the run's own policy returns (module docs, "Batches").
/// When the run finishes, a small input's kept memory goes back on a thread
/// of its own ([`purge_now`]; module docs).
fn batches(phase: venn_psi::memory::Phase) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let run = RUN_DELAY.load(Ordering::Relaxed);
    if phase == venn_psi::memory::Phase::Finishing {
        if run == RETAIN_DELAY {
            // what the run kept goes back while the output syncs (module docs)
            let _ = std::thread::Builder::new()
                .name("venn-purge".into())
                .spawn(|| {
                    // each pool thread's own heap first: pages freed there
                    // are only returned by that thread's collect
                    rayon::broadcast(|_| purge_now());
                    purge_now();
                });
        }
        return;
    }
    let delay = match phase {
        // a run that keeps its memory (small input) goes on keeping it
        venn_psi::memory::Phase::Batches if run >= 0 => run.max(BATCH_PURGE_DELAY),
        _ => run,
    };
    #[allow(unsafe_code)]
    // SAFETY: as in `fit_to_input`: `mi_option_set` stores a value in
    // mimalloc's static option table, any thread, any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay as std::ffi::c_long);
    }
}

/// Returns the freed memory mimalloc holds to the system now.
fn purge_now() {
    #[allow(unsafe_code)]
    // SAFETY: mi_collect takes a flag only; it collects the calling
    // thread's heap and, forced, purges every arena's freed ranges. Any
    // thread may call it at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// The purge delay in ms for an input of `len` bytes: [`RETAIN_DELAY`]
/// (not during the run) up to [`RETAIN_MAX_INPUT`], 0 (at once) above.
fn purge_delay_for(len: u64) -> std::ffi::c_long {
    if len <= RETAIN_MAX_INPUT {
        RETAIN_DELAY as std::ffi::c_long
    } else {
        0
    }
}

/// The purge delay of a run that keeps its freed memory: an hour, so long
/// that nothing is returned during the run, while mimalloc still marks what
/// is freed, for [`batches`]'s `Finishing` to return at once.
const RETAIN_DELAY: i64 = 3_600_000;

/// Makes mimalloc return freed memory to the OS without delay and map no
/// transparent huge pages, unless the environment says otherwise.
pub(crate) fn tune() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set_default` only stores a value in mimalloc's
    // static option table (no pointers are passed, any option id within the
    // enum is valid, and it may be called at any time from any thread); the
    // ids are `mi_option_purge_delay` and `mi_option_allow_thp`, checked by
    // `option_indices`.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set_default(MI_OPTION_ALLOW_THP, 0);
    }
    venn_psi::memory::set_hook(batches);
    // mimalloc reads `allow_thp` when it maps its first arena, before
    // `main`: the arena it already holds is marked for huge pages. The
    // kernel's per-process switch covers every mapping from now on (and
    // the processes this one starts, e.g. a node's task processes).
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) passes integers
        // only and sets a flag of this process's memory map; a kernel
        // without it returns -1, which changes nothing and is ignored.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both option ids, read before and after [`tune`] in one test (tests
    /// run in parallel threads of one process, and `tune` is global).
    #[test]
    #[allow(unsafe_code)]
    fn option_indices() {
        // SAFETY: reading options by valid ids has no preconditions.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        let env = |v| std::env::var_os(v).is_some();
        if env("MIMALLOC_PURGE_DELAY") || env("MIMALLOC_ALLOW_THP") {
            return;
        }
        // mimalloc v3's defaults (options.c): purge_delay 1000 ms;
        // allow_thp 1, between page_cross_thread_max_reclaim (32) and
        // minimal_purge_size (0): an off-by-one would read a neighbour
        assert_eq!(
            get(MI_OPTION_PURGE_DELAY),
            1000,
            "option 15 is not purge_delay"
        );
        assert_eq!(get(MI_OPTION_ALLOW_THP), 1, "option 43 is not allow_thp");
        assert_eq!(get(MI_OPTION_ALLOW_THP - 1), 32);
        assert_eq!(get(MI_OPTION_ALLOW_THP + 1), 0);
        tune();
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 0);
        assert_eq!(get(MI_OPTION_ALLOW_THP), 0);
        // a small input switches purging off, a large one back on
        let dir = tempfile::tempdir().expect("temp dir");
        let small = dir.path().join("small.csv");
        std::fs::write(&small, "id\n1\n").expect("write");
        fit_to_input(&small);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), RETAIN_DELAY);
        // batches of a small input keep not purging
        batches(venn_psi::memory::Phase::Batches);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), RETAIN_DELAY);
        batches(venn_psi::memory::Phase::BatchesDone);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), RETAIN_DELAY);
        // what such a run freed stays resident until the purge at its end
        let rss = || {
            let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
            let pages: u64 = statm
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("rss");
            pages * 4096
        };
        let mut big = vec![1u8; 96 << 20];
        big.iter_mut().step_by(4096).for_each(|b| *b = 2);
        assert!(big.iter().step_by(4096).all(|&b| b == 2));
        drop(big);
        let kept = rss();
        purge_now();
        let left = rss();
        assert!(
            left + (64 << 20) < kept,
            "the purge returned {} MiB of 96",
            kept.saturating_sub(left) >> 20
        );
        let large = dir.path().join("large.csv");
        let f = std::fs::File::create(&large).expect("create");
        f.set_len(RETAIN_MAX_INPUT + 1).expect("sparse file");
        fit_to_input(&large);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 0);
        // a large input's batches keep freed memory a moment, then not
        batches(venn_psi::memory::Phase::Batches);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), BATCH_PURGE_DELAY);
        batches(venn_psi::memory::Phase::BatchesDone);
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 0);
        // a missing input changes nothing
        fit_to_input(&dir.path().join("missing.csv"));
        assert_eq!(get(MI_OPTION_PURGE_DELAY), 0);
    }

    #[test]
    fn purge_delay_by_input_size() {
        assert_eq!(purge_delay_for(0), RETAIN_DELAY as std::ffi::c_long);
        assert_eq!(
            purge_delay_for(RETAIN_MAX_INPUT),
            RETAIN_DELAY as std::ffi::c_long
        );
        assert_eq!(purge_delay_for(RETAIN_MAX_INPUT + 1), 0);
    }
}
