//! Top-down name resolution: the upper probed afresh, the lowers through their index;
//! opaque directories and redirects (of every layer) followed as kernel overlayfs does.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Union;
use super::error::Result;
use super::index::LowerIndex;
use super::inode::{Location, LookupRef, Node};
use super::layer::{DirStack, LayerDir};
use super::readdir::DirEntry;
use super::whiteout;
use crate::sys::{self, Errno};

/// The outcome of resolving one name in one merged directory.
#[derive(Debug)]
pub struct Resolved {
    pub top_layer: usize,
    pub top_dir: Arc<OwnedFd>,
    pub st: libc::stat,
    /// Directories: the contributing real directories, top-down, cut at the first opaque one.
    pub dirs: DirStack,
}

impl Resolved {
    /// A directory's top real directory.
    pub fn dir_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        Ok(self.dirs.top().ok_or(Errno(libc::EIO))?.fd.as_fd())
    }
}

/// Opens `name` in the given layers' parent directories as a directory, top-down (the
/// layers the lower index found a directory of that name in), stopping after the first
/// opaque one. A redirect in one of them sends the layers below it to another path.
pub fn open_dir_chain(
    roots: &[LayerDir],
    parent_dirs: &DirStack,
    layers: impl IntoIterator<Item = usize>,
    name: &OsStr,
) -> Result<Vec<LayerDir>> {
    let c = sys::cstr(name)?;
    let mut out = Vec::new();
    for layer in layers {
        let Some(pdir) = parent_dirs.in_layer(layer) else {
            continue;
        };
        let fd = Arc::new(sys::openat(
            pdir.fd.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
        let m = whiteout::dir_markers(fd.as_fd())?;
        out.push(LayerDir {
            layer,
            fd,
            upper: false,
        });
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
    roots: &[LayerDir],
    parent_dirs: &DirStack,
    after: usize,
    mut path: BelowPath,
) -> Result<Vec<LayerDir>> {
    let mut out = Vec::new();
    for root in roots.iter().filter(|r| r.layer > after) {
        let base = if path.absolute {
            root.fd.clone()
        } else {
            match parent_dirs.in_layer(root.layer) {
                Some(d) => d.fd.clone(),
                None => continue,
            }
        };
        let mut stop = false;
        if let Some(fd) = walk_layer(&base, &mut path, &mut stop)? {
            out.push(LayerDir {
                layer: root.layer,
                fd,
                upper: false,
            });
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
                Err(e) => Err(e.into()),
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
        return Err(Errno(libc::ENAMETOOLONG).into());
    }
    if whiteout::is_oci_name(name) {
        return Err(Errno(libc::ENOENT).into());
    }
    Ok(())
}

impl Union {
    /// The merged index of a directory node's lower layers, built on first use.
    pub fn lower_index(&self, node: &Node) -> Result<Arc<LowerIndex>> {
        let dirs = {
            let loc = node.loc.read();
            if let Some(i) = &loc.index {
                return Ok(i.clone());
            }
            loc.dirs.clone()
        };
        let built = Arc::new(LowerIndex::build(dirs.lowers())?);
        let mut loc = node.loc.write();
        Ok(loc.index.get_or_insert(built).clone())
    }

    /// Resolves `name` in the directory `parent`, top-down.
    pub(super) fn resolve(&self, parent: &Node, name: &OsStr) -> Result<Resolved> {
        if !parent.is_dir() {
            return Err(Errno(libc::ENOTDIR).into());
        }
        check_name(name)?;
        if self.is_reserved(parent.ino, name) {
            return Err(Errno(libc::ENOENT).into());
        }
        let c = sys::cstr(name)?;
        let pdirs = parent.loc.read().dirs.clone();
        let mut upper_hit = None;
        let mut lower_allowed = true;
        let upper = pdirs.upper();
        if let Some(LayerDir {
            layer: l, fd: ufd, ..
        }) = upper
        {
            match sys::fstatat(ufd.as_fd(), &c) {
                Ok(st) => {
                    if whiteout::is_whiteout(ufd.as_fd(), &c, &st)? {
                        return Err(Errno(libc::ENOENT).into());
                    }
                    lower_allowed = st.st_mode & libc::S_IFMT == libc::S_IFDIR
                        && !whiteout::has_oci_whiteout(ufd.as_fd(), name)?;
                    upper_hit = Some((*l, ufd.clone(), st));
                }
                // An OCI whiteout for the name matters only if a lower layer has it: asked
                // below, once the index says so (a name found nowhere costs one probe).
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let has_lower = pdirs.has_lower();
        let index = if lower_allowed && has_lower {
            Some(self.lower_index(parent)?)
        } else {
            None
        };
        let entry = index.as_ref().and_then(|i| i.get(name));
        match upper_hit {
            Some((layer, ufd, st)) => {
                let mut dirs = DirStack::default();
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    let fd = sys::openat(ufd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    let m = whiteout::dir_markers(fd.as_fd())?;
                    dirs.push(LayerDir::upper(Arc::new(fd)));
                    if let Some(rd) = m.redirect {
                        // A renamed directory: its lower content is where it came from.
                        let path = BelowPath::name(name).redirected(&rd);
                        dirs.extend(chain_below(&self.lower_roots, &pdirs, layer, path)?);
                    } else if let Some(e) = entry.filter(|e| !m.opaque && !e.chain.is_empty()) {
                        dirs.extend(open_dir_chain(
                            &self.lower_roots,
                            &pdirs,
                            e.chain.clone(),
                            name,
                        )?);
                    }
                }
                Ok(Resolved {
                    top_layer: layer,
                    top_dir: ufd,
                    st,
                    dirs,
                })
            }
            None => {
                let e = entry.ok_or(Errno(libc::ENOENT))?;
                let top = e.top.as_ref().ok_or(Errno(libc::ENOENT))?;
                if let Some(u) = upper
                    && whiteout::has_oci_whiteout(u.fd.as_fd(), name)?
                {
                    return Err(Errno(libc::ENOENT).into());
                }
                let layer = top.layer;
                let top_dir = pdirs.in_layer(layer).ok_or(Errno(libc::EIO))?.fd.clone();
                let st = sys::fstatat(top_dir.as_fd(), &c)?;
                // An xattr whiteout in a directory not marked for them: listed (as the
                // kernel lists it) but not found.
                if matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFIFO)
                    && whiteout::is_whiteout(top_dir.as_fd(), &c, &st)?
                {
                    return Err(Errno(libc::ENOENT).into());
                }
                let dirs = if e.chain.is_empty() {
                    DirStack::default()
                } else {
                    let chain = open_dir_chain(&self.lower_roots, &pdirs, e.chain.clone(), name)?;
                    DirStack::new(chain)
                };
                Ok(Resolved {
                    top_layer: layer,
                    top_dir,
                    st,
                    dirs,
                })
            }
        }
    }

    /// Looks `name` up in `parent` and takes one lookup reference on the result, for the
    /// kernel to give back with a forget.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<libc::stat> {
        let (held, st) = self.lookup_ref(parent, name)?;
        held.keep();
        Ok(st)
    }

    /// `lookup`, with the reference in a guard that gives it back unless kept.
    fn lookup_ref(&self, parent: u64, name: &OsStr) -> Result<(LookupRef<'_>, libc::stat)> {
        let pnode = self.node(parent)?;
        let r = self.resolve(&pnode, name)?;
        let node = self.node_for(&r.st, || {
            Location::new(
                parent,
                name.to_owned(),
                r.top_layer,
                Some(r.top_dir.clone()),
                r.dirs.clone(),
            )
        });
        self.attach_obj(&node, &r, name)?;
        let alias = !node.is_dir() && self.is_lower(r.top_layer);
        let copy = node.loc.read().obj.clone();
        if alias && let Some(obj) = copy {
            // Another name of a lower object that was copied up: the view shows the copy
            // (its data, size and links), as overlayfs' index does.
            let st = self.present(&node, sys::fstat(obj.as_fd())?);
            return Ok((node, st));
        }
        let st = self.present(&node, r.st);
        Ok((node, st))
    }

    /// The entries of an open directory from `offset` with their attributes, for
    /// readdirplus: `add` gets each entry (its offset, and its status unless it is `.`, `..`
    /// or a name that no longer resolves) until it says the reply is full. An entry's lookup
    /// reference goes to the kernel only if the entry was sent.
    pub fn listing_plus(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry, Option<&libc::stat>) -> bool,
    ) -> Result<()> {
        let listing = self.dir_listing(fh, offset)?;
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            let dot = e.name == "." || e.name == "..";
            let found = if dot {
                None
            } else {
                self.lookup_ref(dir, &e.name).ok()
            };
            if add(i as u64 + 1, e, found.as_ref().map(|(_, st)| st)) {
                // Not sent: the guard gives its reference back.
                break;
            }
            if let Some((held, _)) = found {
                held.keep();
            }
        }
        Ok(())
    }

    /// Takes a lookup reference on the node of the real object `st`, making it from `loc`
    /// when absent. A node still held for a deleted object whose inode number the filesystem
    /// has reused is left alone: the new object gets a number of its own.
    pub(super) fn node_for(&self, st: &libc::stat, loc: impl Fn() -> Location) -> LookupRef<'_> {
        let fmt = st.st_mode & libc::S_IFMT;
        let mut ino = self.inos.map(st.st_dev, st.st_ino);
        loop {
            let node = self.nodes.acquire(ino, || Node::new(ino, fmt, loc()));
            let stale = node.fmt != fmt || node.loc.read().unlinked;
            if !stale {
                return node;
            }
            drop(node);
            ino = self.inos.remap(st.st_dev, st.st_ino);
        }
    }

    /// Gives an upper non-directory node its own `O_PATH` fd, once.
    pub(super) fn attach_obj(&self, node: &Node, r: &Resolved, name: &OsStr) -> Result<()> {
        if node.is_dir() || self.is_lower(r.top_layer) || node.loc.read().obj.is_some() {
            return Ok(());
        }
        let fd = sys::openat(r.top_dir.as_fd(), &sys::cstr(name)?, libc::O_PATH, 0)?;
        if node.fmt == libc::S_IFREG {
            let extra = whiteout::nlink_adjustment(fd.as_fd())?;
            node.extra_links.store(extra, Ordering::Relaxed);
        }
        let mut loc = node.loc.write();
        if loc.obj.is_none() {
            loc.obj = Some(Arc::new(fd));
        }
        Ok(())
    }
}
