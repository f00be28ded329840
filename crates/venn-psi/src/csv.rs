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

use std::io::BufRead;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::PsiError;

/// Reads records one at a time from a buffered reader.
pub struct CsvReader<R> {
    rdr: R,
    path: PathBuf,
    next_line: u64,
    buf: Vec<u8>,
    unq: Vec<u8>,
    fields: Vec<Range<usize>>,
    quoted: bool,
    first: bool,
    record_line: u64,
}

impl<R: BufRead> CsvReader<R> {
    /// A reader over `rdr`; `path` is used in error messages.
    pub fn new(rdr: R, path: &Path) -> Self {
        CsvReader {
            rdr,
            path: path.to_path_buf(),
            next_line: 1,
            buf: Vec::with_capacity(1024),
            unq: Vec::new(),
            fields: Vec::with_capacity(16),
            quoted: false,
            first: true,
            record_line: 0,
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
            &self.buf[r]
        }
    }

    /// The current record's bytes as in the file, without its line terminator.
    pub fn raw(&self) -> &[u8] {
        &self.buf
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

    /// Advances to the next non-empty record. `Ok(false)` at the end of input.
    pub fn read(&mut self) -> Result<bool, PsiError> {
        loop {
            self.buf.clear();
            let n = self
                .rdr
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| PsiError::io(&self.path, e))?;
            if n == 0 {
                return Ok(false);
            }
            self.record_line = self.next_line;
            self.next_line += 1;
            if memchr::memchr(b'"', &self.buf).is_some() {
                // A quoted field may span lines: keep reading while the
                // number of quotes is odd.
                let mut quotes = memchr::memchr_iter(b'"', &self.buf).count();
                while quotes % 2 == 1 {
                    let start = self.buf.len();
                    let n = self
                        .rdr
                        .read_until(b'\n', &mut self.buf)
                        .map_err(|e| PsiError::io(&self.path, e))?;
                    if n == 0 {
                        return Err(self.error(
                            None,
                            "a quoted field is not closed before the end of the file; \
                             add the closing double quote",
                        ));
                    }
                    self.next_line += 1;
                    quotes += memchr::memchr_iter(b'"', &self.buf[start..]).count();
                }
            }
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
            }
            if self.first {
                self.first = false;
                if self.buf.starts_with(b"\xEF\xBB\xBF") {
                    self.buf.drain(..3);
                }
            }
            if self.buf.is_empty() {
                continue;
            }
            self.split()?;
            return Ok(true);
        }
    }

    fn split(&mut self) -> Result<(), PsiError> {
        self.fields.clear();
        if memchr::memchr(b'"', &self.buf).is_none() {
            self.quoted = false;
            let mut start = 0;
            for comma in memchr::memchr_iter(b',', &self.buf) {
                self.fields.push(start..comma);
                start = comma + 1;
            }
            self.fields.push(start..self.buf.len());
            return Ok(());
        }
        self.quoted = true;
        self.unq.clear();
        let b = &self.buf;
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
