//! unionfuse's addition to fuser: FUSE over io_uring (Linux 6.14+, when the fuse module's
//! `enable_uring` parameter is on and INIT agreed on `FUSE_OVER_IO_URING`).
//!
//! One queue per possible CPU, each served by a thread pinned to that CPU: the kernel puts a
//! request on the queue of the CPU its caller runs on, so it is answered there, without
//! waking another CPU (large reads excepted: see `Affinity`). A queue holds a few entries,
//! each a header buffer and a payload buffer that the kernel copies a request into and the
//! reply out of; the reply is committed and the next request fetched in one submission.
//! FORGET, INTERRUPT and notifications stay on `/dev/fuse`, whose loop keeps running beside
//! the queues. If a queue cannot be set up, the kernel never marks the ring ready and every
//! request keeps coming through `/dev/fuse`.
//!
//! Layout (include/uapi/linux/fuse.h, 7.42): the header buffer is `fuse_uring_req_header`:
//! 128 bytes for `fuse_in_header` (request) or `fuse_out_header` (reply), 128 bytes for the
//! request's first argument (its fixed per-opcode struct), then `fuse_uring_ent_in_out`
//! (flags, commit id, payload size). The payload holds the request's other arguments, and
//! every argument of the reply.

use std::cell::UnsafeCell;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::warn;
use nix::unistd::Uid;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::ll::Operation;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

const IN_OUT_SZ: usize = 128;
const OP_IN_SZ: usize = 128;
/// Offset of `fuse_uring_ent_in_out` in the header buffer, and the buffer's size.
const ENT: usize = IN_OUT_SZ + OP_IN_SZ;
const HEADER_SZ: usize = ENT + 32;
const IN_HEADER_SZ: usize = 40;
const OUT_HEADER_SZ: usize = 16;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries per queue. One thread serves them in turn; more let the kernel hand over the
/// next request of a burst while one is answered.
const DEPTH: usize = 4;

/// What a queue thread needs of the session.
pub(crate) struct Context<FS: Filesystem> {
    pub(crate) filesystem: Arc<FilesystemHolder<FS>>,
    pub(crate) ch: Channel,
    pub(crate) allowed: SessionACL,
    pub(crate) session_owner: Uid,
}

impl<FS: Filesystem> Clone for Context<FS> {
    fn clone(&self) -> Self {
        Context {
            filesystem: self.filesystem.clone(),
            ch: self.ch.clone(),
            allowed: self.allowed,
            session_owner: self.session_owner,
        }
    }
}

/// One entry's buffers. The kernel writes them while the entry waits for a request, the
/// queue thread reads them between the completion and the reply, and the reply is written
/// into them before the commit: never two at once.
struct Entry {
    header: UnsafeCell<[u8; HEADER_SZ]>,
    payload: UnsafeCell<Box<[u8]>>,
    replied: Mutex<bool>,
    /// The queue thread waits for a reply sent from another thread (rare: unionfuse answers
    /// in the request's own thread); only then does a reply wake it.
    waiting: AtomicBool,
    cv: Condvar,
}

// SAFETY: see above; the `replied` lock orders the reply's writes before the commit.
unsafe impl Sync for Entry {}

impl Entry {
    fn new(payload: usize) -> Entry {
        Entry {
            header: UnsafeCell::new([0; HEADER_SZ]),
            payload: UnsafeCell::new(vec![0; payload].into_boxed_slice()),
            replied: Mutex::new(false),
            waiting: AtomicBool::new(false),
            cv: Condvar::new(),
        }
    }

    fn header(&self) -> &[u8; HEADER_SZ] {
        // SAFETY: only read between a request's completion and its commit (see `Entry`).
        unsafe { &*self.header.get() }
    }

    fn payload(&self) -> &[u8] {
        // SAFETY: as `header`.
        unsafe { &*self.payload.get() }
    }

    fn field_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.header()[at..at + 4].try_into().unwrap())
    }

    fn field_u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.header()[at..at + 8].try_into().unwrap())
    }
}

