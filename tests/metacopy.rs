//! Uppers written by kernel overlayfs with `metacopy=on` (#34): a file whose owner, mode,
//! times or xattrs changed is there without its data, which stays below (at its own path,
//! or where its redirect points after a rename). unionfuse reads such a file's data from
//! below, as the kernel does, copies it up at the first write (after which the kernel reads
//! the upper right too), and `commit`/`diff` of a container whose upper is one write the
//! data, never the sparse file's zeros.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const KOPTS: &str = "redirect_dir=on,metacopy=on,index=on";

/// Every file of a tree: (path, content, uid, mode, size).
fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>, u32, u32, u64)> {
    let mut v = Vec::new();
    for (p, md) in walk_tree(root) {
        let md = md.unwrap();
        if md.is_file() {
            let data = std::fs::read(root.join(&p)).unwrap();
            v.push((p, data, md.uid(), md.mode(), md.len()));
        }
    }
    v.sort();
    v
}

/// A lower tree, and an upper made by kernel overlayfs with metacopy over it: owners,
/// modes, times and xattrs changed, files renamed within and across directories.
fn kernel_metacopy_upper(d: &Path) -> (PathBuf, PathBuf) {
    let (l, u, w, m) = (d.join("l"), d.join("u"), d.join("w"), d.join("km"));
    for p in [&l, &u, &w, &m, &l.join("sub"), &l.join("other")] {
        mkdir(p);
    }
    write(&l.join("owner"), b"hello lower data\n");
    write(&l.join("mode"), b"mode data\n");
    write(&l.join("times"), b"times data\n");
    write(&l.join("xattr"), b"xattr data\n");
    write(&l.join("renamed"), b"renamed within\n");
    write(&l.join("sub/moved"), b"moved across\n");
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    write(&l.join("big"), &big);
    let k = KernelOverlay::with_opts(&[&l], Some((&u, &w)), &m, KOPTS);
    lchown(&m.join("owner"), 4321, 4321);
    lchown(&m.join("big"), 4321, 4321);
    chmod(&m.join("mode"), 0o600);
    set_times(&m.join("times"), (1_000_000, 0), (1_000_000, 0));
    setxattr(&m.join("xattr"), "user.tag", b"v");
    chmod(&m.join("renamed"), 0o640);
    std::fs::rename(m.join("renamed"), m.join("renamed2")).unwrap();
    lchown(&m.join("sub/moved"), 7, 7);
    std::fs::rename(m.join("sub/moved"), m.join("other/moved")).unwrap();
    drop(k);
    (l, u)
}

/// The upper really is the kernel's metadata-only kind: sparse, marked, no data of its own.
fn assert_metacopy(upper: &Path, name: &str) {
    let raw = std::fs::read(upper.join(name)).unwrap();
    assert!(
        !raw.is_empty() && raw.iter().all(|&b| b == 0),
        "{name} has data in the upper"
    );
    assert!(
        getxattr(&upper.join(name), "trusted.overlay.metacopy").is_ok(),
        "{name} is not marked"
    );
}

