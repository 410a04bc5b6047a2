//! Merged directory listings: the upper read afresh, the lower index merged under it, names
//! deduplicated, whiteouts hidden. A listing is a snapshot taken at opendir, so offsets stay
//! valid across many small reads and seekdir/telldir.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use super::Union;
use super::lookup::read_layer_dir;
use crate::sys::{Errno, Result};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// `st_mode & S_IFMT`.
    pub fmt: u32,
}

#[derive(Debug)]
pub struct DirSnapshot {
    /// `.`, `..`, then the merged entries. The offset of entry `i` is `i + 1`.
    pub entries: Vec<DirEntry>,
}

impl Union {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        let entries = self.merged_entries(&node)?;
        let fh = self.next_fh();
        self.dirs.insert(fh, Arc::new(DirSnapshot { entries }));
        Ok(fh)
    }

    /// The merged listing of a directory node: `.`, `..`, then every name the view shows.
    pub(super) fn merged_entries(&self, node: &super::inode::Node) -> Result<Vec<DirEntry>> {
        let ino = node.ino;
        if !node.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        let (parent, dirs) = {
            let loc = node.loc.read();
            (loc.parent, loc.dirs.clone())
        };
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino,
                fmt: libc::S_IFDIR,
            },
            DirEntry {
                name: "..".into(),
                ino: parent,
                fmt: libc::S_IFDIR,
            },
        ];
        let mut seen: HashSet<OsString> = HashSet::new();
        if let Some((_, ufd)) = dirs.first().filter(|(l, _)| !self.is_lower(*l)) {
            let (real, whiteouts) = read_layer_dir(ufd.as_fd())?;
            seen.extend(whiteouts);
            for e in real {
                if self.is_reserved(ino, &e.name) {
                    continue;
                }
                entries.push(DirEntry {
                    ino: self.inos.map(e.dev, e.ino),
                    fmt: e.fmt,
                    name: e.name.clone(),
                });
                seen.insert(e.name);
            }
        }
        if dirs.iter().any(|(l, _)| self.is_lower(*l)) {
            let index = self.lower_index(node)?;
            for e in &index.entries {
                let Some(top) = &e.top else { continue };
                if seen.contains(&*e.name) {
                    continue;
                }
                entries.push(DirEntry {
                    name: e.name.to_os_string(),
                    ino: self.inos.map(top.dev, top.ino),
                    fmt: top.fmt,
                });
            }
        }
        Ok(entries)
    }

    pub fn dir_snapshot(&self, fh: u64) -> Result<Arc<DirSnapshot>> {
        self.dirs
            .get(&fh)
            .map(|d| d.clone())
            .ok_or(Errno(libc::EBADF))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}

/// Names as the view lists them, for tests and tools.
pub fn names(snap: &DirSnapshot) -> Vec<&OsStr> {
    snap.entries
        .iter()
        .skip(2)
        .map(|e| e.name.as_os_str())
        .collect()
}
