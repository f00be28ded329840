//! A streaming CSV reader that keeps every record's raw bytes.
//!
//! Why our own reader and not the `csv` crate: the engine copies a party's
//! rows to its output byte for byte (no re-quoting, no float reformatting), so
//! it needs each record's exact bytes next to its parsed key fields, and it
//! wants the line number for every error. The grammar is RFC 4180: fields
//! separated by `,`, records by LF or CRLF, a field in double quotes may hold
//! commas, CR/LF and doubled quotes (`""`). On top of that: a UTF-8 byte order
//! mark before the header is dropped, and empty lines are skipped anywhere.
//!
//! Records without a quote character (the common case) are split with
//! `memchr`; only quoted records go through the unquoting state machine.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::PsiError;

/// Reads records one at a time.
///
/// The reader keeps a large buffer of the file and hands out records as
/// slices of it: a record is copied only when it straddles the end of the
/// buffer (the tail is moved to the front before the next refill).
pub struct CsvReader<R> {
    rdr: R,
    path: PathBuf,
    next_line: u64,
    data: Vec<u8>,
    /// Start of unread data in `data`.
    pos: usize,
    /// End of valid data in `data`.
    end: usize,
    eof: bool,
    /// The current record (without its terminator) within `data`.
    rec: Range<usize>,
    unq: Vec<u8>,
    fields: Vec<Range<usize>>,
    quoted: bool,
    first: bool,
    record_line: u64,
}

const BUF: usize = 4 << 20;

impl<R: Read> CsvReader<R> {
    /// A reader over `rdr`; `path` is used in error messages.
    pub fn new(rdr: R, path: &Path) -> Self {
        Self::with_buffer(rdr, path, BUF)
    }

    /// A reader whose buffer starts at `size` bytes (it grows for a longer
    /// record). For reading a header and handing the rest of the file on
    /// ([`CsvReader::into_rest`]): a first read of 4 MiB would fault in 4
    /// MiB of buffer and copy it again into the rest's head, on the way to
    /// the first row (~2k fresh pages, ~5 ms here).
    pub fn with_buffer(rdr: R, path: &Path, size: usize) -> Self {
        CsvReader {
            rdr,
            path: path.to_path_buf(),
            next_line: 1,
            data: vec![0; size.max(1)],
            pos: 0,
            end: 0,
            eof: false,
            rec: 0..0,
            unq: Vec::new(),
            fields: Vec::with_capacity(16),
            quoted: false,
            first: true,
            record_line: 0,
        }
    }

    /// A reader that continues a file at line `next_line`, past its header
    /// (no byte order mark is looked for).
    pub fn resume(rdr: R, path: &Path, next_line: u64) -> Self {
        let mut r = CsvReader::new(rdr, path);
        r.next_line = next_line;
        r.first = false;
        r
    }

    /// Stops reading records: the bytes buffered but not yet read, the
    /// underlying reader positioned after them, and the next line number.
    pub fn into_rest(self) -> Rest<R> {
        Rest {
            head: self.data[self.pos..self.end].to_vec(),
            rdr: self.rdr,
            path: self.path,
            next_line: self.next_line,
            eof: self.eof,
        }
    }

    /// The file name used in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Line number (1-based) where the current record starts.
    pub fn line(&self) -> u64 {
        self.record_line
    }

    /// Number of fields of the current record.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the current record has no fields (never true after a successful read).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i` of the current record, unquoted.
    pub fn field(&self, i: usize) -> &[u8] {
        let r = self.fields[i].clone();
        if self.quoted {
            &self.unq[r]
        } else {
            &self.data[r]
        }
    }

    /// The current record's bytes as in the file, without its line terminator.
    pub fn raw(&self) -> &[u8] {
        &self.data[self.rec.clone()]
    }

    /// An input error at the current record.
    pub fn error(&self, column: Option<&str>, message: impl Into<String>) -> PsiError {
        PsiError::Input {
            path: self.path.clone(),
            line: self.record_line,
            column: column.map(str::to_owned),
            message: message.into(),
        }
    }

