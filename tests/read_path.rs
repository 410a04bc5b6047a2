//! The merged view on real FUSE mounts: resolution order, every whiteout and opaque format,
//! attributes, inode numbers, big directories, limits, permissions, and lowers left intact.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = scratch();
        let root = tmp.path().to_path_buf();
        Fixture { _tmp: tmp, root }
    }
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        mkdir(&p);
        p
    }
}

#[test]
fn background_mount_serves_until_umount_and_daemon_exits() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, up, mp) = (f.dir("l1"), f.dir("l2"), f.dir("up"), f.dir("mnt"));
    write(&l1.join("a"), b"top");
    write(&l2.join("a"), b"bottom");
    write(&l2.join("b"), b"only-below");
    let out = unionfuse(&[
        OsStr::new("mount"),
        &layer_spec(&[&l1, &l2]),
        up.as_os_str(),
        mp.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The command returns only once the mount is live.
    assert_eq!(is_mounted(&mp).as_deref(), Some("fuse.unionfuse"));
    let _c = UnmountOnDrop(mp.clone());
    assert_eq!(std::fs::read(mp.join("a")).unwrap(), b"top");
    assert_eq!(std::fs::read(mp.join("b")).unwrap(), b"only-below");
    let pid: i32 = std::fs::read_to_string(unionfuse::daemon::pidfile(&mp))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let out = unionfuse(&[OsStr::new("umount"), mp.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(is_mounted(&mp), None);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "daemon {pid} still running after umount: {stat}"
    );
    // Unmounting again is an error, not a hang.
    let out = unionfuse(&[OsStr::new("umount"), mp.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"));
}

#[test]
fn higher_layer_wins_for_every_kind_and_dirs_merge() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, l3, up, mp) = (
        f.dir("l1"),
        f.dir("l2"),
        f.dir("l3"),
        f.dir("up"),
        f.dir("mnt"),
    );
    write(&up.join("file"), b"upper");
    write(&l1.join("file"), b"l1");
    write(&l3.join("file"), b"l3");
    write(&l2.join("only2"), b"2");
    // Directory merged over three layers plus upper.
    write(&up.join("d/u"), b"u");
    write(&l1.join("d/one"), b"1");
    write(&l2.join("d/two"), b"2");
    write(&l3.join("d/three"), b"3");
    write(&l3.join("d/one"), b"shadowed");
    // A file above a directory hides the directory, and the other way round.
    write(&l1.join("fileoverdir"), b"file");
    write(&l2.join("fileoverdir/inner"), b"hidden");
    write(&l1.join("diroverfile/inner"), b"visible");
    write(&l2.join("diroverfile"), b"hidden file");
    write(&l3.join("diroverfile/deep"), b"below the file: hidden");
    // Symlinks and special files win the same way.
    symlink("target-l1", &l1.join("link"));
    symlink("target-l2", &l2.join("link"));
    write(&l2.join("fifo"), b"regular below");
    mknod(&l1.join("fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(&l2.join("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));

    let _m = UnionMount::new(&[&l1, &l2, &l3], Some(&up), &mp);
    assert_eq!(std::fs::read(mp.join("file")).unwrap(), b"upper");
    assert_eq!(std::fs::read(mp.join("only2")).unwrap(), b"2");
    assert_eq!(names(&mp.join("d")), ["one", "three", "two", "u"]);
    assert_eq!(std::fs::read(mp.join("d/one")).unwrap(), b"1");
    assert!(mp.join("fileoverdir").is_file());
    assert_eq!(lstat_errno(&mp.join("fileoverdir/inner")), libc::ENOTDIR);
    assert_eq!(names(&mp.join("diroverfile")), ["inner"]);
    assert_eq!(
        std::fs::read_link(mp.join("link")).unwrap(),
        PathBuf::from("target-l1")
    );
    assert!(
        std::fs::symlink_metadata(mp.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = std::fs::symlink_metadata(mp.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    // A device node in a layer works as a device in the view.
    std::fs::write(mp.join("null"), b"discarded").unwrap();
}

#[test]
fn read_only_union_without_upper_refuses_writes() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, mp) = (f.dir("l1"), f.dir("mnt"));
    write(&l1.join("f"), b"x");
    let _m = UnionMount::new(&[&l1], None, &mp);
    let e = std::fs::write(mp.join("f"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = std::fs::write(mp.join("new"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(l1.join("f")).unwrap(), b"x");
}

/// Every whiteout format, in a lower layer and in the upper, hides the name below it and is
/// never shown itself.
#[test]
fn every_whiteout_format_hides_and_is_hidden() {
    if !require_root() {
        return;
    }
    type Maker = fn(&Path, &str);
    let formats: [(&str, Maker); 4] = [
        ("chr00", |d, n| whiteout_chr(&d.join(n))),
        ("oci", |d, n| write(&d.join(format!(".wh.{n}")), b"")),
        // Xattr whiteouts sit in a directory marked for them, as the kernel wants.
        ("xattr-trusted", |d, n| {
            write(&d.join(n), b"");
            setxattr(&d.join(n), "trusted.overlay.whiteout", b"y");
            setxattr(d, "trusted.overlay.opaque", b"x");
        }),
        ("xattr-user", |d, n| {
            write(&d.join(n), b"");
            setxattr(&d.join(n), "user.overlay.whiteout", b"y");
            setxattr(d, "user.overlay.opaque", b"x");
        }),
    ];
    for in_upper in [false, true] {
        for (fname, make) in formats {
            let f = Fixture::new();
            let (l1, l2, up, mp) = (f.dir("l1"), f.dir("l2"), f.dir("up"), f.dir("mnt"));
            write(&l2.join("gone"), b"hidden");
            write(&l2.join("sub/gonedir/x"), b"hidden");
            write(&l2.join("kept"), b"kept");
            let top = if in_upper { &up } else { &l1 };
            make(top, "gone");
            mkdir(&top.join("sub"));
            make(&top.join("sub"), "gonedir");
            // A whiteout with nothing below it is hidden too.
            make(top, "nothing-below");
            let _m = UnionMount::new(&[&l1, &l2], Some(&up), &mp);
            let ctx = format!("format {fname}, in upper: {in_upper}");
            assert_eq!(names(&mp), ["kept", "sub"], "{ctx}");
            assert!(names(&mp.join("sub")).is_empty(), "{ctx}");
            for n in ["gone", "sub/gonedir", "nothing-below", ".wh.gone"] {
                assert_eq!(lstat_errno(&mp.join(n)), libc::ENOENT, "{ctx}: {n}");
            }
        }
    }
}

/// An xattr whiteout in a directory not marked "x": as the kernel, unionfuse honours it on
/// lookup and lists it (a listing reads no inode to find such whiteouts: that is the point of
/// the mark). Compared with kernel overlayfs on the same layers.
#[test]
fn unmarked_xattr_whiteouts_behave_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (top, bot, kmp, omp, up, _work) = (
        f.dir("top"),
        f.dir("bot"),
        f.dir("km"),
        f.dir("om"),
        f.dir("up"),
        f.dir("work"),
    );
    for d in ["d", "e"] {
        write(&bot.join(d).join("f"), b"data");
        write(&bot.join(d).join("g"), b"data");
        mkdir(&top.join(d));
        write(&top.join(d).join("f"), b"");
        setxattr(&top.join(d).join("f"), "trusted.overlay.whiteout", b"y");
    }
    setxattr(&top.join("e"), "trusted.overlay.opaque", b"x");
    let _k = KernelOverlay::new(&[&top, &bot], None, &kmp);
    let _o = UnionMount::new(&[&top, &bot], Some(&up), &omp);
    for (d, listed) in [("d", vec!["f", "g"]), ("e", vec!["g"])] {
        assert_eq!(names(&kmp.join(d)), listed, "kernel, {d}");
        assert_eq!(names(&omp.join(d)), listed, "unionfuse, {d}");
        for mp in [&kmp, &omp] {
            assert_eq!(
                lstat_errno(&mp.join(d).join("f")),
                libc::ENOENT,
                "{mp:?} {d}/f"
            );
            assert_eq!(lstat_errno(&mp.join(d).join("g")), 0, "{mp:?} {d}/g");
        }
    }
}

#[test]
fn every_opaque_format_hides_lower_contents() {
    if !require_root() {
        return;
    }
    type Maker = fn(&Path);
    let formats: [(&str, Maker); 4] = [
        ("trusted", |d| setxattr(d, "trusted.overlay.opaque", b"y")),
        ("user", |d| setxattr(d, "user.overlay.opaque", b"y")),
        ("fuse-overlayfs", |d| {
            setxattr(d, "user.fuseoverlayfs.opaque", b"y")
        }),
        ("oci", |d| write(&d.join(".wh..wh..opq"), b"")),
    ];
    for in_upper in [false, true] {
        for (fname, make) in formats {
            let f = Fixture::new();
            let (l1, l2, l3, up, mp) = (
                f.dir("l1"),
                f.dir("l2"),
                f.dir("l3"),
                f.dir("up"),
                f.dir("mnt"),
            );
            let top = if in_upper { &up } else { &l1 };
            write(&top.join("d/mine"), b"mine");
            make(&top.join("d"));
            write(&l2.join("d/below"), b"hidden");
            write(&l3.join("d/further"), b"hidden");
            // Nested: opaque two levels down, merged above it.
            write(&top.join("n/a/b/new"), b"new");
            make(&top.join("n/a/b"));
            write(&l2.join("n/a/b/old"), b"hidden");
            write(&l2.join("n/a/sibling"), b"merged");
            // Not opaque: the value must be "y".
            write(&top.join("m/x"), b"x");
            if fname != "oci" {
                let attr = match fname {
                    "trusted" => "trusted.overlay.opaque",
                    "user" => "user.overlay.opaque",
                    _ => "user.fuseoverlayfs.opaque",
                };
                setxattr(&top.join("m"), attr, b"n");
            }
            write(&l2.join("m/y"), b"y");
            let _m = UnionMount::new(&[&l1, &l2, &l3], Some(&up), &mp);
            let ctx = format!("format {fname}, in upper: {in_upper}");
            assert_eq!(names(&mp.join("d")), ["mine"], "{ctx}");
            assert_eq!(names(&mp.join("n/a")), ["b", "sibling"], "{ctx}");
            assert_eq!(names(&mp.join("n/a/b")), ["new"], "{ctx}");
            assert_eq!(lstat_errno(&mp.join("d/below")), libc::ENOENT, "{ctx}");
            assert_eq!(
                lstat_errno(&mp.join("d/.wh..wh..opq")),
                libc::ENOENT,
                "{ctx}"
            );
            assert_eq!(names(&mp.join("m")), ["x", "y"], "{ctx}");
        }
    }
}

/// An OCI layer may hold both `.wh.NAME` and `NAME`: the name is this layer's, and nothing of
/// it comes from below.
#[test]
fn oci_whiteout_beside_a_new_entry_replaces_what_is_below() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    write(&l1.join(".wh.d"), b"");
    write(&l1.join("d/new"), b"new");
    write(&l2.join("d/old"), b"old");
    let _m = UnionMount::new(&[&l1, &l2], None, &mp);
    assert_eq!(names(&mp), ["d"]);
    assert_eq!(names(&mp.join("d")), ["new"]);
}

#[test]
fn private_xattrs_hidden_user_xattrs_and_acls_shown() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    write(&l1.join("f"), b"data");
    setxattr(&l1.join("f"), "user.color", b"blue");
    setxattr(&l1.join("f"), "trusted.overlay.origin", b"x");
    setxattr(&l1.join("f"), "user.overlay.origin", b"x");
    setxattr(&l1.join("f"), "user.fuseoverlayfs.foo", b"x");
    setxattr(&l1.join("f"), "trusted.other", b"t");
    mkdir(&l1.join("d"));
    setxattr(&l1.join("d"), "trusted.overlay.opaque", b"y");
    setxattr(&l1.join("d"), "user.dir", b"v");
    write(&l2.join("d/x"), b"");
    let st = Command::new("setfacl")
        .args(["-m", "u:1234:r"])
        .arg(l1.join("f"))
        .status()
        .unwrap();
    assert!(st.success());
    let _m = UnionMount::new(&[&l1, &l2], None, &mp);
    assert_eq!(
        listxattr(&mp.join("f")),
        ["system.posix_acl_access", "trusted.other", "user.color"]
    );
    assert_eq!(getxattr(&mp.join("f"), "user.color").unwrap(), b"blue");
    assert_eq!(
        getxattr(&mp.join("f"), "trusted.overlay.origin"),
        Err(libc::ENODATA)
    );
    assert_eq!(listxattr(&mp.join("d")), ["user.dir"]);
    assert_eq!(
        getxattr(&mp.join("d"), "trusted.overlay.opaque"),
        Err(libc::ENODATA)
    );
    let acl = Command::new("getfacl").arg(mp.join("f")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("user:1234:r--"),
        "{}",
        String::from_utf8_lossy(&acl.stdout)
    );
}

#[test]
fn inode_numbers_unique_stable_and_hard_links_shared() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    write(&l2.join("a/orig"), b"linked");
    std::fs::hard_link(l2.join("a/orig"), l2.join("a/link1")).unwrap();
    mkdir(&l2.join("b"));
    std::fs::hard_link(l2.join("a/orig"), l2.join("b/link2")).unwrap();
    for i in 0..200 {
        write(&l1.join(format!("a/f{i}")), b"x");
        write(&l2.join(format!("b/g{i}")), b"y");
    }
    let other = scratch();
    write(&other.path().join("x"), b"other fs? same fs is fine");
    let m = UnionMount::new(&[&l1, &l2], None, &mp);
    let mut seen: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut first = BTreeMap::new();
    let mp_dev = std::fs::metadata(&mp).unwrap().dev();
    for e in walk(&mp) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        assert_eq!(md.dev(), mp_dev, "st_dev of {e:?} is not the mount's");
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        let is_link = ["orig", "link1", "link2"].contains(&n.as_str());
        if let Some(prev) = seen.insert(md.ino(), e.clone()) {
            let pn = prev.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                is_link && ["orig", "link1", "link2"].contains(&pn.as_str()),
                "{e:?} and {prev:?} share inode {}",
                md.ino()
            );
        }
        first.insert(e.clone(), md.ino());
    }
    let orig = std::fs::metadata(mp.join("a/orig")).unwrap();
    assert_eq!(orig.nlink(), 3);
    assert_eq!(orig.ino(), ino(&mp.join("a/link1")));
    assert_eq!(orig.ino(), ino(&mp.join("b/link2")));
    // Stable: the same names give the same numbers after the kernel forgets them.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    for (p, i) in &first {
        assert_eq!(ino(p), *i, "inode of {p:?} changed");
    }
    // readdir's d_ino agrees with stat's st_ino.
    for e in std::fs::read_dir(mp.join("a")).unwrap() {
        let e = e.unwrap();
        use std::os::unix::fs::DirEntryExt;
        assert_eq!(e.ino(), ino(&e.path()), "{:?}", e.path());
    }
    drop(m);
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Reads a directory with `readdir` in a loop, taking a `telldir` position at each step and
/// seeking back to some of them, as `ls` and `rm -r` on huge directories do.
fn list_with_seeks(dir: &Path) -> (Vec<Vec<u8>>, usize) {
    let c = cpath(dir);
    let mut names = Vec::new();
    let mut reseeks = 0;
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        let mut checked = 0usize;
        loop {
            let pos = libc::telldir(d);
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_bytes()
                .to_vec();
            if names.len() % 997 == 0 && checked < names.len() + 1 {
                // Seek back and read the same entry again.
                checked = names.len() + 1;
                libc::seekdir(d, pos);
                let again = libc::readdir(d);
                assert!(!again.is_null());
                let n2 = std::ffi::CStr::from_ptr((*again).d_name.as_ptr())
                    .to_bytes()
                    .to_vec();
                assert_eq!(n2, name, "seekdir/telldir lost its place");
                reseeks += 1;
            }
            names.push(name);
        }
        libc::closedir(d);
    }
    (names, reseeks)
}

