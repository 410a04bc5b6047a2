//! The writable upper on real FUSE mounts: copy-up fidelity and atomicity, the POSIX errors,
//! whiteout formats, file operations, inode numbers, and a full upper.

mod common;

use std::ffi::CString;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    mp: PathBuf,
}

fn setup() -> Setup {
    let t = scratch();
    let root = t.path().to_path_buf();
    let d = |n: &str| {
        let p = root.join(n);
        mkdir(&p);
        p
    };
    Setup {
        lower: d("lower"),
        upper: d("upper"),
        mp: d("mnt"),
        root,
        _t: t,
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Runs `act` on kernel overlayfs and then on unionfuse, over the same lower and fresh uppers
/// (the kernel's in `kupper`), and returns what each gave: (kernel, unionfuse).
fn on_both<T>(s: &Setup, act: impl Fn(&Path) -> T) -> (T, T) {
    for d in ["kupper", "kwork", "kmnt"] {
        if !s.root.join(d).exists() {
            mkdir(&s.root.join(d));
        }
    }
    let kernel = {
        let _k = KernelOverlay::new(
            &[&s.lower],
            Some((&s.root.join("kupper"), &s.root.join("kwork"))),
            &s.root.join("kmnt"),
        );
        act(&s.root.join("kmnt"))
    };
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    (kernel, act(&s.mp))
}

/// `act` again on a fresh upper, with reads and writes served by the daemon even as root (no
/// kernel passthrough): a rootless mount's path.
fn through_the_daemon<T>(s: &Setup, act: impl Fn(&Path) -> T) -> T {
    std::fs::remove_dir_all(&s.upper).unwrap();
    mkdir(&s.upper);
    let _m = UnionMount::without_passthrough(&[&s.lower], Some(&s.upper), &s.mp);
    act(&s.mp)
}

/// The same lines, reported at the first that differs.
fn assert_same_log(ours: &[String], kernel: &[String]) {
    for (o, k) in ours.iter().zip(kernel) {
        assert_eq!(o, k, "unionfuse vs kernel overlayfs");
    }
    assert_eq!(ours.len(), kernel.len());
}

/// `log` has the line `line` (what keeps a comparison of two logs from being vacuous).
#[track_caller]
fn assert_logged(log: &[String], line: &str) {
    assert!(log.iter().any(|l| l == line), "no {line:?} in {log:?}");
}

#[test]
fn copy_up_keeps_data_holes_owner_mode_times_xattrs_and_parents() {
    if !require_root() {
        return;
    }
    let s = setup();
    let f = s.lower.join("d1/d2/file");
    // Sparse: 1 MiB of data at 64 MiB.
    mkdir(f.parent().unwrap());
    {
        let file = std::fs::File::create(&f).unwrap();
        file.write_all_at(&[7u8; 1 << 20], 64 << 20).unwrap();
    }
    chmod(&f, 0o4751);
    lchown(&f, 1000, 1001);
    setxattr(&f, "user.keep", b"me");
    setxattr(
        &f,
        "security.capability",
        &[
            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    assert!(
        Command::new("setfacl")
            .args(["-m", "u:4321:rw"])
            .arg(&f)
            .status()
            .unwrap()
            .success()
    );
    chmod(&f, 0o4751);
    set_times(&f, (1_111_111_111, 1), (1_222_222_222, 2));
    for d in ["d1", "d1/d2"] {
        chmod(&s.lower.join(d), 0o750);
        lchown(&s.lower.join(d), 1000, 1000);
        setxattr(&s.lower.join(d), "user.dir", d.as_bytes());
        set_times(&s.lower.join(d), (1_000_000_000, 0), (1_100_000_000, 0));
    }
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let before = std::fs::metadata(s.mp.join("d1/d2/file")).unwrap();
    // chown/chmod-free change: an xattr on the file copies it up.
    setxattr(&s.mp.join("d1/d2/file"), "user.new", b"1");
    let u = s.upper.join("d1/d2/file");
    let um = std::fs::metadata(&u).unwrap();
    assert_eq!(um.len(), (64 << 20) + (1 << 20));
    assert!(
        um.blocks() * 512 < 8 << 20,
        "the hole was filled: {} blocks",
        um.blocks()
    );
    assert_eq!(um.mode() & 0o7777, 0o4751, "mode (with setuid) kept");
    assert_eq!((um.uid(), um.gid()), (1000, 1001));
    assert_eq!((um.mtime(), um.mtime_nsec()), (1_222_222_222, 2));
    assert_eq!(getxattr(&u, "user.keep").unwrap(), b"me");
    assert_eq!(getxattr(&u, "user.new").unwrap(), b"1");
    assert!(
        getxattr(&u, "security.capability").is_ok(),
        "file capability kept"
    );
    let acl = Command::new("getfacl").arg(&u).output().unwrap();
    assert!(String::from_utf8_lossy(&acl.stdout).contains("user:4321:rw-"));
    for d in ["d1", "d1/d2"] {
        let m = std::fs::metadata(s.upper.join(d)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o750, "{d}");
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{d}");
        assert_eq!(
            getxattr(&s.upper.join(d), "user.dir").unwrap(),
            d.as_bytes()
        );
        assert_eq!(m.mtime(), 1_100_000_000, "{d}: parent times kept");
    }
    // The view did not change where it was not asked to.
    let after = std::fs::metadata(s.mp.join("d1/d2/file")).unwrap();
    assert_eq!(after.ino(), before.ino(), "st_ino kept across copy-up");
    assert_eq!(after.mode(), before.mode());
    // The lower is untouched.
    assert_eq!(getxattr(&f, "user.new"), Err(libc::ENODATA));
}

#[test]
fn reading_never_copies_up_and_writing_does_once() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("r"), b"read me");
    write(&s.lower.join("w"), b"0123456789");
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    assert_eq!(std::fs::read(s.mp.join("r")).unwrap(), b"read me");
    let ro = std::fs::File::open(s.mp.join("r")).unwrap();
    assert!(!s.upper.join("r").exists(), "a read-only open copied up");
    drop(ro);
    // Two writers open the same lower file at once: one copy-up, both writes land in it.
    let a = std::fs::OpenOptions::new()
        .write(true)
        .open(s.mp.join("w"))
        .unwrap();
    let b = std::fs::OpenOptions::new()
        .write(true)
        .open(s.mp.join("w"))
        .unwrap();
    a.write_all_at(b"AA", 0).unwrap();
    b.write_all_at(b"BB", 8).unwrap();
    drop((a, b));
    assert_eq!(std::fs::read(s.mp.join("w")).unwrap(), b"AA234567BB");
    assert_eq!(std::fs::read(s.upper.join("w")).unwrap(), b"AA234567BB");
    assert_eq!(std::fs::read(s.lower.join("w")).unwrap(), b"0123456789");
    // Concurrent copy-ups of one big file from many threads: one consistent result.
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    write(&s.lower.join("big"), &big);
    drop(_m);
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let p = s.mp.join("big");
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.write_all_at(&[i], i as u64 * 1_000_000).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = std::fs::read(s.mp.join("big")).unwrap();
    let mut want = big.clone();
    for i in 0..8u8 {
        want[i as usize * 1_000_000] = i;
    }
    assert!(got == want, "concurrent copy-ups lost data");
}

#[test]
fn posix_errors_and_special_rules() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("dir/child"), b"x");
    write(&s.lower.join("file"), b"x");
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let m = &s.mp;
    // A 0/0 character device is a whiteout: refused like overlayfs does.
    let r = unsafe { libc::mknod(c(&m.join("wh")).as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EPERM))
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(m.join("dir"))),
        libc::ENOTEMPTY
    );
    assert_eq!(errno_of(std::fs::create_dir(m.join("file"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::remove_file(m.join("dir"))), libc::EISDIR);
    assert_eq!(errno_of(std::fs::remove_dir(m.join("file"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(std::fs::rename(m.join("file"), m.join("dir"))),
        libc::EISDIR
    );
    // Names of the OCI whiteout format are refused.
    assert_eq!(
        errno_of(std::fs::write(m.join(".wh.file"), b"")),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(std::fs::create_dir(m.join(".wh..wh..opq"))),
        libc::EINVAL
    );
    // The work dir is not part of the view.
    assert_eq!(lstat_errno(&m.join(".unionfuse-work")), libc::ENOENT);
    assert!(!names(m).contains(&".unionfuse-work".to_string()));
    // An open file that loses its last name reports st_nlink 0 (upper and lower alike).
    for name in ["file", "fresh"] {
        let p = m.join(name);
        if name == "fresh" {
            std::fs::write(&p, b"new").unwrap();
        }
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0, "{name}");
        assert_eq!(lstat_errno(&p), libc::ENOENT);
    }
    // Modes are the ones asked for under the caller's umask, fifos too. In a process of its
    // own: the umask is the whole process's, and other tests create files meanwhile.
    let out = run(Command::new("sh")
        .arg("-c")
        .arg("set -e; umask 027; cd \"$1\"; mkfifo fifo; mkdir newdir; : > newfile")
        .arg("sh")
        .arg(m));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::symlink_metadata(m.join("fifo")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::metadata(m.join("newdir")).unwrap().mode() & 0o777,
        0o750
    );
    assert_eq!(
        std::fs::metadata(m.join("newfile")).unwrap().mode() & 0o777,
        0o640
    );
}

#[test]
fn deleted_names_leave_whiteouts_and_remade_dirs_are_opaque() {
    if !require_root() {
        return;
    }
    for oci in [false, true] {
        let s = setup();
        write(&s.lower.join("a/b/c/deep"), b"lower");
        write(&s.lower.join("a/b/c/other"), b"lower");
        write(&s.lower.join("gone"), b"lower");
        let args: &[&str] = if oci { &["-o", "whiteout=oci"] } else { &[] };
        {
            let _m = UnionMount::with_args(&[&s.lower], Some(&s.upper), &s.mp, args);
            std::fs::remove_file(s.mp.join("gone")).unwrap();
            std::fs::remove_dir_all(s.mp.join("a/b/c")).unwrap();
            std::fs::create_dir(s.mp.join("a/b/c")).unwrap();
            std::fs::write(s.mp.join("a/b/c/new"), b"upper").unwrap();
            assert_eq!(names(&s.mp.join("a/b/c")), ["new"]);
            assert_eq!(lstat_errno(&s.mp.join("gone")), libc::ENOENT);
        }
        if oci {
            assert!(s.upper.join(".wh.gone").exists());
            assert!(s.upper.join("a/b/c/.wh..wh..opq").exists());
        } else {
            let st = std::fs::symlink_metadata(s.upper.join("gone")).unwrap();
            assert_eq!((st.mode() & libc::S_IFMT, st.rdev()), (libc::S_IFCHR, 0));
            assert_eq!(
                getxattr(&s.upper.join("a/b/c"), "trusted.overlay.opaque").unwrap(),
                b"y"
            );
        }
        // Remounted, the view is the same.
        let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
        assert_eq!(names(&s.mp.join("a/b/c")), ["new"]);
        assert_eq!(lstat_errno(&s.mp.join("gone")), libc::ENOENT);
    }
}

#[test]
fn inode_numbers_survive_reuse_by_the_upper_filesystem() {
    if !require_root() {
        return;
    }
    let s = setup();
    let src = s.root.join("src");
    for i in 0..50 {
        write(
            &src.join(format!("d{}/f{i}", i % 5)),
            format!("{i}").as_bytes(),
        );
    }
    let tar = s.root.join("t.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let x = s.mp.join("x");
    for round in 0..15 {
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success(), "round {round}: tar failed");
        let st = Command::new("rm").arg("-rf").arg(&x).status().unwrap();
        assert!(st.success(), "round {round}: rm failed");
    }
}

#[test]
fn file_operations_behave_as_on_a_local_filesystem() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("data"), &[1u8; 100_000]);
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let p = s.mp.join("data");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    // fallocate beyond the end, then holes and data.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(r, 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    let sparse = s.mp.join("sparse");
    let g = std::fs::File::create(&sparse).unwrap();
    g.write_all_at(b"x", 10 << 20).unwrap();
    let data = unsafe { libc::lseek(g.as_raw_fd(), 0, libc::SEEK_DATA) };
    let hole = unsafe { libc::lseek(g.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0, "a hole at the start");
    assert!(data >= 9 << 20, "data near the end, got {data}");
    // Locks.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let f2 = std::fs::File::open(&p).unwrap();
    assert_eq!(
        unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
    // Shared writable mmap: stores reach the file.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(m, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"mmapped".as_ptr(), m as *mut u8, 7);
        assert_eq!(libc::msync(m, 4096, libc::MS_SYNC), 0);
        libc::munmap(m, 4096);
    }
    let mut head = [0u8; 7];
    f2.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"mmapped");
    assert_eq!(
        &std::fs::read(s.upper.join("data")).unwrap()[..7],
        b"mmapped"
    );
    // Append goes to the end.
    let mut a = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"END").unwrap();
    a.seek(SeekFrom::End(0)).unwrap();
    assert!(std::fs::read(&p).unwrap().ends_with(b"END"));
    // copy_file_range between two files of the union.
    let dst = std::fs::File::create(s.mp.join("copy")).unwrap();
    let (mut off_in, mut off_out) = (0i64, 0i64);
    let n = unsafe {
        libc::copy_file_range(
            f.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            100_000,
            0,
        )
    };
    assert_eq!(n, 100_000, "{}", std::io::Error::last_os_error());
    assert_eq!(&std::fs::read(s.mp.join("copy")).unwrap()[..7], b"mmapped");
    // statfs is the upper's.
    let ours = nix_statfs(&s.mp);
    let theirs = nix_statfs(&s.upper);
    assert_eq!(
        (ours.f_blocks, ours.f_bsize),
        (theirs.f_blocks, theirs.f_bsize)
    );
}