    /// Moves unread bytes to the front and reads more; false at end of input.
    fn refill(&mut self) -> Result<bool, PsiError> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.data.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.data.len() {
            // one record longer than the buffer: grow
            let n = self.data.len() * 2;
            self.data.resize(n, 0);
        }
        loop {
            match self.rdr.read(&mut self.data[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PsiError::io(&self.path, e)),
            }
        }
    }

    /// Advances to the next non-empty record. `Ok(false)` at the end of input.
    pub fn read(&mut self) -> Result<bool, PsiError> {
        loop {
            let (stop, next, lines) = loop {
                match record_end(&self.data[self.pos..self.end], self.eof) {
                    Scan::Done {
                        len,
                        lines,
                        terminated,
                    } => {
                        let stop = self.pos + len;
                        break (stop, stop + terminated as usize, lines);
                    }
                    Scan::Unclosed => {
                        self.record_line = self.next_line;
                        return Err(self.error(
                            None,
                            "a quoted field is not closed before the end of the file; \
                             add the closing double quote",
                        ));
                    }
                    Scan::Empty => return Ok(false),
                    Scan::NeedMore => {
                        self.refill()?;
                    }
                }
            };
            let start = self.pos;
            self.record_line = self.next_line;
            self.next_line += lines;
            self.pos = next;
            let mut e = stop;
            if e > start && self.data[e - 1] == b'\r' {
                e -= 1;
            }
            let mut s0 = start;
            if self.first {
                self.first = false;
                if self.data[s0..e].starts_with(b"\xEF\xBB\xBF") {
                    s0 += 3;
                }
            }
            if s0 == e {
                continue;
            }
            self.rec = s0..e;
            self.split()?;
            return Ok(true);
        }
    }

    fn split(&mut self) -> Result<(), PsiError> {
        self.fields.clear();
        let base = self.rec.start;
        let b = &self.data[self.rec.clone()];
        if memchr::memchr(b'"', b).is_none() {
            self.quoted = false;
            let mut start = base;
            for comma in memchr::memchr_iter(b',', b) {
                self.fields.push(start..base + comma);
                start = base + comma + 1;
            }
            self.fields.push(start..self.rec.end);
            return Ok(());
        }
        self.quoted = true;
        self.unq.clear();
        let mut i = 0;
        loop {
            // at the start of a field
            let start = self.unq.len();
            if b.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match b.get(i) {
                        None => {
                            return Err(PsiError::Input {
                                path: self.path.clone(),
                                line: self.record_line,
                                column: None,
                                message: format!(
                                    "field {} has an unclosed quote",
                                    self.fields.len() + 1
                                ),
                            });
                        }
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                            self.unq.push(b'"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            self.unq.push(c);
                            i += 1;
                        }
                    }
                }
                match b.get(i) {
                    None | Some(b',') => {}
                    Some(_) => {
                        return Err(PsiError::Input {
                            path: self.path.clone(),
                            line: self.record_line,
                            column: None,
                            message: format!(
                                "field {} has text after its closing quote; quote the whole \
                                 field and double any quote inside it (\"\")",
                                self.fields.len() + 1
                            ),
                        });
                    }
                }
            } else {
                // unquoted field: up to the next comma; a stray quote inside
                // is taken literally, as most CSV writers do.
                let end = memchr::memchr(b',', &b[i..]).map_or(b.len(), |p| i + p);
                self.unq.extend_from_slice(&b[i..end]);
                i = end;
            }
            self.fields.push(start..self.unq.len());
            if i >= b.len() {
                break;
            }
            // b[i] == ','
            i += 1;
            if i == b.len() {
                self.fields.push(self.unq.len()..self.unq.len());
                break;
            }
        }
        Ok(())
    }
}

/// The unread part of a file, see [`CsvReader::into_rest`].
pub struct Rest<R> {
    head: Vec<u8>,
    rdr: R,
    path: PathBuf,
    next_line: u64,
    eof: bool,
}