#[test]
fn directory_of_100k_entries_lists_completely_and_once() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    let big1 = l1.join("big");
    let big2 = l2.join("big");
    mkdir(&big1);
    mkdir(&big2);
    // 60k in the top, 60k below with 20k overlapping, 500 whited out: 99.5k visible.
    for i in 0..60_000 {
        std::fs::File::create(big1.join(format!("entry-{i:06}"))).unwrap();
    }
    for i in 40_000..100_000 {
        std::fs::File::create(big2.join(format!("entry-{i:06}"))).unwrap();
    }
    for i in 100_000..100_500 {
        std::fs::File::create(big2.join(format!("entry-{i:06}"))).unwrap();
        whiteout_chr(&big1.join(format!("entry-{i:06}")));
    }
    let _m = UnionMount::new(&[&l1, &l2], None, &mp);
    let (names, reseeks) = list_with_seeks(&mp.join("big"));
    let real: Vec<&Vec<u8>> = names.iter().filter(|n| n != &b"." && n != &b"..").collect();
    let set: HashSet<&Vec<u8>> = real.iter().copied().collect();
    assert_eq!(real.len(), 100_000, "every entry exactly once");
    assert_eq!(set.len(), 100_000, "no duplicates");
    for i in (0..100_000).step_by(7) {
        assert!(set.contains(&format!("entry-{i:06}").into_bytes()));
    }
    assert!(reseeks > 50);
    // A second listing in many tiny getdents calls gives the same.
    let fd = std::fs::File::open(mp.join("big")).unwrap();
    let mut count = 0;
    let mut buf = vec![0u8; 512];
    loop {
        use std::os::fd::AsRawFd;
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert!(n >= 0);
        if n == 0 {
            break;
        }
        let mut pos = 0;
        while pos < n as usize {
            let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
            count += 1;
            pos += reclen;
        }
    }
    assert_eq!(count, 100_002);
}

