//! The data catalogue's file-system rules: localfs roots, path confinement, header checks.
//!
//! Design decisions:
//! - **Confinement is checked twice.** A `relative_uri` is first checked lexically (relative,
//!   no `..`, no root or drive prefix), then the joined path is canonicalised and must still lie
//!   under the canonical root — which also refuses a symlink inside the source that points out
//!   of it.
//! - **Kuscia's container path.** Seed bodies name Kuscia's in-container storage directory
//!   `/home/kuscia/var/storage/data`. When that directory does not exist on this host, venn
//!   maps it to its own `<data dir>/data`, so Kuscia's documented calls work unchanged.
//!   A path that exists is always taken literally.
//! - **Header check.** A `table` DomainData must be a CSV file whose header contains every
//!   declared column (order free; extra file columns are allowed, jobs just cannot select them);
//!   the error lists the missing names. Only the first record is read.

use std::path::{Component, Path, PathBuf};

use crate::error::{NodeError, Result};

/// Kuscia's in-container default storage directory, accepted as an alias of `<data dir>/data`.
pub const KUSCIA_STORAGE_DIR: &str = "/home/kuscia/var/storage/data";

/// The ID of the data source that exists from the start.
pub const DEFAULT_DATASOURCE: &str = "default-data-source";

/// Resolves a localfs root given by an API call to an existing absolute directory.
pub fn resolve_localfs_root(path: &str, data_dir: &Path) -> Result<PathBuf> {
    let field = "info.localfs.path";
    if path.trim().is_empty() {
        return Err(NodeError::Invalid(format!("{field}: must not be empty")));
    }
    let p = Path::new(path);
    let candidate = if p.is_absolute() {
        if path.trim_end_matches('/') == KUSCIA_STORAGE_DIR && !p.exists() {
            data_dir.join("data")
        } else {
            p.to_path_buf()
        }
    } else {
        data_dir.join(p)
    };
    let canon = candidate.canonicalize().map_err(|e| {
        NodeError::Invalid(format!(
            "{field}: {} is not usable: {e}",
            candidate.display()
        ))
    })?;
    if !canon.is_dir() {
        return Err(NodeError::Invalid(format!(
            "{field}: {} is not a directory",
            canon.display()
        )));
    }
    Ok(canon)
}

/// Checks a `relative_uri` lexically: relative, no `..`, no root. Returns the cleaned path.
pub fn check_relative(uri: &str) -> Result<PathBuf> {
    let field = "relative_uri";
    if uri.is_empty() {
        return Err(NodeError::Invalid(format!("{field}: must not be empty")));
    }
    if uri.contains('\0') {
        return Err(NodeError::Invalid(format!("{field}: contains a NUL byte")));
    }
    let mut out = PathBuf::new();
    for c in Path::new(uri).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(NodeError::Invalid(format!(
                    "{field}: {uri:?} must not contain '..' (paths stay inside the data source)"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(NodeError::Invalid(format!(
                    "{field}: {uri:?} must be relative to the data source, not absolute"
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(NodeError::Invalid(format!(
            "{field}: {uri:?} names no file"
        )));
    }
    Ok(out)
}

/// Joins `uri` to `root` and checks the result stays inside `root` (following symlinks).
/// The file must exist.
pub fn confined_existing(root: &Path, uri: &str) -> Result<PathBuf> {
    let rel = check_relative(uri)?;
    let root = root.canonicalize().map_err(|e| {
        NodeError::Invalid(format!(
            "datasource: root {} is not usable: {e}",
            root.display()
        ))
    })?;
    let joined = root.join(&rel);
    let canon = joined.canonicalize().map_err(|_| {
        NodeError::Invalid(format!(
            "relative_uri: {uri:?} does not exist in the data source ({})",
            joined.display()
        ))
    })?;
    if !canon.starts_with(&root) {
        return Err(NodeError::Invalid(format!(
            "relative_uri: {uri:?} resolves outside the data source"
        )));
    }
    if !canon.is_file() {
        return Err(NodeError::Invalid(format!(
            "relative_uri: {uri:?} is not a file"
        )));
    }
    Ok(canon)
}

/// The column names of a CSV file's header (UTF-8 BOM and CRLF handled, quotes honoured).
pub fn csv_header(path: &Path) -> Result<Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| {
            NodeError::Invalid(format!("relative_uri: cannot read {}: {e}", path.display()))
        })?;
    let headers = rdr.headers().map_err(|e| {
        NodeError::Invalid(format!(
            "relative_uri: {} has no CSV header: {e}",
            path.display()
        ))
    })?;
    Ok(headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if i == 0 {
                h.trim_start_matches('\u{feff}').trim().to_owned()
            } else {
                h.trim().to_owned()
            }
        })
        .collect())
}

/// Checks that every declared column is in the file's header; the error lists the missing ones.
pub fn check_header(path: &Path, declared: &[String]) -> Result<()> {
    let header = csv_header(path)?;
    let missing: Vec<&str> = declared
        .iter()
        .filter(|c| !header.iter().any(|h| h == *c))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "columns: not in the header of {}: {} (header: {})",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            missing.join(", "),
            header.join(",")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_rules() {
        assert!(check_relative("a/b.csv").is_ok());
        assert!(check_relative("./a.csv").is_ok());
        for bad in ["", "../x", "a/../../x", "/etc/passwd", ".", "a/.."] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn confinement_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.csv"), "\u{feff}id,\"x y\"\r\n1,2\r\n").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        assert!(confined_existing(&root, "a.csv").is_ok());
        assert!(confined_existing(&root, "missing.csv").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("secret"), root.join("link")).unwrap();
            let e = confined_existing(&root, "link").unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
        }
        let p = root.join("a.csv");
        assert_eq!(csv_header(&p).unwrap(), vec!["id", "x y"]);
        check_header(&p, &["x y".into()]).unwrap();
        let e = check_header(&p, &["id".into(), "age".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("age"), "{e}");
    }

    #[test]
    fn kuscia_alias() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        if !Path::new(KUSCIA_STORAGE_DIR).exists() {
            assert_eq!(
                resolve_localfs_root(KUSCIA_STORAGE_DIR, d.path()).unwrap(),
                d.path().join("data").canonicalize().unwrap()
            );
        }
        assert!(resolve_localfs_root("/nonexistent/x", d.path()).is_err());
    }
}
