//! getattr, readlink, xattrs, statfs.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::inode::Node;

/// A time to set: now, or seconds and nanoseconds.
#[derive(Debug, Clone, Copy)]
pub enum Time {
    Now,
    At(i64, i64),
}

/// What a setattr changes; `None` leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The change time alone is asked to change (with nothing else).
    pub ctime: bool,
    /// The open handle the change came through, if any.
    pub fh: Option<u64>,
    /// Who asks (the kernel's request); `None` from within.
    pub by: Option<Caller>,
}

impl SetAttr {
    /// Whether setuid and setgid go first, as the kernel drops them (it leaves that to the
    /// filesystem, FUSE_HANDLE_KILLPRIV_V2): on a truncate by a caller without CAP_FSETID
    /// (the flag that says so, FATTR_KILL_SUIDGID, does not reach a filesystem: a caller
    /// that is not root), and on a write through passthrough, which reaches the filesystem
    /// only as an empty change, sent when something is to drop.
    fn drops_privileges(&self) -> Option<Caller> {
        let by = self.by?;
        let empty = self.changes_nothing() && !self.ctime;
        (empty || (self.size.is_some() && by.uid != 0)).then_some(by)
    }

    /// Nothing is asked but (at most) the change time: `chown(-1, -1)`, an empty change.
    fn changes_nothing(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}
use super::error::Result;
use super::{Caller, Union, whiteout};
use crate::sys::{self, Errno};

impl Union {
    /// The status the union shows for a node, given its top object's real status.
    pub(super) fn present(&self, node: &Node, mut st: libc::stat) -> libc::stat {
        st.st_ino = node.ino;
        if node.loc.read().unlinked && !node.is_dir() {
            st.st_nlink = 0;
        }
        let extra = node.extra_links.load(std::sync::atomic::Ordering::Relaxed);
        if extra != 0 && st.st_nlink > 0 && !node.is_dir() {
            st.st_nlink = (st.st_nlink as i64 + extra).max(1) as libc::nlink_t;
        }
        // As overlayfs: a merged directory cannot count its subdirectories.
        if node.is_dir() && node.loc.read().dirs.len() > 1 {
            st.st_nlink = 1;
        }
        if self.override_stat
            && let Some((uid, gid, mode)) = self.stat_override(node)
        {
            (st.st_uid, st.st_gid) = (uid, gid);
            st.st_mode = (st.st_mode & libc::S_IFMT) | (mode & 0o7777);
        }
        (st.st_uid, st.st_gid) = self.ids.show(st.st_uid, st.st_gid);
        st
    }

    /// The owner and mode kept in `user.containers.override_stat` (`uid:gid:mode`, mode in
    /// octal), where a layer was extracted by someone who could not give them: what
    /// containers/storage and fuse-overlayfs write, and the image store rootless.
    fn stat_override(&self, node: &Node) -> Option<(u32, u32, u32)> {
        let v = node
            .loc
            .read()
            .top()
            .ok()?
            .with_at(|d, n| sys::getxattr(d, n, c"user.containers.override_stat"))
            .ok()??;
        let s = std::str::from_utf8(&v).ok()?;
        let mut f = s.trim().split(':');
        let (u, g, m) = (f.next()?, f.next()?, f.next()?);
        Some((
            u.parse().ok()?,
            g.parse().ok()?,
            u32::from_str_radix(m.trim_start_matches("0o"), 8).ok()?,
        ))
    }

    fn real_stat(&self, node: &Node) -> Result<libc::stat> {
        Ok(node.loc.read().top()?.stat()?)
    }

    /// The status of `ino`. A file that lost its last name is still reached through an
    /// open handle `fh`, with no links.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<libc::stat> {
        let r = self.node(ino).and_then(|node| {
            let st = self.real_stat(&node)?;
            Ok(self.present(&node, st))
        });
        r.or_else(|e| {
            let mut st = fh.and_then(|fh| self.fstat_handle(fh)).ok_or(e)?;
            st.st_ino = ino;
            st.st_nlink = 0;
            Ok(st)
        })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.fmt != libc::S_IFLNK {
            return Err(Errno(libc::EINVAL).into());
        }
        let loc = node.loc.read().clone();
        Ok(loc
            .top()?
            .with_at(|d, n| sys::readlinkat(d, n.unwrap_or(c"")))?)
    }