#[test]
fn names_and_paths_at_the_limits() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, mp) = (f.dir("l1"), f.dir("mnt"));
    let long255 = "n".repeat(255);
    write(&l1.join(&long255), b"max");
    // A deep path just under PATH_MAX through the mount (and through the layer).
    let prefix = mp.as_os_str().len().max(l1.as_os_str().len());
    // PATH_MAX counts the NUL; the path is prefix + "/" + rel + "/leaf".
    let budget = libc::PATH_MAX as usize - 1 - prefix - 1 - "/leaf".len();
    let mut rel = PathBuf::new();
    while rel.as_os_str().len() + 201 <= budget {
        rel.push("d".repeat(200));
    }
    let rest = budget - rel.as_os_str().len() - 1;
    if rest > 0 {
        rel.push("e".repeat(rest));
    }
    write(&l1.join(&rel).join("leaf"), b"deep");
    let _m = UnionMount::new(&[&l1], None, &mp);
    assert_eq!(std::fs::read(mp.join(&long255)).unwrap(), b"max");
    let long256 = "n".repeat(256);
    assert_eq!(lstat_errno(&mp.join(&long256)), libc::ENAMETOOLONG);
    let full = mp.join(&rel).join("leaf");
    assert_eq!(full.as_os_str().len(), libc::PATH_MAX as usize - 1);
    assert_eq!(std::fs::read(&full).unwrap(), b"deep");
}

