//! The union core: plain Rust over real directories, no FUSE types. Every operation takes
//! union inode numbers and returns `Result<_, Errno>`.

pub mod attr;
pub mod copy_up;
pub mod dir;
pub mod file;
pub mod ids;
pub mod inode;
pub mod layer;
pub mod lookup;
pub mod readdir;
pub mod whiteout;

use std::ffi::{CStr, OsStr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::sys::{self, Errno, Result};
use inode::{InoMap, Location, Node, NodeTable, ROOT_INO};
use layer::Layer;
use lookup::{LowerIndex, Resolved};

/// What a union is made of: ordered lowers (the first is the top) and an optional upper.
#[derive(Debug, Clone, Default)]
pub struct UnionConfig {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    /// Skip fsync to the upper (throwaway containers).
    pub volatile: bool,
    /// Write OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) even where kernel ones are possible.
    pub oci_whiteouts: bool,
    /// Owner translation between the layers and the view (fuse-overlayfs's options).
    pub ids: ids::IdMap,
    /// A work directory on the upper's filesystem, as kernel overlayfs and fuse-overlayfs
    /// take one. Without it the work dir is a hidden directory in the upper.
    pub workdir: Option<PathBuf>,
    /// A read-only mount: nothing is written anywhere, not even the work dir.
    pub read_only: bool,
}

/// Who asks: new objects belong to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The asking process (0 when unknown): its supplementary groups are read when needed.
    pub pid: u32,
}

impl Caller {
    /// Is the caller a member of `gid` (as its own group or a supplementary one)? Root counts
    /// as a member of every group, as the kernel's `in_group_or_capable` has it.
    pub fn in_group_or_root(&self, gid: u32) -> bool {
        self.uid == 0 || self.gid == gid || sys::process_groups(self.pid).contains(&gid)
    }
}