fn nix_statfs(p: &Path) -> libc::statvfs {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(p).as_ptr(), &mut st) }, 0);
    st
}

#[test]
fn full_upper_gives_enospc_and_keeps_lower_and_view_intact() {
    if !require_root() {
        return;
    }
    let s = setup();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    write(&s.lower.join("big"), &big);
    write(&s.lower.join("small"), b"small");
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&s.upper)
            .status()
            .unwrap()
            .success()
    );
    let _u = UnmountOnDrop(s.upper.clone());
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(s.mp.join("big"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(
        std::fs::read(s.mp.join("big")).unwrap(),
        big,
        "view still shows the lower file"
    );
    assert_eq!(std::fs::read(s.lower.join("big")).unwrap(), big);
    // Nothing half-made is left in the upper, and small changes still work.
    assert!(!s.upper.join("big").exists());
    std::fs::write(s.mp.join("small"), b"changed").unwrap();
    assert_eq!(std::fs::read(s.mp.join("small")).unwrap(), b"changed");
}

/// A fifo and a device node copied up by a chown keep their mode and type, as files do.
#[test]
fn copy_up_of_special_files_keeps_mode() {
    if !require_root() {
        return;
    }
    let s = setup();
    mknod(&s.lower.join("fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &s.lower.join("null"),
        libc::S_IFCHR | 0o604,
        libc::makedev(1, 3),
    );
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    for (name, fmt, mode) in [
        ("fifo", libc::S_IFIFO, 0o640),
        ("null", libc::S_IFCHR, 0o604),
    ] {
        lchown(&s.mp.join(name), 7, 8);
        for p in [s.mp.join(name), s.upper.join(name)] {
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert_eq!(m.mode(), fmt | mode, "{}", p.display());
            assert_eq!((m.uid(), m.gid()), (7, 8), "{}", p.display());
        }
    }
}

/// With the upper on another filesystem, copy-up copies in the kernel between the two (no
/// `copy_file_range` there): every byte arrives, holes stay holes, a trailing hole keeps the
/// size, and files of every size (empty, one block, several chunks) come out whole.
#[test]
fn copy_up_across_filesystems_keeps_data_and_holes() {
    if !require_root() {
        return;
    }
    let s = setup();
    // No zero byte: a byte left out of the copy reads as 0.
    let pattern = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32)
            .map(|i| ((i ^ seed << 24).wrapping_mul(2654435761) >> 24) as u8 | 1)
            .collect()
    };
    let small = pattern(3000, 1);
    let big = pattern(5 << 20 | 123, 2);
    write(&s.lower.join("small"), &small);
    write(&s.lower.join("big"), &big);
    write(&s.lower.join("empty"), b"");
    // Data, a hole, data, and a hole to the end.
    let (head, mid) = (pattern(4096, 3), pattern(10_000, 4));
    {
        let f = std::fs::File::create(s.lower.join("sparse")).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&mid, 8 << 20).unwrap();
        f.set_len(16 << 20).unwrap();
    }
    let mut sparse = vec![0u8; 16 << 20];
    sparse[..4096].copy_from_slice(&head);
    sparse[8 << 20..(8 << 20) + 10_000].copy_from_slice(&mid);
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&s.upper)
            .status()
            .unwrap()
            .success()
    );
    let _u = UnmountOnDrop(s.upper.clone());
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    for (name, data) in [
        ("small", &small),
        ("big", &big),
        ("empty", &Vec::new()),
        ("sparse", &sparse),
    ] {
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.mp.join(name))
            .unwrap()
            .write_all(b"+")
            .unwrap();
        let mut want = data.clone();
        want.push(b'+');
        for p in [s.mp.join(name), s.upper.join(name)] {
            let got = std::fs::read(&p).unwrap();
            assert_eq!(got.len(), want.len(), "{}", p.display());
            assert!(got == want, "{}: content differs", p.display());
        }
        assert_eq!(std::fs::read(s.lower.join(name)).unwrap(), *data);
    }
    let blocks = std::fs::metadata(s.upper.join("sparse")).unwrap().blocks() * 512;
    assert!(blocks < 1 << 20, "holes filled: {blocks} bytes allocated");
}

