//! The node table: one `Node` per inode the kernel knows, with the kernel's lookup counts, and
//! the mapping from real `(st_dev, st_ino)` pairs to stable union inode numbers.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use super::index::LowerIndex;
use super::layer::DirStack;

pub const ROOT_INO: u64 = 1;

/// Where a node's real objects are.
#[derive(Debug, Clone)]
pub struct Location {
    pub parent: u64,
    pub name: OsString,
    /// Layer of the object that is seen (the topmost one).
    pub top_layer: usize,
    /// The directory in `top_layer` that holds the object under `name`; `None` for the root.
    pub top_dir: Option<Arc<OwnedFd>>,
    /// Directories only: the real directory in each layer that contributes, top-down, ending
    /// at the first opaque one.
    pub dirs: DirStack,
    /// Directories: merged listing of the lower layers, built on first use.
    pub index: Option<Arc<LowerIndex>>,
    /// The name was removed; the node lives on while the kernel (an open file) holds it.
    pub unlinked: bool,
    /// Upper non-directories: an `O_PATH` fd on the object itself, which stays valid across
    /// renames, other hard links and unlink.
    pub obj: Option<Arc<OwnedFd>>,
}

impl Location {
    pub fn new(
        parent: u64,
        name: OsString,
        top_layer: usize,
        top_dir: Option<Arc<OwnedFd>>,
        dirs: DirStack,
    ) -> Location {
        Location {
            parent,
            name,
            top_layer,
            top_dir,
            dirs,
            index: None,
            unlinked: false,
            obj: None,
        }
    }
}

/// How a node's top object is reached.
pub enum Object<'a> {
    /// Through an fd on the object itself: a directory's, or an upper object's own.
    Fd(&'a Arc<OwnedFd>),
    /// By name in its directory (a lower non-directory).
    Named(&'a Arc<OwnedFd>, &'a std::ffi::OsStr),
}

impl Object<'_> {
    pub fn stat(&self) -> crate::sys::Result<libc::stat> {
        use std::os::fd::AsFd;
        match self {
            Object::Fd(fd) => crate::sys::fstat(fd.as_fd()),
            Object::Named(dir, name) => crate::sys::fstatat(dir.as_fd(), &crate::sys::cstr(name)?),
        }
    }

    /// Runs `f` with the (fd, name) pair the `*at` calls take to reach the object: an fd
    /// with no name, or a directory and a name.
    pub fn with_at<T>(
        &self,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, Option<&std::ffi::CStr>) -> crate::sys::Result<T>,
    ) -> crate::sys::Result<T> {
        use std::os::fd::AsFd;
        match self {
            Object::Fd(fd) => f(fd.as_fd(), None),
            Object::Named(dir, name) => f(dir.as_fd(), Some(&crate::sys::cstr(name)?)),
        }
    }
}

impl Location {
    /// The node's top object: a directory's top directory, an upper object's own fd, or the
    /// name in its top directory.
    pub fn top(&self) -> crate::sys::Result<Object<'_>> {
        if let Some(d) = self.dirs.top() {
            return Ok(Object::Fd(&d.fd));
        }
        if let Some(obj) = &self.obj {
            return Ok(Object::Fd(obj));
        }
        let dir = self.top_dir.as_ref().ok_or(crate::sys::Errno(libc::EIO))?;
        Ok(Object::Named(dir, &self.name))
    }
}

#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// `st_mode & S_IFMT` of the top object.
    pub fmt: u32,
    pub lookups: AtomicU64,
    pub loc: RwLock<Location>,
    /// Held while the node is copied up: one copy-up at a time, concurrent writers wait.
    ///
    /// Lock order: a file's lock before any directory's (the copy-up of a hard-link group
    /// brings up the directories of its other names while holding the file's); a
    /// directory's before its parent's (a directory comes up after its parent, which it
    /// asks for while holding its own). Nothing that holds a directory's lock takes a
    /// file's or a descendant's, so no cycle can form. `loc` is never held across a
    /// `copy_lock` acquisition.
    pub copy_lock: Mutex<()>,
    /// Names of a lower hard-link group that no layer shows (hidden by a layer above) but
    /// that the link count still counts, as overlayfs' index does: added to the upper
    /// copy's `st_nlink` (kept in its `overlay.nlink` xattr, "U+N", across mounts).
    pub extra_links: std::sync::atomic::AtomicI64,
    /// Whether the node is a metadata-only copy whose data is below (`metacopy::YES`),
    /// not (`NO`), or not yet looked at (`UNKNOWN`).
    pub metacopy: std::sync::atomic::AtomicU8,
}

impl Node {
    pub fn new(ino: u64, fmt: u32, loc: Location) -> Node {
        Node {
            ino,
            fmt,
            lookups: AtomicU64::new(0),
            loc: RwLock::new(loc),
            copy_lock: Mutex::new(()),
            extra_links: std::sync::atomic::AtomicI64::new(0),
            metacopy: std::sync::atomic::AtomicU8::new(super::metacopy::UNKNOWN),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.fmt == libc::S_IFDIR
    }
}

/// One lookup reference on a node, given back when dropped (an error on the way, a
/// temporary use) unless `keep` passes it on to the kernel, which gives it back with a
/// forget: the counts cannot drift.
pub struct LookupRef<'a> {
    node: Option<Arc<Node>>,
    table: &'a NodeTable,
}

impl LookupRef<'_> {
    /// The reference now belongs to the kernel.
    pub fn keep(mut self) -> Arc<Node> {
        self.node.take().expect("a held reference")
    }
}

impl std::ops::Deref for LookupRef<'_> {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        self.node.as_ref().expect("a held reference")
    }
}

