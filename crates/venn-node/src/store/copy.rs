//! `venn store copy`: every row of one store into another, empty one (SQLite → MySQL/PostgreSQL,
//! or any other pair).
//!
//! Both schemas are brought up to date first, so they have the same tables and columns. Rows are
//! read table by table ([`TABLES`], parents before children) and written with the same column
//! names inside one transaction on the target: a failed copy leaves the target empty. Values
//! keep their kind (integer, text, …) as the source stored it. The PostgreSQL identity sequence
//! of `job_messages.id` is moved past the copied IDs so new messages do not collide.

use serde::Serialize;
use sqlx::any::{AnyRow, AnyTypeInfoKind};
use sqlx::{AssertSqlSafe, Column, Row, ValueRef as _};

use super::{Backend, Store, StoreError, StoreOptions, TABLES};
use crate::error::Result;

/// Rows copied per table.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The source, redacted.
    pub from: String,
    /// The target, redacted.
    pub to: String,
    /// `(table, rows)` in copy order.
    pub tables: Vec<(String, i64)>,
}

enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn read_row(row: &AnyRow) -> std::result::Result<Vec<Value>, sqlx::Error> {
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let kind = raw.type_info().kind();
        out.push(match kind {
            AnyTypeInfoKind::Bool => Value::Int(i64::from(row.try_get::<bool, _>(i)?)),
            AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                Value::Int(row.try_get(i)?)
            }
            AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => Value::Real(row.try_get(i)?),
            AnyTypeInfoKind::Blob => Value::Blob(row.try_get(i)?),
            _ => Value::Text(row.try_get(i)?),
        });
    }
    Ok(out)
}

async fn count(store: &Store, table: &str) -> std::result::Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&store.pool)
        .await?;
    Ok(n)
}

/// Copies every row of `from` into `to`, which must hold no rows; both are migrated first.
pub async fn copy(from: &StoreOptions, to: &StoreOptions) -> Result<CopyReport> {
    if from.url() == to.url() {
        return Err(StoreError::BadUrl {
            url: to.redacted(),
            reason: "--from and --to are the same database".into(),
        }
        .into());
    }
    let src = Store::open_with(from).await?;
    let dst = Store::open_with(to).await?;
    let q_src = |e| StoreError::Query {
        url: src.url(),
        source: e,
    };
    let q_dst = |e| StoreError::Query {
        url: dst.url(),
        source: e,
    };
    for &table in TABLES {
        let rows = count(&dst, table).await.map_err(q_dst)?;
        if rows > 0 {
            return Err(StoreError::TargetNotEmpty {
                url: dst.url(),
                table,
                rows,
            }
            .into());
        }
    }
    let mut tx = dst.pool.begin().await.map_err(q_dst)?;
    let mut report = Vec::new();
    for &table in TABLES {
        let rows: Vec<AnyRow> = sqlx::query(AssertSqlSafe(format!("SELECT * FROM {table}")))
            .fetch_all(&src.pool)
            .await
            .map_err(q_src)?;
        let Some(first) = rows.first() else {
            report.push((table.to_owned(), 0));
            continue;
        };
        let columns: Vec<String> = first
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let marks: Vec<String> = (1..=columns.len())
            .map(|i| match dst.backend() {
                Backend::Postgres => format!("${i}"),
                _ => "?".into(),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            marks.join(", ")
        );
        for row in &rows {
            let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
            for v in read_row(row).map_err(q_src)? {
                q = match v {
                    Value::Null => q.bind(None::<String>),
                    Value::Int(i) => q.bind(i),
                    Value::Real(f) => q.bind(f),
                    Value::Text(s) => q.bind(s),
                    Value::Blob(b) => q.bind(b),
                };
            }
            q.execute(&mut *tx).await.map_err(q_dst)?;
        }
        report.push((table.to_owned(), rows.len() as i64));
    }
    if dst.backend() == Backend::Postgres {
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('job_messages', 'id'), \
             COALESCE((SELECT MAX(id) FROM job_messages), 0) + 1, false)",
        )
        .execute(&mut *tx)
        .await
        .map_err(q_dst)?;
    }
    tx.commit().await.map_err(q_dst)?;
    let (from_url, to_url) = (src.url(), dst.url());
    src.close().await;
    dst.close().await;
    Ok(CopyReport {
        from: from_url,
        to: to_url,
        tables: report,
    })
}