/// The same commands, run as uid 65534, on kernel overlayfs and on unionfuse over identical
/// layers, get the same answers, errors included.
#[test]
fn permissions_enforced_as_on_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let mut lowers = Vec::new();
    for name in ["l1", "l2"] {
        let l = f.dir(name);
        write(&l.join("secret"), b"root only");
        chmod(&l.join("secret"), 0o600);
        write(&l.join("public"), b"everyone");
        chmod(&l.join("public"), 0o644);
        write(&l.join("closed/inside"), b"x");
        chmod(&l.join("closed"), 0o700);
        write(&l.join("listonly/f"), b"x");
        chmod(&l.join("listonly"), 0o744);
        write(&l.join("nobody"), b"nobody's");
        chmod(&l.join("nobody"), 0o600);
        lchown(&l.join("nobody"), 65534, 65534);
        write(&l.join("script"), b"#!/bin/sh\necho ran\n");
        chmod(&l.join("script"), 0o700);
        lowers.push(l);
    }
    // Give the uid 65534 process a way in: the scratch root is 0700 by default.
    chmod(&f.root, 0o755);
    let (ku, kw, kmp, mp) = (f.dir("ku"), f.dir("kw"), f.dir("kmnt"), f.dir("mnt"));
    let ou = f.dir("ou");
    let lrefs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
    let _k = KernelOverlay::new(&lrefs, Some((&ku, &kw)), &kmp);
    let _m = UnionMount::new(&lrefs, Some(&ou), &mp);
    let script = "for p in secret public closed/inside nobody; do cat $p 2>&1 | sed 's|^cat: ||'; done; \
        ls closed 2>&1 | sed 's|^ls: ||'; ls listonly 2>&1; ls -l listonly 2>&1 | sed 's|^ls: ||' | sort; \
        ./script 2>&1 | sed 's|^.*script: ||'; test -r secret; echo r$?; test -x script; echo x$?; \
        for c in 'touch new' 'echo x >> public' 'chmod 777 public' 'rm -f public' 'mkdir d' \
                 'ln -s x l' 'mv public p2' 'echo mine > nobody' 'chmod 640 nobody' \
                 'chown 0 nobody' 'touch -d @5 nobody' 'rm -f closed/inside'; do \
            sh -c \"$c\" 2>/dev/null; echo \"$c: $?\"; done; cat nobody; stat -c '%a %u %Y' nobody";
    let run_as_nobody = |dir: &Path| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .current_dir(dir)
            .uid(65534)
            .gid(65534);
        // std drops root's supplementary groups itself when it changes the uid.
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kernel = run_as_nobody(&kmp);
    let ours = run_as_nobody(&mp);
    assert!(kernel.contains("Permission denied"), "oracle: {kernel}");
    // Both refusals and successes are in what is compared.
    assert!(
        kernel.contains("touch new: 1") && kernel.contains("chmod 640 nobody: 0"),
        "{kernel}"
    );
    assert_eq!(ours, kernel);
}