impl Drop for LookupRef<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.node.take() {
            self.table.forget(n.ino, 1);
        }
    }
}

/// Nodes by inode number. A node lives while the kernel holds a lookup on it.
#[derive(Debug, Default)]
pub struct NodeTable {
    map: DashMap<u64, Arc<Node>>,
    removed: AtomicU64,
}

const SHRINK_CHECK_EVERY: u64 = 1024;
const SHRINK_MIN: usize = 16384;

impl NodeTable {
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.map.get(&ino).map(|n| n.clone())
    }

    /// Takes one lookup reference on the node `ino`, creating it with `make` when absent.
    /// The reference goes back when the guard drops, unless `keep` hands it to the kernel.
    pub fn acquire(&self, ino: u64, make: impl FnOnce() -> Node) -> LookupRef<'_> {
        let entry = self.map.entry(ino).or_insert_with(|| Arc::new(make()));
        entry.lookups.fetch_add(1, Ordering::AcqRel);
        LookupRef {
            node: Some(entry.clone()),
            table: self,
        }
    }

    pub fn insert_root(&self, node: Node) {
        node.lookups.store(1, Ordering::Release);
        self.map.insert(node.ino, Arc::new(node));
    }

    /// Drops `n` lookups; the node goes when none is left (the root never goes). True when
    /// it went.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let Some(node) = self.get(ino) else {
            return false;
        };
        let prev = node
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(n))
            })
            .unwrap_or(0);
        let gone = prev <= n
            && self
                .map
                .remove_if(&ino, |_, v| v.lookups.load(Ordering::Acquire) == 0)
                .is_some();
        if gone
            && self
                .removed
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SHRINK_CHECK_EVERY)
        {
            // The table keeps its room after the kernel let go of a big walk; give most back.
            let cap = self.map.capacity();
            if cap > SHRINK_MIN && cap / 4 > self.map.len() {
                self.map.shrink_to_fit();
            }
        }
        gone
    }
}

/// Union inode numbers, in the manner of overlayfs' `xino`: the real inode number with the
/// index of its filesystem in the high bits. The first filesystem seen (the top layer's) gets
/// index 0, so a union whose layers share one filesystem shows the real inode numbers.
#[derive(Debug, Default)]
pub struct InoMap {
    devs: Mutex<Vec<u64>>,
    /// Real objects that were given a new number because theirs was still held by a node of
    /// a deleted object (filesystems reuse inode numbers).
    overrides: DashMap<(u64, u64), u64>,
    fallback: DashMap<(u64, u64), u64>,
    next_fallback: AtomicU64,
}

const FSID_SHIFT: u32 = 48;
const FALLBACK_BASE: u64 = 1 << 63;

impl InoMap {
    pub fn map(&self, dev: u64, ino: u64) -> u64 {
        if let Some(o) = self.overrides.get(&(dev, ino)) {
            return *o;
        }
        let fsid = {
            let mut devs = self.devs.lock();
            match devs.iter().position(|&d| d == dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(dev);
                    (devs.len() - 1) as u64
                }
            }
        };
        if ino >> FSID_SHIFT == 0 && fsid < (1 << 14) && !(fsid == 0 && ino <= ROOT_INO) {
            return (fsid << FSID_SHIFT) | ino;
        }
        *self
            .fallback
            .entry((dev, ino))
            .or_insert_with(|| FALLBACK_BASE + self.next_fallback.fetch_add(1, Ordering::Relaxed))
    }
}

impl InoMap {
    /// A copied-up object keeps the number it had: its new real identity maps to it.
    pub fn keep(&self, dev: u64, ino: u64, union_ino: u64) {
        self.overrides.insert((dev, ino), union_ino);
    }

    /// Gives the real object `(dev, ino)` a fresh union number from now on.
    pub fn remap(&self, dev: u64, ino: u64) -> u64 {
        let fresh = FALLBACK_BASE + self.next_fallback.fetch_add(1, Ordering::Relaxed);
        self.overrides.insert((dev, ino), fresh);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino_map_is_stable_and_distinct_across_devices() {
        let m = InoMap::default();
        let a = m.map(10, 500);
        let b = m.map(11, 500);
        assert_eq!(a, 500, "first device keeps real numbers");
        assert_ne!(a, b);
        assert_eq!(m.map(11, 500), b);
        assert_eq!(m.map(10, 500), a);
        let root_clash = m.map(10, 1);
        assert_ne!(root_clash, ROOT_INO);
        assert_eq!(m.map(10, 1), root_clash);
        let huge = m.map(10, 1 << 50);
        assert!(huge >= FALLBACK_BASE);
        assert_eq!(m.map(10, 1 << 50), huge);
    }

    #[test]
    fn forget_drops_node_at_zero_and_keeps_root() {
        let t = NodeTable::default();
        let loc = Location::new(
            1,
            "x".into(),
            0,
            None,
            super::super::layer::DirStack::default(),
        );
        t.insert_root(Node::new(ROOT_INO, libc::S_IFDIR, loc.clone()));
        t.acquire(7, || Node::new(7, libc::S_IFREG, loc.clone()))
            .keep();
        t.acquire(7, || unreachable!("exists")).keep();
        // A reference not kept goes back by itself.
        drop(t.acquire(7, || unreachable!("exists")));
        assert_eq!(t.get(7).unwrap().lookups.load(Ordering::Relaxed), 2);
        assert!(!t.forget(7, 1));
        assert!(t.get(7).is_some());
        assert!(t.forget(7, 1));
        assert!(t.get(7).is_none());
        assert!(!t.forget(7, 1));
        assert!(!t.forget(ROOT_INO, 100));
        assert!(t.get(ROOT_INO).is_some());
    }
}
