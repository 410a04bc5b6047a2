//! Open files: read through an fd on the top object.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::Union;
use crate::sys::{self, Errno, Result};

impl Union {
    /// Opens a regular file for reading. Writing needs the writable upper (copy-up), which
    /// this read path refuses with EROFS.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.node(ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno(libc::EROFS));
        }
        if node.is_dir() {
            return Err(Errno(libc::EISDIR));
        }
        let loc = node.loc.read().clone();
        let dir = loc.top_dir.as_ref().ok_or(Errno(libc::EIO))?;
        let keep = libc::O_NONBLOCK | libc::O_DIRECT;
        let fd = sys::open_noatime(
            dir.as_fd(),
            &sys::cstr(&loc.name)?,
            libc::O_RDONLY | (flags & keep),
        )?;
        let fh = self.next_fh();
        self.files.insert(fh, Arc::new(fd));
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self
            .files
            .get(&fh)
            .map(|f| f.clone())
            .ok_or(Errno(libc::EBADF))?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = sys::pread(fd.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }

    /// Whether the node's data comes from an immutable lower layer (its page cache may be
    /// kept across opens).
    pub fn is_lower_node(&self, ino: u64) -> bool {
        self.node(ino)
            .map(|n| self.is_lower(n.loc.read().top_layer))
            .unwrap_or(false)
    }
}
