//! Atomic file writes: write a temporary file next to the target, flush it to disk, then rename.
//!
//! A reader (another `venn` command, the node after a crash) therefore sees either the old file
//! or the new one, never half of one. Secret files are created with mode 0600 from the start
//! (not chmod-ed afterwards), so there is no window in which they are readable by others.

use std::io::Write;
use std::path::Path;

use crate::error::{NodeError, Result};

/// Writes `bytes` to `path` atomically; `secret` files get mode 0600 (owner read/write only).
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(NodeError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        super::write_file(&p, b"x", true).unwrap();
        super::write_file(&p, b"yz", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"yz");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
