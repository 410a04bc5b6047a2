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

#[test]
fn upper_or_workdir_inside_a_lower_is_refused() {
    if !require_root() {
        return;
    }
    let d = dirs();
    let m = OsStr::new("mount");
    let up_in_lower = d.l1.join("var");
    mkdir(&up_in_lower);
    let before = std::fs::metadata(&up_in_lower).unwrap().modified().unwrap();
    refuse(
        &[m, &spec(&[&d.l1]), os(&up_in_lower), os(&d.mp)],
        &d.mp,
        "is inside lower layer",
    );
    // A lower inside the upper.
    let lower_in_up = d.up.join("l");
    mkdir(&lower_in_up);
    refuse(
        &[m, &spec(&[&lower_in_up]), os(&d.up), os(&d.mp)],
        &d.mp,
        "is inside upper layer",
    );
    // A work dir inside a lower, through the fuse-overlayfs command line.
    let w = d.l2.join("w");
    mkdir(&w);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        d.l2.display(),
        d.up.display(),
        w.display()
    );
    refuse(
        &[OsStr::new("-o"), OsStr::new(&opts), os(&d.mp)],
        &d.mp,
        "is inside lower layer",
    );
    // Nothing was written in the lowers.
    assert_eq!(
        std::fs::metadata(&up_in_lower).unwrap().modified().unwrap(),
        before
    );
    assert!(names(&up_in_lower).is_empty());
    assert_eq!(names(&w), Vec::<String>::new());
}

#[test]
fn a_read_only_mount_writes_nothing() {
    if !require_root() {
        return;
    }
    let d = dirs();
    write(&d.up.join("f"), b"up");
    set_times(&d.up, (1_000_000, 0), (1_000_000, 0));
    let before = std::fs::metadata(&d.up).unwrap();
    {
        let _m = UnionMount::with_args(&[&d.l1], Some(&d.up), &d.mp, &["-o", "ro"]);
        assert_eq!(std::fs::read(d.mp.join("f")).unwrap(), b"up");
        assert_eq!(
            std::fs::write(d.mp.join("g"), b"x")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EROFS)
        );
        assert_eq!(names(&d.up), vec!["f".to_string()], "the work dir was made");
    }
    let after = std::fs::metadata(&d.up).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.mtime(), after.ctime(), after.ctime_nsec()),
        (before.mtime(), before.ctime(), before.ctime_nsec()),
        "the upper's root changed"
    );
}

#[test]
fn an_upper_in_use_is_refused_and_freed_by_its_daemons_end() {
    if !require_root() {
        return;
    }
    let d = dirs();
    write(&d.l1.join("f"), b"x");
    let mp2 = d.root.join("m2");
    mkdir(&mp2);
    let mut first = UnionMount::new(&[&d.l1], Some(&d.up), &d.mp);
    let out = unionfuse(&[OsStr::new("mount"), &spec(&[&d.l2]), os(&d.up), os(&mp2)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is in use by another mount"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(is_mounted(&mp2), None);
    // Two read-only mounts of one upper may share it; a writable one may not join them.
    let out = unionfuse(&[
        OsStr::new("mount"),
        OsStr::new("-o"),
        OsStr::new("ro"),
        &spec(&[&d.l2]),
        os(&d.up),
        os(&mp2),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a read-only mount beside a writer"
    );
    // The first mount still works, and a kill -9 of its daemon frees the upper.
    write(&d.mp.join("g"), b"y");
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    let _ = Command::new("umount").arg("-l").arg(&d.mp).status();
    let _again = UnionMount::new(&[&d.l1], Some(&d.up), &mp2);
    assert_eq!(std::fs::read(mp2.join("g")).unwrap(), b"y");
}

#[test]
fn remount_right_after_umount_always_works() {
    if !require_root() {
        return;
    }
    let d = dirs();
    write(&d.l1.join("f"), b"x");
    let _guard = UnmountOnDrop(d.mp.clone());
    for i in 0..200 {
        // Plain umount(8) does not wait for the daemon: the next mount may meet it closing.
        let out = unionfuse(&[OsStr::new("mount"), &spec(&[&d.l1]), os(&d.up), os(&d.mp)]);
        assert!(
            out.status.success(),
            "cycle {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(d.mp.join(format!("n{}", i % 3)), b"y").unwrap();
        let st = Command::new("umount").arg(&d.mp).status().unwrap();
        assert!(st.success(), "cycle {i}: umount failed");
    }
    // The last daemon may still be closing; the next mount waits for it, and its guard
    // waits for its own daemon to end.
    {
        let _last = UnionMount::new(&[&d.l1], Some(&d.up), &d.mp);
        assert_eq!(std::fs::read(d.mp.join("n1")).unwrap(), b"y");
    }
    assert_eq!(names(&d.up), vec!["n0", "n1", "n2"]);
}