/// What [`Blocks::next_into`] yields.
pub enum Block<R> {
    /// Whole lines without a double quote anywhere: every line is one record,
    /// so the block can be cut at any newline and parsed in parallel
    /// ([`plain_records`]). The block is `buf[start..]` of the buffer given
    /// to [`Blocks::next_into`]; `first_line` is the line number of its
    /// first byte.
    Plain { first_line: u64, start: usize },
    /// The file has a quote from here on (a quoted field may span lines):
    /// the rest must be read record by record with this reader.
    Quoted(CsvReader<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>),
}

/// Splits the body of a file into blocks of about `size` bytes of whole lines.
///
/// Why: one thread parsing records tops out near 100 MB/s, and a 2^24-row file
/// is 300+ MB. Quote-free text (nearly every key file) has one record per
/// line, so blocks of lines can be parsed by all cores; the first block with a
/// quote hands the rest of the file to the sequential RFC 4180 reader.
///
/// Each block is read onto the end of a buffer the caller owns: the engine
/// passes the arena its rows live in, so a row's text is read from the page
/// cache once and never copied again (see `session::read_input`).
pub struct Blocks<R> {
    rest: Option<Rest<R>>,
    size: usize,
}

impl<R: Read> Blocks<R> {
    pub fn new(rest: Rest<R>, size: usize) -> Self {
        Blocks {
            rest: Some(rest),
            size: size.max(1),
        }
    }

    /// Reads the next block onto the end of `buf`, or returns `None` at the
    /// end of the file. A plain block is `buf[start..]`, whole lines only:
    /// the part of a line after the block's last newline is kept here and
    /// starts the next block. A quoted block leaves `buf` as it was.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Result<Option<Block<R>>, PsiError> {
        let Some(mut r) = self.rest.take() else {
            return Ok(None);
        };
        let start = buf.len();
        buf.extend_from_slice(&r.head);
        r.head.clear();
        // read until the block holds `size` bytes and a newline, or the file ends
        while !r.eof
            && (buf.len() - start < self.size || memchr::memchr(b'\n', &buf[start..]).is_none())
        {
            let want = self.size.max((buf.len() - start) / 2).max(1 << 16);
            // read_to_end fills spare capacity without zeroing it first
            buf.reserve(want);
            let n = (&mut r.rdr)
                .take(want as u64)
                .read_to_end(buf)
                .map_err(|e| PsiError::io(&r.path, e))?;
            if n < want {
                r.eof = true;
            }
        }
        if buf.len() == start {
            return Ok(None);
        }
        let cut = if r.eof {
            buf.len()
        } else {
            memchr::memrchr(b'\n', &buf[start..]).expect("the loop reads until a newline")
                + start
                + 1
        };
        if memchr::memchr(b'"', &buf[start..cut]).is_some() {
            let bytes = buf[start..].to_vec();
            buf.truncate(start);
            let rdr = std::io::Cursor::new(bytes).chain(r.rdr);
            return Ok(Some(Block::Quoted(CsvReader::resume(
                rdr,
                &r.path,
                r.next_line,
            ))));
        }
        r.head.extend_from_slice(&buf[cut..]);
        buf.truncate(cut);
        let first_line = r.next_line;
        r.next_line += memchr::memchr_iter(b'\n', &buf[start..]).count() as u64;
        if !(r.eof && r.head.is_empty()) {
            self.rest = Some(r);
        }
        Ok(Some(Block::Plain { first_line, start }))
    }
}