fn reads_right(passthrough: bool) {
    if !require_root() {
        return;
    }
    let d = scratch();
    let (l, u) = kernel_metacopy_upper(d.path());
    for n in ["owner", "mode", "big", "renamed2", "other/moved"] {
        assert_metacopy(&u, n);
    }
    // What the kernel shows of it.
    let w = d.path().join("w");
    let km = d.path().join("km");
    let k = KernelOverlay::with_opts(&[&l], Some((&u, &w)), &km, KOPTS);
    let want = files(&km);
    drop(k);
    let m = d.path().join("m");
    mkdir(&m);
    let ours = if passthrough {
        UnionMount::new(&[&l], Some(&u), &m)
    } else {
        UnionMount::without_passthrough(&[&l], Some(&u), &m)
    };
    assert_eq!(files(&m), want);
    assert_eq!(
        std::fs::read(m.join("owner")).unwrap(),
        b"hello lower data\n"
    );
    assert_eq!(getxattr(&m.join("xattr"), "user.tag").unwrap(), b"v");
    // A write copies the data up; the mark goes; the owner stays.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("owner"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"more\n").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(m.join("owner")).unwrap(),
        b"hello lower data\nmore\n"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("other/moved"))
        .unwrap()
        .set_len(5)
        .unwrap();
    // A chmod of a metacopy file is metadata only: the data stays below.
    std::fs::set_permissions(m.join("big"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let after = files(&m);
    drop(ours);
    assert_metacopy(&u, "big");
    assert!(getxattr(&u.join("owner"), "trusted.overlay.metacopy").is_err());
    assert_eq!(
        std::fs::read(u.join("owner")).unwrap(),
        b"hello lower data\nmore\n"
    );
    // The kernel reads what we left the same way.
    let k = KernelOverlay::with_opts(&[&l], Some((&u, &w)), &km, KOPTS);
    assert_eq!(files(&km), after);
    assert_eq!(std::fs::read(km.join("other/moved")).unwrap(), b"moved");
    drop(k);
}

#[test]
fn a_kernel_metacopy_upper_reads_right_with_passthrough() {
    reads_right(true);
}

#[test]
fn a_kernel_metacopy_upper_reads_right_through_the_daemon() {
    reads_right(false);
}

/// A kernel metacopy upper turned into a lower (an image layer): read right, and copied
/// up with its data.
#[test]
fn a_metacopy_lower_reads_and_copies_up_its_data() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let (l, mid) = kernel_metacopy_upper(d.path());
    let (u, m) = (d.path().join("u2"), d.path().join("m"));
    mkdir(&u);
    mkdir(&m);
    let ours = UnionMount::new(&[&mid, &l], Some(&u), &m);
    assert_eq!(
        std::fs::read(m.join("owner")).unwrap(),
        b"hello lower data\n"
    );
    assert_eq!(std::fs::metadata(m.join("owner")).unwrap().uid(), 4321);
    assert_eq!(
        std::fs::read(m.join("other/moved")).unwrap(),
        b"moved across\n"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("renamed2"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"+\n").unwrap();
    drop(f);
    drop(ours);
    assert_eq!(
        std::fs::read(u.join("renamed2")).unwrap(),
        b"renamed within\n+\n"
    );
    assert!(getxattr(&u.join("renamed2"), "trusted.overlay.metacopy").is_err());
}

/// `diff` and `commit` of a container whose upper the kernel wrote with metacopy.
#[test]
fn commit_of_a_kernel_metacopy_upper_writes_the_data() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let rootfs = d.path().join("rootfs");
    runenv::build_rootfs(&rootfs);
    write(&rootfs.join("data"), b"image data\n");
    let tar = d.path().join("rootfs.tar");
    runenv::tar_of(&rootfs, &tar);
    let store = d.path().join("store");
    let uf = |args: &[&str]| {
        let o = store_cli::command(&store, d.path(), args).output().unwrap();
        store_cli::assert_ok(args, &o)
    };
    uf(&["import", tar.to_str().unwrap(), "base"]);
    uf(&["create", "--name", "c1", "base", "true"]);
    let layer = std::fs::read_dir(store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let id = std::fs::read_dir(store.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let (w, km) = (d.path().join("w"), d.path().join("km"));
    mkdir(&w);
    mkdir(&km);
    let k = KernelOverlay::with_opts(&[&layer], Some((&id.join("upper"), &w)), &km, KOPTS);
    lchown(&km.join("data"), 1234, 1234);
    drop(k);
    assert_metacopy(&id.join("upper"), "data");
    assert!(uf(&["diff", "c1"]).contains("C /data\n"));
    uf(&["commit", "c1", "withowner"]);
    assert_eq!(
        uf(&[
            "run",
            "--rm",
            "withowner",
            "sh",
            "-c",
            "cat /data; stat -c %u /data"
        ]),
        "image data\n1234\n"
    );
    assert_eq!(
        uf(&["run", "--rm", "--name", "c1x", "base", "cat", "/data"]),
        "image data\n"
    );
    uf(&["start", "-a", "c1"]);
}

/// `du` of a tree, in bytes of blocks.
fn disk_bytes(root: &Path) -> u64 {
    walk_tree(root)
        .into_iter()
        .filter_map(|(_, m)| m.ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// With `-o metacopy=on`, `chown -R` of a lower tree (what rootless id remapping does)
/// copies metadata alone, in the kernel's format: the same view as kernel overlayfs with
/// `metacopy=on`, an upper of a few blocks where the data is megabytes, and each upper
/// read right by the other (#34).
#[test]
fn chown_r_with_metacopy_copies_no_data() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let p = |n: &str| d.path().join(n);
    for n in ["l/sub/deep", "u", "m", "ku", "kw", "km", "w2"] {
        mkdir(&p(n));
    }
    let big: Vec<u8> = (0..20 << 20).map(|i| (i * 7 % 253) as u8).collect();
    write(&p("l/big"), &big);
    write(&p("l/sub/a"), b"a\n");
    write(&p("l/sub/deep/b"), b"b\n");
    let remap = |mp: &Path| {
        run(Command::new("chown").args(["-R", "1234:1234"]).arg(mp));
        chmod(&mp.join("big"), 0o600);
        set_times(&mp.join("sub/a"), (2_000_000, 0), (2_000_000, 0));
    };
    let ours = UnionMount::with_args(&[&p("l")], Some(&p("u")), &p("m"), &["-o", "metacopy=on"]);
    remap(&ours.mp);
    let view = files(&ours.mp);
    drop(ours);
    let k = KernelOverlay::with_opts(&[&p("l")], Some((&p("ku"), &p("kw"))), &p("km"), KOPTS);
    remap(&k.mp);
    assert_eq!(files(&k.mp), view, "unionfuse, kernel overlayfs");
    drop(k);
    // No data in our upper: a few blocks for 20 MiB.
    assert!(
        disk_bytes(&p("u")) < 1 << 20,
        "{} bytes",
        disk_bytes(&p("u"))
    );
    assert_metacopy(&p("u"), "big");
    // The kernel reads our upper, we read the kernel's.
    let k = KernelOverlay::with_opts(&[&p("l")], Some((&p("u"), &p("w2"))), &p("km"), KOPTS);
    assert_eq!(files(&k.mp), view, "our upper under kernel overlayfs");
    drop(k);
    let ours = UnionMount::with_args(&[&p("l")], Some(&p("ku")), &p("m"), &["-o", "metacopy=on"]);
    assert_eq!(files(&ours.mp), view, "the kernel's upper under unionfuse");
    drop(ours);
    // A write brings the data up; the kernel reads the result.
    let ours = UnionMount::with_args(&[&p("l")], Some(&p("u")), &p("m"), &["-o", "metacopy=on"]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ours.mp.join("big"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"tail").unwrap();
    drop(f);
    let after = files(&ours.mp);
    drop(ours);
    assert!(getxattr(&p("u/big"), "trusted.overlay.metacopy").is_err());
    let k = KernelOverlay::with_opts(&[&p("l")], Some((&p("u"), &p("w2"))), &p("km"), KOPTS);
    assert_eq!(files(&k.mp), after);
    drop(k);
}