#[test]
fn oci_upper_reads_back_the_same_and_volatile_is_accepted() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("keep"), b"k");
    write(&s.lower.join("drop"), b"d");
    write(&s.lower.join("dir/x"), b"x");
    {
        let _m = UnionMount::with_args(
            &[&s.lower],
            Some(&s.upper),
            &s.mp,
            &["-o", "whiteout=oci,volatile"],
        );
        std::fs::remove_file(s.mp.join("drop")).unwrap();
        std::fs::remove_dir_all(s.mp.join("dir")).unwrap();
        std::fs::create_dir(s.mp.join("dir")).unwrap();
        std::fs::write(s.mp.join("keep"), b"K").unwrap();
    }
    assert!(s.upper.join(".wh.drop").exists());
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    assert_eq!(names(&s.mp), ["dir", "keep"]);
    assert!(names(&s.mp.join("dir")).is_empty());
    assert_eq!(std::fs::read(s.mp.join("keep")).unwrap(), b"K");
}

/// Directories that carry lower content move (no EXDEV), nested and repeatedly, as dpkg,
/// rustup or npm move them; the upper reads back the same under kernel overlayfs.
#[test]
fn directories_with_lower_content_rename_with_redirects() {
    if !require_root() {
        return;
    }
    let s = setup();
    let l2 = s.root.join("lower2");
    write(&s.lower.join("pkg/a/file"), b"a-top");
    write(&l2.join("pkg/a/deep/x"), b"x-below");
    write(&l2.join("pkg/b/y"), b"y");
    write(&l2.join("pkg/stay"), b"stay");
    write(&l2.join("other/dst-was-here"), b"hidden by the move");
    let snapshot = |m: &Path| -> Vec<(String, Vec<u8>)> {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . -type f | sort")
            .current_dir(m)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| (l.to_string(), std::fs::read(m.join(l)).unwrap()))
            .collect()
    };
    let ours = {
        let _m = UnionMount::new(&[&s.lower, &l2], Some(&s.upper), &s.mp);
        let m = &s.mp;
        std::fs::rename(m.join("pkg/a"), m.join("pkg/a.new")).unwrap();
        std::fs::create_dir(m.join("pkg/a")).unwrap();
        std::fs::rename(m.join("pkg"), m.join("renamed")).unwrap();
        std::fs::rename(m.join("renamed/a.new/deep"), m.join("deep-moved")).unwrap();
        std::fs::remove_dir_all(m.join("other")).unwrap();
        std::fs::rename(m.join("renamed/b"), m.join("other")).unwrap();
        std::fs::write(m.join("deep-moved/x2"), b"new").unwrap();
        assert_eq!(names(m), ["deep-moved", "other", "renamed"]);
        assert_eq!(names(&m.join("renamed")), ["a", "a.new", "stay"]);
        assert!(
            names(&m.join("renamed/a")).is_empty(),
            "a new dir where a lower one was"
        );
        assert_eq!(names(&m.join("renamed/a.new")), ["file"]);
        assert_eq!(names(&m.join("deep-moved")), ["x", "x2"]);
        assert_eq!(names(&m.join("other")), ["y"]);
        assert_eq!(std::fs::read(m.join("deep-moved/x")).unwrap(), b"x-below");
        snapshot(m)
    };
    // Remounted, and read by kernel overlayfs: the same tree.
    {
        let _m = UnionMount::new(&[&s.lower, &l2], Some(&s.upper), &s.mp);
        assert_eq!(snapshot(&s.mp), ours);
    }
    let (w, k) = (s.root.join("kw"), s.root.join("k"));
    mkdir(&w);
    mkdir(&k);
    let _k = KernelOverlay::with_opts(
        &[&s.lower, &l2],
        Some((&s.upper, &w)),
        &k,
        "redirect_dir=on",
    );
    assert_eq!(snapshot(&k), ours);
}

