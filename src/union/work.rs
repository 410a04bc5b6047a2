//! The work directory: where copies and new objects are built before they are published
//! under their name in one atomic step, and where the shared whiteout inode lives. It sits
//! in the upper's root (`.unionfuse-work`, hidden from the view) or, given `workdir=`, in that
//! directory (on the upper's filesystem); it is emptied at mount and removed at unmount.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, Errno, Result};

/// The work directory's name in the upper's root.
pub const WORK_NAME: &CStr = c".unionfuse-work";
/// Its name inside a work directory given with `workdir=`.
const IN_WORKDIR: &CStr = c"unionfuse";
/// The whiteout inode every kernel-format whiteout of this mount links to.
pub(super) const SHARED_WHITEOUT: &CStr = c"whiteout";

/// Is `name` (in the upper's root) the work directory's?
pub fn is_work_name(name: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes() == WORK_NAME.to_bytes()
}

pub struct WorkDir {
    fd: OwnedFd,
    /// Where it was made: its parent and name, for the removal at the end.
    parent: OwnedFd,
    name: &'static CStr,
    next_tmp: AtomicU64,
}

impl WorkDir {
    /// Makes the work dir (or empties what a crash left in it).
    pub fn open(upper: &OwnedFd, workdir: Option<&Path>) -> Result<WorkDir> {
        let (parent, name) = match workdir {
            None => (
                upper.try_clone().map_err(|_| Errno(libc::EMFILE))?,
                WORK_NAME,
            ),
            Some(w) => {
                let fd = sys::open_dir_path(w)?;
                // Copies are published by rename and link: same filesystem only.
                if sys::fstat(fd.as_fd())?.st_dev != sys::fstat(upper.as_fd())?.st_dev {
                    return Err(Errno(libc::EXDEV));
                }
                (fd, IN_WORKDIR)
            }
        };
        match sys::mkdirat(parent.as_fd(), name, 0o700) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(e) => return Err(e),
        }
        let fd = sys::openat(parent.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for e in sys::read_dir(fd.as_fd())? {
            remove_tree(fd.as_fd(), &sys::cstr(&e.name)?)?;
        }
        Ok(WorkDir {
            fd,
            parent,
            name,
            next_tmp: AtomicU64::new(0),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A fresh name in the work dir.
    pub fn tmp_name(&self) -> CString {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("t{}-{n}", std::process::id())).expect("no NUL")
    }

    /// Gives a file built here (`tmpname`) or an `O_TMPFILE` (`tmpname` None) the name
    /// `name` in `dir`; with `over_whiteout`, replacing the whiteout there in one step.
    pub fn publish(
        &self,
        fd: &OwnedFd,
        tmpname: Option<&CStr>,
        dir: BorrowedFd<'_>,
        name: &CStr,
        over_whiteout: bool,
    ) -> Result<()> {
        let work = self.fd();
        let flags = if over_whiteout {
            0
        } else {
            sys::RENAME_NOREPLACE
        };
        match tmpname {
            Some(t) => sys::renameat2(work, t, dir, name, flags),
            None if !over_whiteout => sys::link_tmpfile(fd.as_fd(), dir, name),
            None => {
                let t = self.tmp_name();
                sys::link_tmpfile(fd.as_fd(), work, &t)?;
                sys::renameat2(work, &t, dir, name, flags).inspect_err(|_| {
                    let _ = sys::unlinkat(work, &t, 0);
                })
            }
        }
    }
}

impl AsFd for WorkDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for WorkDir {
    /// A clean unmount leaves no work dir behind (it is empty unless an operation failed).
    fn drop(&mut self) {
        let _ = sys::unlinkat(self.fd(), SHARED_WHITEOUT, 0);
        let _ = sys::unlinkat(self.parent.as_fd(), self.name, libc::AT_REMOVEDIR);
    }
}

/// Removes `name` in `dir` and everything under it, without following symlinks.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    match sys::unlinkat(dir, name, 0) {
        Err(Errno(libc::EISDIR | libc::EPERM)) => {}
        r => return r,
    }
    let sub = sys::openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir(sub.as_fd())? {
        remove_tree(sub.as_fd(), &sys::cstr(&e.name)?)?;
    }
    sys::unlinkat(dir, name, libc::AT_REMOVEDIR)
}