/// Reading everything through the union writes nothing to the lowers: not data, not
/// metadata, not atime.
#[test]
fn lower_layers_are_never_written() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    for (l, tag) in [(&l1, "1"), (&l2, "2")] {
        for i in 0..20 {
            write(&l.join(format!("d{i}/f{tag}")), tag.as_bytes());
            set_times(&l.join(format!("d{i}/f{tag}")), (1000, 0), (2000, 0));
            set_times(&l.join(format!("d{i}")), (1000, 0), (2000, 0));
        }
        symlink("d0", &l.join(format!("s{tag}")));
        // atime before mtime: under relatime any read would update it.
        set_times(&l.join(format!("s{tag}")), (1000, 0), (2000, 0));
    }
    let snap = |l: &Path| -> Vec<(PathBuf, i64, i64, i64, u64)> {
        let mut v: Vec<_> = walk(l)
            .into_iter()
            .map(|p| {
                let m = std::fs::symlink_metadata(&p).unwrap();
                (p, m.atime(), m.mtime(), m.ctime(), m.size())
            })
            .collect();
        v.sort();
        v
    };
    let before = (snap(&l1), snap(&l2));
    {
        let _m = UnionMount::new(&[&l1, &l2], None, &mp);
        for p in walk(&mp) {
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_file() {
                std::fs::read(&p).unwrap();
            } else if md.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap();
            }
            let _ = listxattr(&p);
        }
    }
    assert_eq!(before, (snap(&l1), snap(&l2)));
}