/// A lower object with several names stays one inode, with the right link count, through
/// and after copy-up by any of its names; shadowed or whited-out names are left alone, and
/// still counted, as kernel overlayfs with `index=on` counts them (its index holds them).
#[test]
fn lower_hard_links_stay_one_inode_through_copy_up() {
    if !require_root() {
        return;
    }
    let s = setup();
    let top = s.root.join("top");
    write(&s.lower.join("a/f"), b"data");
    mkdir(&s.lower.join("b"));
    mkdir(&s.lower.join("c"));
    std::fs::hard_link(s.lower.join("a/f"), s.lower.join("b/g")).unwrap();
    std::fs::hard_link(s.lower.join("a/f"), s.lower.join("c/shadowed")).unwrap();
    std::fs::hard_link(s.lower.join("a/f"), s.lower.join("c/gone")).unwrap();
    write(&top.join("c/shadowed"), b"a different file above");
    whiteout_chr(&top.join("c/gone"));
    {
        let _m = UnionMount::new(&[&top, &s.lower], Some(&s.upper), &s.mp);
        let m = &s.mp;
        let ino = std::fs::metadata(m.join("a/f")).unwrap().ino();
        assert_eq!(std::fs::metadata(m.join("b/g")).unwrap().ino(), ino);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("b/g"))
            .unwrap();
        f.write_all(b"+more").unwrap();
        drop(f);
        for p in ["a/f", "b/g"] {
            let md = std::fs::metadata(m.join(p)).unwrap();
            assert_eq!(md.ino(), ino, "{p}: one inode");
            assert_eq!(md.nlink(), 4, "{p}: the lower's count (kernel, index=on)");
            assert_eq!(std::fs::read(m.join(p)).unwrap(), b"data+more", "{p}");
        }
        assert_eq!(
            std::fs::read(m.join("c/shadowed")).unwrap(),
            b"a different file above"
        );
        assert_eq!(lstat_errno(&m.join("c/gone")), libc::ENOENT);
        // Renaming a name of the object keeps it linked.
        std::fs::rename(m.join("a/f"), m.join("a/f2")).unwrap();
        assert_eq!(std::fs::metadata(m.join("a/f2")).unwrap().ino(), ino);
    }
    assert_eq!(std::fs::read(s.lower.join("a/f")).unwrap(), b"data");
    let ui = std::fs::metadata(s.upper.join("a/f2")).unwrap();
    assert_eq!(
        ui.ino(),
        std::fs::metadata(s.upper.join("b/g")).unwrap().ino()
    );
    assert_eq!(ui.nlink(), 2);
    assert_eq!(
        getxattr(&s.upper.join("b/g"), "trusted.overlay.nlink").unwrap(),
        b"U+2"
    );
    assert!(!s.upper.join("c/shadowed").exists());
    {
        let _m = UnionMount::new(&[&top, &s.lower], Some(&s.upper), &s.mp);
        assert_eq!(std::fs::read(s.mp.join("b/g")).unwrap(), b"data+more");
        assert_eq!(std::fs::metadata(s.mp.join("b/g")).unwrap().nlink(), 4);
    }
    // Kernel overlayfs reads the upper the same way: the names are plain hard links there.
    let (w, k) = (s.root.join("kw"), s.root.join("k"));
    mkdir(&w);
    mkdir(&k);
    let _k = KernelOverlay::new(&[&top, &s.lower], Some((&s.upper, &w)), &k);
    let a = std::fs::metadata(k.join("a/f2")).unwrap();
    let b = std::fs::metadata(k.join("b/g")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(std::fs::read(k.join("a/f2")).unwrap(), b"data+more");
    assert_eq!(lstat_errno(&k.join("c/gone")), libc::ENOENT);
}

