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
//! An operator can still override it: `MIMALLOC_PURGE_DELAY` in the
//! environment wins over the default set here.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h).
/// The Rust bindings (`libmimalloc-sys` 0.1.49, pinned exactly in
/// Cargo.toml) do not export it; the test below checks the index against
/// the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed memory to the OS without delay, unless the
/// environment says otherwise.
pub(crate) fn tune() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set_default` only stores a value in mimalloc's
    // static option table (no pointers are passed, any option id within the
    // enum is valid, and it may be called at any time from any thread); the
    // id is `mi_option_purge_delay`, checked by `purge_delay_index`.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_index() {
        // SAFETY: reading an option by a valid id has no preconditions.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default purge delay is 1000 ms (options.c), unless
        // the test runs with MIMALLOC_PURGE_DELAY set.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                before, 1000,
                "option 15 is not purge_delay in this mimalloc"
            );
            tune();
            // SAFETY: as above.
            let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(after, 0);
        }
    }
}
