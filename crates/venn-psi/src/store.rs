//! A party's rows: read once from the CSV file, kept in memory or spilled to
//! disk in hash partitions, then handed out bucket by bucket.
//!
//! Each row keeps three things: its 128-bit [`Item`], its canonical key bytes
//! (to sort the output by key) and its raw record bytes (copied to the output
//! unchanged). They live in one arena plus two flat vectors, ~32 bytes of
//! overhead per row instead of two heap allocations.
//!
//! Memory: while the estimated footprint (rows plus the protocol's per-row
//! working set) stays under the budget, everything stays in memory. Past it,
//! the rows are written to [`PARTS`] partition files under the temporary
//! directory, by the top bits of [`mix`]`(item)`, and reading continues
//! straight into them. A bucket is a run of consecutive partitions: with `B`
//! buckets (a power of two agreed with the peer, at most [`PARTS`]) bucket `b`
//! is partitions `b·PARTS/B .. (b+1)·PARTS/B`. Both parties bucket with the same
//! function, so equal keys always meet in the same bucket.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::PsiError;
use crate::item::{Item, mix};

/// Number of spill partitions; also the largest bucket count.
pub(crate) const PARTS: usize = 256;

/// Bytes of protocol working set the estimate reserves per row.
/// Measured: RR22 at 2^24 rows peaks at ~210 B per row (OKVS, VOLE, tags, grouping).
const PROTOCOL_BYTES_PER_ROW: u64 = 192;

/// Where a row's bytes are: its raw record at `off` in the arena, and its key
/// either inside the record (the common case: one key column whose bytes are
/// the field's, e.g. an ID column) or stored after it.
///
/// Packed in 16 bytes: the low 40 bits of `pos` are the arena offset (1 TiB),
/// the high 24 bits the key's offset inside the record, or [`KEY_AFTER`]
/// when the key follows the record in the arena. Not copying a key that is
/// already in the record saves a third of the arena for an ID-only file.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rec {
    pos: u64,
    raw_len: u32,
    key_len: u32,
}

/// [`Rec`]: the key follows the record.
const KEY_AFTER: u64 = (1 << 24) - 1;
/// [`Rec`]: bits of the arena offset.
const OFF_BITS: u32 = 40;

impl Rec {
    /// A row whose record is `raw_len` bytes at `off` in the arena, with its
    /// key `key_len` bytes at `key_at` inside the record: `None` where
    /// either offset does not fit (the row must then be pushed with its key
    /// after it, [`Rows::push`]).
    pub(crate) fn key_in_raw(
        off: u64,
        raw_len: usize,
        key_at: usize,
        key_len: usize,
    ) -> Option<Self> {
        (off < 1 << OFF_BITS && (key_at as u64) < KEY_AFTER)
            .then(|| Rec::new(off, raw_len, Some(key_at), key_len))
    }

    fn new(off: u64, raw_len: usize, key_at: Option<usize>, key_len: usize) -> Self {
        let at = key_at.map_or(KEY_AFTER, |a| a as u64);
        debug_assert!(off < 1 << OFF_BITS && at <= KEY_AFTER);
        Rec {
            pos: off | (at << OFF_BITS),
            raw_len: raw_len as u32,
            key_len: key_len as u32,
        }
    }

    fn off(&self) -> usize {
        (self.pos & ((1 << OFF_BITS) - 1)) as usize
    }

    fn key_start(&self) -> usize {
        let at = self.pos >> OFF_BITS;
        if at == KEY_AFTER {
            self.off() + self.raw_len as usize
        } else {
            self.off() + at as usize
        }
    }

    /// The same record moved `by` bytes further into an arena.
    fn shifted(self, by: u64) -> Self {
        Rec {
            pos: self.pos + by,
            ..self
        }
    }
}

/// Rows in memory: items, record offsets, and one byte arena.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub(crate) items: Vec<Item>,
    recs: Vec<Rec>,
    arena: Vec<u8>,
    /// Some row's text is more than its key (see [`Rows::rows_are_keys`]).
    raw_not_key: bool,
    /// The row count, once the text (arena and records) is dropped
    /// ([`Rows::drop_text`]).
    without_text: Option<usize>,
}