/// In the OCI format there are no redirects: a directory with lower content is copied up
/// whole and opaque, then moved; nothing is lost and nothing merges in at the new place.
#[test]
fn oci_format_moves_directories_by_copying_them_up() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("pkg/a/x"), b"x");
    write(&s.lower.join("pkg/b"), b"b");
    write(&s.lower.join("pkg/gone"), b"gone");
    write(
        &s.lower.join("new/stale"),
        b"a lower dir where the move lands",
    );
    {
        let _m = UnionMount::with_args(&[&s.lower], Some(&s.upper), &s.mp, &["-o", "whiteout=oci"]);
        let m = &s.mp;
        std::fs::remove_file(m.join("pkg/gone")).unwrap();
        std::fs::write(m.join("pkg/b"), b"b2").unwrap();
        std::fs::remove_dir_all(m.join("new")).unwrap();
        std::fs::rename(m.join("pkg"), m.join("new")).unwrap();
        assert_eq!(names(m), ["new"]);
        assert_eq!(names(&m.join("new")), ["a", "b"]);
        assert_eq!(std::fs::read(m.join("new/a/x")).unwrap(), b"x");
        assert_eq!(std::fs::read(m.join("new/b")).unwrap(), b"b2");
    }
    assert!(s.upper.join(".wh.pkg").exists());
    assert!(s.upper.join("new/.wh..wh..opq").exists());
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    assert_eq!(names(&s.mp), ["new"]);
    assert_eq!(names(&s.mp.join("new")), ["a", "b"]);
    assert_eq!(std::fs::read(s.mp.join("new/a/x")).unwrap(), b"x");
}

/// Owner, group and mode of every new object, made by an unprivileged caller, in the view and
/// in the upper: the same as on the kernel's overlay (the caller's ids, a set-group-ID
/// directory's group and bit, the caller's umask, set-ID bits kept for the owner).
#[test]
fn new_objects_belong_to_their_maker_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let s = setup();
    let make = |root: &Path| {
        chmod(root, 0o755);
        for d in ["lower", "upper", "mnt", "kupper", "kwork", "kmnt"] {
            let p = root.join(d);
            if !p.exists() {
                mkdir(&p);
            }
            chmod(&p, 0o755);
        }
    };
    make(&s.root);
    let lower = &s.lower;
    mkdir(&lower.join("pub"));
    chmod(&lower.join("pub"), 0o777);
    mkdir(&lower.join("sg"));
    lchown(&lower.join("sg"), 0, 2000);
    chmod(&lower.join("sg"), 0o2777);
    mkdir(&lower.join("mine"));
    lchown(&lower.join("mine"), 1000, 1001);
    let script = "set -e; umask 027; for d in pub sg mine; do cd \"$1/$d\"; \
        : > f; mkdir d; ln -s f l; mkfifo p; \
        : > s; chmod 6755 s; mkdir d/sub; : > d/sub/f; cd - >/dev/null; done";
    let act = |mp: &Path| {
        let out = run(Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1001",
                "--groups=2000",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(mp));
        assert!(
            out.status.success(),
            "as uid 1000 in {}: {}",
            mp.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let names = ["f", "d", "l", "p", "s", "d/sub", "d/sub/f"];
    let describe = |root: &Path| -> Vec<String> {
        let mut v = Vec::new();
        for d in ["pub", "sg", "mine"] {
            for n in names {
                let m = std::fs::symlink_metadata(root.join(d).join(n)).unwrap();
                v.push(format!("{d}/{n} {}:{} {:o}", m.uid(), m.gid(), m.mode()));
            }
        }
        v
    };
    let (kernel, ours) = on_both(&s, |mp| {
        act(mp);
        describe(mp)
    });
    assert_eq!(ours, kernel, "view: unionfuse vs kernel overlayfs");
    assert_eq!(
        describe(&s.upper),
        describe(&s.root.join("kupper")),
        "uppers"
    );
    // Not vacuous: the caller's ids and the set-group-ID directory's group are in there.
    assert_logged(&ours, "pub/f 1000:1001 100640");
    assert_logged(&ours, "sg/f 1000:2000 100640");
    assert_logged(&ours, "sg/d 1000:2000 42750");
}

/// Every name in an open directory from its start, then again after rewinddir(3), which must
/// show what changed in between (`between` runs with the directory still open).
fn list_rewind(dir: &Path, between: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let read_all = |d: *mut libc::DIR| {
        let mut v = Vec::new();
        loop {
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            v.push(name.to_string_lossy().into_owned());
        }
        v.sort();
        v
    };
    let d = unsafe { libc::opendir(c(dir).as_ptr()) };
    assert!(!d.is_null(), "opendir {dir:?}");
    let first = read_all(d);
    between();
    unsafe { libc::rewinddir(d) };
    let again = read_all(d);
    unsafe { libc::closedir(d) };
    (first, again)
}

#[test]
fn listings_follow_every_change_made_through_the_mount_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let s = setup();
    let lower = &s.lower;
    for f in ["d/a", "d/b", "d/sub/x", "e/y", "e/w"] {
        let p = lower.join(f);
        mkdir(p.parent().unwrap());
        write(&p, f.as_bytes());
    }
    type Op = (&'static str, fn(&Path));
    let ops: &[Op] = &[
        ("create", |m| write(&m.join("d/new"), b"n")),
        ("unlink lower", |m| {
            std::fs::remove_file(m.join("d/a")).unwrap()
        }),
        ("unlink upper", |m| {
            std::fs::remove_file(m.join("d/new")).unwrap()
        }),
        ("mkdir", |m| mkdir(&m.join("d/nd"))),
        ("rename in", |m| {
            std::fs::rename(m.join("e/y"), m.join("d/y")).unwrap()
        }),
        ("rename out", |m| {
            std::fs::rename(m.join("d/b"), m.join("e/b")).unwrap()
        }),
        ("rename within", |m| {
            std::fs::rename(m.join("d/y"), m.join("d/z")).unwrap()
        }),
        ("rename over", |m| {
            std::fs::rename(m.join("e/w"), m.join("d/z")).unwrap()
        }),
        ("rmdir lower", |m| {
            std::fs::remove_dir_all(m.join("d/sub")).unwrap()
        }),
        ("mkdir over removed", |m| mkdir(&m.join("d/sub"))),
        ("symlink", |m| symlink("z", &m.join("d/l"))),
        ("hard link", |m| {
            std::fs::hard_link(m.join("d/z"), m.join("d/h")).unwrap()
        }),
        ("rmdir upper", |m| {
            std::fs::remove_dir(m.join("d/nd")).unwrap()
        }),
    ];
    // Each change runs while `d` is open and listed, then both a fresh listing and the
    // rewound open one are taken, of `d`, `d/sub` and `e`. Every other time the caches are
    // dropped first, so that the open directory's first listing is read from the daemon
    // rather than from the kernel's cache.
    let act = |mp: &Path| -> Vec<String> {
        let mut log = Vec::new();
        for (i, (name, op)) in ops.iter().enumerate() {
            if i % 2 == 1 {
                std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
            }
            let (before, rewound) = list_rewind(&mp.join("d"), || op(mp));
            log.push(format!("{name}: d before {before:?}"));
            log.push(format!("{name}: d rewound {rewound:?}"));
            for d in ["d", "d/sub", "e"] {
                let now = if mp.join(d).exists() {
                    format!("{:?}", names(&mp.join(d)))
                } else {
                    "absent".into()
                };
                log.push(format!("{name}: {d} {now}"));
            }
        }
        log
    };
    let (kernel, ours) = on_both(&s, act);
    assert_same_log(&ours, &kernel);
    // Not vacuous: the rewound listing saw a change made while the directory was open.
    assert_logged(
        &kernel,
        r#"create: d rewound [".", "..", "a", "b", "new", "sub"]"#,
    );
}

#[test]
fn whiteouts_share_one_inode_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let s = setup();
    for n in ["f1", "f2", "f3", "d/f4"] {
        write(&s.lower.join(n), b"lower");
    }
    for d in ["kupper", "kwork", "kmnt"] {
        mkdir(&s.root.join(d));
    }
    let shared = |upper: &Path, names: &[&str]| -> Vec<(u64, u64, bool)> {
        names
            .iter()
            .map(|n| {
                let st = std::fs::symlink_metadata(upper.join(n)).unwrap();
                let wh = st.mode() & libc::S_IFMT == libc::S_IFCHR && st.rdev() == 0;
                (st.ino(), st.nlink(), wh)
            })
            .collect()
    };
    {
        let _k = KernelOverlay::new(
            &[&s.lower],
            Some((&s.root.join("kupper"), &s.root.join("kwork"))),
            &s.root.join("kmnt"),
        );
        for n in ["f1", "f2", "d/f4"] {
            std::fs::remove_file(s.root.join("kmnt").join(n)).unwrap();
        }
    }
    let k = shared(&s.root.join("kupper"), &["f1", "f2", "d/f4"]);
    assert!(
        k.iter()
            .all(|&(ino, nlink, wh)| ino == k[0].0 && nlink >= 3 && wh),
        "kernel: {k:?}"
    );
    {
        let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
        for n in ["f1", "f2", "d/f4"] {
            std::fs::remove_file(s.mp.join(n)).unwrap();
        }
        let ours = shared(&s.upper, &["f1", "f2", "d/f4"]);
        assert!(
            ours.iter()
                .all(|&(ino, nlink, wh)| ino == ours[0].0 && nlink >= 3 && wh),
            "unionfuse: {ours:?}"
        );
        // The shared inode gone from the work dir (or out of links): a new one takes over.
        let work = s.upper.join(".unionfuse-work");
        let kept: Vec<String> = names(&work);
        assert_eq!(kept, ["whiteout"], "work dir holds the shared whiteout");
        std::fs::remove_file(work.join("whiteout")).unwrap();
        std::fs::remove_file(s.mp.join("f3")).unwrap();
        assert_eq!(lstat_errno(&s.mp.join("f3")), libc::ENOENT);
        let f3 = shared(&s.upper, &["f3"]);
        assert!(f3[0].2 && f3[0].0 != ours[0].0, "{f3:?} vs {ours:?}");
    }
    // A clean unmount leaves no work dir, and the whiteouts still hide their names.
    assert_eq!(lstat_errno(&s.upper.join(".unionfuse-work")), libc::ENOENT);
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    assert!(
        names(&s.mp).iter().all(|n| !n.starts_with('f')),
        "{:?}",
        names(&s.mp)
    );
    assert_eq!(names(&s.mp.join("d")), Vec::<String>::new());
}