/// Answers a request into the entry it came from.
#[derive(Clone)]
pub(crate) struct RingSender {
    ent: Arc<Entry>,
    ch: ChannelSender,
}

impl std::fmt::Debug for RingSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingSender")
    }
}

impl RingSender {
    /// The `/dev/fuse` channel, for what is not a reply (backing files).
    pub(crate) fn channel(&self) -> &ChannelSender {
        &self.ch
    }

    /// Writes the reply (`fuse_out_header`, then its arguments) into the entry: the header
    /// into the header buffer, the rest into the payload. A reply larger than the payload
    /// becomes EIO.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut replied = self.ent.replied.lock().unwrap();
        let total: usize = data.iter().map(|s| s.len()).sum();
        // SAFETY: the entry is between its request's completion and its commit, and the
        // queue thread waits on `replied` before it commits (see `Entry`).
        let (header, payload) =
            unsafe { (&mut *self.ent.header.get(), &mut *self.ent.payload.get()) };
        let mut result = Ok(());
        if total < OUT_HEADER_SZ || total - OUT_HEADER_SZ > payload.len() {
            let unique: Vec<u8> = data
                .iter()
                .flat_map(|s| s.iter().copied())
                .skip(8)
                .take(8)
                .collect();
            header[..4].copy_from_slice(&(OUT_HEADER_SZ as u32).to_ne_bytes());
            header[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            if unique.len() == 8 {
                header[8..16].copy_from_slice(&unique);
            }
            header[ENT + 16..ENT + 20].copy_from_slice(&0u32.to_ne_bytes());
            result = Err(io::Error::other(
                "reply larger than the io_uring payload buffer",
            ));
        } else {
            let mut off = 0;
            for s in data {
                let mut b: &[u8] = s;
                if off < OUT_HEADER_SZ {
                    let n = (OUT_HEADER_SZ - off).min(b.len());
                    header[off..off + n].copy_from_slice(&b[..n]);
                    off += n;
                    b = &b[n..];
                }
                let at = off - OUT_HEADER_SZ;
                payload[at..at + b.len()].copy_from_slice(b);
                off += b.len();
            }
            let size = (total - OUT_HEADER_SZ) as u32;
            header[ENT + 16..ENT + 20].copy_from_slice(&size.to_ne_bytes());
        }
        *replied = true;
        if self.ent.waiting.load(Ordering::Acquire) {
            self.ent.cv.notify_one();
        }
        result
    }
}

/// The kernel's queue count: one per possible CPU.
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.parse().map_err(|_| io::Error::other("cpu list"))?,
            b.parse().map_err(|_| io::Error::other("cpu list"))?,
        );
        n += b + 1 - a;
    }
    Ok(n)
}

/// Starts a thread per queue. Each returns once the connection ends.
pub(crate) fn start<FS: Filesystem>(ctx: Context<FS>, payload: usize) -> Vec<JoinHandle<()>> {
    let queues = match possible_cpus() {
        Ok(n) => n,
        Err(e) => {
            warn!("io_uring: cannot count the CPUs ({e}); serving through /dev/fuse");
            return Vec::new();
        }
    };
    let mut threads = Vec::new();
    for qid in 0..queues {
        let ctx = ctx.clone();
        let t = std::thread::Builder::new()
            .name(format!("fuser-uring-{qid}"))
            .spawn(move || {
                if let Err(e) = serve(ctx, qid, payload) {
                    warn!("io_uring queue {qid}: {e}; its requests go through /dev/fuse");
                }
            });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => warn!("io_uring queue {qid}: {e}"),
        }
    }
    threads
}