/// Calls `f(line, at, raw, fields)` for each non-empty line of quote-free
/// text, `line` counted from 1 at the start of `text`; `raw` is the line
/// without its CR LF or LF, `text[at..at + raw.len()]`, and `fields` are
/// ranges of `raw`. Stops at the first error.
pub fn plain_records<E>(
    text: &[u8],
    mut f: impl FnMut(u64, usize, &[u8], &[Range<usize>]) -> Result<(), E>,
) -> Result<(), E> {
    // One scan for commas and newlines over the whole text (not two short
    // scans per line): lines of ~20 bytes made the per-call set-up of
    // `memchr` a fifth of the parse.
    let mut fields: Vec<Range<usize>> = Vec::with_capacity(16);
    let mut line = 0u64;
    let mut rec_start = 0usize;
    let mut field_start = 0usize;
    let mut emit = |line: u64,
                    rec_start: usize,
                    field_start: usize,
                    end: usize,
                    fields: &mut Vec<Range<usize>>| {
        let mut rec = &text[rec_start..end];
        if let [head @ .., b'\r'] = rec {
            rec = head;
        }
        if rec.is_empty() {
            fields.clear();
            return Ok(());
        }
        // the last field ends with the record (its CR, if any, removed)
        fields.push(field_start - rec_start..rec.len());
        let r = f(line, rec_start, rec, fields);
        fields.clear();
        r
    };
    for pos in memchr::memchr2_iter(b',', b'\n', text) {
        if text[pos] == b',' {
            fields.push(field_start - rec_start..pos - rec_start);
            field_start = pos + 1;
            continue;
        }
        line += 1;
        emit(line, rec_start, field_start, pos, &mut fields)?;
        rec_start = pos + 1;
        field_start = pos + 1;
    }
    if rec_start < text.len() {
        emit(line + 1, rec_start, field_start, text.len(), &mut fields)?;
    }
    Ok(())
}

/// Cuts `text` into about `parts` pieces, each ending with a newline (the
/// last one at the end of `text`).
pub fn split_lines(text: &[u8], parts: usize) -> Vec<&[u8]> {
    let step = text.len().div_ceil(parts.max(1)).max(1);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    while start < text.len() {
        let target = (start + step).min(text.len());
        let end = if target == text.len() {
            target
        } else {
            memchr::memchr(b'\n', &text[target - 1..]).map_or(text.len(), |n| target + n)
        };
        out.push(&text[start..end]);
        start = end;
    }
    out
}

enum Scan {
    /// The record is `len` bytes, then a newline if `terminated`; it spans `lines` lines.
    Done {
        len: usize,
        lines: u64,
        terminated: bool,
    },
    /// More input is needed to find the end.
    NeedMore,
    /// End of input inside a quoted field.
    Unclosed,
    /// No input left.
    Empty,
}

