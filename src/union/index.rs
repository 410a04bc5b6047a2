//! The lower index: lower layers never change while mounted, so each merged directory reads
//! its lower layers once into a `LowerIndex`, and one hash probe answers for every lower
//! layer, whatever their number. Also the listing of one real directory, whiteouts hidden.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::layer::LayerDir;
use super::whiteout;
use crate::sys::{self, Errno, Result};

/// The topmost lower object under a name, as its directory entry says. Its status is read
/// when a lookup needs it, and not kept here: a listing does not need it (a cold listing of
/// a big directory would spend most of its time reading inodes), and the node of a looked-up
/// object is what the kernel asks again.
#[derive(Debug)]
pub struct Top {
    pub layer: usize,
    pub dev: u64,
    pub ino: u64,
    /// `S_IF*` of the object.
    pub fmt: u32,
}

/// What the lower layers of one directory hold under one name.
#[derive(Debug)]
pub struct IndexEntry {
    pub name: Box<OsStr>,
    /// The topmost lower object; `None` when a whiteout hides the name.
    pub top: Option<Top>,
    /// Directories: the layers whose directory of this name merge in, top-down (the first is
    /// the top). Opaque directories are cut later, when the directory node is made.
    pub chain: Vec<usize>,
}

/// The merged listing of a directory's lower layers, in first-seen order. The hash table
/// holds positions in `entries`, not a second copy of every name.
#[derive(Default)]
pub struct LowerIndex {
    pub entries: Vec<IndexEntry>,
    map: HashTable<u32>,
    hasher: RandomState,
}

impl std::fmt::Debug for LowerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LowerIndex")
            .field("entries", &self.entries)
            .finish()
    }
}

impl LowerIndex {
    pub fn get(&self, name: &OsStr) -> Option<&IndexEntry> {
        self.position(name).map(|i| &self.entries[i])
    }

    fn position(&self, name: &OsStr) -> Option<usize> {
        let h = self.hasher.hash_one(name.as_bytes());
        self.map
            .find(h, |&i| *self.entries[i as usize].name == *name)
            .map(|&i| i as usize)
    }

    fn push(&mut self, e: IndexEntry) {
        let LowerIndex {
            entries,
            map,
            hasher,
        } = self;
        let h = hasher.hash_one(e.name.as_bytes());
        let i = u32::try_from(entries.len()).expect("fewer than 2^32 names in a directory");
        entries.push(e);
        map.insert_unique(h, i, |&j| {
            hasher.hash_one(entries[j as usize].name.as_bytes())
        });
    }

    /// Reads the given lower directories, top-down.
    pub fn build<'a>(dirs: impl IntoIterator<Item = &'a LayerDir>) -> Result<LowerIndex> {
        let mut idx = LowerIndex::default();
        let mut open: Vec<bool> = Vec::new();
        for d in dirs {
            let layer = &d.layer;
            let (real, whiteouts) = read_layer_dir(d.fd.as_fd())?;
            let hidden_here: HashSet<&OsStr> = whiteouts.iter().map(|w| w.as_os_str()).collect();
            for e in real {
                let is_dir = e.fmt == libc::S_IFDIR;
                match idx.position(&e.name) {
                    None => {
                        open.push(is_dir && !hidden_here.contains(e.name.as_os_str()));
                        idx.push(IndexEntry {
                            top: Some(Top {
                                layer: *layer,
                                dev: e.dev,
                                ino: e.ino,
                                fmt: e.fmt,
                            }),
                            name: e.name.into_boxed_os_str(),
                            chain: if is_dir { vec![*layer] } else { vec![] },
                        });
                    }
                    Some(i) if open[i] => {
                        if is_dir {
                            idx.entries[i].chain.push(*layer);
                        }
                        // A non-directory below a directory is hidden and ends the merge.
                        open[i] = is_dir && !hidden_here.contains(e.name.as_os_str());
                    }
                    Some(_) => {}
                }
            }
            for w in whiteouts {
                match idx.position(&w) {
                    Some(i) => open[i] = false,
                    None => {
                        open.push(false);
                        idx.push(IndexEntry {
                            name: w.into_boxed_os_str(),
                            top: None,
                            chain: vec![],
                        });
                    }
                }
            }
        }
        Ok(idx)
    }
}

/// One visible entry of a real directory.
#[derive(Debug)]
pub struct LayerEntry {
    pub name: OsString,
    pub dev: u64,
    pub ino: u64,
    pub fmt: u32,
}

/// Visible entries, and the names hidden by whiteouts.
pub type LayerListing = (Vec<LayerEntry>, Vec<OsString>);

fn fmt_of_dtype(t: u8) -> Option<u32> {
    Some(match t {
        libc::DT_REG => libc::S_IFREG,
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => return None,
    })
}

/// Lists one real directory: its visible entries, and the names its whiteouts (of any
/// format) hide. Only entries that may be whiteouts are stat'ed: character devices (0/0), and
/// in a directory marked for them, regular files and fifos carrying the whiteout xattr.
pub fn read_layer_dir(fd: std::os::fd::BorrowedFd<'_>) -> Result<LayerListing> {
    let mut real = Vec::new();
    let mut whiteouts = Vec::new();
    let dev = sys::fstat(fd)?.st_dev;
    let mut xwhiteouts = None;
    for e in sys::read_dir(fd)? {
        if let Some(t) = whiteout::oci_target(&e.name) {
            whiteouts.push(t.to_owned());
            continue;
        }
        if whiteout::is_oci_name(&e.name) {
            continue;
        }
        let fmt = fmt_of_dtype(e.dtype);
        let check = match fmt {
            None | Some(libc::S_IFCHR) => true,
            Some(libc::S_IFREG | libc::S_IFIFO) => match xwhiteouts {
                Some(x) => x,
                None => *xwhiteouts.insert(whiteout::may_hold_xattr_whiteouts(fd)?),
            },
            Some(_) => false,
        };
        if !check {
            real.push(LayerEntry {
                name: e.name,
                dev,
                ino: e.ino,
                fmt: fmt.unwrap_or(0),
            });
            continue;
        }
        let c = sys::cstr(&e.name)?;
        let st = match sys::fstatat(fd, &c) {
            Ok(st) => st,
            Err(Errno(libc::ENOENT)) => continue,
            Err(e) => return Err(e),
        };
        if whiteout::is_whiteout(fd, &c, &st)? {
            whiteouts.push(e.name);
        } else {
            real.push(LayerEntry {
                name: e.name,
                dev: st.st_dev,
                ino: st.st_ino,
                fmt: st.st_mode & libc::S_IFMT,
            });
        }
    }
    Ok((real, whiteouts))
}
