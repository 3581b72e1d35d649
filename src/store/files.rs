//! The files of the data directory besides the database's contents: the
//! lock that keeps a second natterd out, the database file's mode, and
//! noticing the file deleted or replaced under a running server.

use std::path::{Path, PathBuf};

use super::OpenError;

/// The lock file in the data directory: held (`flock`) by the one natterd
/// that uses the directory, and holding its pid for the error a second one
/// prints.
pub const LOCK_FILE: &str = "natterd.lock";

/// Takes the data directory's lock, or says who holds it.
pub(super) fn lock_data_dir(dir: &Path) -> Result<std::fs::File, OpenError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let cannot = |e: std::io::Error| OpenError(format!("cannot lock {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another natterd".to_string()
            } else {
                format!("another natterd (pid {holder})")
            };
            return Err(OpenError(format!(
                "data directory {} is in use by {who}",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
    }
    file.set_len(0).map_err(cannot)?;
    file.rewind().map_err(cannot)?;
    writeln!(file, "{}", std::process::id()).map_err(cannot)?;
    Ok(file)
}

/// Creates the database file readable by its owner only (every private
/// message is in it), or makes an existing one so. SQLite gives the WAL and
/// shared-memory files the database file's mode.
pub(super) fn make_private(path: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let cannot = |e: std::io::Error| OpenError(format!("cannot create {}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(cannot)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(cannot)
}

/// The database file as it was opened, to notice it deleted or replaced
/// under a running server (an operator's `rm`, a restore over it): SQLite
/// would go on writing to the unlinked file, and every commit after that
/// would be lost at the next start.
pub(super) struct DbFile {
    path: PathBuf,
    /// (device, inode) at start; `None` if it could not be read then.
    identity: Option<(u64, u64)>,
    /// Said once, loudly; not again for every batch.
    reported: bool,
}

impl DbFile {
    pub(super) fn new(path: PathBuf) -> Self {
        let identity = Self::identity(&path).ok();
        DbFile {
            path,
            identity,
            reported: false,
        }
    }

    fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Whether the file is still the one opened; if not, why, for the
    /// requests that are refused.
    pub(super) fn check(&mut self) -> Result<(), String> {
        let now = Self::identity(&self.path);
        let problem = match (self.identity, now) {
            (Some(then), Ok(now)) if then == now => return Ok(()),
            (None, _) => return Ok(()),
            (Some(_), Ok(_)) => "was replaced",
            (Some(_), Err(_)) => "was deleted",
        };
        let text = format!(
            "database file {} {problem} while natterd ran; refusing writes (restart natterd)",
            self.path.display()
        );
        if !self.reported {
            self.reported = true;
            log::error!("store: {text}");
        }
        Err(text)
    }
}