#[test]
fn names_first_found_missing_appear_when_made_through_the_mount() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("low/keep"), b"lower");
    write(&s.lower.join("low/gone"), b"lower");
    write(&s.lower.join("src"), b"moved");
    let _m = UnionMount::new(&[&s.lower], Some(&s.upper), &s.mp);
    mkdir(&s.mp.join("up"));
    type Make = fn(&Path, &Path);
    let makes: &[(&str, Make)] = &[
        ("create", |_, p| write(p, b"x")),
        ("mkdir", |_, p| mkdir(p)),
        ("symlink", |_, p| symlink("t", p)),
        ("fifo", |_, p| mknod(p, libc::S_IFIFO | 0o644, 0)),
        ("hard link", |m, p| {
            std::fs::hard_link(m.join("low/keep"), p).unwrap()
        }),
        ("rename", |m, p| {
            write(&m.join("tmp"), b"r");
            std::fs::rename(m.join("tmp"), p).unwrap()
        }),
    ];
    let mut n = 0;
    for dir in ["low", "up", "."] {
        for (what, make) in makes {
            n += 1;
            let p = s.mp.join(dir).join(format!("n{n}"));
            // Asked twice: the second answer may come from the kernel's cache of absences.
            assert_eq!(lstat_errno(&p), libc::ENOENT);
            assert_eq!(lstat_errno(&p), libc::ENOENT);
            make(&s.mp, &p);
            assert_eq!(lstat_errno(&p), 0, "{what} in {dir}");
            assert!(
                names(&s.mp.join(dir)).contains(&format!("n{n}")),
                "{what} in {dir}"
            );
        }
    }
    // A name deleted through the mount is absent at once, and made again, present.
    std::fs::remove_file(s.mp.join("low/gone")).unwrap();
    assert_eq!(lstat_errno(&s.mp.join("low/gone")), libc::ENOENT);
    write(&s.mp.join("low/gone"), b"again");
    assert_eq!(std::fs::read(s.mp.join("low/gone")).unwrap(), b"again");
}

