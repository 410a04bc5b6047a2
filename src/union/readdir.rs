//! Merged directory listings: the upper read afresh, the lower index merged under it, names
//! deduplicated, whiteouts hidden. A listing is a snapshot taken when an open directory is
//! read from its start (not at opendir: the kernel lists a directory it has cached without
//! reading it here; and again after rewinddir, which must show what changed), so offsets stay
//! valid across many small reads and seekdir/telldir.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Union;
use super::error::Result;
use super::index::read_layer_dir;
use crate::sys::Errno;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// `st_mode & S_IFMT`.
    pub fmt: u32,
}

/// `.`, `..`, then the merged entries. The offset of entry `i` is `i + 1`.
pub type Listing = Arc<Vec<DirEntry>>;

#[derive(Debug)]
pub struct DirSnapshot {
    node: Arc<super::inode::Node>,
    listing: Mutex<Option<Listing>>,
}

impl Union {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Errno(libc::ENOTDIR).into());
        }
        let fh = self.next_fh();
        self.dirs.insert(
            fh,
            Arc::new(DirSnapshot {
                node,
                listing: Mutex::new(None),
            }),
        );
        Ok(fh)
    }

    /// The merged listing of a directory node: `.`, `..`, then every name the view shows.
    pub(super) fn merged_entries(&self, node: &super::inode::Node) -> Result<Vec<DirEntry>> {
        let ino = node.ino;
        if !node.is_dir() {
            return Err(Errno(libc::ENOTDIR).into());
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
        if let Some(u) = dirs.upper() {
            let (real, whiteouts) = read_layer_dir(u.fd.as_fd())?;
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
        if dirs.has_lower() {
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

    /// The listing of an open directory for a read at `offset`: taken afresh at offset 0.
    pub fn dir_listing(&self, fh: u64, offset: u64) -> Result<Listing> {
        let snap = self
            .dirs
            .get(&fh)
            .map(|d| d.clone())
            .ok_or(Errno(libc::EBADF))?;
        if offset != 0
            && let Some(l) = &*snap.listing.lock()
        {
            return Ok(l.clone());
        }
        let fresh = Arc::new(self.merged_entries(&snap.node)?);
        *snap.listing.lock() = Some(fresh.clone());
        Ok(fresh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
