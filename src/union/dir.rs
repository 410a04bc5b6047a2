//! Namespace changes: create, mkdir, mknod, symlink, link, unlink, rmdir, rename. Every
//! change lands in the upper; a name that a lower layer still has is hidden by a whiteout, and
//! a directory made where a lower one was is opaque.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::error::Result;
use super::index::{LowerIndex, read_layer_dir};
use super::inode::{Location, Node};
use super::layer::{DirStack, LayerDir};
use super::lookup::Resolved;
use super::whiteout::{self, Slot};
use super::work::remove_tree;
use super::{Caller, Union};
use crate::sys::{self, Errno};
use crate::sys::{At, chown_at};

impl Union {
    fn check_new_name(&self, parent: u64, name: &OsStr) -> Result<()> {
        if name.len() > 255 {
            return Err(Errno(libc::ENAMETOOLONG).into());
        }
        // `.wh.` names are the OCI format's own; the work dir is the daemon's.
        if whiteout::is_oci_name(name) || self.is_reserved(parent, name) {
            return Err(Errno(libc::EINVAL).into());
        }
        Ok(())
    }

    /// Does a lower layer of `parent` show something under `name`?
    fn lower_visible(&self, parent: &Node, name: &OsStr) -> Result<bool> {
        if !parent.loc.read().dirs.has_lower() {
            return Ok(false);
        }
        Ok(self
            .lower_index(parent)?
            .get(name)
            .is_some_and(|e| e.top.is_some()))
    }