#[test]
fn attributes_follow_every_change_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let s = setup();
    write(&s.lower.join("d/f"), b"lower data");
    mkdir(&s.lower.join("d/sub"));
    type Op = (&'static str, fn(&Path));
    let ops: &[Op] = &[
        ("write lower", |m| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.join("d/f"))
                .unwrap()
                .write_all(b"+more")
                .unwrap()
        }),
        ("create", |m| write(&m.join("d/g"), &[1u8; 10000])),
        ("link", |m| {
            std::fs::hard_link(m.join("d/g"), m.join("d/h")).unwrap()
        }),
        ("chmod one name", |m| chmod(&m.join("d/h"), 0o600)),
        ("chown one name", |m| lchown(&m.join("d/g"), 7, 8)),
        ("grow", |m| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.join("d/h"))
                .unwrap()
                .write_all(&[2u8; 50000])
                .unwrap()
        }),
        ("truncate", |m| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(m.join("d/g"))
                .unwrap()
                .set_len(3)
                .unwrap()
        }),
        ("unlink one name", |m| {
            std::fs::remove_file(m.join("d/g")).unwrap()
        }),
        ("mkdir", |m| mkdir(&m.join("d/sub/new"))),
        ("rmdir", |m| {
            std::fs::remove_dir(m.join("d/sub/new")).unwrap()
        }),
        ("rename", |m| {
            std::fs::rename(m.join("d/h"), m.join("d/sub/h")).unwrap()
        }),
        ("setfacl", |m| {
            let ok = Command::new("setfacl")
                .args(["-m", "u:4321:rwx"])
                .arg(m.join("d/sub/h"))
                .status()
                .unwrap();
            assert!(ok.success());
        }),
    ];
    let paths = ["d", "d/f", "d/g", "d/h", "d/sub", "d/sub/h"];
    // Mode, links, size, owner of every path after every change, and whether its change time
    // moved (the times themselves differ between the two runs). Asked twice per step: the
    // second answer may come from the kernel's cache.
    let act = |mp: &Path| -> Vec<String> {
        let mut log = Vec::new();
        let mut before: Vec<Option<i64>> = vec![None; paths.len()];
        for (name, op) in ops {
            for p in paths {
                let _ = std::fs::symlink_metadata(mp.join(p));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            op(mp);
            for (i, p) in paths.iter().enumerate() {
                for _ in 0..2 {
                    let line = match std::fs::symlink_metadata(mp.join(p)) {
                        Ok(m) => {
                            let moved = before[i]
                                .is_some_and(|c| c != m.ctime_nsec() + m.ctime() * 1_000_000_000);
                            before[i] = Some(m.ctime_nsec() + m.ctime() * 1_000_000_000);
                            format!(
                                "{name}: {p} {:o} n{} s{} {}:{} ctime moved {moved}",
                                m.mode(),
                                if m.is_dir() { 0 } else { m.nlink() },
                                if m.is_dir() { 0 } else { m.size() },
                                m.uid(),
                                m.gid()
                            )
                        }
                        Err(e) => format!("{name}: {p} {e}"),
                    };
                    log.push(line);
                }
            }
        }
        log
    };
    let (kernel, ours) = on_both(&s, act);
    assert_same_log(&ours, &kernel);
    assert!(
        kernel
            .iter()
            .any(|l| l.starts_with("grow: d/h 100600 n2 s60000 7:8")),
        "{kernel:?}"
    );
}

/// Set-user-ID, set-group-ID and file capabilities after a write, a truncate, an open with
/// O_TRUNC and a chown, by root, by a user outside the file's group and by one inside it, on
/// files copied up by the change and on files already in the upper: the same as on the
/// kernel's overlay, with reads and writes passed through to the upper file and without.
#[test]
fn privileges_drop_on_write_truncate_and_chown_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let s = setup();
    for d in [&s.root, &s.lower] {
        chmod(d, 0o755);
    }
    let cap = [
        1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let kinds: [(&str, u32); 5] = [
        ("ug", 0o6777),
        ("u", 0o4777),
        ("gx", 0o2777),
        ("g", 0o2767),
        ("cap", 0o777),
    ];
    // (caller, setpriv arguments; none for root)
    let callers: [(&str, &[&str]); 3] = [
        ("root", &[]),
        ("other", &["--reuid=1000", "--regid=1000", "--clear-groups"]),
        ("member", &["--reuid=1000", "--regid=1000", "--groups=2000"]),
    ];
    let ops: [(&str, &str); 4] = [
        ("append", "printf x >> \"$f\""),
        ("truncate", "truncate -s 1 \"$f\""),
        ("otrunc", ": > \"$f\""),
        ("chown", "chown 1000:2000 \"$f\""),
    ];
    let files = || {
        let mut v = Vec::new();
        for (who, _) in callers {
            for (op, _) in ops {
                if op == "chown" && who != "root" {
                    continue;
                }
                for (kind, mode) in kinds {
                    v.push((format!("{who}-{op}-{kind}"), who, op, kind, mode));
                }
            }
        }
        // Left alone: the bits and the capability are there to lose.
        v.push(("untouched".into(), "nobody", "none", "cap", 0o6777));
        v
    };
    let prepare = |dir: &Path| {
        for (name, _, _, kind, mode) in files() {
            let f = dir.join(name);
            write(&f, b"data");
            lchown(&f, 0, 2000);
            chmod(&f, mode);
            if kind == "cap" {
                setxattr(&f, "security.capability", &cap);
            }
        }
    };
    mkdir(&s.lower.join("low"));
    prepare(&s.lower.join("low"));
    let act = |mp: &Path| -> Vec<String> {
        mkdir(&mp.join("up"));
        prepare(&mp.join("up"));
        for (who, args) in callers {
            let mut script = String::from("set -e\n");
            for (name, w, op, _, _) in files() {
                if w == who {
                    let cmd = ops.iter().find(|(o, _)| *o == op).unwrap().1;
                    for d in ["low", "up"] {
                        script += &format!("f={}/{d}/{name}; {cmd}\n", mp.display());
                    }
                }
            }
            let mut cmd = if args.is_empty() {
                Command::new("sh")
            } else {
                let mut c = Command::new("setpriv");
                c.args(args).arg("--").arg("sh");
                c
            };
            let out = run(cmd.arg("-c").arg(&script));
            assert!(
                out.status.success(),
                "{who} in {}: {}",
                mp.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut log = Vec::new();
        for d in ["low", "up"] {
            for (name, ..) in files() {
                let p = mp.join(d).join(&name);
                let m = std::fs::metadata(&p).unwrap();
                let has_cap = getxattr(&p, "security.capability").is_ok();
                log.push(format!(
                    "{d}/{name}: {:o} {}:{} cap={has_cap} size={}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.len()
                ));
            }
        }
        log
    };
    let (kernel, ours) = on_both(&s, act);
    assert_same_log(&ours, &kernel);
    // Not vacuous: bits went, and bits stayed.
    assert_logged(&kernel, "low/other-append-ug: 777 0:2000 cap=false size=5");
    assert_logged(&kernel, "up/member-append-g: 2767 0:2000 cap=false size=5");
    assert_logged(&kernel, "up/other-append-g: 767 0:2000 cap=false size=5");
    assert_logged(&kernel, "low/untouched: 6777 0:2000 cap=true size=4");
    // Reads and writes through the daemon (a rootless mount's path) give the same.
    assert_same_log(&through_the_daemon(&s, act), &kernel);
}

/// `len` bytes of page-aligned memory inside `v` (what `O_DIRECT` asks of a caller).
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + 4096, 0);
    let off = v.as_ptr().align_offset(4096);
    &mut v[off..off + len]
}