impl Rows {
    /// Makes room for `rows` more rows and `bytes` more arena bytes.
    pub(crate) fn reserve(&mut self, rows: usize, bytes: usize) {
        self.items.reserve(rows);
        self.recs.reserve(rows);
        self.arena.reserve(bytes);
    }

    pub(crate) fn push(&mut self, item: Item, raw: &[u8], key: &[u8]) {
        let off = self.arena.len() as u64;
        self.raw_not_key |= raw != key;
        self.arena.extend_from_slice(raw);
        self.arena.extend_from_slice(key);
        self.items.push(item);
        self.recs.push(Rec::new(off, raw.len(), None, key.len()));
    }

    /// [`Rows::push`] for a row whose key is `raw[key_at..key_at + key_len]`:
    /// the key is not stored twice.
    pub(crate) fn push_key_in_raw(
        &mut self,
        item: Item,
        raw: &[u8],
        key_at: usize,
        key_len: usize,
    ) {
        debug_assert!(key_at + key_len <= raw.len());
        if key_at as u64 >= KEY_AFTER || self.arena.len() as u64 >= 1 << OFF_BITS {
            return self.push(item, raw, &raw[key_at..key_at + key_len]);
        }
        let off = self.arena.len() as u64;
        self.raw_not_key |= key_at != 0 || key_len != raw.len();
        self.arena.extend_from_slice(raw);
        self.items.push(item);
        self.recs
            .push(Rec::new(off, raw.len(), Some(key_at), key_len));
    }

    pub(crate) fn len(&self) -> usize {
        self.without_text.unwrap_or(self.recs.len())
    }

    /// Frees the rows' text (arena and records), keeping their count, for a
    /// run that will write every row from its item ([`Rows::rows_are_keys`]
    /// and [`crate::item::key_of`]); [`Rows::raw`] and [`Rows::key`] must
    /// not be called after. The freed memory (a file's size plus 16 bytes a
    /// row) is then reused by the protocol instead of faulted in afresh.
    pub(crate) fn drop_text(&mut self) {
        self.without_text = Some(self.len());
        self.recs = Vec::new();
        self.arena = Vec::new();
    }

    /// Whether the text is still there ([`Rows::drop_text`]).
    pub(crate) fn has_text(&self) -> bool {
        self.without_text.is_none()
    }

    /// The arena, for text read straight into it ([`Store::direct`]).
    pub(crate) fn arena_mut(&mut self) -> &mut Vec<u8> {
        &mut self.arena
    }

    /// Adds `n` zeroed rows at the end and returns the arena with their
    /// items and records, for parsers that fill them in place from text in
    /// the arena (in parallel, carved with `split_at_mut`); [`Rows::truncate`]
    /// drops the ones not filled. The zeroing runs on all threads: it is
    /// what faults the pages in.
    pub(crate) fn grow(&mut self, n: usize) -> (&[u8], &mut [Item], &mut [Rec]) {
        use rayon::prelude::*;
        let at = self.items.len();
        self.items.par_extend(rayon::iter::repeat_n(0, n));
        self.recs
            .par_extend(rayon::iter::repeat_n(Rec::default(), n));
        (&self.arena, &mut self.items[at..], &mut self.recs[at..])
    }

    /// Moves rows `from..from + n` to `to..to + n` (`to <= from`).
    pub(crate) fn shift_down(&mut self, from: usize, n: usize, to: usize) {
        debug_assert!(to <= from);
        if to != from {
            self.items.copy_within(from..from + n, to);
            self.recs.copy_within(from..from + n, to);
        }
    }

    /// Keeps the first `n` rows (the arena is left as it is).
    pub(crate) fn truncate(&mut self, n: usize) {
        self.items.truncate(n);
        self.recs.truncate(n);
    }

    /// Puts `rows` (parsed elsewhere, their own arena) at rows `to..` of
    /// these, which must exist: their arena goes to the end of this one.
    pub(crate) fn place(&mut self, rows: &Rows, to: usize) {
        let base = self.arena.len() as u64;
        self.arena.extend_from_slice(&rows.arena);
        self.raw_not_key |= rows.raw_not_key;
        self.items[to..to + rows.len()].copy_from_slice(&rows.items);
        for (d, r) in self.recs[to..].iter_mut().zip(&rows.recs) {
            *d = r.shifted(base);
        }
    }