    /// Start of every operation that makes a name: it must not exist; the parent comes up.
    fn prepare_new(&self, parent: u64, name: &OsStr) -> Result<(Arc<Node>, Arc<OwnedFd>, Slot)> {
        self.check_new_name(parent, name)?;
        let p = self.node(parent)?;
        match self.resolve(&p, name) {
            Ok(_) => return Err(Errno(libc::EEXIST).into()),
            Err(e) if e.code() == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        let pfd = self.upper_dir(&p)?;
        let slot = whiteout::upper_slot(pfd.as_fd(), name)?;
        if slot == Slot::Taken {
            return Err(Errno(libc::EEXIST).into());
        }
        Ok((p, pfd, slot))
    }

    /// Owner and mode of a new object in the upper directory `pfd`, as the kernel gives them:
    /// the caller's, with the group of a set-group-ID directory.
    fn new_owner(
        &self,
        pfd: BorrowedFd<'_>,
        who: Caller,
        mut mode: u32,
        dir: bool,
    ) -> Result<(u32, u32, u32)> {
        let pst = sys::fstat(pfd)?;
        // The caller's ids are the view's: stored through the id mapping.
        let uid = self.ids.store_uid(who.uid).ok_or(Errno(libc::EINVAL))?;
        let mut gid = self.ids.store_gid(who.gid).ok_or(Errno(libc::EINVAL))?;
        if pst.st_mode & libc::S_ISGID != 0 {
            gid = pst.st_gid;
            if dir {
                mode |= libc::S_ISGID;
            }
        }
        Ok((uid, gid, mode & 0o7777))
    }

    /// Moves `tmp` from the work dir to `name` in `pfd`, replacing a whiteout there in one
    /// step where the format allows.
    fn publish(
        &self,
        tmp: &CStr,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        slot: Slot,
        dir: bool,
    ) -> Result<()> {
        let work = self.work()?;
        let c = sys::cstr(name)?;
        let r = match slot {
            Slot::Whiteout if dir => {
                sys::renameat2(work.as_fd(), tmp, pfd, &c, sys::RENAME_EXCHANGE)
                    .and_then(|_| sys::unlinkat(work.as_fd(), tmp, 0))
            }
            Slot::Whiteout => sys::renameat2(work.as_fd(), tmp, pfd, &c, 0),
            _ => sys::renameat2(work.as_fd(), tmp, pfd, &c, sys::RENAME_NOREPLACE),
        };
        if let Err(e) = r {
            let _ = remove_tree(work.as_fd(), tmp);
            return Err(e.into());
        }
        self.drop_oci_whiteout(pfd, name, slot)
    }

    fn drop_oci_whiteout(&self, pfd: BorrowedFd<'_>, name: &OsStr, slot: Slot) -> Result<()> {
        if slot == Slot::OciWhiteout {
            sys::unlinkat(pfd, &whiteout::oci_whiteout_name(name)?, 0)?;
        }
        Ok(())
    }

    /// The node of a new upper object `name` in `pfd`, with one lookup reference.
    fn new_node(
        &self,
        parent: u64,
        name: &OsStr,
        pfd: &Arc<OwnedFd>,
        dir: bool,
    ) -> Result<(Arc<Node>, libc::stat)> {
        let c = sys::cstr(name)?;
        let flags = if dir {
            libc::O_PATH | libc::O_DIRECTORY
        } else {
            libc::O_PATH
        };
        let fd = Arc::new(sys::openat(pfd.as_fd(), &c, flags, 0)?);
        let st = sys::fstat(fd.as_fd())?;
        let node = self.node_for(&st, || {
            let mut loc = Location::new(
                parent,
                name.to_owned(),
                0,
                Some(pfd.clone()),
                DirStack::default(),
            );
            if dir {
                loc.dirs.push(LayerDir::upper(fd.clone()));
            } else {
                loc.obj = Some(fd.clone());
            }
            loc
        });
        let st = self.present(&node, st);
        Ok((node.keep(), st))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, who: Caller) -> Result<libc::stat> {
        let (p, pfd, slot) = self.prepare_new(parent, name)?;
        let opaque = slot != Slot::Empty || self.lower_visible(&p, name)?;
        let (uid, gid, mode) = self.new_owner(pfd.as_fd(), who, mode, true)?;
        let c = sys::cstr(name)?;
        if !opaque {
            // Made in place, so that the parent's default ACL applies.
            sys::mkdirat(pfd.as_fd(), &c, mode)?;
            sys::fchownat(pfd.as_fd(), &c, uid, gid)?;
        } else {
            let work = self.work()?;
            let tmp = self.work()?.tmp_name();
            sys::mkdirat(work.as_fd(), &tmp, mode)?;
            let made = (|| {
                let tfd = sys::openat(work.as_fd(), &tmp, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                sys::fchownat_empty(tfd.as_fd(), uid, gid)?;
                if mode & libc::S_ISGID != 0 {
                    sys::chmod_at(tfd.as_fd(), None, mode)?;
                }
                self.set_opaque(tfd.as_fd())
            })();
            if let Err(e) = made {
                let _ = remove_tree(work.as_fd(), &tmp);
                return Err(e);
            }
            self.publish(&tmp, pfd.as_fd(), name, slot, true)?;
        }
        Ok(self.new_node(parent, name, &pfd, true)?.1)
    }

    /// mknod and symlink: `make(dir, name)` makes the object.
    fn make_special(
        &self,
        parent: u64,
        name: &OsStr,
        who: Caller,
        mode: u32,
        make: impl Fn(BorrowedFd<'_>, &CStr) -> sys::Result<()>,
    ) -> Result<libc::stat> {
        let (_p, pfd, slot) = self.prepare_new(parent, name)?;
        let (uid, gid, mode) = self.new_owner(pfd.as_fd(), who, mode, false)?;
        let fix = |at: At<'_>| -> Result<()> {
            chown_at(at, uid, gid)?;
            if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                sys::chmod_at(at.dir, at.name, mode)?;
            }
            Ok(())
        };
        if slot == Slot::Empty {
            let c = sys::cstr(name)?;
            make(pfd.as_fd(), &c)?;
            fix(At {
                dir: pfd.as_fd(),
                name: Some(&c),
            })?;
        } else {
            let work = self.work()?;
            let tmp = self.work()?.tmp_name();
            make(work.as_fd(), &tmp)?;
            if let Err(e) = fix(At {
                dir: work.as_fd(),
                name: Some(&tmp),
            }) {
                let _ = sys::unlinkat(work.as_fd(), &tmp, 0);
                return Err(e);
            }
            self.publish(&tmp, pfd.as_fd(), name, slot, false)?;
        }
        Ok(self.new_node(parent, name, &pfd, false)?.1)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> Result<libc::stat> {
        let fmt = mode & libc::S_IFMT;
        // A 0/0 character device is a whiteout: accepting one would corrupt the directory.
        if fmt == libc::S_IFCHR && rdev == 0 {
            return Err(Errno(libc::EPERM).into());
        }
        self.make_special(parent, name, who, mode, |d, n| {
            sys::mknodat(d, n, fmt | (mode & 0o7777), rdev)
        })
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        who: Caller,
    ) -> Result<libc::stat> {
        let t = sys::cstr(target)?;
        self.make_special(parent, name, who, 0o777, |d, n| sys::symlinkat(&t, d, n))
    }

    /// Creates and opens a regular file; returns its status and a file handle.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> Result<(libc::stat, u64)> {
        let (_p, pfd, slot) = self.prepare_new(parent, name)?;
        let (uid, gid, mode) = self.new_owner(pfd.as_fd(), who, mode, false)?;
        let c = sys::cstr(name)?;
        if slot == Slot::Empty
            && let Some(fd) = Self::create_in_place(pfd.as_fd(), &c, uid, gid, mode)?
        {
            let (_, st) = self.new_node(parent, name, &pfd, false)?;
            return Ok((st, self.add_file(fd)));
        }
        let (fd, tmpname) = self.new_tmp_file(pfd.as_fd(), mode)?;
        sys::fchownat_empty(fd.as_fd(), uid, gid)?;
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            sys::chmod_at(fd.as_fd(), None, mode)?;
        }
        self.work()?.publish(
            &fd,
            tmpname.as_deref(),
            pfd.as_fd(),
            &c,
            slot == Slot::Whiteout,
        )?;
        self.drop_oci_whiteout(pfd.as_fd(), name, slot)?;
        let (_, st) = self.new_node(parent, name, &pfd, false)?;
        Ok((st, self.add_file(fd)))
    }

