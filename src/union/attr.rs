//! getattr, readlink, xattrs, statfs.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::inode::Node;
use super::{Union, whiteout};
use crate::sys::{self, Errno, Result};

impl Union {
    /// The status the union shows for a node, given its top object's real status.
    pub(super) fn present(&self, node: &Node, mut st: libc::stat) -> libc::stat {
        st.st_ino = node.ino;
        // As overlayfs: a merged directory cannot count its subdirectories.
        if node.is_dir() && node.loc.read().dirs.len() > 1 {
            st.st_nlink = 1;
        }
        st
    }

    fn real_stat(&self, node: &Node) -> Result<libc::stat> {
        let loc = node.loc.read().clone();
        if let Some(st) = loc.cached {
            return Ok(st);
        }
        let st = if node.is_dir() {
            let (_, fd) = loc.dirs.first().ok_or(Errno(libc::EIO))?;
            sys::fstat(fd.as_fd())?
        } else {
            let dir = loc.top_dir.as_ref().ok_or(Errno(libc::EIO))?;
            sys::fstatat(dir.as_fd(), &sys::cstr(&loc.name)?)?
        };
        if self.is_lower(loc.top_layer) {
            let mut l = node.loc.write();
            if l.top_layer == loc.top_layer {
                l.cached = Some(st);
            }
        }
        Ok(st)
    }

    pub fn getattr(&self, ino: u64) -> Result<libc::stat> {
        let node = self.node(ino)?;
        let st = self.real_stat(&node)?;
        Ok(self.present(&node, st))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.fmt != libc::S_IFLNK {
            return Err(Errno(libc::EINVAL));
        }
        let loc = node.loc.read().clone();
        let dir = loc.top_dir.as_ref().ok_or(Errno(libc::EIO))?;
        sys::readlinkat(dir.as_fd(), &sys::cstr(&loc.name)?)
    }

    /// Runs `f` with the (dir fd, name) pair that reaches the node's top object through the
    /// `/proc/self/fd` xattr calls.
    fn with_xattr_target<T>(
        &self,
        ino: u64,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, Option<&std::ffi::CStr>) -> Result<T>,
    ) -> Result<T> {
        let node = self.node(ino)?;
        let loc = node.loc.read().clone();
        if node.is_dir() {
            let (_, fd) = loc.dirs.first().ok_or(Errno(libc::EIO))?;
            f(fd.as_fd(), None)
        } else {
            let dir = loc.top_dir.as_ref().ok_or(Errno(libc::EIO))?;
            let name = sys::cstr(&loc.name)?;
            f(dir.as_fd(), Some(&name))
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(Errno(libc::ENODATA));
        }
        let attr = sys::cstr(name)?;
        self.with_xattr_target(ino, |d, n| sys::getxattr(d, n, &attr))?
            .ok_or(Errno(libc::ENODATA))
    }

    /// The node's xattr names, NUL-terminated and concatenated, private ones left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let names = self.with_xattr_target(ino, sys::listxattr)?;
        let mut out = Vec::new();
        for n in names.iter().filter(|n| !whiteout::is_private_xattr(n)) {
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(out)
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        sys::fstatvfs(self.layers[0].root.as_fd())
    }
}
