//! Metadata-only copies, as kernel overlayfs makes them with `metacopy=on`: a regular file
//! whose owner, mode, times or xattrs changed is copied up without its data, as a sparse
//! file of the right size marked with the `overlay.metacopy` xattr; its data stays in a
//! layer below, at the path its `overlay.redirect` names (after a rename) or at its own
//! name. Such a file is read from there, and its data is copied up at its first write
//! (then the mark goes, and its times move), as the kernel does. With `metacopy=on` the union makes them too.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Union;
use super::error::Result;
use super::inode::Node;
use super::whiteout::{self, Redirect};
use crate::sys::{self, Errno};

/// The xattrs that mark a metacopy file, in both families.
const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];

/// `Node::metacopy` states.
pub(super) const UNKNOWN: u8 = 0;
pub(super) const NO: u8 = 1;
pub(super) const YES: u8 = 2;

/// Whether the object (`dir` with `name`, or `dir` itself) carries the metacopy mark, and
/// the redirect it has.
fn mark(dir: BorrowedFd<'_>, name: Option<&CStr>) -> sys::Result<Option<Option<Redirect>>> {
    let names = match sys::listxattr(dir, name) {
        Ok(n) => n,
        Err(Errno(libc::EOPNOTSUPP)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !names
        .iter()
        .any(|n| METACOPY_XATTRS.iter().any(|x| n.as_slice() == x.to_bytes()))
    {
        return Ok(None);
    }
    Ok(Some(whiteout::read_redirect_at(dir, name, &names)?))
}

/// Whether `name` in `dir` is a metadata-only copy, its data in a layer below.
pub fn is_marked(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    matches!(mark(dir, Some(name)), Ok(Some(_)))
}

/// Removes the metacopy mark (and the redirect that went with it) of the object `fd`.
pub(super) fn clear_mark(fd: BorrowedFd<'_>) -> sys::Result<()> {
    for x in METACOPY_XATTRS {
        match sys::setxattr(fd, None, x, None, 0) {
            Ok(()) | Err(Errno(libc::ENODATA | libc::EOPNOTSUPP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where a metacopy file's data is: a directory of a layer and a name in it.
pub(super) struct DataAt {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
}

impl DataAt {
    pub fn open(&self, flags: i32) -> Result<OwnedFd> {
        Ok(sys::open_noatime(
            self.dir.as_fd(),
            &sys::cstr(&self.name)?,
            libc::O_RDONLY | flags,
        )?)
    }
}

/// What a layer's directory holds under `name`, for the search of a metacopy file's data.
enum Found {
    Nothing,
    /// A whiteout, a directory or anything else that ends the search without data.
    End,
    /// A regular file with its data, or another metacopy file (with its redirect).
    File(Option<Option<Redirect>>),
}

fn probe(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Found> {
    let c = sys::cstr(name)?;
    let st = match sys::fstatat(dir, &c) {
        Ok(st) => st,
        Err(Errno(libc::ENOENT)) => {
            return Ok(if whiteout::has_oci_whiteout(dir, name)? {
                Found::End
            } else {
                Found::Nothing
            });
        }
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || whiteout::is_whiteout(dir, &c, &st)? {
        return Ok(Found::End);
    }
    Ok(Found::File(mark(dir, Some(&c))?))
}

impl Union {
    /// Whether the node is a metacopy file (its top object carries the mark); remembered
    /// until its data is copied up.
    pub(super) fn is_metacopy(&self, node: &Node) -> Result<bool> {
        if node.fmt != libc::S_IFREG {
            return Ok(false);
        }
        match node.metacopy.load(Ordering::Relaxed) {
            NO => return Ok(false),
            YES => return Ok(true),
            _ => {}
        }
        let loc = node.loc.read().clone();
        let m = loc.top()?.with_at(mark)?;
        node.metacopy
            .store(if m.is_some() { YES } else { NO }, Ordering::Relaxed);
        Ok(m.is_some())
    }

    /// Where a metacopy node's data is, in the layers below its top one: at the path its
    /// redirect names from the layers' roots, at the name its relative redirect gives, or
    /// at its own name in its parent's directories; through further metacopy files of the
    /// layers below, down to the one that has the data. `None`: not a metacopy file.
    pub(super) fn metacopy_data(&self, node: &Node) -> Result<Option<DataAt>> {
        if !self.is_metacopy(node)? {
            return Ok(None);
        }
        let loc = node.loc.read().clone();
        let Some(mut redirect) = loc.top()?.with_at(mark)? else {
            return Ok(None);
        };
        let parent = self.node(loc.parent)?;
        let pdirs = parent.loc.read().dirs.clone();
        let mut name = loc.name.clone();
        let mut below = loc.top_layer;
        loop {
            let hit = match &redirect {
                Some(Redirect::Absolute(comps)) => self.find_from_roots(below, comps)?,
                Some(Redirect::Relative(n)) => {
                    name = n.clone();
                    find_in_dirs(pdirs.iter().map(|d| (d.layer, &d.fd)), below, &name)?
                }
                None => find_in_dirs(pdirs.iter().map(|d| (d.layer, &d.fd)), below, &name)?,
            };
            let Some((layer, dir, n, next)) = hit else {
                // The kernel refuses to open a metacopy file whose data it cannot find.
                return Err(Errno(libc::EIO).into());
            };
            match next {
                None => return Ok(Some(DataAt { dir, name: n })),
                Some(r) => {
                    below = layer;
                    name = n;
                    if r.is_some() {
                        redirect = r;
                    }
                }
            }
        }
    }

    /// The first file at `comps` (from the roots) in the lower layers below `below`.
    #[allow(clippy::type_complexity)]
    fn find_from_roots(
        &self,
        below: usize,
        comps: &[OsString],
    ) -> Result<Option<(usize, Arc<OwnedFd>, OsString, Option<Option<Redirect>>)>> {
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(None);
        };
        for root in self.lower_roots.iter().filter(|r| r.layer > below) {
            let mut fd = root.fd.clone();
            let mut reached = true;
            for c in dirs {
                match sys::openat(
                    fd.as_fd(),
                    &sys::cstr(c)?,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                ) {
                    Ok(d) => fd = Arc::new(d),
                    Err(Errno(libc::ENOENT | libc::ENOTDIR)) => {
                        reached = false;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !reached {
                continue;
            }
            match probe(fd.as_fd(), last)? {
                Found::Nothing => continue,
                Found::End => return Ok(None),
                Found::File(m) => return Ok(Some((root.layer, fd, last.clone(), m))),
            }
        }
        Ok(None)
    }

    /// Metadata-only copy-up of a lower regular file (`metacopy=on`): a sparse file of its
    /// size with its owner, mode, xattrs and times, marked with the metacopy xattr, its data
    /// left where it is. `false` when it cannot be one (the mount writes OCI formats, no
    /// xattr to mark it; a file of several names, whose group comes up whole): the caller
    /// copies it up whole.
    pub(super) fn copy_up_meta(&self, node: &Node) -> Result<bool> {
        if !self.metacopy || node.fmt != libc::S_IFREG || self.formats.oci {
            return Ok(false);
        }
        self.copy_up_as(node, super::copy_up::Data::Left)
    }

    /// Copies a metacopy node's data into its upper file, in place, then removes the mark
    /// (a crash before leaves the mark, and the data where it was); its times move, as in
    /// the kernel. Nothing with
    /// `truncate`: the caller is about to truncate it.
    pub(super) fn copy_up_data(&self, node: &Node, truncate: bool) -> Result<()> {
        self.copy_up_data_keeping(node, truncate, false)
    }

    /// [`Self::copy_up_data`]; with `keep_times`, the file's times stay as they were (the
    /// copy is the union's own doing, where the kernel keeps the file metadata-only).
    pub(super) fn copy_up_data_keeping(
        &self,
        node: &Node,
        truncate: bool,
        keep_times: bool,
    ) -> Result<()> {
        let _g = node.copy_lock.lock();
        let Some(data) = self.metacopy_data(node)? else {
            return Ok(());
        };
        let obj = node.loc.read().obj.clone().ok_or(Errno(libc::EIO))?;
        let before = sys::fstat(obj.as_fd())?;
        if !truncate {
            let src = data.open(0)?;
            let st = sys::fstat(src.as_fd())?;
            let dst = sys::reopen(obj.as_fd(), libc::O_WRONLY)?;
            // As in the kernel, the data copy moves the file's modification time (unless
            // `keep_times`).
            let dense = st.st_blocks as u64 * 512 >= st.st_size as u64;
            sys::copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64, dense)?;
            if keep_times {
                let ts = |s: i64, n: i64| libc::timespec {
                    tv_sec: s,
                    tv_nsec: n,
                };
                sys::utimensat(
                    obj.as_fd(),
                    c"",
                    &[
                        ts(before.st_atime, before.st_atime_nsec),
                        ts(before.st_mtime, before.st_mtime_nsec),
                    ],
                )?;
            }
            if !self.volatile {
                sys::fsync(dst.as_fd(), false)?;
            }
        }
        clear_mark(obj.as_fd())?;
        node.metacopy.store(NO, Ordering::Relaxed);
        self.notify_changed(node.ino);
        Ok(())
    }
}

/// The first file named `name` in the directories (layer, fd) below layer `below`.
#[allow(clippy::type_complexity)]
fn find_in_dirs<'a>(
    dirs: impl Iterator<Item = (usize, &'a Arc<OwnedFd>)>,
    below: usize,
    name: &OsStr,
) -> Result<Option<(usize, Arc<OwnedFd>, OsString, Option<Option<Redirect>>)>> {
    for (layer, dir) in dirs.filter(|(l, _)| *l > below) {
        match probe(dir.as_fd(), name)? {
            Found::Nothing => continue,
            Found::End => return Ok(None),
            Found::File(m) => return Ok(Some((layer, dir.clone(), name.to_owned(), m))),
        }
    }
    Ok(None)
}