    /// A new regular file made directly at its name with the caller's ids as the thread's
    /// filesystem ids, so it is never seen with another owner (one syscall, where a
    /// temporary file costs four and, on ext4, the orphan list's lock). `None`: the ids could
    /// not be taken or do not give access; the caller makes it the long way.
    fn create_in_place(
        pfd: BorrowedFd<'_>,
        name: &CStr,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<Option<OwnedFd>> {
        let Some(ids) = sys::FsIds::switch(uid, gid) else {
            return Ok(None);
        };
        let r = sys::openat(
            pfd,
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            mode & 0o777,
        );
        drop(ids);
        let fd = match r {
            Ok(fd) => fd,
            Err(Errno(libc::EACCES | libc::EPERM)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let made = (|| {
            let st = sys::fstat(fd.as_fd())?;
            if st.st_uid != uid || st.st_gid != gid {
                sys::fchownat_empty(fd.as_fd(), uid, gid)?;
            }
            if st.st_mode & 0o7777 != mode {
                sys::chmod_at(fd.as_fd(), None, mode)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = sys::unlinkat(pfd, name, 0);
            return Err(e);
        }
        Ok(Some(fd))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<libc::stat> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno(libc::EPERM).into());
        }
        self.copy_up(&node, false)?;
        let (_p, pfd, slot) = self.prepare_new(newparent, newname)?;
        let obj = node.loc.read().obj.clone().ok_or(Errno(libc::EIO))?;
        let c = sys::cstr(newname)?;
        if slot == Slot::Empty {
            sys::link_tmpfile(obj.as_fd(), pfd.as_fd(), &c)?;
        } else {
            let work = self.work()?;
            let tmp = self.work()?.tmp_name();
            sys::link_tmpfile(obj.as_fd(), work.as_fd(), &tmp)?;
            self.publish(&tmp, pfd.as_fd(), newname, slot, false)?;
        }
        let st = sys::fstat(obj.as_fd())?;
        let n = self
            .nodes
            .acquire(node.ino, || unreachable!("the node is held"));
        Ok(self.present(&n, st))
    }

    /// Is the merged directory `r` empty (whiteouts and markers aside)?
    fn dir_is_empty(&self, r: &Resolved) -> Result<bool> {
        let mut hidden = std::collections::HashSet::new();
        if let Some(u) = r.dirs.upper() {
            let (real, wh) = read_layer_dir(u.fd.as_fd())?;
            if !real.is_empty() {
                return Ok(false);
            }
            hidden.extend(wh);
        }
        if !r.dirs.has_lower() {
            return Ok(true);
        }
        let cached = self
            .nodes
            .get(self.union_ino(&r.st))
            .filter(|n| n.is_dir())
            .and_then(|n| n.loc.read().index.clone());
        let index = match cached {
            Some(i) => i,
            None => Arc::new(LowerIndex::build(r.dirs.lowers())?),
        };
        Ok(!index
            .entries
            .iter()
            .any(|e| e.top.is_some() && !hidden.contains(&*e.name)))
    }

    /// Marks the node of a real object whose last name went away.
    fn mark_gone(&self, st: &libc::stat) {
        let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some(n) = self
            .nodes
            .get(self.union_ino(st))
            .filter(|_| dir || st.st_nlink <= 1)
        {
            n.loc.write().unlinked = true;
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.node(parent)?;
        let r = self.resolve(&p, name)?;
        if r.st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno(libc::EISDIR).into());
        }
        let r = self.up_whole_if_linked(&p, name, r)?;
        self.remove_name(&p, name, &r)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.node(parent)?;
        let r = self.resolve(&p, name)?;
        if r.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR).into());
        }
        if !self.dir_is_empty(&r)? {
            return Err(Errno(libc::ENOTEMPTY).into());
        }
        if !self.is_lower(r.top_layer) {
            let ufd = r.dir_fd()?;
            // Only whiteouts and markers are left in it.
            for e in sys::read_dir(ufd)? {
                remove_tree(ufd, &sys::cstr(&e.name)?)?;
            }
        }
        self.remove_name(&p, name, &r)
    }

    /// Takes `name` (resolved as `r`) out of the view: an upper entry is removed, with a
    /// whiteout in its place when a lower layer has the name; a lower one gets a whiteout.
    fn remove_name(&self, p: &Node, name: &OsStr, r: &Resolved) -> Result<()> {
        let need_wh = self.lower_visible(p, name)?;
        if !self.is_lower(r.top_layer) {
            let is_dir = r.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            self.remove_upper(r.top_dir.as_fd(), name, is_dir, need_wh)?;
        } else {
            let pfd = self.upper_dir(p)?;
            self.write_whiteout(pfd.as_fd(), name)?;
        }
        self.mark_gone(&r.st);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        let noreplace = flags & sys::RENAME_NOREPLACE != 0;
        if flags & !(sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE) != 0 || (exchange && noreplace) {
            return Err(Errno(libc::EINVAL).into());
        }
        self.check_new_name(newparent, newname)?;
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let mut src = self.resolve(&p, name)?;
        let dst = match self.resolve(&np, newname) {
            Ok(r) => Some(r),
            Err(e) if e.code() == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        // A metadata-only copy finds its data by its name: it comes up before a move.
        self.data_up_before_move(&p, name, &src)?;
        if exchange && let Some(d) = &dst {
            self.data_up_before_move(&np, newname, d)?;
        }
        let is_dir = |r: &Resolved| r.st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let has_lower = |r: &Resolved| r.dirs.has_lower();
        if let Some(d) = &dst {
            if self.union_ino(&d.st) == self.union_ino(&src.st) {
                return Ok(());
            }
            if noreplace {
                return Err(Errno(libc::EEXIST).into());
            }
            if !exchange {
                if is_dir(&src) && !is_dir(d) {
                    return Err(Errno(libc::ENOTDIR).into());
                }
                if !is_dir(&src) && is_dir(d) {
                    return Err(Errno(libc::EISDIR).into());
                }
            }
        } else if exchange {
            return Err(Errno(libc::ENOENT).into());
        }
        // The names of a lower hard-link group come up together before one of them is
        // replaced or moved: the others' link count follows. Bringing up the target's group
        // may bring up the source's directory: the source is then resolved anew.
        let dst = match dst {
            Some(d) => {
                let up = self.is_lower(d.top_layer) && d.st.st_nlink > 1;
                let d = self.up_whole_if_linked(&np, newname, d)?;
                if up {
                    src = self.resolve(&p, name)?;
                }
                Some(d)
            }
            None => None,
        };
        let src = self.up_whole_if_linked(&p, name, src)?;
        // A directory with lower content moves with a redirect to where that content is, as
        // overlayfs' redirect_dir does. The OCI format has no redirects: refused there, like
        // overlayfs without redirect_dir (tools then copy).
        let redirected = |r: &Resolved| is_dir(r) && has_lower(r);
        let dst_redirected = exchange && dst.as_ref().is_some_and(redirected);
        if (redirected(&src) || dst_redirected) && self.formats.oci {
            // No redirects in this format: the directories come up whole instead, cut off from
            // the lowers, and then move like any upper directory.
            for r in std::iter::once(&src).chain(dst.as_ref().filter(|_| dst_redirected)) {
                if redirected(r) {
                    let node = self
                        .nodes
                        .get(self.union_ino(&r.st))
                        .ok_or(Errno(libc::EXDEV))?;
                    self.copy_up_tree(&node)?;
                }
            }
            return self.rename(parent, name, newparent, newname, flags);
        }
        // As overlayfs: the target's emptiness is checked after the EXDEV refusal.
        // A target directory merged with lower ones is checked here (the view decides); one
        // that is only in the upper is left to the upper's own rename, after the copy-ups, as
        // overlayfs does (the copy-ups stay even when that rename fails).
        let merged_target = dst
            .as_ref()
            .filter(|d| !exchange && is_dir(d) && has_lower(d));
        if merged_target.map(|d| self.dir_is_empty(d)).transpose()? == Some(false) {
            return Err(Errno(libc::ENOTEMPTY).into());
        }
        if redirected(&src) {
            self.set_redirect(&src)?;
        }
        if dst_redirected {
            self.set_redirect(dst.as_ref().expect("checked"))?;
        }
        self.bring_up(&p, name, &src)?;
        if exchange {
            self.bring_up(&np, newname, dst.as_ref().expect("checked"))?;
        }
        let spfd = self.upper_dir(&p)?;
        let dpfd = self.upper_dir(&np)?;
        let (c, nc) = (sys::cstr(name)?, sys::cstr(newname)?);
        let src_wh = self.lower_visible(&p, name)?;
        let dst_lower = self.lower_visible(&np, newname)?;
        if exchange {
            let d = dst.as_ref().expect("checked");
            sys::renameat2(spfd.as_fd(), &c, dpfd.as_fd(), &nc, sys::RENAME_EXCHANGE)?;
            // A directory landing where a lower one is must not merge with it.
            if is_dir(&src) && !redirected(&src) && dst_lower {
                self.set_opaque(src.dir_fd()?)?;
            }
            if is_dir(d) && !redirected(d) && src_wh {
                self.set_opaque(d.dir_fd()?)?;
            }
            self.moved(&src, newparent, newname, &dpfd);
            self.moved(d, parent, name, &spfd);
            return Ok(());
        }
        let slot = whiteout::upper_slot(dpfd.as_fd(), newname)?;
        match slot {
            Slot::Taken if merged_target.is_some() => {
                // Its upper part, which the view shows empty, holds only whiteouts.
                let ufd = dst.as_ref().expect("checked").dir_fd()?;
                for e in sys::read_dir(ufd)? {
                    remove_tree(ufd, &sys::cstr(&e.name)?)?;
                }
            }
            Slot::Whiteout if is_dir(&src) => sys::unlinkat(dpfd.as_fd(), &nc, 0)?,
            _ => {}
        }
        if is_dir(&src) && !redirected(&src) && (dst_lower || slot != Slot::Empty) {
            self.set_opaque(src.dir_fd()?)?;
        }
        self.move_leaving_whiteout(spfd.as_fd(), name, dpfd.as_fd(), newname, src_wh)?;
        self.drop_oci_whiteout(dpfd.as_fd(), newname, slot)?;
        if let Some(d) = &dst {
            self.mark_gone(&d.st);
        }
        self.moved(&src, newparent, newname, &dpfd);
        Ok(())
    }

    /// Copies a directory and everything the view shows in it into the upper, then makes it
    /// opaque: from then on the lowers have no part in it.
    fn copy_up_tree(&self, node: &Arc<Node>) -> Result<()> {
        let ufd = self.upper_dir(node)?;
        for e in self.merged_entries(node)?.into_iter().skip(2) {
            let r = self.resolve(node, &e.name)?;
            if r.st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                let child = self.node_for(&r.st, || {
                    Location::new(
                        node.ino,
                        e.name.clone(),
                        r.top_layer,
                        Some(r.top_dir.clone()),
                        r.dirs.clone(),
                    )
                });
                self.copy_up_tree(&child)?;
            } else {
                self.bring_up(node, &e.name, &r)?;
            }
        }
        self.set_opaque(ufd.as_fd())?;
        let mut loc = node.loc.write();
        loc.dirs.keep_top();
        loc.index = None;
        drop(loc);
        self.notify_changed(node.ino);
        Ok(())
    }

    /// Copies a directory with lower content up (itself, not its tree) and records where
    /// that content is, so that it can move.
    fn set_redirect(&self, r: &Resolved) -> Result<()> {
        let node = self
            .nodes
            .get(self.union_ino(&r.st))
            .ok_or(Errno(libc::EXDEV))?;
        let path = self.lower_path(&node)?;
        let ufd = self.upper_dir(&node)?;
        if whiteout::redirect_of(ufd.as_fd())?.is_none() {
            sys::setxattr(
                ufd.as_fd(),
                None,
                self.formats.redirect_xattr(),
                Some(&path),
                0,
            )?;
        }
        Ok(())
    }

    /// Where a directory's lower content is: its own redirect, or its parent's lower path
    /// and its name.
    fn lower_path(&self, node: &Node) -> Result<Vec<u8>> {
        if node.ino == super::inode::ROOT_INO {
            return Ok(Vec::new());
        }
        let (parent, name, upper) = {
            let loc = node.loc.read();
            let upper = loc.dirs.upper().map(|d| d.fd.clone());
            (loc.parent, loc.name.clone(), upper)
        };
        let mut own = name.as_bytes().to_vec();
        match upper
            .map(|u| whiteout::redirect_of(u.as_fd()))
            .transpose()?
            .flatten()
        {
            Some(whiteout::Redirect::Absolute(comps)) => {
                let mut path = Vec::new();
                for c in comps {
                    path.push(b'/');
                    path.extend_from_slice(c.as_bytes());
                }
                return Ok(path);
            }
            Some(whiteout::Redirect::Relative(n)) => own = n.as_bytes().to_vec(),
            None => {}
        }
        let mut path = self.lower_path(&*self.node(parent)?)?;
        path.push(b'/');
        path.extend_from_slice(&own);
        Ok(path)
    }

    /// A lower non-directory with several names comes up whole (every name the view shows
    /// linked to one copy) before one of its names changes, so the others keep showing it
    /// and its link count follows, as overlayfs' index does. Returns `name` resolved anew.
    fn up_whole_if_linked(&self, parent: &Node, name: &OsStr, r: Resolved) -> Result<Resolved> {
        let fmt = r.st.st_mode & libc::S_IFMT;
        if !self.is_lower(r.top_layer) || fmt == libc::S_IFDIR || r.st.st_nlink <= 1 {
            return Ok(r);
        }
        let node = self.node_of_resolved(parent, name, &r);
        self.copy_up(&node, false).and_then(|_| {
            let again = self.resolve(parent, name)?;
            if !self.is_lower(again.top_layer) {
                return Ok(again);
            }
            // A name the copy-up could not find: linked here.
            let obj = node.loc.read().obj.clone().ok_or(Errno(libc::EIO))?;
            let pfd = self.upper_dir(parent)?;
            sys::link_tmpfile(obj.as_fd(), pfd.as_fd(), &sys::cstr(name)?)?;
            self.resolve(parent, name)
        })
    }

    /// The node of the non-directory `name` in `parent` resolved to (made if the kernel
    /// holds none).
    fn node_of_resolved(
        &self,
        parent: &Node,
        name: &OsStr,
        r: &Resolved,
    ) -> super::inode::LookupRef<'_> {
        self.node_for(&r.st, || {
            Location::new(
                parent.ino,
                name.to_owned(),
                r.top_layer,
                Some(r.top_dir.clone()),
                DirStack::default(),
            )
        })
    }

    /// An upper metadata-only copy (its data found below by its name, or its redirect's)
    /// about to be renamed: its data is copied up first, so that it no longer depends on
    /// where it is. (Kernel overlayfs writes a redirect instead; both read the same.)
    fn data_up_before_move(&self, parent: &Node, name: &OsStr, r: &Resolved) -> Result<()> {
        if self.is_lower(r.top_layer) || r.st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let c = sys::cstr(name)?;
        if !super::metacopy::is_marked(r.top_dir.as_fd(), &c) {
            return Ok(());
        }
        let node = self.node_of_resolved(parent, name, r);
        if node.loc.read().obj.is_none() {
            let obj = sys::openat(r.top_dir.as_fd(), &c, libc::O_PATH, 0)?;
            node.loc.write().obj = Some(Arc::new(obj));
        }
        self.copy_up_data_keeping(&node, false, true)
    }

    /// Copies up the object that `name` in `parent` resolved to, by that name.
    fn bring_up(&self, parent: &Node, name: &OsStr, r: &Resolved) -> Result<()> {
        if !self.is_lower(r.top_layer) {
            return Ok(());
        }
        if r.st.st_nlink > 1 && r.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            let again = self.resolve(parent, name)?;
            self.up_whole_if_linked(parent, name, again)?;
            return Ok(());
        }
        if let Some(n) = self.nodes.get(self.union_ino(&r.st)) {
            // Copy-up brings every visible name of a multiply-linked object up with it.
            self.copy_up(&n, false)?;
        }
        let c = sys::cstr(name)?;
        let pfd = self.upper_dir(parent)?;
        match sys::fstatat(pfd.as_fd(), &c) {
            Ok(_) => Ok(()),
            // No node, or the node stands for another name of the object: copy this one.
            Err(Errno(libc::ENOENT)) => self
                .copy_up_entry(r.top_dir.as_fd(), &c, &r.st, pfd.as_fd(), &c, false)
                .map(drop),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that the object of `r` is now `name` in `parent` (upper dir `pfd`).
    fn moved(&self, r: &Resolved, parent: u64, name: &OsStr, pfd: &Arc<OwnedFd>) {
        if let Some(n) = self.nodes.get(self.union_ino(&r.st)) {
            let mut loc = n.loc.write();
            loc.parent = parent;
            loc.name = name.to_owned();
            loc.top_dir = Some(pfd.clone());
        }
    }
}