    /// Marks that some row's text is more than its key.
    pub(crate) fn note_raw_not_key(&mut self) {
        self.raw_not_key = true;
    }

    /// Whether every row's text is exactly its canonical key (a file of
    /// one column, the key, unquoted and not normalised): then a row can be
    /// written from its item ([`crate::item::key_of`]) without reading it.
    pub(crate) fn rows_are_keys(&self) -> bool {
        !self.raw_not_key
    }

    pub(crate) fn raw(&self, i: usize) -> &[u8] {
        let r = self.recs[i];
        &self.arena[r.off()..r.off() + r.raw_len as usize]
    }

    pub(crate) fn key(&self, i: usize) -> &[u8] {
        let r = self.recs[i];
        let s = r.key_start();
        &self.arena[s..s + r.key_len as usize]
    }

    /// Asks the CPU to start loading row i's record entry.
    pub(crate) fn prefetch_rec(&self, i: usize) {
        if let Some(r) = self.recs.get(i) {
            prefetch(r);
        }
    }

    /// Asks the CPU to start loading row i's first bytes (reads its record
    /// entry: prefetch that first).
    pub(crate) fn prefetch_raw(&self, i: usize) {
        if let Some(b) = self.recs.get(i).and_then(|r| self.arena.get(r.off())) {
            prefetch(b);
        }
    }

    /// Estimated memory for these rows including the protocol's working set.
    fn footprint(&self) -> u64 {
        self.arena.len() as u64 + self.items.len() as u64 * (32 + PROTOCOL_BYTES_PER_ROW)
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.recs.clear();
        self.arena.clear();
        self.raw_not_key = false;
        self.without_text = None;
    }
}

/// A hint to load `x`'s cache line: rows are read in key order, which is
/// random in the arena, and a miss per row would serialise the output.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs only SSE, which every x86_64 CPU has; it
    // is a hint that never faults and reads nothing observable, and the
    // pointer comes from a live reference.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Partition of an item among [`PARTS`].
pub(crate) fn part_of(item: Item) -> usize {
    (mix(item) >> 56) as usize
}

/// Bucket of an item among `buckets` (a power of two ≤ [`PARTS`]).
pub(crate) fn bucket_of(item: Item, buckets: usize) -> usize {
    part_of(item) / (PARTS / buckets)
}

/// Batch of an item among `1 << kbits` (at most [`MAX_BATCH_BITS`]): the
/// bits of [`mix`] right below [`part_of`]'s, so that the batches split
/// every bucket evenly and both parties put a key in the same batch.
pub(crate) fn batch_of(item: Item, kbits: u32) -> usize {
    debug_assert!(kbits <= MAX_BATCH_BITS);
    if kbits == 0 {
        0
    } else {
        ((mix(item) >> (56 - kbits)) as usize) & ((1 << kbits) - 1)
    }
}

/// The most batches per bucket: `1 << MAX_BATCH_BITS`.
pub(crate) const MAX_BATCH_BITS: u32 = 8;

/// Collects rows; spills to disk past the budget.
pub(crate) struct Store {
    budget: u64,
    tmp_dir: PathBuf,
    mem: Rows,
    spill: Option<Spill>,
    rows: u64,
    bytes: u64,
    /// Size of the input file, for [`Store::append`]'s row estimate.
    file_len: u64,
    /// Input bytes behind the rows appended so far.
    consumed: u64,
}

struct Spill {
    dir: tempfile::TempDir,
    writers: Vec<BufWriter<File>>,
}

impl Store {
    pub(crate) fn new(budget: u64, tmp_dir: &Path) -> Self {
        Store {
            budget,
            tmp_dir: tmp_dir.to_path_buf(),
            mem: Rows::default(),
            spill: None,
            rows: 0,
            bytes: 0,
            file_len: 0,
            consumed: 0,
        }
    }

