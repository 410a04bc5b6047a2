//! The thin adapter: fuser requests -> union core calls -> replies. No filesystem logic here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use log::{debug, warn};

use crate::sys;
use crate::union::attr::{SetAttr, Time};
use crate::union::{self, Caller, Union};

/// How long the kernel may keep entries and attributes. Lower layers are immutable; the upper
/// changes only through this mount (as with kernel overlayfs, a change made under a mounted
/// union is undefined), the kernel drops what each operation changes, and what the daemon
/// changes on its own (copy-up) it invalidates. With a short time, a long create-then-delete
/// run looked every name up again before unlinking it.
const TTL: Duration = Duration::from_secs(24 * 3600);

pub struct UnionFs {
    pub union: Union,
    pub passthrough: Passthrough,
    /// Nodes dropped since the heap was last trimmed (see `trim_heap_when_forgotten`).
    forgotten: Arc<AtomicU64>,
    /// Ask the kernel for FUSE over io_uring (when it offers it).
    io_uring: bool,
}

/// Gives free heap pages back to the system, once a second at most, after nodes went: the
/// allocator keeps them otherwise, and the daemon would stay at its peak after the kernel
/// let go of a big walk. A thread of its own, so the last forgets of a burst count too.
pub fn trim_heap_when_forgotten(fs: &UnionFs) -> std::io::Result<()> {
    let forgotten = fs.forgotten.clone();
    std::thread::Builder::new()
        .name("trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if forgotten.swap(0, Ordering::Relaxed) > 0 {
                    sys::trim_heap();
                }
            }
        })
        .map(drop)
}

impl UnionFs {
    /// The adapter over `union`, and the handle through which its kernel invalidations
    /// (attributes a copy-up changed) reach the session once there is one.
    pub fn new(union: Union) -> (UnionFs, Invalidator) {
        let inval = Invalidator::default();
        let n = inval.0.clone();
        union.on_change(Box::new(move |ino| {
            if let Some(n) = n.get() {
                // Attributes only (negative offset): no page-cache work inside a request.
                let _ = n.inval_inode(INodeNo(ino), -1, 0);
            }
        }));
        let fs = UnionFs {
            union,
            passthrough: Passthrough::default(),
            forgotten: Default::default(),
            io_uring: std::env::var_os("UNIONFUSE_NO_IO_URING").is_none(),
        };
        (fs, inval)
    }
}

/// Tells the kernel to drop cached attributes the core reports changed; inert until the
/// session's notifier is connected.
#[derive(Default, Clone)]
pub struct Invalidator(Arc<std::sync::OnceLock<fuser::Notifier>>);

impl Invalidator {
    pub fn connect(&self, n: fuser::Notifier) {
        let _ = self.0.set(n);
    }
}

/// Kernel passthrough, for real root only (the kernel refuses it in user namespaces): reads
/// and writes of an open upper file go from the kernel straight to that file. The kernel
/// fails an open (EIO) that does not match the inode's current mode: while an inode has
/// passthrough opens every open must pass through to the same file, and while it has cached
/// opens none may pass through. So passthrough is only for upper files (a lower file's copy-up
/// would change the file behind it), and only for an inode without cached opens.
#[derive(Default)]
pub struct Passthrough {
    enabled: std::sync::atomic::AtomicBool,
    inodes: std::sync::Mutex<std::collections::HashMap<u64, IoMode>>,
    handles: dashmap::DashMap<u64, u64>,
}

enum IoMode {
    Cached {
        opens: usize,
    },
    Passthrough {
        id: std::sync::Arc<BackingId>,
        opens: usize,
    },
}

