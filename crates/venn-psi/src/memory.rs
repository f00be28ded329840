//! Hints from the engine to the process's allocator.
//!
//! The engine does not choose the allocator; the binary does (`venn`:
//! mimalloc, returning freed memory at once for large inputs, which keeps
//! the peak low). One pattern deserves a hint: protocol batches
//! (`session`) allocate and free about the same large buffers one after
//! another, so what one batch frees is best kept a moment for the next
//! instead of being returned to the system and faulted back in. The binary
//! registers a [`Hook`] once ([`set_hook`]); the engine calls it when
//! batches start and end. Without a hook nothing happens.

use std::sync::OnceLock;

/// What the engine's memory does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Protocol batches follow: each frees about what the next allocates.
    Batches,
    /// The batches are over.
    BatchesDone,
    /// The run's large buffers are freed, and the output is being synced
    /// to disk: the process waits on the disk and will end soon after.
    Finishing,
}

/// A function the binary registers to hear about [`Phase`]s.
pub type Hook = fn(Phase);

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Registers the process's hook; the first registration wins.
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

fn hint(phase: Phase) {
    if let Some(h) = HOOK.get() {
        h(phase)
    }
}

/// [`Phase::Batches`] when made, [`Phase::BatchesDone`] when dropped (also
/// when a batch fails).
pub(crate) struct Batches(());

impl Batches {
    pub(crate) fn start() -> Self {
        hint(Phase::Batches);
        Batches(())
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        hint(Phase::BatchesDone);
    }
}

/// [`Phase::Finishing`].
pub(crate) fn finishing() {
    hint(Phase::Finishing);
}