    /// Reserves the row arena for an input file of `file_len` bytes when it
    /// will fit the budget: rows and their keys take at most twice the file,
    /// and growing a multi-gigabyte arena by doubling would copy it each time.
    /// Reserved but untouched capacity costs address space, not memory.
    pub(crate) fn reserve_for(&mut self, file_len: u64) {
        self.file_len = file_len;
        let want = file_len.saturating_mul(2);
        if want < self.budget / 2 {
            self.mem.arena.reserve(want as usize);
        }
    }

    pub(crate) fn push(&mut self, item: Item, raw: &[u8], key: &[u8]) -> Result<(), PsiError> {
        self.rows += 1;
        self.bytes += raw.len() as u64 + key.len() as u64 + 32 + PROTOCOL_BYTES_PER_ROW;
        if let Some(sp) = &mut self.spill {
            return sp.write(item, raw, key);
        }
        self.mem.push(item, raw, key);
        if self.mem.footprint() > self.budget {
            self.start_spill()?;
        }
        Ok(())
    }

    fn start_spill(&mut self) -> Result<(), PsiError> {
        std::fs::create_dir_all(&self.tmp_dir).map_err(|e| PsiError::io(&self.tmp_dir, e))?;
        let dir = tempfile::Builder::new()
            .prefix("venn-psi-")
            .tempdir_in(&self.tmp_dir)
            .map_err(|e| PsiError::io(&self.tmp_dir, e))?;
        let mut writers = Vec::with_capacity(PARTS);
        for p in 0..PARTS {
            let path = dir.path().join(format!("part-{p:03}"));
            let f = File::create(&path).map_err(|e| PsiError::io(&path, e))?;
            writers.push(BufWriter::with_capacity(64 << 10, f));
        }
        let mut sp = Spill { dir, writers };
        for i in 0..self.mem.len() {
            sp.write(self.mem.items[i], self.mem.raw(i), self.mem.key(i))?;
        }
        self.mem.clear();
        self.mem = Rows::default();
        self.spill = Some(sp);
        Ok(())
    }

    /// The in-memory rows, for a block of text read straight into their
    /// arena and parsed in place ([`Rows::grow`]), or `None` once the rows
    /// spill to disk. Call [`Store::reserve_rows`] before growing them and
    /// [`Store::added_direct`] after.
    pub(crate) fn direct(&mut self) -> Option<&mut Rows> {
        self.spill.is_none().then_some(&mut self.mem)
    }

    /// Accounts for `rows` rows added through [`Store::direct`] from
    /// `text_len` bytes of input (their arena bytes included in `arena`),
    /// and spills if the rows no longer fit the budget.
    pub(crate) fn added_direct(
        &mut self,
        rows: usize,
        text_len: u64,
        arena: u64,
    ) -> Result<(), PsiError> {
        self.account(rows, text_len, arena);
        if self.mem.footprint() > self.budget {
            self.start_spill()?;
        }
        Ok(())
    }

    /// Counts `rows` rows from `text_len` bytes of input, holding `arena`
    /// bytes of text.
    fn account(&mut self, rows: usize, text_len: u64, arena: u64) {
        self.consumed += text_len;
        self.rows += rows as u64;
        self.bytes += arena + rows as u64 * (32 + PROTOCOL_BYTES_PER_ROW);
    }

    /// Reserves the in-memory row vectors for `incoming` more rows, from
    /// `text_len` more bytes of the input.
    ///
    /// They are reserved for the whole file from the rows per input byte
    /// seen so far (plus 1/16), not grown by doubling: at 2^20 rows doubling
    /// copied 32 MB and faulted in twice the pages, ~10% of a run.
    pub(crate) fn reserve_rows(&mut self, incoming: usize, text_len: u64) {
        let have = self.mem.items.len() + incoming;
        let cap = self.mem.items.capacity();
        let (rows, consumed) = (self.rows + incoming as u64, self.consumed + text_len);
        // With no file size (reserve_for not called) Vec's own doubling applies.
        if have > cap && self.file_len > 0 && consumed > 0 {
            let est = rows_in_file(rows, consumed, self.file_len);
            // at least 1.5× when an estimate fell short (longer lines at the
            // start of the file than later): never a reallocation per append
            let want = est.max(have).max(cap + cap / 2);
            // only while the estimate fits the budget (it would spill otherwise)
            if (want as u64).saturating_mul(32 + PROTOCOL_BYTES_PER_ROW) < self.budget {
                self.mem.items.reserve_exact(want - self.mem.items.len());
                self.mem.recs.reserve_exact(want - self.mem.recs.len());
            }
        }
    }