#[test]
fn fifty_layers_resolve_top_down() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let mut layers = Vec::new();
    for i in 0..55 {
        let l = f.dir(&format!("l{i}"));
        write(&l.join("shared/common"), format!("{i}").as_bytes());
        write(&l.join(format!("shared/own{i}")), b"x");
        write(&l.join(format!("top{i}")), b"y");
        if i == 30 {
            whiteout_chr(&l.join("shared/own40"));
        }
        layers.push(l);
    }
    let mp = f.dir("mnt");
    let refs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let _m = UnionMount::new(&refs, None, &mp);
    assert_eq!(std::fs::read(mp.join("shared/common")).unwrap(), b"0");
    let n = names(&mp.join("shared"));
    assert_eq!(n.len(), 55, "common + 54 own (own40 whited out)");
    assert!(!n.contains(&"own40".to_string()));
    assert_eq!(names(&mp).len(), 56);
}

#[test]
fn symlinks_out_of_the_layer_are_shown_not_followed() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, mp) = (f.dir("l1"), f.dir("mnt"));
    let outside = f.dir("outside");
    write(&outside.join("secret"), b"outside the layer");
    symlink(outside.to_str().unwrap(), &l1.join("abs"));
    symlink("../../../../../../../../", &l1.join("up"));
    symlink("abs/secret", &l1.join("chain"));
    let _m = UnionMount::new(&[&l1], None, &mp);
    let md = std::fs::symlink_metadata(mp.join("abs")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(std::fs::read_link(mp.join("abs")).unwrap(), outside);
    assert_eq!(
        std::fs::read_link(mp.join("up")).unwrap(),
        PathBuf::from("../../../../../../../../")
    );
    // The kernel follows a link in the view; the daemon itself never resolves one: asking it
    // for a name below a symlink gives ENOTDIR rather than the target's contents.
    assert_eq!(
        std::fs::read(mp.join("chain")).unwrap(),
        b"outside the layer"
    );
    let c = CString::new("secret").unwrap();
    let dirfd = std::fs::File::open(&mp).unwrap();
    use std::os::fd::AsRawFd;
    let linkfd = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            c"abs".as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW,
        )
    };
    assert!(linkfd >= 0);
    let r = unsafe { libc::openat(linkfd, c.as_ptr(), libc::O_RDONLY) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTDIR)
    );
    unsafe { libc::close(linkfd) };
}

