//! The union core: plain Rust over real directories, no FUSE types. Every operation takes
//! union inode numbers and returns `Result<_, Errno>`.

pub(crate) mod attr;
pub(crate) mod copy_up;
pub(crate) mod dir;
pub(crate) mod error;
pub(crate) mod file;
pub(crate) mod ids;
pub(crate) mod index;
pub(crate) mod inode;
pub(crate) mod layer;
pub(crate) mod lookup;
pub(crate) mod metacopy;
pub(crate) mod readdir;
pub(crate) mod whiteout;
pub(crate) mod work;

pub use attr::{SetAttr, Time};
pub use error::{Error, Result};
pub(crate) use work::{is_work_name, remove_tree};

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::sys::{self, Errno};
use error::Context;
use inode::{InoMap, Location, Node, NodeTable, ROOT_INO};
use layer::Layer;
use layer::LayerDir;
use work::WorkDir;

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
    /// Show the owner and mode kept in `user.containers.override_stat` where a file has one.
    pub override_stat: bool,
    /// Metadata-only copy-up (kernel overlayfs' `metacopy=on`): a change of owner, mode or
    /// times of a lower file copies its metadata alone, in the kernel's format.
    pub metacopy: bool,
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
    layers: Vec<Layer>,
    /// The lower layers' roots, top-down, where absolute redirects start.
    lower_roots: Vec<LayerDir>,
    has_upper: bool,
    nodes: NodeTable,
    inos: InoMap,
    files: DashMap<u64, Arc<std::os::fd::OwnedFd>>,
    dirs: DashMap<u64, Arc<readdir::DirSnapshot>>,
    next_fh: AtomicU64,
    /// Where new objects are built; `None` without an upper or on a read-only mount.
    work: Option<WorkDir>,
    /// The upper's root holds the work dir, which the view never shows.
    hides_work: bool,
    volatile: bool,
    /// Metadata-only copy-up (`metacopy=on`).
    metacopy: bool,
    ids: ids::IdMap,
    override_stat: bool,
    /// What whiteouts, opaque markers, redirects and link counts are written as.
    formats: whiteout::Formats,
    /// Told the inode number of a node whose attributes copy-up changed (the adapter drops
    /// the kernel's cached attributes, which it may hold for long on lower nodes).
    changed: std::sync::OnceLock<ChangeHook>,
    /// The upper's locks, held for the life of the union (and so of its daemon): one
    /// writable mount of an upper at a time, any number of read-only ones.
    upper_lock: Option<UpperLock>,
}

pub type ChangeHook = Box<dyn Fn(u64) + Send + Sync>;

/// How long a mount waits for a mount of the same upper that still serves to end: a
/// daemon whose mount was just unmounted may not have noticed yet (plain `umount` does not
/// wait for it).
const UPPER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The upper's locks, held for the life of the union.
struct UpperLock {
    /// Says that a mount serves the upper (an OFD read lock on its byte 0, which any number
    /// of mounts can hold): released first when the union ends.
    _serving: std::fs::File,
    /// `flock` on the directory: exclusive for a writable mount, shared for a read-only
    /// one; released last (the daemon keeps a duplicate until it is done with the upper).
    lock: std::fs::File,
}

/// Takes the upper's locks (they go with the process, even after a `kill -9`). A mount
/// that still serves the upper makes this one EBUSY (after [`UPPER_LOCK_WAIT`], in case it
/// is just ending); one that has stopped serving and is ending is waited for, as long as
/// it takes.
fn lock_upper(upper: &std::path::Path, read_only: bool) -> Result<UpperLock> {
    let open =
        || std::fs::File::open(upper).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)));
    let serving = open()?;
    sys::ofd_lock(serving.as_fd(), libc::F_RDLCK)?;
    let f = open()?;
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    let end = std::time::Instant::now() + UPPER_LOCK_WAIT;
    loop {
        match sys::flock(f.as_fd(), op | libc::LOCK_NB) {
            Ok(()) => break,
            Err(Errno(libc::EWOULDBLOCK)) => {}
            Err(e) => return Err(e.into()),
        }
        if !sys::ofd_locked_elsewhere(serving.as_fd())? {
            // Its holder no longer serves: it is ending. Wait for it, however long.
            sys::flock(f.as_fd(), op)?;
            break;
        }
        if std::time::Instant::now() > end {
            return Err(Errno(libc::EBUSY).into());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(UpperLock {
        _serving: serving,
        lock: f,
    })
}

impl Union {
    /// A duplicate of the upper's `flock`, which keeps it held after the union is gone:
    /// the daemon lets go of the upper only once it is done with it.
    pub fn upper_lock(&self) -> Option<std::fs::File> {
        self.upper_lock
            .as_ref()
            .and_then(|l| l.lock.try_clone().ok())
    }

    pub fn new(cfg: &UnionConfig) -> Result<Union> {
        let mut layers = Vec::new();
        let upper_lock = match &cfg.upper {
            Some(u) => Some(lock_upper(u, cfg.read_only).context("the upper's lock")?),
            None => None,
        };
        if let Some(u) = &cfg.upper {
            layers.push(Layer::open(0, u.clone(), true).context("the upper layer")?);
        }
        for l in &cfg.lowers {
            layers.push(Layer::open(layers.len(), l.clone(), false).context("a lower layer")?);
        }
        if layers.is_empty() {
            return Err(Errno(libc::EINVAL).into());
        }
        let mut u = Union {
            has_upper: cfg.upper.is_some(),
            nodes: NodeTable::default(),
            inos: InoMap::default(),
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
            work: None,
            hides_work: cfg.upper.is_some() && cfg.workdir.is_none(),
            volatile: cfg.volatile,
            metacopy: cfg.metacopy,
            ids: cfg.ids.clone(),
            override_stat: cfg.override_stat,
            formats: whiteout::Formats::unprobed(cfg.oci_whiteouts),
            changed: std::sync::OnceLock::new(),
            upper_lock,
            lower_roots: layers
                .iter()
                .filter(|l| !l.writable)
                .map(LayerDir::of)
                .collect(),
            layers,
        };
        if u.has_upper && !cfg.read_only {
            let work =
                WorkDir::open(&u.layers[0].root, cfg.workdir.as_deref()).context("the work dir")?;
            u.formats =
                whiteout::Formats::probe(work.fd(), cfg.oci_whiteouts).context("the work dir")?;
            u.work = Some(work);
        }
        let root_st = sys::fstat(u.layers[0].root.as_fd())?;
        // Give the top layer's filesystem index 0, so samefs unions show real inode numbers.
        u.inos.map(root_st.st_dev, root_st.st_ino);
        let dirs = u.layers.iter().map(LayerDir::of).collect();
        u.nodes.insert_root(Node::new(
            ROOT_INO,
            libc::S_IFDIR,
            Location::new(ROOT_INO, "/".into(), 0, None, dirs),
        ));
        Ok(u)
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
        self.hides_work && parent == ROOT_INO && work::is_work_name(name)
    }

    pub fn is_lower(&self, layer: usize) -> bool {
        !self.layers[layer].writable
    }

    /// The work dir; EROFS where there is none (no upper, or a read-only mount).
    pub(super) fn work(&self) -> Result<&WorkDir> {
        self.work.as_ref().ok_or(Errno(libc::EROFS).into())
    }

    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes.get(ino).ok_or(Errno(libc::ESTALE).into())
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
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