    /// Adds rows parsed elsewhere from `text_len` bytes of the input, in
    /// order: one copy of their arena instead of a push per row.
    pub(crate) fn append(&mut self, rows: &Rows, text_len: u64) -> Result<(), PsiError> {
        if self.spill.is_none() {
            self.reserve_rows(rows.len(), text_len);
        }
        self.account(rows.len(), text_len, rows.arena.len() as u64);
        if let Some(sp) = &mut self.spill {
            for i in 0..rows.len() {
                sp.write(rows.items[i], rows.raw(i), rows.key(i))?;
            }
            return Ok(());
        }
        let base = self.mem.arena.len() as u64;
        self.mem.arena.extend_from_slice(&rows.arena);
        self.mem.raw_not_key |= rows.raw_not_key;
        self.mem.items.extend_from_slice(&rows.items);
        self.mem
            .recs
            .extend(rows.recs.iter().map(|r| r.shifted(base)));
        if self.mem.footprint() > self.budget {
            self.start_spill()?;
        }
        Ok(())
    }

    /// Takes the rows of a file of keys read without its text (the
    /// session's `read_keys_only`): their `items` in file order, read from
    /// `text_len` bytes of input. The text is accounted as if it were kept,
    /// so that the bucket count is the one a full read of the file gives.
    pub(crate) fn keys_only(&mut self, items: Vec<Item>, text_len: u64) {
        debug_assert!(self.mem.len() == 0 && self.spill.is_none());
        let n = items.len();
        self.account(n, text_len, text_len);
        self.mem = Rows {
            items,
            without_text: Some(n),
            ..Rows::default()
        };
    }

    /// Stops accepting rows; flushes spill files.
    pub(crate) fn finish(mut self) -> Result<Loaded, PsiError> {
        if let Some(sp) = &mut self.spill {
            for w in &mut sp.writers {
                w.flush().map_err(|e| PsiError::io(sp.dir.path(), e))?;
            }
        }
        // buckets this party needs so that one bucket fits the budget
        let need = self.bytes.div_ceil(self.budget.max(1)).max(1);
        let need = (need as usize).next_power_of_two().min(PARTS);
        let need = if self.spill.is_some() {
            need.max(2)
        } else {
            need
        };
        Ok(Loaded {
            rows: self.rows,
            need_buckets: need,
            mem: if self.spill.is_none() {
                Some(self.mem)
            } else {
                None
            },
            spill: self.spill.map(|s| s.dir),
        })
    }
}

/// The rows a file of `file_len` bytes holds, estimated from the `rows`
/// found in its first `consumed` bytes (> 0), plus 1/16: what a reader
/// reserves for the whole file instead of growing by doubling.
pub(crate) fn rows_in_file(rows: u64, consumed: u64, file_len: u64) -> usize {
    (rows as f64 * file_len.max(consumed) as f64 / consumed as f64 * (1.0 + 1.0 / 16.0)) as usize
}

impl Spill {
    fn write(&mut self, item: Item, raw: &[u8], key: &[u8]) -> Result<(), PsiError> {
        let w = &mut self.writers[part_of(item)];
        let mut head = [0u8; 24];
        head[..16].copy_from_slice(&item.to_le_bytes());
        head[16..20].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        head[20..].copy_from_slice(&(key.len() as u32).to_le_bytes());
        let res = w
            .write_all(&head)
            .and_then(|_| w.write_all(raw))
            .and_then(|_| w.write_all(key));
        res.map_err(|e| PsiError::io(self.dir.path(), e))
    }
}

/// All of a party's rows after reading.
pub(crate) struct Loaded {
    pub(crate) rows: u64,
    pub(crate) need_buckets: usize,
    mem: Option<Rows>,
    spill: Option<tempfile::TempDir>,
}