/// Finds where the record at the start of `buf` ends. A double quote opens a
/// quoted field only at the start of a field (elsewhere it is a literal
/// character), so a stray quote in an unquoted field never swallows lines.
fn record_end(buf: &[u8], eof: bool) -> Scan {
    if buf.is_empty() {
        return if eof { Scan::Empty } else { Scan::NeedMore };
    }
    let nl = memchr::memchr(b'\n', buf);
    let line_end = nl.unwrap_or(buf.len());
    if memchr::memchr(b'"', &buf[..line_end]).is_none() {
        return match nl {
            Some(n) => Scan::Done {
                len: n,
                lines: 1,
                terminated: true,
            },
            None if eof => Scan::Done {
                len: buf.len(),
                lines: 1,
                terminated: false,
            },
            None => Scan::NeedMore,
        };
    }
    let (mut i, mut lines, mut field_start, mut inq) = (0usize, 1u64, true, false);
    while i < buf.len() {
        let c = buf[i];
        if inq {
            if c == b'"' {
                match buf.get(i + 1) {
                    Some(b'"') => {
                        i += 2;
                        continue;
                    }
                    None if !eof => return Scan::NeedMore,
                    _ => inq = false,
                }
            } else if c == b'\n' {
                lines += 1;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' if field_start => {
                inq = true;
                field_start = false;
            }
            b',' => field_start = true,
            b'\n' => {
                return Scan::Done {
                    len: i,
                    lines,
                    terminated: true,
                };
            }
            _ => field_start = false,
        }
        i += 1;
    }
    if !eof {
        Scan::NeedMore
    } else if inq {
        Scan::Unclosed
    } else {
        Scan::Done {
            len: buf.len(),
            lines,
            terminated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Record = (u64, Vec<Vec<u8>>, Vec<u8>);

    fn records(text: &[u8]) -> Result<Vec<Record>, PsiError> {
        let mut r = CsvReader::new(text, Path::new("t.csv"));
        let mut out = Vec::new();
        while r.read()? {
            let fields = (0..r.len()).map(|i| r.field(i).to_vec()).collect();
            out.push((r.line(), fields, r.raw().to_vec()));
        }
        Ok(out)
    }

    fn f(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn plain_crlf_bom_and_empty_lines() {
        let r = records(b"\xEF\xBB\xBFid,x\r\n1,a\r\n\r\n2,\n\n").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1, f(&["id", "x"]));
        assert_eq!(r[1].1, f(&["1", "a"]));
        assert_eq!(r[1].2, b"1,a");
        assert_eq!(r[2].0, 4);
        assert_eq!(r[2].1, f(&["2", ""]));
    }

    #[test]
    fn quoted_fields() {
        let r =
            records(b"id,x\n\"a,b\",\"say \"\"hi\"\"\"\n\"multi\nline\",z\nlast,\"\"\n").unwrap();
        assert_eq!(r[1].1, f(&["a,b", "say \"hi\""]));
        assert_eq!(r[1].2, b"\"a,b\",\"say \"\"hi\"\"\"");
        assert_eq!(r[2].1, f(&["multi\nline", "z"]));
        assert_eq!(r[2].0, 3);
        assert_eq!(r[3].0, 5);
        assert_eq!(r[3].1, f(&["last", ""]));
    }

    #[test]
    fn trailing_comma_gives_empty_field() {
        let r = records(b"a,\"b\",\n").unwrap();
        assert_eq!(r[0].1, f(&["a", "b", ""]));
        let r = records(b"a,b,\n").unwrap();
        assert_eq!(r[0].1, f(&["a", "b", ""]));
    }

    #[test]
    fn bad_quotes_name_the_line() {
        let e = records(b"id\n\"open\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("not closed"), "{e}");
        let e = records(b"id\n\"a\"b\n").unwrap_err().to_string();
        assert!(
            e.contains("t.csv:2") && e.contains("after its closing quote"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    /// A reader that returns at most `n` bytes per call, to exercise refills.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_across_refills_and_a_last_line_without_newline() {
        let mut text = Vec::new();
        text.extend_from_slice(b"\xEF\xBB\xBFid,v\r\n");
        for i in 0..20_000 {
            text.extend_from_slice(format!("{i},\"x\n{i},\"\"q\"\"\"\r\n").as_bytes());
        }
        text.extend_from_slice(b"last,1");
        let mut r = CsvReader::new(Trickle(&text, 7777), Path::new("t.csv"));
        r.data = vec![0; 64]; // tiny buffer: records straddle it and it must grow
        assert!(r.read().unwrap());
        assert_eq!(r.field(0), b"id");
        for i in 0..20_000u64 {
            assert!(r.read().unwrap());
            assert_eq!(r.line(), 2 + 2 * i);
            assert_eq!(r.field(0), i.to_string().as_bytes());
            assert_eq!(r.field(1), format!("x\n{i},\"q\"").as_bytes());
        }
        assert!(r.read().unwrap());
        assert_eq!(r.raw(), b"last,1");
        assert!(!r.read().unwrap());
    }
}

#[cfg(test)]
mod stray_quote_tests {
    use super::*;

    #[test]
    fn a_quote_inside_an_unquoted_field_is_literal() {
        let mut r = CsvReader::new(&b"h,w\n5'11\",tall\nnext,row\n"[..], Path::new("t.csv"));
        assert!(r.read().unwrap());
        assert!(r.read().unwrap());
        assert_eq!(r.field(0), b"5'11\"");
        assert_eq!(r.line(), 2);
        assert!(r.read().unwrap());
        assert_eq!(r.field(0), b"next");
        assert_eq!(r.line(), 3);
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;
    use proptest::prelude::*;

    type Record = (u64, Vec<Vec<u8>>, Vec<u8>);

    /// Every record after the header, read sequentially.
    fn sequential(text: &[u8]) -> Vec<Record> {
        let mut r = CsvReader::new(text, Path::new("t.csv"));
        let mut out = Vec::new();
        assert!(r.read().unwrap());
        while r.read().unwrap() {
            let fields = (0..r.len()).map(|i| r.field(i).to_vec()).collect();
            out.push((r.line(), fields, r.raw().to_vec()));
        }
        out
    }

    /// The same records through `Blocks` of `size` bytes, each plain block
    /// cut into `parts` pieces as the engine does. `keep`: blocks pile up in
    /// one buffer (the engine's arena), else the buffer is emptied for each.
    fn blocked(text: &[u8], size: usize, parts: usize, keep: bool) -> Vec<Record> {
        let mut r = CsvReader::new(text, Path::new("t.csv"));
        assert!(r.read().unwrap());
        let mut blocks = Blocks::new(r.into_rest(), size);
        let mut out = Vec::new();
        let mut buf = b"prefix".to_vec();
        loop {
            if !keep {
                buf.clear();
            }
            let before = buf.clone();
            let Some(b) = blocks.next_into(&mut buf).unwrap() else {
                assert_eq!(buf, before, "the end of the file adds nothing");
                break;
            };
            match b {
                Block::Plain { first_line, start } => {
                    assert_eq!(&buf[..start], &before[..], "a block only appends");
                    let mut line0 = first_line;
                    for piece in split_lines(&buf[start..], parts) {
                        plain_records::<()>(piece, |line, at, raw, fields| {
                            assert_eq!(&piece[at..at + raw.len()], raw);
                            let f = fields.iter().map(|x| raw[x.clone()].to_vec()).collect();
                            out.push((line0 + line - 1, f, raw.to_vec()));
                            Ok(())
                        })
                        .unwrap();
                        line0 += memchr::memchr_iter(b'\n', piece).count() as u64;
                    }
                }
                Block::Quoted(mut r) => {
                    assert_eq!(buf, before, "a quoted block leaves the buffer alone");
                    while r.read().unwrap() {
                        let fields = (0..r.len()).map(|i| r.field(i).to_vec()).collect();
                        out.push((r.line(), fields, r.raw().to_vec()));
                    }
                }
            }
        }
        out
    }

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z0-9]{0,6}(,[a-z0-9]{0,6}){0,2}",
            1 => Just(String::new()),
            1 => Just("\"q,\nx\",\"\"\"\"".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn blocks_give_the_records_of_the_sequential_reader(
            lines in prop::collection::vec(line(), 0..60),
            crlf in any::<bool>(),
            last_newline in any::<bool>(),
            size in 1usize..64,
            parts in 1usize..6,
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = format!("\u{feff}h1,h2{nl}");
            for (i, l) in lines.iter().enumerate() {
                text.push_str(l);
                if i + 1 < lines.len() || last_newline {
                    text.push_str(nl);
                }
            }
            let want = sequential(text.as_bytes());
            prop_assert_eq!(&blocked(text.as_bytes(), size, parts, false), &want);
            prop_assert_eq!(&blocked(text.as_bytes(), size, parts, true), &want);
        }
    }

    #[test]
    fn pieces_end_at_newlines_and_cover_the_text() {
        let text = b"a\nbb\nccc\ndddd\n\ne";
        for parts in 1..8 {
            let pieces = split_lines(text, parts);
            assert_eq!(pieces.concat(), text.to_vec());
            for p in &pieces[..pieces.len() - 1] {
                assert!(p.ends_with(b"\n"));
            }
        }
    }
}
