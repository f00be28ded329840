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
//! An operator can still override both: `MIMALLOC_PURGE_DELAY` and
//! `MIMALLOC_ALLOW_THP` in the environment win over the defaults set here.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h).
/// The Rust bindings (`libmimalloc-sys` 0.1.49, pinned exactly in
/// Cargo.toml) do not export it; `option_indices` checks the index against
/// the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`, likewise (checked by `option_indices`).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

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
    }
}