/// One bucket's rows, and which of them belong to it.
pub(crate) struct BucketRows<'a> {
    rows: RowsOf<'a>,
    /// Indices (into [`Self::rows`]) of the rows in this bucket, in file
    /// order; `None` when the bucket is every row in order (row k is
    /// `items[k]`): no identity list, 4 bytes a row less at the grouping's
    /// peak.
    pub(crate) idx: Option<Vec<u32>>,
    /// `items[k]` is the item of row `idx[k]`. Taken out of the rows (not
    /// copied) when the bucket is all of them: the engine drops the items
    /// once it has grouped them, 16 bytes per row less at the protocol's peak.
    pub(crate) items: Vec<Item>,
}

enum RowsOf<'a> {
    /// A view of the in-memory rows.
    View(&'a Rows),
    /// Rows loaded from spill files.
    Owned(Rows),
}

impl BucketRows<'_> {
    /// The row of `items[k]` ([`Self::idx`]).
    #[cfg(test)]
    pub(crate) fn row(&self, k: usize) -> u32 {
        self.idx.as_ref().map_or(k as u32, |idx| idx[k])
    }

    pub(crate) fn rows(&self) -> &Rows {
        match &self.rows {
            RowsOf::View(r) => r,
            RowsOf::Owned(r) => r,
        }
    }
}

impl Loaded {
    /// Whether the rows are in memory (not spilled).
    pub(crate) fn in_memory(&self) -> bool {
        self.mem.is_some()
    }

    /// Puts back the items that `bucket(0, 1)` moved out (work done ahead
    /// for one bucket, undone when the run needs more), in row order.
    pub(crate) fn restore_items(&mut self, items: Vec<Item>) {
        if let Some(mem) = &mut self.mem {
            debug_assert_eq!(items.len(), mem.len());
            mem.items = items;
        }
    }

    /// Whether every row can be written from its item: the rows are in
    /// memory and nothing but their keys ([`Rows::rows_are_keys`]).
    pub(crate) fn rows_are_keys(&self) -> bool {
        self.mem.as_ref().is_some_and(Rows::rows_are_keys)
    }

    /// Whether the rows have their text: spilled rows always do; rows in
    /// memory unless it was dropped or never read ([`Rows::has_text`]).
    pub(crate) fn has_text(&self) -> bool {
        self.mem.as_ref().is_none_or(Rows::has_text)
    }

    /// Frees the in-memory rows' text ([`Rows::drop_text`]).
    pub(crate) fn drop_text(&mut self) {
        if let Some(mem) = &mut self.mem {
            mem.drop_text();
        }
    }

    /// Rows of bucket `b` out of `buckets`. With one bucket in memory the
    /// rows' items move into the result: ask for it once.
    pub(crate) fn bucket(&mut self, b: usize, buckets: usize) -> Result<BucketRows<'_>, PsiError> {
        if let Some(mem) = &mut self.mem {
            if buckets == 1 {
                let items = std::mem::take(&mut mem.items);
                return Ok(BucketRows {
                    idx: None,
                    items,
                    rows: RowsOf::View(mem),
                });
            }
            let idx: Vec<u32> = (0..mem.len() as u32)
                .filter(|&i| bucket_of(mem.items[i as usize], buckets) == b)
                .collect();
            let items = idx.iter().map(|&i| mem.items[i as usize]).collect();
            return Ok(BucketRows {
                idx: Some(idx),
                items,
                rows: RowsOf::View(mem),
            });
        }
        let dir = self.spill.as_ref().expect("rows are in memory or spilled");
        let per = PARTS / buckets;
        let mut rows = Rows::default();
        for p in b * per..(b + 1) * per {
            let path = dir.path().join(format!("part-{p:03}"));
            read_part(&path, &mut rows)?;
        }
        let items = std::mem::take(&mut rows.items);
        Ok(BucketRows {
            idx: None,
            items,
            rows: RowsOf::Owned(rows),
        })
    }
}

