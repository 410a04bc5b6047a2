//! Bad input to `unionfuse mount`: one line on stderr, a non-zero exit, nothing mounted, no
//! daemon left, and never a hang.

mod common;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `unionfuse ARGS` with a deadline; a hang fails the test instead of blocking it.
fn refuse(args: &[&OsStr], mp: &Path, expect: &str) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unionfuse {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("unionfuse: "), "{err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected '{expect}' in: {err}"
    );
    assert_eq!(is_mounted(mp), None, "{args:?} left a mount");
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

struct Dirs {
    _t: tempfile::TempDir,
    l1: PathBuf,
    l2: PathBuf,
    up: PathBuf,
    mp: PathBuf,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let t = scratch();
    let root = t.path().to_path_buf();
    let d = |n: &str| {
        let p = root.join(n);
        mkdir(&p);
        p
    };
    Dirs {
        l1: d("l1"),
        l2: d("l2"),
        up: d("up"),
        mp: d("mnt"),
        root: root.clone(),
        _t: t,
    }
}

fn spec(parts: &[&Path]) -> OsString {
    layer_spec(parts)
}

#[test]
fn missing_or_wrong_layers_are_refused() {
    if !require_root() {
        return;
    }
    let d = dirs();
    let m = OsStr::new("mount");
    let missing = d.root.join("nope");
    refuse(
        &[m, &spec(&[&d.l1, &missing]), os(&d.up), os(&d.mp)],
        &d.mp,
        "No such file or directory",
    );
    write(&d.root.join("file"), b"x");
    refuse(
        &[m, &spec(&[&d.root.join("file")]), os(&d.mp)],
        &d.mp,
        "not a directory",
    );
    refuse(
        &[m, &spec(&[&d.l1]), os(&missing), os(&d.mp)],
        &d.mp,
        "upper layer",
    );
    refuse(
        &[m, &spec(&[&d.l1]), os(&d.up), os(&missing)],
        &missing,
        "mountpoint",
    );
    refuse(
        &[m, &spec(&[&d.l1, &d.l2, &d.l1]), os(&d.mp)],
        &d.mp,
        "given twice",
    );
    // The same directory under another name is the same layer.
    symlink(d.l2.to_str().unwrap(), &d.root.join("alias"));
    refuse(
        &[m, &spec(&[&d.l2, &d.root.join("alias")]), os(&d.mp)],
        &d.mp,
        "given twice",
    );
    refuse(
        &[m, &spec(&[&d.l1]), os(&d.l1), os(&d.mp)],
        &d.mp,
        "given twice",
    );
    refuse(&[m, OsStr::new(""), os(&d.mp)], &d.mp, "empty layer");
    refuse(
        &[
            m,
            OsStr::new("-o"),
            OsStr::new("bogus"),
            &spec(&[&d.l1]),
            os(&d.mp),
        ],
        &d.mp,
        "unknown mount option",
    );
}

#[test]
fn nesting_of_mountpoint_and_layers_is_refused() {
    if !require_root() {
        return;
    }
    let d = dirs();
    let m = OsStr::new("mount");
    let inside = d.l1.join("sub");
    mkdir(&inside);
    refuse(
        &[m, &spec(&[&d.l1, &d.l2]), os(&inside)],
        &inside,
        "is inside layer",
    );
    refuse(
        &[m, &spec(&[&d.l2]), os(&d.up), os(&d.up.join("."))],
        &d.up,
        "is also a layer",
    );
    let in_mp = d.mp.join("layer");
    mkdir(&in_mp);
    refuse(
        &[m, &spec(&[&in_mp]), os(&d.mp)],
        &d.mp,
        "is inside mountpoint",
    );
    // A mountpoint inside the upper.
    let mp_in_up = d.up.join("m");
    mkdir(&mp_in_up);
    refuse(
        &[m, &spec(&[&d.l1]), os(&d.up), os(&mp_in_up)],
        &mp_in_up,
        "is inside layer",
    );
}

#[test]
fn already_mounted_mountpoint_is_refused() {
    if !require_root() {
        return;
    }
    let d = dirs();
    write(&d.l1.join("f"), b"x");
    let _m = UnionMount::new(&[&d.l1], None, &d.mp);
    let out = unionfuse(&[OsStr::new("mount"), &spec(&[&d.l2]), os(&d.mp)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already mounted"), "{err}");
    assert_eq!(err.lines().count(), 1);
    // The first mount is untouched.
    assert_eq!(std::fs::read(d.mp.join("f")).unwrap(), b"x");
}

#[test]
fn read_only_upper_is_refused() {
    if !require_root() {
        return;
    }
    let d = dirs();
    let ro = d.root.join("ro");
    mkdir(&ro);
    assert!(
        Command::new("mount")
            .arg("--bind")
            .arg(&d.up)
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    let _g = UnmountOnDrop(ro.clone());
    assert!(
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    refuse(
        &[OsStr::new("mount"), &spec(&[&d.l1]), os(&ro), os(&d.mp)],
        &d.mp,
        "not writable",
    );
}

#[test]
fn colons_in_paths_need_escaping() {
    if !require_root() {
        return;
    }
    let d = dirs();
    let colon = d.root.join("a:b");
    write(&colon.join("inside"), b"colon dir");
    let raw = OsString::from(colon.as_os_str());
    refuse(&[OsStr::new("mount"), &raw, os(&d.mp)], &d.mp, "'\\:'");
    // Escaped, it mounts.
    let _m = UnionMount::new(&[&colon], None, &d.mp);
    assert_eq!(std::fs::read(d.mp.join("inside")).unwrap(), b"colon dir");
}

#[test]
fn help_and_version_answer() {
    for args in [&["--help"][..], &["mount", "--help"], &["--version"]] {
        let out = run(Command::new(bin()).args(args));
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    let out = run(Command::new(bin()).args(["mount", "--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples"));
}

/// The manual pages in man/ are the ones the definitions behind --help generate.
#[test]
fn man_pages_are_current() {
    let dir = scratch();
    let o = unionfuse(&[OsStr::new("man"), dir.path().as_os_str()]);
    assert!(o.status.success(), "{o:?}");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut committed: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    committed.sort();
    assert_eq!(names, committed, "man/ holds other pages than generated");
    assert!(names.iter().any(|n| n == "unionfuse.1"));
    for n in names {
        let fresh = std::fs::read(dir.path().join(&n)).unwrap();
        let old = std::fs::read(repo.join(&n)).unwrap();
        assert!(
            fresh == old,
            "man/{} is stale: run `cargo run --release -- man man`",
            n.to_string_lossy()
        );
    }
}