    /// Runs `f` with the (dir fd, name) pair that reaches the node's top object through the
    /// `/proc/self/fd` xattr calls.
    fn with_xattr_target<T>(
        &self,
        ino: u64,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, Option<&std::ffi::CStr>) -> sys::Result<T>,
    ) -> Result<T> {
        let node = self.node(ino)?;
        let loc = node.loc.read().clone();
        Ok(loc.top()?.with_at(f)?)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(Errno(libc::ENODATA).into());
        }
        let attr = sys::cstr(name)?;
        self.with_xattr_target(ino, |d, n| sys::getxattr(d, n, &attr))?
            .ok_or(Errno(libc::ENODATA).into())
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

    /// The real object of a node that is in the upper: its own fd, or the directory's.
    fn upper_target(&self, node: &Node) -> Result<std::sync::Arc<std::os::fd::OwnedFd>> {
        let loc = node.loc.read();
        if node.is_dir() {
            return loc
                .dirs
                .top()
                .map(|d| d.fd.clone())
                .ok_or(Errno(libc::EIO).into());
        }
        loc.obj.clone().ok_or(Errno(libc::EIO).into())
    }

    pub fn setattr(&self, ino: u64, a: &SetAttr) -> Result<libc::stat> {
        let node = self.node(ino)?;
        if !self.has_upper {
            return Err(Errno(libc::EROFS).into());
        }
        let mut size = a.size;
        let handle = a.fh.and_then(|fh| self.files.get(&fh).map(|f| f.clone()));
        if let (Some(len), Some(fd)) = (size, handle) {
            sys::ftruncate(fd.as_fd(), len)?;
            size = None;
        }
        // A change of owner, mode or times of a lower file copies its metadata alone with
        // `metacopy=on`, and a metadata-only copy keeps its data below through one (as on
        // kernel overlayfs); only a change of size brings the data up.
        let meta_only = size.is_none()
            && if self.is_lower(node.loc.read().top_layer) {
                self.copy_up_meta(&node)?
            } else {
                self.is_metacopy(&node)?
            };
        if !meta_only {
            self.copy_up(&node, size == Some(0))?;
        }
        let target = self.upper_target(&node)?;
        let t = target.as_fd();
        if let Some(c) = a.drops_privileges() {
            self.drop_privileges(t, c)?;
        }
        if a.changes_nothing() {
            // chown(-1, -1) and the like: nothing changes but the change time, as on the
            // kernel's filesystems (a passthrough write's empty change moved it already).
            sys::fchownat_empty(t, u32::MAX, u32::MAX)?;
        }
        if let Some(len) = size {
            if node.is_dir() {
                return Err(Errno(libc::EISDIR).into());
            }
            sys::ftruncate(sys::reopen(t, libc::O_WRONLY)?.as_fd(), len)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = match a.uid {
                Some(u) => self.ids.store_uid(u).ok_or(Errno(libc::EINVAL))?,
                None => u32::MAX,
            };
            let gid = match a.gid {
                Some(g) => self.ids.store_gid(g).ok_or(Errno(libc::EINVAL))?,
                None => u32::MAX,
            };
            sys::fchownat_empty(t, uid, gid)?;
        }
        if let Some(mode) = a.mode {
            sys::chmod_at(t, None, mode & 0o7777)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = |x: Option<Time>| match x {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(Time::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(Time::At(s, n)) => libc::timespec {
                    tv_sec: s,
                    tv_nsec: n,
                },
            };
            sys::utimensat(t, c"", &[ts(a.atime), ts(a.mtime)])?;
        }
        self.getattr(ino, None)
    }

    /// The inode attribute ioctls (`lsattr`, `chattr`: [`sys::INODE_ATTR_IOCTLS`]) passed to
    /// the real object, as kernel overlayfs passes them: read from the top object, set on
    /// the upper one after a copy-up. `data` holds the argument, and then the result.
    pub fn inode_attr_ioctl(&self, ino: u64, cmd: u32, data: &mut [u8]) -> Result<()> {
        let Some(&(_, sets)) = sys::INODE_ATTR_IOCTLS.iter().find(|(c, _)| *c == cmd) else {
            return Err(Errno(libc::ENOTTY).into());
        };
        let node = self.node(ino)?;
        if sets {
            if !self.has_upper {
                return Err(Errno(libc::EROFS).into());
            }
            self.copy_up(&node, false)?;
        }
        let loc = node.loc.read().clone();
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = loc.top()?.with_at(|dir, name| match name {
            Some(n) => sys::open_noatime(dir, n, flags),
            None => sys::reopen(dir, flags),
        })?;
        sys::inode_attr_ioctl(fd.as_fd(), cmd, data)?;
        if sets {
            self.notify_changed(ino);
        }
        Ok(())
    }

    /// Drops from the regular file `fd` stands for what a write or truncate by `caller`
    /// drops in the kernel: setuid always, setgid when the group may execute or the caller
    /// is not in the file's group (root counts as in every group). Whether the mode changed.
    pub(super) fn drop_privileges(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        caller: Caller,
    ) -> Result<bool> {
        let st = sys::fstat(fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        let mode = st.st_mode & 0o7777;
        let mut new = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 {
            let (_, gid) = self.ids.show(st.st_uid, st.st_gid);
            if mode & libc::S_IXGRP != 0 || !caller.in_group_or_root(gid) {
                new &= !libc::S_ISGID;
            }
        }
        if new == mode {
            return Ok(false);
        }
        sys::chmod_at(fd, None, new)?;
        Ok(true)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.change_xattr(ino, name, Some(value), flags)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.change_xattr(ino, name, None, 0)
    }

    fn change_xattr(&self, ino: u64, name: &OsStr, value: Option<&[u8]>, flags: i32) -> Result<()> {
        if whiteout::is_private_xattr(name.as_bytes()) {
            return Err(Errno(libc::EPERM).into());
        }
        if !self.has_upper {
            return Err(Errno(libc::EROFS).into());
        }
        let node = self.node(ino)?;
        if value.is_none() {
            // Removing what is not there changes nothing: no copy-up for an error.
            self.getxattr(ino, name)?;
        }
        self.copy_up(&node, false)?;
        let target = self.upper_target(&node)?;
        Ok(sys::setxattr(
            target.as_fd(),
            None,
            &sys::cstr(name)?,
            value,
            flags,
        )?)
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        Ok(sys::fstatvfs(self.layers[0].root.as_fd())?)
    }
}