fn read_part(path: &Path, rows: &mut Rows) -> Result<(), PsiError> {
    let f = File::open(path).map_err(|e| PsiError::io(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).map_err(|e| PsiError::io(path, e))?;
    let mut i = 0;
    let corrupt = || {
        PsiError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "spill file is truncated"),
        )
    };
    while i < buf.len() {
        let head = buf.get(i..i + 24).ok_or_else(corrupt)?;
        let item = u128::from_le_bytes(head[..16].try_into().expect("16"));
        let raw_len = u32::from_le_bytes(head[16..20].try_into().expect("4")) as usize;
        let key_len = u32::from_le_bytes(head[20..].try_into().expect("4")) as usize;
        i += 24;
        let raw = buf.get(i..i + raw_len).ok_or_else(corrupt)?;
        let key = buf
            .get(i + raw_len..i + raw_len + key_len)
            .ok_or_else(corrupt)?;
        rows.push(item, raw, key);
        i += raw_len + key_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::item_of;

    #[test]
    fn spilled_buckets_hold_every_row_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Store::new(1 << 20, tmp.path());
        let n = 20_000;
        for i in 0..n {
            let key = format!("key{i}");
            let raw = format!("{key},payload{i}");
            s.push(item_of(key.as_bytes()), raw.as_bytes(), key.as_bytes())
                .unwrap();
        }
        let mut loaded = s.finish().unwrap();
        assert!(loaded.mem.is_none(), "20k rows of ~160 B must exceed 1 MiB");
        let b = loaded.need_buckets;
        assert!(b >= 2);
        let mut seen = std::collections::HashSet::new();
        for k in 0..b {
            let br = loaded.bucket(k, b).unwrap();
            for (j, &item) in br.items.iter().enumerate() {
                let i = br.row(j);
                let rows = br.rows();
                let key = rows.key(i as usize).to_vec();
                assert_eq!(item, item_of(&key));
                assert_eq!(bucket_of(item_of(&key), b), k);
                assert!(rows.raw(i as usize).starts_with(&key));
                assert!(seen.insert(key));
            }
        }
        assert_eq!(seen.len(), n);
    }

    /// Rows whose key lies inside the record and rows whose key is stored
    /// after it, parsed in two pieces and appended: every row gives back its
    /// own record, key and item, in one bucket and in four.
    #[test]
    fn keys_inside_records_survive_append_and_buckets() {
        let tmp = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        let mut s = Store::new(1 << 30, tmp.path());
        s.reserve_for(1 << 16);
        for piece in 0..2 {
            let mut rows = Rows::default();
            rows.reserve(4, 16); // grows past its capacity
            let mut text_len = 0;
            for i in 0..500 {
                let id = format!("{piece}-{i:04}");
                let raw = format!("x{i},{id},tail");
                text_len += raw.len() as u64 + 1;
                let item = item_of(id.as_bytes());
                if i % 3 == 0 {
                    // a normalised key: stored after the record
                    let key = id.to_uppercase();
                    rows.push(item, raw.as_bytes(), key.as_bytes());
                    want.push((raw, key, item));
                } else {
                    let at = raw.find(',').unwrap() + 1;
                    rows.push_key_in_raw(item, raw.as_bytes(), at, id.len());
                    want.push((raw, id, item));
                }
            }
            s.append(&rows, text_len).unwrap();
        }
        let loaded = s.finish().unwrap();
        assert!(loaded.mem.is_some());
        for buckets in [4, 1] {
            let mut loaded = Loaded {
                rows: loaded.rows,
                need_buckets: 1,
                mem: loaded.mem.as_ref().map(|m| Rows {
                    items: m.items.clone(),
                    recs: m.recs.clone(),
                    arena: m.arena.clone(),
                    raw_not_key: m.raw_not_key,
                    without_text: None,
                }),
                spill: None,
            };
            let mut seen = 0;
            for b in 0..buckets {
                let br = loaded.bucket(b, buckets).unwrap();
                for (j, &item) in br.items.iter().enumerate() {
                    let i = br.row(j);
                    let (raw, key, it) = &want[i as usize];
                    assert_eq!(br.rows().raw(i as usize), raw.as_bytes());
                    assert_eq!(br.rows().key(i as usize), key.as_bytes());
                    assert_eq!(item, *it);
                    assert_eq!(bucket_of(item, buckets), b);
                    seen += 1;
                }
            }
            assert_eq!(seen, want.len());
        }
    }
}