/// An ordinary user mounts through fusermount3 and unmounts; the daemon goes with the mount.
#[test]
fn unprivileged_user_mounts_and_unmounts() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode();
    assert_eq!(
        mode & 0o006,
        0o006,
        "/dev/fuse must be 0666 (scripts/setup does that)"
    );
    let f = Fixture::new();
    chmod(&f.root, 0o755);
    let (l1, l2, mp) = (f.dir("l1"), f.dir("l2"), f.dir("mnt"));
    write(&l1.join("f"), b"from l1");
    write(&l2.join("g"), b"from l2");
    for p in [&l1, &l2, &mp] {
        lchown(p, 65534, 65534);
    }
    // The test binary may live where nobody cannot reach; give it a copy.
    let exe = f.root.join("unionfuse");
    std::fs::copy(bin(), &exe).unwrap();
    chmod(&exe, 0o755);
    let as_nobody = |args: &[&OsStr]| {
        Command::new(&exe)
            .args(args)
            .uid(65534)
            .gid(65534)
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(&f.root)
            .output()
            .unwrap()
    };
    let _g = UnmountOnDrop(mp.clone());
    let out = as_nobody(&[
        OsStr::new("mount"),
        &layer_spec(&[&l1, &l2]),
        mp.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(is_mounted(&mp).as_deref(), Some("fuse.unionfuse"));
    let cat = Command::new("cat")
        .arg(mp.join("f"))
        .arg(mp.join("g"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "from l1from l2");
    let out = as_nobody(&[OsStr::new("umount"), mp.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(is_mounted(&mp), None);

    // With an upper: what the user may write, it can, also where a lower object is root's
    // (its copy then belongs to the user: the only owner it can give).
    let up = f.dir("up");
    write(&l1.join("shared"), b"shared");
    chmod(&l1.join("shared"), 0o666);
    mkdir(&l1.join("tmpdir"));
    chmod(&l1.join("tmpdir"), 0o1777);
    lchown(&up, 65534, 65534);
    let spec = layer_spec(&[&l1, &l2]);
    let out = as_nobody(&[OsStr::new("mount"), &spec, up.as_os_str(), mp.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = Command::new("sh")
        .args([
            "-c",
            "echo more >> shared && echo x > tmpdir/new && echo y > new && cat shared",
        ])
        .current_dir(&mp)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let umount = as_nobody(&[OsStr::new("umount"), mp.as_os_str()]);
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(String::from_utf8_lossy(&w.stdout), "sharedmore\n");
    assert!(
        umount.status.success(),
        "{}",
        String::from_utf8_lossy(&umount.stderr)
    );
    assert_eq!(std::fs::read(l1.join("shared")).unwrap(), b"shared");
    assert_eq!(std::fs::read(up.join("tmpdir/new")).unwrap(), b"x\n");
}

/// SIGTERM or SIGINT to the daemon unmounts cleanly: no dead mount is left behind.
#[test]
fn termination_signal_unmounts_and_exits() {
    if !require_root() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let f = Fixture::new();
        let (l1, mp) = (f.dir("l1"), f.dir("mnt"));
        write(&l1.join("f"), b"x");
        let mut m = UnionMount::new(&[&l1], None, &mp);
        assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"x");
        unsafe { libc::kill(m.pid() as i32, sig) };
        let st = m.wait_exit(std::time::Duration::from_secs(10));
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "signal {sig}: {}",
            m.log()
        );
        assert_eq!(is_mounted(&mp), None, "signal {sig} left the mount");
    }
}

#[test]
fn big_files_are_read_ahead_a_mebibyte_at_a_time() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let (l1, up, mp) = (f.dir("l1"), f.dir("up"), f.dir("mnt"));
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    write(&l1.join("big"), &data);
    let _m = UnionMount::new(&[&l1], Some(&up), &mp);
    // The kernel caps FUSE readahead at 128 KiB; the daemon raises its mount's own setting.
    let dev = std::fs::metadata(&mp).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    assert_eq!(
        std::fs::read_to_string(&knob).unwrap().trim(),
        "1024",
        "{knob}"
    );
    assert!(
        std::fs::read(mp.join("big")).unwrap() == data,
        "data read back"
    );
}

/// Three lower layers with redirects in the top two, in the xattr namespace `ns` (`trusted`
/// or `user`): relative, absolute, a chain over all three, and one beside an opaque marker.
fn redirect_layers(f: &Fixture, ns: &str) -> [PathBuf; 3] {
    let (l0, l1, l2) = (
        f.dir(&format!("{ns}0")),
        f.dir(&format!("{ns}1")),
        f.dir(&format!("{ns}2")),
    );
    let redirect =
        |p: &Path, to: &str| setxattr(p, &format!("{ns}.overlay.redirect"), to.as_bytes());
    // Relative: a/y renamed to a/x in l0.
    mkdir(&l0.join("a/x"));
    redirect(&l0.join("a/x"), "y");
    whiteout_chr(&l0.join("a/y"));
    write(&l1.join("a/y/f1"), b"relative");
    write(&l1.join("a/z"), b"untouched");
    // Absolute: /old renamed to /b/moved in l0.
    mkdir(&l0.join("b/moved"));
    redirect(&l0.join("b/moved"), "/old");
    write(&l0.join("b/moved/own"), b"l0's own");
    whiteout_chr(&l0.join("old"));
    write(&l1.join("old/f2"), b"absolute");
    write(&l1.join("b/moved/f9"), b"same name, not followed");
    // A chain: /c in l0 comes from /p, which in l1 comes from /q.
    mkdir(&l0.join("c"));
    redirect(&l0.join("c"), "/p");
    whiteout_chr(&l0.join("p"));
    write(&l1.join("p/f3a"), b"middle");
    redirect(&l1.join("p"), "/q");
    whiteout_chr(&l1.join("q"));
    write(&l2.join("q/f3"), b"deep");
    write(&l2.join("c/f9"), b"same name, not followed");
    // Opaque with a redirect: the redirect is not followed.
    mkdir(&l0.join("d"));
    setxattr(&l0.join("d"), &format!("{ns}.overlay.opaque"), b"y");
    redirect(&l0.join("d"), "/e");
    write(&l1.join("e/f4"), b"left where it was");
    write(&l1.join("d/f5"), b"hidden by the opaque dir");
    [l0, l1, l2]
}

/// Every name of a view with its kind and content.
fn contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    walk_tree(root)
        .into_iter()
        .map(|(r, md)| {
            let md = md.unwrap_or_else(|e| panic!("{r:?}: {e}"));
            let data = md.is_file().then(|| std::fs::read(root.join(&r)).unwrap());
            (r, data)
        })
        .collect()
}

#[test]
fn redirects_in_lower_layers_resolve_as_in_the_kernel() {
    if !require_root() {
        return;
    }
    let f = Fixture::new();
    let trusted = redirect_layers(&f, "trusted");
    let (kmp, omp) = (f.dir("km"), f.dir("om"));
    let refs: Vec<&Path> = trusted.iter().map(|p| p.as_path()).collect();
    let kernel = {
        let _k = KernelOverlay::with_opts(&refs, None, &kmp, "redirect_dir=on");
        contents(&kmp)
    };
    let c = |p: &str| kernel.get(Path::new(p)).cloned().flatten();
    // The oracle says what each case means.
    assert_eq!(c("a/x/f1").as_deref(), Some(&b"relative"[..]));
    assert!(!kernel.contains_key(Path::new("a/y")));
    assert_eq!(c("b/moved/f2").as_deref(), Some(&b"absolute"[..]));
    assert!(!kernel.contains_key(Path::new("b/moved/f9")));
    assert_eq!(c("c/f3a").as_deref(), Some(&b"middle"[..]));
    assert_eq!(c("c/f3").as_deref(), Some(&b"deep"[..]));
    assert!(!kernel.contains_key(Path::new("c/f9")));
    assert!(!kernel.contains_key(Path::new("d/f4")));
    assert!(!kernel.contains_key(Path::new("d/f5")));
    assert_eq!(c("e/f4").as_deref(), Some(&b"left where it was"[..]));
    {
        let _o = UnionMount::new(&refs, None, &omp);
        assert_eq!(contents(&omp), kernel, "trusted.overlay.redirect");
    }
    // The same layers in the user namespace, as a rootless mount writes them (the kernel
    // follows no redirect with `userxattr`): the same view.
    let user = redirect_layers(&f, "user");
    let refs: Vec<&Path> = user.iter().map(|p| p.as_path()).collect();
    let _o = UnionMount::new(&refs, None, &omp);
    assert_eq!(contents(&omp), kernel, "user.overlay.redirect");
}
