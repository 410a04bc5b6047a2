//! Top-down name resolution.
//!
//! Lower layers never change while mounted, so each merged directory reads its lower layers
//! once into a `LowerIndex`: one hash probe answers for every lower layer, whatever their
//! number. The upper, which changes, is probed afresh each time.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

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
    pub fn build(dirs: &[(usize, Arc<OwnedFd>)]) -> Result<LowerIndex> {
        let mut idx = LowerIndex::default();
        let mut open: Vec<bool> = Vec::new();
        for (layer, fd) in dirs {
            let (real, whiteouts) = read_layer_dir(fd.as_fd())?;
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

/// The outcome of resolving one name in one merged directory.
#[derive(Debug)]
pub struct Resolved {
    pub top_layer: usize,
    pub top_dir: Arc<OwnedFd>,
    pub st: libc::stat,
    /// Directories: the contributing real directories, top-down, cut at the first opaque one.
    pub dirs: Vec<(usize, Arc<OwnedFd>)>,
}

/// Opens `name` in the given layers' parent directories as a directory, top-down (the
/// layers the lower index found a directory of that name in), stopping after the first
/// opaque one. A redirect in one of them sends the layers below it to another path.
pub fn open_dir_chain(
    roots: &[(usize, Arc<OwnedFd>)],
    parent_dirs: &[(usize, Arc<OwnedFd>)],
    layers: impl IntoIterator<Item = usize>,
    name: &OsStr,
) -> Result<Vec<(usize, Arc<OwnedFd>)>> {
    let c = sys::cstr(name)?;
    let mut out = Vec::new();
    for layer in layers {
        let Some((_, pfd)) = parent_dirs.iter().find(|(l, _)| *l == layer) else {
            continue;
        };
        let fd = Arc::new(sys::openat(
            pfd.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
        let m = whiteout::dir_markers(fd.as_fd())?;
        out.push((layer, fd));
        if m.opaque {
            break;
        }
        if let Some(r) = m.redirect {
            let path = BelowPath::name(name).redirected(&r);
            out.extend(chain_below(roots, parent_dirs, layer, path)?);
            break;
        }
    }
    Ok(out)
}

/// The path by which the layers below a directory are asked for its content: its name in
/// the parent's directories, or, after an absolute redirect, a path from the layers' roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowPath {
    pub absolute: bool,
    pub comps: Vec<OsString>,
}

impl BelowPath {
    pub fn name(name: &OsStr) -> BelowPath {
        BelowPath {
            absolute: false,
            comps: vec![name.to_owned()],
        }
    }

    /// The path after the last component's redirect.
    pub fn redirected(mut self, r: &whiteout::Redirect) -> BelowPath {
        match r {
            whiteout::Redirect::Absolute(p) => {
                self.absolute = true;
                self.comps = p.clone();
            }
            whiteout::Redirect::Relative(n) => {
                if let Some(last) = self.comps.last_mut() {
                    *last = n.clone();
                }
            }
        }
        self
    }
}

/// The directories that the lower layers below `after` (top-down) merge in under `path`, as
/// kernel overlayfs looks them up: in each layer the path is walked one name at a time; a
/// whiteout or non-directory on it hides every layer below; an opaque directory is the last
/// (unless an absolute redirect further down the path starts a new one); a redirect on it
/// sends the layers below to the path it names. `roots` are the lower layers' roots;
/// `parent_dirs` the parent's directories, where a relative path starts.
pub fn chain_below(
    roots: &[(usize, Arc<OwnedFd>)],
    parent_dirs: &[(usize, Arc<OwnedFd>)],
    after: usize,
    mut path: BelowPath,
) -> Result<Vec<(usize, Arc<OwnedFd>)>> {
    let mut out = Vec::new();
    for (layer, root) in roots.iter().filter(|(l, _)| *l > after) {
        let base = if path.absolute {
            root.clone()
        } else {
            match parent_dirs.iter().find(|(l, _)| l == layer) {
                Some((_, fd)) => fd.clone(),
                None => continue,
            }
        };
        let mut stop = false;
        if let Some(fd) = walk_layer(&base, &mut path, &mut stop)? {
            out.push((*layer, fd));
        }
        if stop {
            break;
        }
    }
    Ok(out)
}

/// Walks `path` down one layer from `base`; returns the directory at its end, if that is
/// one. Sets `stop` when the layers below are hidden, and rewrites `path` by the redirects
/// met on the way.
fn walk_layer(
    base: &Arc<OwnedFd>,
    path: &mut BelowPath,
    stop: &mut bool,
) -> Result<Option<Arc<OwnedFd>>> {
    let comps = std::mem::take(&mut path.comps);
    let mut next: Vec<OsString> = Vec::with_capacity(comps.len());
    let mut cur = base.clone();
    for (i, comp) in comps.iter().enumerate() {
        let found = (|| -> Result<Option<Arc<OwnedFd>>> {
            if check_name(comp).is_err() {
                return Ok(None);
            }
            let c = sys::cstr(comp)?;
            match sys::fstatat(cur.as_fd(), &c) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    if whiteout::has_oci_whiteout(cur.as_fd(), comp)? {
                        *stop = true;
                    }
                    let sub = sys::openat(cur.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    Ok(Some(Arc::new(sub)))
                }
                // A whiteout or any other non-directory hides what is below.
                Ok(_) => {
                    *stop = true;
                    Ok(None)
                }
                Err(Errno(libc::ENOENT)) => {
                    if whiteout::has_oci_whiteout(cur.as_fd(), comp)? {
                        *stop = true;
                    }
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })()?;
        let Some(sub) = found else {
            next.extend(comps[i..].iter().cloned());
            path.comps = next;
            return Ok(None);
        };
        let m = whiteout::dir_markers(sub.as_fd())?;
        if m.opaque {
            *stop = true;
        }
        match m.redirect {
            Some(whiteout::Redirect::Absolute(p)) => {
                next = p;
                path.absolute = true;
                *stop = false;
            }
            Some(whiteout::Redirect::Relative(n)) => next.push(n),
            None => next.push(comp.clone()),
        }
        cur = sub;
    }
    path.comps = next;
    Ok(Some(cur))
}

pub fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > 255 {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    if whiteout::is_oci_name(name) {
        return Err(Errno(libc::ENOENT));
    }
    Ok(())
}