impl Passthrough {
    /// Decides how the open `fh` of `ino` is served; `None`: through the daemon.
    fn mode(
        &self,
        union: &Union,
        ino: u64,
        fh: u64,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Option<std::sync::Arc<BackingId>> {
        use std::os::fd::AsFd;
        use std::sync::atomic::Ordering;
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        self.handles.insert(fh, ino);
        match inodes.get_mut(&ino) {
            Some(IoMode::Cached { opens }) => {
                *opens += 1;
                return None;
            }
            Some(IoMode::Passthrough { id, opens }) => {
                *opens += 1;
                return Some(id.clone());
            }
            None => {}
        }
        let cached = |inodes: &mut std::collections::HashMap<u64, IoMode>| {
            inodes.insert(ino, IoMode::Cached { opens: 1 });
            None
        };
        if union.is_lower_node(ino) {
            return cached(&mut inodes);
        }
        let Some(fd) = union.handle_fd(fh) else {
            return cached(&mut inodes);
        };
        match sys::fstat(fd.as_fd()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
            _ => return cached(&mut inodes),
        }
        // The kernel opens its own backing file per open from this one's path, with that
        // open's flags: the handle's access mode does not limit later opens.
        match register(fd.as_fd()) {
            Ok(id) => {
                let id = std::sync::Arc::new(id);
                inodes.insert(
                    ino,
                    IoMode::Passthrough {
                        id: id.clone(),
                        opens: 1,
                    },
                );
                Some(id)
            }
            Err(e) => {
                warn!("kernel passthrough refused ({e}); reads and writes go through the daemon");
                self.enabled.store(false, Ordering::Relaxed);
                cached(&mut inodes)
            }
        }
    }

    fn release(&self, fh: u64) {
        if let Some((_, ino)) = self.handles.remove(&fh) {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            let last = match inodes.get_mut(&ino) {
                Some(IoMode::Cached { opens }) | Some(IoMode::Passthrough { opens, .. }) => {
                    *opens -= 1;
                    *opens == 0
                }
                None => false,
            };
            if last {
                inodes.remove(&ino);
            }
        }
    }
}

/// The one way an operation fails: logged at the level the core's error asks for, with the
/// operation's name and what failed, and answered with its errno.
fn failed(op: &str, e: union::Error) -> Errno {
    log::log!(e.level(), "{op}: {e}");
    Errno::from_i32(e.code())
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

pub fn file_type(fmt: u32) -> FileType {
    match fmt {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn to_attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode & libc::S_IFMT),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time_of(t: Option<TimeOrNow>) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                Time::At(s, n)
            }
        },
    })
}

impl UnionFs {
    fn reply_entry(&self, reply: ReplyEntry, op: &str, r: union::Result<libc::stat>) {
        match r {
            Ok(st) => reply.entry(&TTL, &to_attr(&st), Generation(0)),
            Err(e) => reply.error(failed(op, e)),
        }
    }

