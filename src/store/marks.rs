//! Read marks: for each account, the highest message id whose `* msg` line
//! (`pushed`) and whose `inbox` row (`inboxed`) natterd has handed to the
//! kernel for that user's socket. The loop records them right after the
//! write syscall, in a shared mapping of `natter.marks` in the data
//! directory: a store into a `MAP_SHARED` page is in the kernel's page
//! cache at once, so it survives a SIGKILL of natterd exactly as the
//! socket's bytes do (only a host crash can lose either). The store thread
//! copies the marks into the database in batches (`Advance`), and at start
//! the store folds in whatever the file has beyond the database, so a
//! message counts as read exactly when its bytes left natterd.
//!
//! Layout: one 16-byte slot per account, indexed by the account's rowid in
//! `users`; `pushed` then `inboxed`, little-endian `i64`. A fresh or short
//! file reads as zeros, which only ever means "less was read".

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use memmap2::MmapMut;

/// File name of the marks inside the data directory.
pub const MARKS_FILE: &str = "natter.marks";

/// Bytes per account.
const SLOT: usize = 16;
/// Slots the file grows by at least, so registrations rarely remap it.
const GROW_SLOTS: u64 = 4096;

/// The two marks of one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// Highest pushed (`* msg`, `* broadcast` of a list) message id written out.
    pub pushed: i64,
    /// Highest `inbox` row id written out.
    pub inboxed: i64,
}

/// The mapped marks file. Owned by the loop thread once the server runs.
#[derive(Debug)]
pub struct ReadMarks {
    file: File,
    map: Option<MmapMut>,
}

impl ReadMarks {
    /// Opens (creating, mode 0600) the marks file in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<ReadMarks> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(MARKS_FILE))?;
        let mut marks = ReadMarks { file, map: None };
        marks.remap()?;
        Ok(marks)
    }

    fn remap(&mut self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        self.map = if len == 0 {
            None
        } else {
            // SAFETY: the data directory's lock (held as long as the store)
            // keeps every other natterd out, and nothing else writes the file;
            // the mapping is only read and written as plain bytes.
            let map = unsafe { MmapMut::map_mut(&self.file)? };
            // Keep its pages resident, so recording a mark never waits for
            // the disk; without the privilege it still works, just unpinned.
            if let Err(e) = map.lock() {
                log::debug!("marks: cannot lock the mapping in memory: {e}");
            }
            Some(map)
        };
        Ok(())
    }

    /// The marks of the account in `slot` (zeros if never recorded).
    pub fn get(&self, slot: u64) -> Marks {
        let Some(bytes) = self.slot_bytes(slot) else {
            return Marks::default();
        };
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            i64::from_le_bytes(b)
        };
        Marks {
            pushed: word(0),
            inboxed: word(8),
        }
    }

    fn slot_bytes(&self, slot: u64) -> Option<&[u8]> {
        let start = usize::try_from(slot).ok()?.checked_mul(SLOT)?;
        self.map.as_ref()?.get(start..start + SLOT)
    }

    /// Records the marks of the account in `slot`, growing the file if the
    /// slot is past its end.
    pub fn set(&mut self, slot: u64, marks: Marks) -> std::io::Result<()> {
        let start = usize::try_from(slot)
            .ok()
            .and_then(|s| s.checked_mul(SLOT))
            .ok_or_else(|| std::io::Error::other("marks slot out of range"))?;
        if self.map.as_ref().is_none_or(|m| m.len() < start + SLOT) {
            self.file
                .set_len((slot + GROW_SLOTS).saturating_mul(SLOT as u64))?;
            self.remap()?;
        }
        let map = self
            .map
            .as_mut()
            .ok_or_else(|| std::io::Error::other("marks file not mapped"))?;
        map[start..start + 8].copy_from_slice(&marks.pushed.to_le_bytes());
        map[start + 8..start + SLOT].copy_from_slice(&marks.inboxed.to_le_bytes());
        Ok(())
    }

    /// Makes the file say exactly `marks` (slot and marks of every
    /// account, as folded into the database at start) and nothing past the
    /// highest of their slots: a mark left by another database (one
    /// restored or replaced) would otherwise be taken for its account's, or
    /// for a later account's, at some later start.
    pub fn reset_to(&mut self, marks: &[(u64, Marks)]) -> std::io::Result<()> {
        for &(slot, m) in marks {
            if self.get(slot) != m {
                self.set(slot, m)?;
            }
        }
        // Cut off past the last account (later ones grow it again, with
        // zeros): cheaper than zeroing, however long the file had grown.
        let end = marks.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
        let keep = end.saturating_mul(SLOT as u64);
        if self.file.metadata()?.len() > keep {
            self.map = None;
            self.file.set_len(keep)?;
            self.remap()?;
        }
        Ok(())
    }

    /// Asks the kernel to write the marks to disk and waits (at exit: a
    /// host crash after a clean stop then loses nothing).
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.map {
            Some(map) => map.flush(),
            None => Ok(()),
        }
    }
}
