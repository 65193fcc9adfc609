//! The high-water mark (hwm) of one worker id: the highest ID time any holder of that worker
//! id may have used. Stored as JSON `{"ms": <unix ms>, "holder": "<node>/<claim>"}` in etcd
//! (`{prefix}/v1/idgen/hwm/{dc}/{worker}`, permanent) or, in pure mode, in a local file.
//!
//! A holder raises it *before* issuing IDs up to the new value (reservation ahead), and a
//! new holder starts above it; `holder` lets a writer recognise its own write after a
//! request whose outcome it could not see.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::IdError;

/// The stored value of a high-water mark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HwmRecord {
    /// Highest Unix ms reserved by any holder of the worker id.
    pub ms: u64,
    /// Who wrote it: `{node_id}/{claim token}`.
    #[serde(default)]
    pub holder: String,
}

impl HwmRecord {
    pub fn to_json(&self) -> String {
        // A struct of a number and a string always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"ms\":{}}}", self.ms))
    }

    /// Reads a stored value; a bare number (written by hand) is accepted as `ms`.
    pub fn from_json(bytes: &[u8]) -> Option<HwmRecord> {
        serde_json::from_slice(bytes).ok().or_else(|| {
            let ms = std::str::from_utf8(bytes).ok()?.trim().parse().ok()?;
            Some(HwmRecord {
                ms,
                holder: String::new(),
            })
        })
    }
}

/// The hwm of a fixed worker in a local file, for pure mode. The file is locked (flock) for
/// as long as this value lives, so a second process on the same file fails to start.
#[derive(Debug)]
pub struct HwmFile {
    path: PathBuf,
    // Held for its lock; closing the descriptor releases it.
    _lock: File,
}

impl HwmFile {
    /// Locks `path` (via `path.lock`) for `worker`; fails if another process holds it.
    pub fn open(path: &Path, worker: u32) -> Result<HwmFile, IdError> {
        let io = |e: std::io::Error| IdError::HwmFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        // flock(2) belongs to the open file description: it is released when `lock` closes,
        // also when the process dies, so a crashed holder never blocks its successor.
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(IdError::WorkerBusy {
                    worker,
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io(e.into())),
        }
        Ok(HwmFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored record; `None` when the file does not exist yet.
    pub fn read(&self) -> Result<Option<HwmRecord>, IdError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => HwmRecord::from_json(&bytes)
                .map(Some)
                .ok_or_else(|| IdError::HwmFile {
                    path: self.path.clone(),
                    reason: "content is not an hwm record".to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IdError::HwmFile {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Replaces the record durably: write a temp file, fsync, rename, fsync the directory.
    pub fn write(&self, rec: &HwmRecord) -> Result<(), IdError> {
        write_durably(&self.path, rec.to_json().as_bytes())
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` so that after a crash the file holds either the old or the new
/// content, and the new content once this returns.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), IdError> {
    let io = |e: std::io::Error| IdError::HwmFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trips_and_locks_out_a_second_opener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w7.hwm");
        let f = HwmFile::open(&path, 7).expect("open");
        assert_eq!(f.read().expect("read"), None);
        let rec = HwmRecord {
            ms: 42,
            holder: "n/1".to_string(),
        };
        f.write(&rec).expect("write");
        assert_eq!(f.read().expect("read"), Some(rec));
        assert!(matches!(
            HwmFile::open(&path, 7),
            Err(IdError::WorkerBusy { worker: 7, .. })
        ));
        drop(f);
        // Free again once dropped. Another test of this binary may be spawning a process at
        // this moment: between its fork and exec the child briefly shares every descriptor,
        // ours included, so the lock may outlive the drop by that long (never longer).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let reopened = loop {
            match HwmFile::open(&path, 7) {
                Err(IdError::WorkerBusy { .. }) if std::time::Instant::now() < end => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other,
            }
        };
        reopened.expect("free again after drop");
        assert_eq!(HwmRecord::from_json(b" 1234 \n").map(|r| r.ms), Some(1234));
    }
}
