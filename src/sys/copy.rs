//! Copying file data inside the kernel, keeping holes.

use super::*;

/// Copies `size` bytes (or to EOF) from `src` to the empty `dst` at the same offsets,
/// keeping holes: only the data extents are copied, with `copy_file_range` (reflinks where
/// the filesystem has them), across filesystems in the kernel with `sendfile`. `dense`: the
/// source's blocks cover its size, so it has no hole to look for.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64, dense: bool) -> Result<()> {
    let mut off: i64 = 0;
    let mut written_to: i64 = 0;
    while (off as u64) < size {
        let data = match dense {
            true => off,
            false => match lseek(src, off, libc::SEEK_DATA) {
                Ok(d) => d,
                Err(Errno(libc::ENXIO)) => break,
                Err(Errno(libc::EINVAL)) => off, // no SEEK_DATA here: copy everything
                Err(e) => return Err(e),
            },
        };
        let hole = match dense {
            true => size as i64,
            false => lseek(src, data, libc::SEEK_HOLE).unwrap_or(size as i64),
        };
        let mut pos = data;
        while pos < hole {
            let mut in_off = pos as libc::loff_t;
            let mut out_off = pos as libc::loff_t;
            // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut in_off,
                    dst.as_raw_fd(),
                    &mut out_off,
                    (hole - pos) as usize,
                    0,
                )
            };
            if n < 0 {
                match Errno::last().0 {
                    libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS => {
                        let end = copy_by_splice(src, dst, pos as u64, (hole - pos) as u64)?;
                        written_to = end as i64;
                        if written_to < hole {
                            break; // the source ended early
                        }
                        pos = hole;
                        continue;
                    }
                    libc::EINTR => continue,
                    e => return Err(Errno(e)),
                }
            }
            if n == 0 {
                break;
            }
            pos += n as i64;
            written_to = pos;
        }
        off = hole;
    }
    // A hole at the end, or a source shorter than said: the size is set, not written.
    match written_to as u64 == size {
        true => Ok(()),
        false => ftruncate(dst, size),
    }
}

/// Between filesystems (`copy_file_range` only works within one): `sendfile`, which copies
/// in the kernel through the page cache as overlayfs's own copy-up does, with no buffer here.
/// Where the files do not support it, through a buffer. Returns the offset it copied to.
fn copy_by_splice(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, off: u64, len: u64) -> Result<u64> {
    let mut in_off = off as libc::off_t;
    let end = (off + len) as libc::off_t;
    // sendfile writes at the destination's file offset.
    lseek(dst, in_off, libc::SEEK_SET)?;
    while in_off < end {
        let want = ((end - in_off) as usize).min(1 << 30);
        // SAFETY: fds are borrowed for the call, names are NUL-terminated and buffers go with their lengths (the module's contract).
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut in_off, want) };
        match n {
            0 => break,
            n if n > 0 => {}
            _ => match Errno::last().0 {
                libc::EINTR => {}
                libc::EINVAL | libc::ENOSYS => {
                    let done = in_off as u64;
                    return copy_by_read(src, dst, done, off + len - done);
                }
                e => return Err(Errno(e)),
            },
        }
    }
    Ok(in_off as u64)
}

fn copy_by_read(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    mut len: u64,
) -> Result<u64> {
    // Zeroed memory costs its size again: no bigger than the copy.
    let mut buf = vec![0u8; len.clamp(1, 1 << 20) as usize];
    while len > 0 {
        let want = len.min(buf.len() as u64) as usize;
        let n = pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += pwrite(dst, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
        len -= n as u64;
    }
    Ok(off)
}
