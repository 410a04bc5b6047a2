//! Copy-up: bringing a lower object into the upper before it changes, atomically. A file is
//! built as an `O_TMPFILE` in its upper parent (or under a temporary name in the work dir),
//! given its data, owner, mode, xattrs and times, and only then linked or renamed into place:
//! after a crash the name shows the old object or the complete new one.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error::Context;
use super::error::Result;
use super::inode::{LookupRef, Node};
use super::{Union, whiteout};
use crate::sys::{self, Errno};
use crate::sys::{At, chown_at};

/// What a regular file's copy-up does with its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Data {
    /// Copied.
    Copy,
    /// Not copied: the caller is about to truncate it.
    Truncated,
    /// Left where it is: a metadata-only copy (`metacopy=on`).
    Left,
}

impl Union {
    pub(super) fn upper_root(&self) -> Result<&Arc<OwnedFd>> {
        if self.has_upper {
            Ok(&self.layers[0].root)
        } else {
            Err(Errno(libc::EROFS).into())
        }
    }

    /// The upper directory of a directory node, copying it (and its ancestors) up first.
    pub(super) fn upper_dir(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.upper_dir_if_any(node) {
            return Ok(fd);
        }
        self.upper_root()?;
        let _g = node.copy_lock.lock();
        if let Some(fd) = self.upper_dir_if_any(node) {
            return Ok(fd);
        }
        let (parent, name, src) = {
            let loc = node.loc.read();
            let src = loc.dirs.top().ok_or(Errno(libc::EIO))?;
            (loc.parent, loc.name.clone(), src.fd.clone())
        };
        let pfd = self.upper_dir(&*self.node(parent)?)?;
        let c = sys::cstr(&name)?;
        let st = sys::fstat(src.as_fd())?;
        let ptimes = ParentTimes::save(pfd.as_fd())?;
        let work = self.work()?;
        let tmp = self.work()?.tmp_name();
        sys::mkdirat(work.as_fd(), &tmp, 0o700)?;
        let done = (|| {
            let tfd = sys::openat(work.as_fd(), &tmp, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            let from = At {
                dir: src.as_fd(),
                name: None,
            };
            let to = At {
                dir: tfd.as_fd(),
                name: None,
            };
            copy_meta(from, to, &st)?;
            sys::renameat2(work.as_fd(), &tmp, pfd.as_fd(), &c, sys::RENAME_NOREPLACE)
        })()
        .context("copy-up of a directory");
        if let Err(e) = done {
            let _ = super::work::remove_tree(work.as_fd(), &tmp);
            if e.code() != libc::EEXIST {
                return Err(e);
            }
        }
        let ufd = Arc::new(sys::openat(
            pfd.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
        self.keep_ino(ufd.as_fd(), node.ino)?;
        ptimes.restore(pfd.as_fd())?;
        let mut loc = node.loc.write();
        loc.dirs.put_upper(ufd.clone());
        loc.top_layer = 0;
        loc.top_dir = Some(pfd);
        drop(loc);
        self.notify_changed(node.ino);
        // The parent's times are put back, but not its change time, which moved.
        self.notify_changed(parent);
        Ok(ufd)
    }

    /// The copy of a node answers to the node's inode number, as overlayfs keeps the lower
    /// object's number: the same name shows the same `st_ino` before and after copy-up.
    pub(super) fn keep_ino(&self, fd: BorrowedFd<'_>, ino: u64) -> Result<()> {
        let st = sys::fstat(fd)?;
        self.inos.keep(st.st_dev, st.st_ino, ino);
        Ok(())
    }

    fn upper_dir_if_any(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        let loc = node.loc.read();
        loc.dirs.upper().map(|d| d.fd.clone())
    }

    /// Copies a non-directory node up, unless it is there already. With `truncate`, the data
    /// is not copied (the caller is about to truncate it).
    pub(super) fn copy_up(&self, node: &Node, truncate: bool) -> Result<()> {
        if node.is_dir() {
            self.upper_dir(node)?;
            return Ok(());
        }
        let data = if truncate {
            Data::Truncated
        } else {
            Data::Copy
        };
        self.copy_up_as(node, data).map(drop)
    }

    /// [`Self::copy_up`] of a non-directory, its data as `data` says. `false` when a
    /// metadata-only copy (`Data::Left`) cannot be made: a file of several names, whose
    /// group comes up whole.
    pub(super) fn copy_up_as(&self, node: &Node, data: Data) -> Result<bool> {
        if !self.is_lower(node.loc.read().top_layer) {
            // A metadata-only copy of the kernel's or ours: its data comes up now, unless
            // metadata alone is asked for.
            if data != Data::Left && self.is_metacopy(node)? {
                self.copy_up_data(node, data == Data::Truncated)?;
            }
            return Ok(true);
        }
        self.upper_root()?;
        // A lower metacopy file (a kernel upper turned lower): its data is further below.
        let below = match data {
            Data::Copy => self.metacopy_data(node)?,
            Data::Truncated | Data::Left => None,
        };
        let _g = node.copy_lock.lock();
        let (parent, name, top_dir, layer) = {
            let loc = node.loc.read();
            if !self.is_lower(loc.top_layer) {
                return Ok(true);
            }
            (
                loc.parent,
                loc.name.clone(),
                loc.top_dir.clone().ok_or(Errno(libc::EIO))?,
                loc.top_layer,
            )
        };
        let c = sys::cstr(&name)?;
        let lower_st = sys::fstatat(top_dir.as_fd(), &c)?;
        if data == Data::Left && lower_st.st_nlink > 1 {
            return Ok(false);
        }
        let pfd = self.upper_dir(&*self.node(parent)?)?;
        let ptimes = ParentTimes::save(pfd.as_fd())?;
        let obj = self
            .copy_up_from(
                (top_dir.as_fd(), &c),
                below.as_ref(),
                &lower_st,
                (pfd.as_fd(), &c),
                data,
            )
            .context("copy-up")?;
        let state = if data == Data::Left {
            super::metacopy::YES
        } else {
            super::metacopy::NO
        };
        node.metacopy.store(state, Ordering::Relaxed);
        ptimes.restore(pfd.as_fd())?;
        self.keep_ino(obj.as_fd(), node.ino)?;
        let obj = Arc::new(obj);
        let mut loc = node.loc.write();
        loc.top_layer = 0;
        loc.top_dir = Some(pfd);
        loc.obj = Some(obj.clone());
        drop(loc);
        if lower_st.st_nlink > 1 {
            self.link_up_other_names(layer, &lower_st, &obj)?;
            // Names no layer shows still count, as in overlayfs' index.
            let shown = sys::fstat(obj.as_fd())?.st_nlink as i64;
            let extra = lower_st.st_nlink as i64 - shown;
            if extra > 0 {
                let x = self.formats.nlink_xattr();
                match sys::setxattr(obj.as_fd(), None, x, Some(&whiteout::nlink_value(extra)), 0) {
                    Ok(()) | Err(Errno(libc::EOPNOTSUPP | libc::EPERM)) => {}
                    Err(e) => return Err(e.into()),
                }
                node.extra_links.store(extra, Ordering::Relaxed);
            }
        }
        self.notify_changed(node.ino);
        self.notify_changed(parent);
        Ok(true)
    }

    /// After copy-up of an object with several names in its lower layer: every other name of
    /// it that the view shows becomes a hard link to the copy, so the names stay one inode
    /// (and the upper, read by kernel overlayfs, has them as plain hard links). A name whose
    /// directory was renamed is found where the redirects of the layers above now show it.
    fn link_up_other_names(&self, layer: usize, st: &libc::stat, obj: &OwnedFd) -> Result<()> {
        let links = self.layers[layer].hard_links()?;
        let Some(paths) = links.get(&(st.st_dev, st.st_ino)) else {
            return Ok(());
        };
        let mut missed = Vec::new();
        for path in paths {
            if !self.link_up_at(layer, st, obj, path)? {
                missed.push(path);
            }
        }
        if missed.is_empty() {
            return Ok(());
        }
        let maps = (0..layer)
            .map(|k| self.redirect_map(k))
            .collect::<Result<Vec<_>>>()?;
        if maps.iter().all(|m| m.is_empty()) {
            return Ok(());
        }
        for path in missed {
            for cand in view_paths(&maps, path).into_iter().skip(1) {
                self.link_up_at(layer, st, obj, &cand)?;
            }
        }
        Ok(())
    }

    /// Where the directories of layer `k` that carry a redirect came from (a path in the
    /// layers below) and where they are in `k`: for a lower layer read once and kept; for
    /// the upper read afresh (renames change it).
    fn redirect_map(&self, k: usize) -> Result<Arc<whiteout::RedirectMap>> {
        let l = &self.layers[k];
        if l.writable {
            return Ok(Arc::new(whiteout::read_redirect_map(
                l.root.as_fd(),
                self.hides_work,
            )?));
        }
        if let Some(m) = l.redirects.get() {
            return Ok(m.clone());
        }
        let m = Arc::new(whiteout::read_redirect_map(l.root.as_fd(), false)?);
        Ok(l.redirects.get_or_init(|| m).clone())
    }

    /// Links the name at `path` in the view to the copy `obj`, if that name shows the lower
    /// object `st` of `layer`; true when the name is now the copy's.
    fn link_up_at(
        &self,
        layer: usize,
        st: &libc::stat,
        obj: &OwnedFd,
        path: &[std::ffi::OsString],
    ) -> Result<bool> {
        // The directory nodes the walk makes are let go of however it ends.
        let mut held = Vec::new();
        self.link_up_walk(layer, st, obj, path, &mut held)
    }

    fn link_up_walk<'a>(
        &'a self,
        layer: usize,
        st: &libc::stat,
        obj: &OwnedFd,
        path: &[std::ffi::OsString],
        held: &mut Vec<LookupRef<'a>>,
    ) -> Result<bool> {
        let Some((last, dirs)) = path.split_last() else {
            return Ok(false);
        };
        let mut cur = self.node(super::inode::ROOT_INO)?;
        for comp in dirs {
            let r = match self.resolve(&cur, comp) {
                Ok(r) if r.st.st_mode & libc::S_IFMT == libc::S_IFDIR => r,
                Ok(_) => return Ok(false),
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => return Ok(false),
                Err(e) => return Err(e),
            };
            let parent = cur.ino;
            let n = self.node_for(&r.st, || {
                super::inode::Location::new(
                    parent,
                    comp.clone(),
                    r.top_layer,
                    Some(r.top_dir.clone()),
                    r.dirs.clone(),
                )
            });
            cur = Arc::clone(&n);
            held.push(n);
        }
        let r = match self.resolve(&cur, last) {
            Ok(r) => r,
            Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !self.is_lower(r.top_layer) {
            // This very name (already up), or a link made before.
            let up = sys::fstat(obj.as_fd())?;
            return Ok((r.st.st_dev, r.st.st_ino) == (up.st_dev, up.st_ino));
        }
        // Shadowed by another object, or not this object's name.
        if r.top_layer != layer || (r.st.st_dev, r.st.st_ino) != (st.st_dev, st.st_ino) {
            return Ok(false);
        }
        let pfd = self.upper_dir(&cur)?;
        let times = ParentTimes::save(pfd.as_fd())?;
        match sys::link_tmpfile(obj.as_fd(), pfd.as_fd(), &sys::cstr(last)?) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(e) => return Err(e.into()),
        }
        times.restore(pfd.as_fd())?;
        Ok(true)
    }

    /// Copies the non-directory `sname` in `sdir` to `dname` in the upper directory `ddir`;
    /// returns an `O_PATH` fd on the copy.
    pub(super) fn copy_up_entry(
        &self,
        sdir: BorrowedFd<'_>,
        sname: &CStr,
        st: &libc::stat,
        ddir: BorrowedFd<'_>,
        dname: &CStr,
        truncate: bool,
    ) -> Result<OwnedFd> {
        let data = if truncate {
            Data::Truncated
        } else {
            Data::Copy
        };
        self.copy_up_from((sdir, sname), None, st, (ddir, dname), data)
    }

    /// [`Self::copy_up_entry`], a regular file's data as `data` says: copied (from `below`
    /// when given: the source is a metadata-only copy whose data is further below), left
    /// out for a truncate, or left where it is (a sparse copy of its size marked with the
    /// metacopy xattr).
    pub(super) fn copy_up_from(
        &self,
        (sdir, sname): (BorrowedFd<'_>, &CStr),
        below: Option<&super::metacopy::DataAt>,
        st: &libc::stat,
        (ddir, dname): (BorrowedFd<'_>, &CStr),
        data: Data,
    ) -> Result<OwnedFd> {
        let fmt = st.st_mode & libc::S_IFMT;
        let src = At {
            dir: sdir,
            name: Some(sname),
        };
        if fmt == libc::S_IFREG {
            let (tmpfd, tmpname) = self.new_tmp_file(ddir, 0o600)?;
            match data {
                Data::Copy => {
                    let from = match below {
                        Some(d) => d.open(0)?,
                        None => sys::open_noatime(sdir, sname, libc::O_RDONLY)?,
                    };
                    let fst = sys::fstat(from.as_fd())?;
                    let dense = fst.st_blocks as u64 * 512 >= fst.st_size as u64;
                    sys::copy_data(from.as_fd(), tmpfd.as_fd(), st.st_size as u64, dense)?;
                }
                Data::Truncated => {}
                Data::Left => sys::ftruncate(tmpfd.as_fd(), st.st_size as u64)?,
            }
            let to = At {
                dir: tmpfd.as_fd(),
                name: None,
            };
            copy_meta(src, to, st)?;
            if data == Data::Left {
                let mark = self.formats.metacopy_xattr();
                sys::setxattr(tmpfd.as_fd(), None, mark, Some(b""), 0)?;
            }
            if !self.volatile {
                sys::fsync(tmpfd.as_fd(), false)?;
            }
            self.work()?
                .publish(&tmpfd, tmpname.as_deref(), ddir, dname, false)
                .context("publish from the work dir")?;
            return Ok(sys::openat(ddir, dname, libc::O_PATH, 0)?);
        }
        let work = self.work()?;
        let tmp = self.work()?.tmp_name();
        match fmt {
            libc::S_IFLNK => {
                let target = sys::readlinkat(sdir, sname)?;
                let t = sys::cstr(OsStr::from_bytes(&target))?;
                sys::symlinkat(&t, work.as_fd(), &tmp)?;
            }
            _ => sys::mknodat(work.as_fd(), &tmp, fmt | 0o600, st.st_rdev)?,
        }
        let to = At {
            dir: work.as_fd(),
            name: Some(&tmp),
        };
        let r = copy_meta(src, to, st)
            .and_then(|_| sys::renameat2(work.as_fd(), &tmp, ddir, dname, sys::RENAME_NOREPLACE));
        if let Err(e) = r {
            let _ = sys::unlinkat(work.as_fd(), &tmp, 0);
            return Err(e.into());
        }
        Ok(sys::openat(ddir, dname, libc::O_PATH, 0)?)
    }

    /// A new, nameless regular file on the upper's filesystem: an `O_TMPFILE` in `dir`, or
    /// where the filesystem has none, a file under a temporary name in the work dir.
    pub(super) fn new_tmp_file(
        &self,
        dir: BorrowedFd<'_>,
        mode: u32,
    ) -> Result<(OwnedFd, Option<CString>)> {
        match sys::openat(dir, c".", libc::O_TMPFILE | libc::O_RDWR, mode) {
            Ok(fd) => Ok((fd, None)),
            Err(Errno(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                let tmp = self.work()?.tmp_name();
                let fd = sys::openat(
                    self.work()?.as_fd(),
                    &tmp,
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                    mode,
                )?;
                Ok((fd, Some(tmp)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A copy-up is no change the user made: like overlayfs, it leaves the upper parent's times
/// as they were.
pub struct ParentTimes([libc::timespec; 2]);

impl ParentTimes {
    pub fn save(dir: BorrowedFd<'_>) -> Result<ParentTimes> {
        Ok(ParentTimes(times_of(&sys::fstat(dir)?)))
    }

    pub fn restore(&self, dir: BorrowedFd<'_>) -> Result<()> {
        Ok(sys::utimensat(dir, c"", &self.0)?)
    }
}

/// Gives `to` the owner, mode, xattrs and times of `from` (whose status is `st`). The order
/// matters: chown clears set-id bits (so the mode follows it) and file capabilities (so the
/// xattrs follow both); times go last.
pub fn copy_meta(from: At<'_>, to: At<'_>, st: &libc::stat) -> sys::Result<()> {
    let name = to.name.unwrap_or(c"");
    let fmt = st.st_mode & libc::S_IFMT;
    // Without privileges the copy can only be the mounting user's (and only some xattr
    // namespaces can be written): better that than refusing the write.
    let unprivileged = !sys::fully_privileged();
    match chown_at(to, st.st_uid, st.st_gid) {
        // EINVAL: an owner that the user namespace does not map.
        Err(Errno(libc::EPERM | libc::EINVAL)) if unprivileged => {}
        r => r?,
    }
    if fmt != libc::S_IFLNK {
        sys::chmod_at(to.dir, to.name, st.st_mode & 0o7777)?;
    }
    for attr in sys::listxattr(from.dir, from.name)? {
        if whiteout::is_private_xattr(&attr) {
            continue;
        }
        let a = sys::cstr(OsStr::from_bytes(&attr))?;
        if let Some(v) = sys::getxattr(from.dir, from.name, &a)? {
            match sys::setxattr(to.dir, to.name, &a, Some(&v), 0) {
                Ok(()) | Err(Errno(libc::EOPNOTSUPP)) => {}
                Err(Errno(libc::EPERM)) if unprivileged => {}
                Err(e) => return Err(e),
            }
        }
    }
    sys::utimensat(to.dir, name, &times_of(st))
}

/// atime and mtime of a status, as `utimensat` takes them.
fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// The paths at which the name `path` of a lower layer may show in the view: itself, then
/// each path the redirects of the layers above (`maps`, top-down, the nearest last) move it
/// to, applying the longest matching origin of each layer from the nearest up.
fn view_paths(maps: &[Arc<whiteout::RedirectMap>], path: &[OsString]) -> Vec<Vec<OsString>> {
    let mut cands = vec![path.to_vec()];
    for map in maps.iter().rev() {
        let mut more = Vec::new();
        for c in &cands {
            let best = map
                .iter()
                .filter(|(origin, _)| origin.len() < c.len() && c.starts_with(origin))
                .max_by_key(|(origin, _)| origin.len());
            if let Some((origin, at)) = best {
                let mut moved = at.clone();
                moved.extend_from_slice(&c[origin.len()..]);
                if !cands.contains(&moved) && !more.contains(&moved) {
                    more.push(moved);
                }
            }
        }
        cands.extend(more);
        // Each layer at most doubles them; a few layers of renames are plenty.
        cands.truncate(64);
    }
    cands
}