/// Where a queue thread runs: on its own CPU, or, while it serves large reads, on any other
/// CPU the daemon may use. A large read is a reader streaming a file: its readahead comes to
/// the reader's queue one request at a time, and served on the reader's CPU, the copying and
/// the disk wait take turns with the reader instead of overlapping it. Served elsewhere, it
/// overlaps as it does through `/dev/fuse` (a 128 MiB cold read: 0.10-0.22 s pinned, 0.07 s
/// away, 0.07-0.10 s through `/dev/fuse`). Everything else stays on the caller's CPU, where a
/// wake-up is cheapest.
struct Affinity {
    own: Option<libc::cpu_set_t>,
    others: Option<libc::cpu_set_t>,
    away: bool,
}

/// A READ of at least this many bytes is served away from the queue's CPU.
const AWAY_READ: u32 = 128 * 1024;
/// `FUSE_READ`, and where its `size` is in the header buffer (`fuse_read_in`).
const OP_READ: u32 = 15;
const READ_SIZE_AT: usize = IN_OUT_SZ + 16;

impl Affinity {
    /// Pins the calling thread to `cpu`, and keeps the other CPUs it was allowed for later.
    fn pin(cpu: usize) -> Affinity {
        let sz = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: zeroed cpu_set_t values are empty sets; the CPU_* macros stay inside a set
        // for indices below its bit count, which the check on `cpu` ensures.
        let (own, others) = unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            let mut own: libc::cpu_set_t = std::mem::zeroed();
            if cpu >= 8 * sz || libc::sched_getaffinity(0, sz, &mut allowed) != 0 {
                return Affinity {
                    own: None,
                    others: None,
                    away: false,
                };
            }
            libc::CPU_SET(cpu, &mut own);
            let mut others = allowed;
            libc::CPU_CLR(cpu, &mut others);
            (own, (libc::CPU_COUNT(&others) > 0).then_some(others))
        };
        set_affinity(cpu, &own);
        Affinity {
            own: Some(own),
            others,
            away: false,
        }
    }

    /// Before serving a request: a large read goes away from the queue's CPU, anything
    /// else comes back to it.
    fn before(&mut self, cpu: usize, opcode: u32, read_size: u32) {
        if opcode == OP_READ && read_size >= AWAY_READ {
            if !self.away {
                if let Some(set) = &self.others {
                    self.away = set_affinity(cpu, set);
                }
            }
        } else {
            self.home(cpu);
        }
    }

    fn home(&mut self, cpu: usize) {
        if self.away {
            if let Some(set) = &self.own {
                set_affinity(cpu, set);
            }
            self.away = false;
        }
    }
}

fn set_affinity(cpu: usize, set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a whole cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r != 0 {
        debug!(
            "io_uring queue {cpu}: affinity: {}",
            io::Error::last_os_error()
        );
    }
    r == 0
}

fn command(fd: i32, op: u32, qid: usize, commit_id: u64, slot: usize) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
    opcode::UringCmd80::new(types::Fd(fd), op)
        .cmd(cmd)
        .build()
        .user_data(slot as u64)
}