pub struct Union {
    pub layers: Vec<Layer>,
    /// The lower layers' roots, top-down, where absolute redirects start.
    lower_roots: Vec<(usize, Arc<std::os::fd::OwnedFd>)>,
    pub has_upper: bool,
    pub nodes: NodeTable,
    inos: InoMap,
    files: DashMap<u64, Arc<std::os::fd::OwnedFd>>,
    dirs: DashMap<u64, Arc<readdir::DirSnapshot>>,
    next_fh: AtomicU64,
    work: Option<std::os::fd::OwnedFd>,
    /// Where the work dir was made: its parent and name, removed at the end.
    work_at: Option<(std::os::fd::OwnedFd, &'static CStr)>,
    work_in_upper: bool,
    next_tmp: AtomicU64,
    pub volatile: bool,
    /// Whiteouts and opaque markers are written in the OCI format (asked, or no choice).
    pub ids: ids::IdMap,
    pub oci_whiteouts: bool,
    pub(super) opaque_xattr: &'static std::ffi::CStr,
    /// Told the inode number of a node whose attributes copy-up changed (the adapter drops
    /// the kernel's cached attributes, which it may hold for long on lower nodes).
    changed: std::sync::OnceLock<ChangeHook>,
    /// The upper's lock, held for the life of the union (and so of its daemon): one
    /// writable mount of an upper at a time, any number of read-only ones.
    _upper_lock: Option<std::fs::File>,
}

pub type ChangeHook = Box<dyn Fn(u64) + Send + Sync>;

impl Drop for Union {
    /// A clean unmount leaves no work dir behind (it is empty unless an operation failed).
    fn drop(&mut self) {
        if let Some(work) = &self.work {
            let _ = sys::unlinkat(work.as_fd(), copy_up::SHARED_WHITEOUT, 0);
        }
        if let Some((dir, name)) = &self.work_at {
            let _ = sys::unlinkat(dir.as_fd(), name, libc::AT_REMOVEDIR);
        }
    }
}

/// How long a mount waits for the upper's lock: a daemon whose mount was just unmounted
/// may still be closing (plain `umount` does not wait for it).
const UPPER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes the upper's lock (`flock` on the directory: it goes with the process, even after
/// a `kill -9`): exclusive for a writable mount, shared for a read-only one. EBUSY when
/// another mount holds it.
fn lock_upper(upper: &std::path::Path, read_only: bool) -> Result<std::fs::File> {
    let f = std::fs::File::open(upper).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    let end = std::time::Instant::now() + UPPER_LOCK_WAIT;
    loop {
        match sys::flock(f.as_fd(), op | libc::LOCK_NB) {
            Ok(()) => return Ok(f),
            Err(Errno(libc::EWOULDBLOCK)) => {}
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() > end {
            return Err(Errno(libc::EBUSY));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Union {
    pub fn new(cfg: &UnionConfig) -> Result<Union> {
        let mut layers = Vec::new();
        let upper_lock = match &cfg.upper {
            Some(u) => Some(lock_upper(u, cfg.read_only)?),
            None => None,
        };
        if let Some(u) = &cfg.upper {
            layers.push(Layer::open(0, u.clone(), true)?);
        }
        for l in &cfg.lowers {
            layers.push(Layer::open(layers.len(), l.clone(), false)?);
        }
        if layers.is_empty() {
            return Err(Errno(libc::EINVAL));
        }
        let mut u = Union {
            has_upper: cfg.upper.is_some(),
            nodes: NodeTable::default(),
            inos: InoMap::default(),
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
            work: None,
            work_at: None,
            work_in_upper: cfg.workdir.is_none(),
            next_tmp: AtomicU64::new(0),
            volatile: cfg.volatile,
            oci_whiteouts: cfg.oci_whiteouts,
            ids: cfg.ids.clone(),
            opaque_xattr: c"trusted.overlay.opaque",
            changed: std::sync::OnceLock::new(),
            _upper_lock: upper_lock,
            lower_roots: layers
                .iter()
                .filter(|l| !l.writable)
                .map(|l| (l.idx, l.root.clone()))
                .collect(),
            layers,
        };
        if u.has_upper && !cfg.read_only {
            u.setup_work(cfg.workdir.as_deref())?;
        }
        let root_st = sys::fstat(u.layers[0].root.as_fd())?;
        // Give the top layer's filesystem index 0, so samefs unions show real inode numbers.
        u.inos.map(root_st.st_dev, root_st.st_ino);
        let dirs = u.layers.iter().map(|l| (l.idx, l.root.clone())).collect();
        u.nodes.insert_root(Node::new(
            ROOT_INO,
            libc::S_IFDIR,
            Location::new(ROOT_INO, "/".into(), 0, None, dirs),
        ));
        Ok(u)
    }

    /// Makes (or empties, after a crash) the work dir, and finds which formats this process
    /// may write: a 0/0 device for whiteouts, `trusted.*` or `user.*` xattrs for opaque dirs.
    fn setup_work(&mut self, workdir: Option<&std::path::Path>) -> Result<()> {
        let upper = self.layers[0].root.clone();
        let (root, name): (std::os::fd::OwnedFd, &'static CStr) = match workdir {
            None => (
                upper.try_clone().map_err(|_| Errno(libc::EMFILE))?,
                c".unionfuse-work",
            ),
            Some(w) => {
                let fd = sys::open_dir_path(w)?;
                // Copies are published by rename and link: same filesystem only.
                if sys::fstat(fd.as_fd())?.st_dev != sys::fstat(upper.as_fd())?.st_dev {
                    return Err(Errno(libc::EXDEV));
                }
                (fd, c"unionfuse")
            }
        };
        match sys::mkdirat(root.as_fd(), name, 0o700) {
            Ok(()) | Err(Errno(libc::EEXIST)) => {}
            Err(e) => return Err(e),
        }
        let work = sys::openat(root.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for e in sys::read_dir(work.as_fd())? {
            copy_up::remove_tree(work.as_fd(), &sys::cstr(&e.name)?)?;
        }
        let probe = c"probe";
        if sys::mknodat(work.as_fd(), probe, libc::S_IFCHR, 0).is_ok() {
            sys::unlinkat(work.as_fd(), probe, 0)?;
        } else {
            self.oci_whiteouts = true;
        }
        sys::mkdirat(work.as_fd(), probe, 0o700)?;
        let pfd = sys::openat(work.as_fd(), probe, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        if sys::setxattr(pfd.as_fd(), None, c"trusted.overlay.opaque", Some(b"y"), 0).is_err() {
            self.opaque_xattr = c"user.overlay.opaque";
            if sys::setxattr(pfd.as_fd(), None, self.opaque_xattr, Some(b"y"), 0).is_err() {
                self.oci_whiteouts = true;
            }
        }
        drop(pfd);
        sys::unlinkat(work.as_fd(), probe, libc::AT_REMOVEDIR)?;
        self.work = Some(work);
        self.work_at = Some((root, name));
        Ok(())
    }

    pub fn on_change(&self, hook: ChangeHook) {
        let _ = self.changed.set(hook);
    }

    pub(super) fn notify_changed(&self, ino: u64) {
        if let Some(h) = self.changed.get() {
            h(ino);
        }
    }

    /// Is `name` in `parent` the work dir, which the view never shows?
    pub fn is_reserved(&self, parent: u64, name: &OsStr) -> bool {
        self.has_upper && self.work_in_upper && parent == ROOT_INO && name == copy_up::WORK_NAME
    }

    pub fn is_lower(&self, layer: usize) -> bool {
        !self.layers[layer].writable
    }

    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes.get(ino).ok_or(Errno(libc::ESTALE))
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The merged index of a directory node's lower layers, built on first use.
    pub fn lower_index(&self, node: &Node) -> Result<Arc<LowerIndex>> {
        let lower_dirs: Vec<_> = {
            let loc = node.loc.read();
            if let Some(i) = &loc.index {
                return Ok(i.clone());
            }
            loc.dirs
                .iter()
                .filter(|(l, _)| self.is_lower(*l))
                .cloned()
                .collect()
        };
        let built = Arc::new(LowerIndex::build(&lower_dirs)?);
        let mut loc = node.loc.write();
        Ok(loc.index.get_or_insert(built).clone())
    }

    /// Resolves `name` in the directory `parent`, top-down.
    fn resolve(&self, parent: &Node, name: &OsStr) -> Result<Resolved> {
        if !parent.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        lookup::check_name(name)?;
        if self.is_reserved(parent.ino, name) {
            return Err(Errno(libc::ENOENT));
        }
        let c = sys::cstr(name)?;
        let pdirs = parent.loc.read().dirs.clone();
        let mut upper_hit = None;
        let mut lower_allowed = true;
        let upper = pdirs.first().filter(|(l, _)| !self.is_lower(*l));
        if let Some((l, ufd)) = upper {
            match sys::fstatat(ufd.as_fd(), &c) {
                Ok(st) => {
                    if whiteout::is_whiteout(ufd.as_fd(), &c, &st)? {
                        return Err(Errno(libc::ENOENT));
                    }
                    lower_allowed = st.st_mode & libc::S_IFMT == libc::S_IFDIR
                        && !whiteout::has_oci_whiteout(ufd.as_fd(), name)?;
                    upper_hit = Some((*l, ufd.clone(), st));
                }
                // An OCI whiteout for the name matters only if a lower layer has it: asked
                // below, once the index says so (a name found nowhere costs one probe).
                Err(Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        let has_lower = pdirs.iter().any(|(l, _)| self.is_lower(*l));
        let index = if lower_allowed && has_lower {
            Some(self.lower_index(parent)?)
        } else {
            None
        };
        let entry = index.as_ref().and_then(|i| i.get(name));
        match upper_hit {
            Some((layer, ufd, st)) => {
                let mut dirs = Vec::new();
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    let fd = sys::openat(ufd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                    let m = whiteout::dir_markers(fd.as_fd())?;
                    dirs.push((layer, Arc::new(fd)));
                    if let Some(rd) = m.redirect {
                        // A renamed directory: its lower content is where it came from.
                        let path = lookup::BelowPath::name(name).redirected(&rd);
                        dirs.extend(lookup::chain_below(&self.lower_roots, &pdirs, layer, path)?);
                    } else if let Some(e) = entry.filter(|e| !m.opaque && !e.chain.is_empty()) {
                        dirs.extend(lookup::open_dir_chain(
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
                if let Some((_, ufd)) = upper
                    && whiteout::has_oci_whiteout(ufd.as_fd(), name)?
                {
                    return Err(Errno(libc::ENOENT));
                }
                let layer = top.layer;
                let top_dir = pdirs
                    .iter()
                    .find(|(l, _)| *l == layer)
                    .map(|(_, fd)| fd.clone())
                    .ok_or(Errno(libc::EIO))?;
                let st = sys::fstatat(top_dir.as_fd(), &c)?;
                // An xattr whiteout in a directory not marked for them: listed (as the
                // kernel lists it) but not found.
                if matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFIFO)
                    && whiteout::is_whiteout(top_dir.as_fd(), &c, &st)?
                {
                    return Err(Errno(libc::ENOENT));
                }
                let dirs = if e.chain.is_empty() {
                    Vec::new()
                } else {
                    lookup::open_dir_chain(&self.lower_roots, &pdirs, e.chain.clone(), name)?
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

    /// Looks `name` up in `parent` and takes one lookup reference on the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<libc::stat> {
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
        if alias && let Some(obj) = node.loc.read().obj.clone() {
            // Another name of a lower object that was copied up: the view shows the copy
            // (its data, size and links), as overlayfs' index does.
            return Ok(self.present(&node, sys::fstat(obj.as_fd())?));
        }
        Ok(self.present(&node, r.st))
    }

    /// Takes a lookup reference on the node of the real object `st`, making it from `loc`
    /// when absent. A node still held for a deleted object whose inode number the filesystem
    /// has reused is left alone: the new object gets a number of its own.
    pub(super) fn node_for(&self, st: &libc::stat, loc: impl Fn() -> Location) -> Arc<Node> {
        let fmt = st.st_mode & libc::S_IFMT;
        let mut ino = self.inos.map(st.st_dev, st.st_ino);
        loop {
            let node = self.nodes.acquire(ino, || Node::new(ino, fmt, loc()));
            let stale = node.fmt != fmt || node.loc.read().unlinked;
            if !stale {
                return node;
            }
            self.nodes.forget(ino, 1);
            ino = self.inos.remap(st.st_dev, st.st_ino);
        }
    }

    /// Gives an upper non-directory node its own `O_PATH` fd, once.
    fn attach_obj(&self, node: &Node, r: &Resolved, name: &OsStr) -> Result<()> {
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

    /// Drops `n` of the kernel's lookups on `ino`; true when its node went.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        self.nodes.forget(ino, n)
    }

    /// Inode number of a real object, as the union shows it.
    pub fn union_ino(&self, st: &libc::stat) -> u64 {
        self.inos.map(st.st_dev, st.st_ino)
    }
}
