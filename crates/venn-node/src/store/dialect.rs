//! The three SQL dialects, and the two rewrites that let every query be written once.
//!
//! Queries in the store are written in SQLite's dialect, which PostgreSQL shares except for
//! placeholders, and MySQL/MariaDB except for upserts:
//! - **PostgreSQL** wants `$1, $2, …` instead of `?`: [`numbered_placeholders`] rewrites them,
//!   skipping `'…'` literals, `"…"` and `` `…` `` identifiers and comments.
//! - **MySQL/MariaDB** has no `ON CONFLICT (k) DO UPDATE SET c = excluded.c`: [`mysql_upsert`]
//!   turns it into `ON DUPLICATE KEY UPDATE c = VALUES(c)` (`VALUES()` works on MariaDB and on
//!   MySQL 8, where the newer row-alias form does not work on MariaDB), and `DO NOTHING` into a
//!   no-op update of the first key column. MySQL applies it on *any* unique key, which is the same
//!   thing here: every venn table has its primary key as its only unique key.
//!
//! Everything else the store uses (keyset pagination, `CASE`, `COUNT(*)`, `LIMIT ?`) is common to
//! the three. Column types differ and live in the per-backend migration files.

use std::borrow::Cow;

/// Which database server a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite file (the default, in the data dir).
    Sqlite,
    /// MySQL or MariaDB.
    MySql,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend of a datastore URL, from its scheme.
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "mysql" | "mariadb" => Some(Self::MySql),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// Lower-case name, as in the migrations directory.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::MySql => "mysql",
            Self::Postgres => "postgres",
        }
    }

    /// Rewrites a query written in SQLite's dialect for this backend.
    pub(crate) fn rewrite(self, sql: &'static str) -> Cow<'static, str> {
        match self {
            Self::Sqlite => Cow::Borrowed(sql),
            Self::MySql => mysql_upsert(sql),
            Self::Postgres => numbered_placeholders(sql),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Replaces each `?` placeholder outside literals, quoted identifiers and comments by `$1`,
/// `$2`, … (PostgreSQL).
pub(crate) fn numbered_placeholders<'a>(sql: impl Into<Cow<'a, str>>) -> Cow<'a, str> {
    let sql = sql.into();
    if !sql.contains('?') {
        return sql;
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            '\'' | '"' | '`' => {
                // A doubled quote inside is an escaped quote: closing and reopening is the same.
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                out.push(chars.next().unwrap_or('*'));
                let mut prev = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Rewrites an `INSERT … ON CONFLICT (keys) DO UPDATE SET c = excluded.c, …` or
/// `… DO NOTHING` into MySQL's `ON DUPLICATE KEY UPDATE`. Other statements are returned as they
/// are.
pub(crate) fn mysql_upsert(sql: &str) -> Cow<'_, str> {
    let Some(at) = sql.find("ON CONFLICT (") else {
        return Cow::Borrowed(sql);
    };
    let head = &sql[..at];
    let rest = &sql[at + "ON CONFLICT (".len()..];
    let Some(close) = rest.find(')') else {
        return Cow::Borrowed(sql);
    };
    let first_key = rest[..close].split(',').next().unwrap_or("").trim();
    let tail = rest[close + 1..].trim_start();
    if tail.starts_with("DO NOTHING") {
        return Cow::Owned(format!(
            "{head}ON DUPLICATE KEY UPDATE {first_key} = {first_key}"
        ));
    }
    let Some(set) = tail.strip_prefix("DO UPDATE SET ") else {
        return Cow::Borrowed(sql);
    };
    let mut out = format!("{head}ON DUPLICATE KEY UPDATE ");
    let mut s = set;
    while let Some(i) = s.find("excluded.") {
        out.push_str(&s[..i]);
        let after = &s[i + "excluded.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        out.push_str("VALUES(");
        out.push_str(&after[..end]);
        out.push(')');
        s = &after[end..];
    }
    out.push_str(s);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(
            numbered_placeholders("SELECT * FROM t WHERE a = ? AND b > ? LIMIT ?"),
            "SELECT * FROM t WHERE a = $1 AND b > $2 LIMIT $3"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn placeholders_skip_literals_identifiers_and_comments() {
        assert_eq!(
            numbered_placeholders(
                "SELECT '?', 'it''s ?', \"a?\", `b?` FROM t -- what?\nWHERE x = ? /* ? */ AND y = ?"
            ),
            "SELECT '?', 'it''s ?', \"a?\", `b?` FROM t -- what?\nWHERE x = $1 /* ? */ AND y = $2"
        );
        // An unterminated literal keeps the rest as it is.
        assert_eq!(
            numbered_placeholders("a = ? AND b = '?"),
            "a = $1 AND b = '?"
        );
    }

    #[test]
    fn upserts_become_on_duplicate_key() {
        assert_eq!(
            mysql_upsert(
                "INSERT INTO d (k, a, b) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET \
                 a = excluded.a, b = excluded.b, n = n + 1"
            ),
            "INSERT INTO d (k, a, b) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE \
             a = VALUES(a), b = VALUES(b), n = n + 1"
        );
        assert_eq!(
            mysql_upsert("INSERT INTO t (j, k) VALUES (?, ?) ON CONFLICT (j, k) DO NOTHING"),
            "INSERT INTO t (j, k) VALUES (?, ?) ON DUPLICATE KEY UPDATE j = j"
        );
        let plain = "UPDATE t SET a = ? WHERE k = ?";
        assert!(matches!(mysql_upsert(plain), Cow::Borrowed(s) if s == plain));
    }

    #[test]
    fn backends_from_urls() {
        assert_eq!(
            Backend::from_url("sqlite:///x/venn.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("mysql://u:p@h:3306/venn"),
            Some(Backend::MySql)
        );
        assert_eq!(Backend::from_url("mariadb://h/venn"), Some(Backend::MySql));
        assert_eq!(
            Backend::from_url("postgresql://h/venn"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("redis://h"), None);
        assert_eq!(Backend::from_url("venn.db"), None);
    }
}