fn serve<FS: Filesystem>(ctx: Context<FS>, qid: usize, payload: usize) -> io::Result<()> {
    let mut affinity = Affinity::pin(qid);
    let fd = ctx.ch.as_fd().as_raw_fd();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build((2 * DEPTH) as u32)?;
    let ents: Vec<Arc<Entry>> = (0..DEPTH).map(|_| Arc::new(Entry::new(payload))).collect();
    // The kernel reads the iovecs when it takes the registration; they live as long as the
    // queue.
    let iovs: Vec<[libc::iovec; 2]> = ents
        .iter()
        .map(|e| {
            [
                libc::iovec {
                    iov_base: e.header.get().cast(),
                    iov_len: HEADER_SZ,
                },
                libc::iovec {
                    // SAFETY: the pointer only; the kernel writes there while it owns the entry.
                    iov_base: unsafe { (*e.payload.get()).as_mut_ptr().cast() },
                    iov_len: payload,
                },
            ]
        })
        .collect();
    for (slot, iov) in iovs.iter().enumerate() {
        let mut sqe = opcode::UringCmd80::new(types::Fd(fd), CMD_REGISTER)
            .cmd({
                let mut c = [0u8; 80];
                c[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
                c
            })
            .addr(Some(iov.as_ptr() as u64))
            .build()
            .user_data(slot as u64);
        // SAFETY: `sqe.len` (offset 24 of the 128-byte SQE) carries the iovec count, which
        // the builder has no setter for.
        unsafe {
            let p = (&mut sqe as *mut squeue::Entry128).cast::<u8>().add(24);
            p.cast::<u32>().write_unaligned(2);
        }
        // SAFETY: the iovecs and buffers outlive the ring.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("queue full"))?;
    }
    ring.submit()?;

    let se = SessionEventLoop {
        thread_name: format!("fuser-uring-{qid}"),
        ch: ctx.ch.clone(),
        filesystem: ctx.filesystem.clone(),
        allowed: ctx.allowed,
        session_owner: ctx.session_owner,
    };
    let sender = ctx.ch.sender();
    // The request as /dev/fuse would have delivered it: in-header, first argument, payload.
    let mut words = vec![0u64; (IN_HEADER_SZ + OP_IN_SZ + payload) / 8 + 1];
    let mut live = DEPTH;
    let mut done = Vec::with_capacity(DEPTH);
    while live > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        for &(slot, res) in &done {
            if res < 0 {
                // The connection ended (ENOTCONN), or the ring is going: the entry is gone.
                live -= 1;
                if !matches!(-res, libc::ENOTCONN | libc::ENODEV | libc::ECANCELED) {
                    warn!(
                        "io_uring queue {qid}: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                continue;
            }
            let ent = &ents[slot];
            let commit_id = ent.field_u64(ENT + 8);
            affinity.before(qid, ent.field_u32(4), ent.field_u32(READ_SIZE_AT));
            answer(&se, ent, &sender, &mut words);
            let sqe = command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, slot);
            // SAFETY: as above.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("queue full"))?;
        }
    }
    Ok(())
}

/// Dispatches the entry's request and waits until it is answered.
fn answer<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    ent: &Arc<Entry>,
    ch: &ChannelSender,
    words: &mut [u64],
) {
    // SAFETY: a u64 slice viewed as bytes.
    let buf: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    let len = ent.field_u32(0) as usize;
    let payload_sz = ent.field_u32(ENT + 16) as usize;
    let sender = RingSender {
        ent: ent.clone(),
        ch: ch.clone(),
    };
    let op_sz = len.checked_sub(IN_HEADER_SZ + payload_sz);
    let parsed = match op_sz {
        Some(op_sz) if op_sz <= OP_IN_SZ && payload_sz <= ent.payload().len() => {
            let h = ent.header();
            buf[..IN_HEADER_SZ].copy_from_slice(&h[..IN_HEADER_SZ]);
            buf[IN_HEADER_SZ..IN_HEADER_SZ + op_sz]
                .copy_from_slice(&h[IN_OUT_SZ..IN_OUT_SZ + op_sz]);
            buf[IN_HEADER_SZ + op_sz..len].copy_from_slice(&ent.payload()[..payload_sz]);
            RequestWithSender::from_ring(sender.clone(), &buf[..len])
        }
        _ => None,
    };
    match parsed {
        Some(req) => {
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                req.reply::<ReplyEmpty>().ok();
            } else {
                req.dispatch(se);
            }
        }
        None => {
            warn!("io_uring: a request that does not parse (length {len}, payload {payload_sz})");
            let mut out = [0u8; OUT_HEADER_SZ];
            out[..4].copy_from_slice(&(OUT_HEADER_SZ as u32).to_ne_bytes());
            out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            out[8..16].copy_from_slice(&ent.header()[8..16]);
            let _ = sender.send(&[IoSlice::new(&out)]);
        }
    }
    let mut replied = ent.replied.lock().unwrap();
    if !*replied {
        ent.waiting.store(true, Ordering::Release);
        while !*replied {
            replied = ent.cv.wait(replied).unwrap();
        }
        ent.waiting.store(false, Ordering::Release);
    }
    *replied = false;
}