    fn reply_empty(reply: ReplyEmpty, op: &str, r: union::Result<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed(op, e)),
        }
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Listings that are followed by a stat of every entry (ls -l, find, git status)
            // get the attributes with the names: no LOOKUP round trip per entry.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // Setuid/setgid dropped by us on write, truncate and chown (below), so the
            // kernel can mark inodes without them S_NOSEC: no security.capability round
            // trip before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        // Requests over io_uring where the kernel offers it (the fuse module's enable_uring):
        // each served on the CPU that made it. A payload buffer per queue entry holds the
        // largest request or reply, so writes are capped where the kernel caps them anyway
        // (fuse's default max_pages_limit, 1 MiB).
        if self.io_uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            let _ = config.set_max_write(1 << 20);
        }
        for f in wanted {
            if let Err(missing) = config.add_capabilities(f) {
                debug!("kernel lacks {missing:?}");
            }
        }
        if sys::fully_privileged()
            && std::env::var_os("UNIONFUSE_NO_PASSTHROUGH").is_none()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough
                .enabled
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(parent.0, name) {
            Ok(st) => reply.entry(&TTL, &to_attr(&st), Generation(0)),
            // The kernel keeps the absence as it keeps an entry (a compiler's include path
            // search, $PATH): a name made through the mount replaces it.
            Err(e) if e.code() == libc::ENOENT => {
                let mut attr = to_attr(&sys::zeroed_stat());
                attr.ino = INodeNo(0);
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(failed("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.union.forget(ino.0, nlookup) {
            self.forgotten.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&TTL, &to_attr(&st)),
            Err(e) => reply.error(failed("getattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(failed("readlink", e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.union.open(ino.0, flags.0) {
            Ok(fh) => {
                let f = if self.union.is_lower_node(ino.0) {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                match self
                    .passthrough
                    .mode(&self.union, ino.0, fh, |fd| reply.open_backing(fd))
                {
                    Some(id) => reply.opened_passthrough(FileHandle(fh), f, &id),
                    None => reply.opened(FileHandle(fh), f),
                }
            }
            Err(e) => reply.error(failed("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.union.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(failed("read", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close (data goes to the layer at each write): ENOSYS tells the
        // kernel to stop sending FLUSH, a round trip saved on every close.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            // The kernel keeps the listing until the directory changes through the mount
            // (layers are not to change under a mounted union, as with kernel overlayfs).
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(failed("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.union.dir_listing(fh.0, offset) {
            Ok(s) => s,
            Err(e) => return reply.error(failed("readdir", e)),
        };
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.fmt), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self
            .union
            .listing_plus(ino.0, fh.0, offset, |next, e, st| match st {
                Some(st) => reply.add(
                    INodeNo(st.st_ino),
                    next,
                    &e.name,
                    &TTL,
                    &to_attr(st),
                    Generation(0),
                ),
                // "." and "..", and a name that no longer resolves: no node (id 0).
                None => {
                    let mut attr = to_attr(&sys::zeroed_stat());
                    attr.ino = INodeNo(e.ino);
                    attr.kind = file_type(e.fmt);
                    reply.add(
                        INodeNo(0),
                        next,
                        &e.name,
                        &Duration::ZERO,
                        &attr,
                        Generation(0),
                    )
                }
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("readdirplus", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.union.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(failed("statfs", e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.union.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(failed("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.union.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(failed("listxattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_of(atime),
            mtime: time_of(mtime),
            ctime: ctime.is_some(),
            fh: fh.map(|f| f.0),
            by: Some(caller(req)),
        };
        match self.union.setattr(ino.0, &a) {
            Ok(st) => reply.attr(&TTL, &to_attr(&st)),
            Err(e) => reply.error(failed("setattr", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .union
            .mknod(parent.0, name, mode, rdev as u64, caller(req));
        self.reply_entry(reply, "mknod", r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.union.mkdir(parent.0, name, mode, caller(req));
        self.reply_entry(reply, "mkdir", r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self
            .union
            .symlink(parent.0, link_name, target.as_os_str(), caller(req));
        self.reply_entry(reply, "symlink", r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.union.link(ino.0, newparent.0, newname);
        self.reply_entry(reply, "link", r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(reply, "unlink", self.union.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(reply, "rmdir", self.union.rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .union
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        Self::reply_empty(reply, "rename", r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.union.create(parent.0, name, mode, caller(req)) {
            Ok((st, fh)) => {
                let (ttl, attr) = (TTL, to_attr(&st));
                match self
                    .passthrough
                    .mode(&self.union, st.st_ino, fh, |fd| reply.open_backing(fd))
                {
                    Some(id) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &id,
                    ),
                    None => reply.created(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    ),
                }
            }
            Err(e) => reply.error(failed("create", e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let drop_privileges = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller(req));
        match self.union.write(ino.0, fh.0, offset, data, drop_privileges) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(failed("write", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty(reply, "fsync", self.union.fsync(fh.0, datasync));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.union.fallocate(fh.0, mode, offset, length);
        Self::reply_empty(reply, "fallocate", r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.union.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(failed("lseek", e)),
        }
    }

    /// The inode attribute ioctls (`lsattr`, `chattr`) go to the real file, as the kernel's
    /// overlay passes them; any other is answered as a regular file on disk answers it,
    /// without a log line: every `isatty()` (Python's `open`, stdio) asks.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if !crate::sys::INODE_ATTR_IOCTLS.iter().any(|(c, _)| *c == cmd) {
            reply.error(Errno::ENOTTY);
            return;
        }
        let mut data = in_data.to_vec();
        data.resize(data.len().max(out_size as usize).max(28), 0);
        match self.union.inode_attr_ioctl(ino.0, cmd, &mut data) {
            Ok(()) => reply.ioctl(0, &data[..(out_size as usize).min(data.len())]),
            Err(e) => reply.error(failed("ioctl", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.union.setxattr(ino.0, name, value, flags);
        Self::reply_empty(reply, "setxattr", r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(reply, "removexattr", self.union.removexattr(ino.0, name));
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
