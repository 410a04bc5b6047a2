//! Open files: read through an fd on the top object.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::Union;
use super::error::Result;
use crate::sys::{self, Errno};

impl Union {
    /// Opens a regular file. Opening for writing (or truncating) copies it up first; a file
    /// only opened for reading stays where it is.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno(libc::EISDIR).into());
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            if !self.has_upper {
                return Err(Errno(libc::EROFS).into());
            }
            self.copy_up(&node, flags & libc::O_TRUNC != 0)?;
        } else if let Some(data) = self.metacopy_data(&node)? {
            // Its data is below: read from there until a write copies it up.
            return Ok(self.add_file(data.open(flags & (libc::O_NONBLOCK | libc::O_DIRECT))?));
        }
        let loc = node.loc.read().clone();
        // O_APPEND is the kernel's business: it sends writes at the right offsets.
        let keep = libc::O_ACCMODE
            | libc::O_NONBLOCK
            | libc::O_DIRECT
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_TRUNC;
        let fd = match &loc.obj {
            Some(obj) => sys::reopen(obj.as_fd(), flags & keep)?,
            None => {
                let dir = loc.top_dir.as_ref().ok_or(Errno(libc::EIO))?;
                sys::open_noatime(
                    dir.as_fd(),
                    &sys::cstr(&loc.name)?,
                    libc::O_RDONLY | (flags & (libc::O_NONBLOCK | libc::O_DIRECT)),
                )?
            }
        };
        Ok(self.add_file(fd))
    }

    pub(super) fn add_file(&self, fd: OwnedFd) -> u64 {
        let fh = self.next_fh();
        self.files.insert(fh, Arc::new(fd));
        fh
    }

    fn file(&self, fh: u64) -> Result<Arc<OwnedFd>> {
        self.files
            .get(&fh)
            .map(|f| f.clone())
            .ok_or(Errno(libc::EBADF).into())
    }

    /// Writes to the open file `fh` of node `ino`. `drop_privileges_for`: the kernel asks
    /// for setuid/setgid to go as a write by that caller drops them (it does not itself
    /// with FUSE_HANDLE_KILLPRIV_V2); the kernel's cached attributes are told.
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        drop_privileges_for: Option<super::Caller>,
    ) -> Result<usize> {
        let fd = self.file(fh)?;
        if let Some(c) = drop_privileges_for
            && self.drop_privileges(fd.as_fd(), c)?
        {
            self.notify_changed(ino);
        }
        match pwrite_full(fd.as_fd(), data, offset) {
            // An O_DIRECT file (see `pread_full`).
            Err(Errno(libc::EINVAL)) => {
                let mut buf = sys::AlignedBuf::new(data.len());
                buf.copy_from_slice(data);
                Ok(pwrite_full(fd.as_fd(), &buf, offset)?)
            }
            r => Ok(r?),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        Ok(sys::fsync(self.file(fh)?.as_fd(), datasync)?)
    }

    pub fn fallocate(&self, fh: u64, mode: i32, offset: u64, len: u64) -> Result<()> {
        Ok(sys::fallocate(self.file(fh)?.as_fd(), mode, offset, len)?)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        Ok(sys::lseek(self.file(fh)?.as_fd(), offset, whence)?)
    }

    /// Status through an open handle (an unlinked file has no name left to look up).
    pub fn fstat_handle(&self, fh: u64) -> Option<libc::stat> {
        self.files
            .get(&fh)
            .and_then(|fd| sys::fstat(fd.as_fd()).ok())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        match pread_full(fd.as_fd(), &mut buf, offset) {
            Err(Errno(libc::EINVAL)) => {
                let mut aligned = sys::AlignedBuf::new(size as usize);
                let n = pread_full(fd.as_fd(), &mut aligned, offset)?;
                Ok(aligned[..n].to_vec())
            }
            r => {
                buf.truncate(r?);
                Ok(buf)
            }
        }
    }

    /// The fd behind an open handle (for kernel passthrough).
    pub fn handle_fd(&self, fh: u64) -> Option<Arc<std::os::fd::OwnedFd>> {
        self.files.get(&fh).map(|f| f.clone())
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }

    /// Whether the node's data comes from an immutable lower layer (its page cache may be
    /// kept across opens).
    pub fn is_lower_node(&self, ino: u64) -> bool {
        self.node(ino)
            .map(|n| {
                self.is_lower(n.loc.read().top_layer)
                    || n.metacopy.load(std::sync::atomic::Ordering::Relaxed) == super::metacopy::YES
            })
            .unwrap_or(false)
    }
}

/// Reads at `offset` until `buf` is full or the file ends. A file opened with `O_DIRECT`
/// (the caller's flag, kept on the layer's file as kernel overlayfs keeps it) takes only
/// aligned memory, and a FUSE request's buffer is not: it fails at once with EINVAL, and the
/// caller tries again with a `sys::AlignedBuf`. After a short read such a file also refuses
/// to go on from the unaligned offset it left, its end: EINVAL once something was read ends
/// the read there. An offset or size the layer's filesystem does not take still fails with
/// EINVAL, as it would on kernel overlayfs.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> sys::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match sys::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno(libc::EINVAL)) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes all of `data` at `offset` (short only if the file takes no more).
fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> sys::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(fd, &data[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