#[test]
fn direct_io_reads_and_writes_like_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let s = setup();
    // A lower file whose end is not block-aligned.
    let content: Vec<u8> = (0..(1 << 20) + 1000).map(|i| (i * 7 % 251) as u8).collect();
    write(&s.lower.join("big"), &content);
    let act = |mp: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |name: &str, write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .custom_flags(libc::O_DIRECT)
                .open(mp.join(name))
                .unwrap()
        };
        let errno = |r: std::io::Result<usize>| match r {
            Ok(n) => format!("ok {n}"),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap()),
        };
        let mut log = Vec::new();
        let mut mem = Vec::new();
        // A lower file, read to its end in aligned 64 KiB pieces.
        let f = open("big", false);
        let mut got = Vec::new();
        loop {
            let buf = aligned(&mut mem, 64 << 10);
            let n = f.read_at(buf, got.len() as u64).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        log.push(format!("lower read {} same={}", got.len(), got == content));
        log.push(format!(
            "unaligned offset: {}",
            errno(f.read_at(aligned(&mut mem, 4096), 100))
        ));
        log.push(format!(
            "unaligned size: {}",
            errno(f.read_at(aligned(&mut mem, 1000), 0))
        ));
        drop(f);
        // Written through O_DIRECT: a lower file (copied up) and a new one.
        let f = open("big", true);
        let buf = aligned(&mut mem, 8192);
        buf.fill(0xaa);
        log.push(format!("copy-up write: {}", errno(f.write_at(buf, 4096))));
        log.push(format!(
            "unaligned write: {}",
            errno(f.write_at(&buf[..100], 1))
        ));
        drop(f);
        let mut want = content.clone();
        want[4096..4096 + 8192].fill(0xaa);
        log.push(format!(
            "after: same={}",
            std::fs::read(mp.join("big")).unwrap() == want
        ));
        let f = open("new", true);
        let buf = aligned(&mut mem, 3 * 4096);
        buf.fill(0x55);
        log.push(format!("new write: {}", errno(f.write_at(buf, 0))));
        let back = aligned(&mut mem, 4 * 4096);
        log.push(format!("new read: {}", errno(f.read_at(back, 0))));
        log.push(format!(
            "same={}",
            back[..3 * 4096].iter().all(|&b| b == 0x55)
        ));
        log
    };
    let (kernel, ours) = on_both(&s, act);
    assert_same_log(&ours, &kernel);
    // Not vacuous: the reads and writes went through, the unaligned ones failed.
    assert_logged(&kernel, &format!("lower read {} same=true", content.len()));
    assert_logged(&kernel, "unaligned offset: errno 22");
    assert_logged(&kernel, "copy-up write: ok 8192");
    assert_logged(&kernel, "after: same=true");
    assert_logged(&kernel, "new read: ok 12288");
    // Through the daemon (a rootless mount's path: no kernel passthrough), the same.
    assert_same_log(&through_the_daemon(&s, act), &kernel);
}

/// `lsattr` and `chattr` through the union, against kernel overlayfs: the inode flags of the
/// real file are read (a lower file's too), and set on the upper copy after a copy-up (#34).
#[test]
fn inode_flags_are_read_and_set_like_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let p = |n: &str| d.path().join(n);
    for n in ["l/d", "u", "m", "ku", "kw", "km"] {
        mkdir(&p(n));
    }
    write(&p("l/f"), b"x");
    write(&p("l/g"), b"y");
    let flags = |path: &Path, dir: bool| -> String {
        let mut c = Command::new("lsattr");
        if dir {
            c.arg("-d");
        }
        let o = c.arg(path).output().unwrap();
        assert!(
            o.status.success(),
            "lsattr {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let chattr = |flag: &str, path: &Path| {
        let o = Command::new("chattr").arg(flag).arg(path).output().unwrap();
        assert!(
            o.status.success(),
            "chattr {flag} {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // A flag of the lower file itself shows through.
    chattr("+d", &p("l/g"));
    let ours = UnionMount::new(&[&p("l")], Some(&p("u")), &p("m"));
    let kernel = KernelOverlay::new(&[&p("l")], Some((&p("ku"), &p("kw"))), &p("km"));
    let mut seen = Vec::new();
    for mp in [&ours.mp, &kernel.mp] {
        let before = (
            flags(&mp.join("f"), false),
            flags(&mp.join("g"), false),
            flags(&mp.join("d"), true),
        );
        chattr("+d", &mp.join("f"));
        chattr("+A", &mp.join("d"));
        let after = (
            flags(&mp.join("f"), false),
            flags(&mp.join("g"), false),
            flags(&mp.join("d"), true),
        );
        assert!(after.0.contains('d') && after.2.contains('A'), "{after:?}");
        seen.push((before, after));
    }
    assert_eq!(seen[0], seen[1], "unionfuse, kernel overlayfs");
    // Set on the upper copies; the lower is untouched.
    assert!(flags(&p("u/f"), false).contains('d'));
    assert!(flags(&p("u/d"), true).contains('A'));
    assert!(!flags(&p("l/f"), false).contains('d'));
    drop(ours);
    drop(kernel);
}
