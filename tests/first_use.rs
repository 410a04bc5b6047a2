//! What a new user hits first (#28): `save -o` writes through what the path names; a second
//! name never replaces the first and `rmi ID` of a many-named image asks for `-f`; the
//! container's init shows no argument of the runner's; a store on a mount of its own (root
//! and rootless); rootless `diff`/`commit` of directories only the container's users may
//! read; invalid names refused; `attach` without a terminal inside keeps the caller's
//! terminal as it is; `logs` of foreground runs, the streams apart; `kill -9` of a
//! background runner recorded; a full store said as such, an image archive given to
//! `import`; a mount right after `umount` of a daemon slow to go; `chown(-1, -1)` moves the
//! change time as the kernel's overlay does.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::runenv::{self, RunCtx, Who};
use common::*;

/// A store of the test's own with the busybox root filesystem imported as `base`.
type World = store_cli::BaseStore;

impl World {
    /// `images` as (name, id) pairs.
    fn images(&self) -> Vec<(String, String)> {
        self.ok(&["images"])
            .lines()
            .skip(1)
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().into(), w.next().unwrap().into())
            })
            .collect()
    }

    fn container_id(&self, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v["Container"]["id"].as_str().unwrap().to_string()
    }
}

/// The names a tar archive lists.
fn tar_names(data: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(data);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn is_oci_archive(data: &[u8]) -> bool {
    let n = tar_names(data);
    n.contains(&"index.json".to_string()) && n.contains(&"oci-layout".to_string())
}

/// Entries of a directory.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn save_writes_through_what_the_path_names() {
    let Some(w) = World::new() else { return };
    let out = w.path("out");
    mkdir(&out);
    // A regular file: written whole, then renamed over; nothing else left.
    write(&out.join("plain.tar"), b"old");
    w.ok(&[
        "save",
        "base",
        "-o",
        out.join("plain.tar").to_str().unwrap(),
    ]);
    assert!(is_oci_archive(
        &std::fs::read(out.join("plain.tar")).unwrap()
    ));
    // A symlink stays one; its target gets the archive.
    write(&out.join("target.tar"), b"old");
    symlink("target.tar", &out.join("link.tar"));
    w.ok(&["save", "base", "-o", out.join("link.tar").to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(out.join("link.tar"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(is_oci_archive(
        &std::fs::read(out.join("target.tar")).unwrap()
    ));
    // A device node (the test's own /dev/null): written to, never replaced.
    mknod(
        &out.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    w.ok(&["save", "base", "-o", out.join("null").to_str().unwrap()]);
    let md = std::fs::symlink_metadata(out.join("null")).unwrap();
    assert!(md.file_type().is_char_device(), "the device was replaced");
    assert_eq!(md.rdev(), libc::makedev(1, 3));
    // A fifo: its reader gets the archive.
    let fifo = out.join("fifo");
    let c = common::cpath(&fifo);
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    w.ok(&["save", "base", "-o", fifo.to_str().unwrap()]);
    assert!(is_oci_archive(&reader.join().unwrap()));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // `-o -` and `-o /dev/stdout`: down the pipe (as `| podman load` reads it).
    for to in ["-", "/dev/stdout"] {
        let o = w.uf(&["save", "base", "-o", to]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(is_oci_archive(&o.stdout), "-o {to}");
    }
    let sh = format!(
        "{} save base -o /dev/stdout | tar -t | grep -c index.json",
        bin().display()
    );
    let o = Command::new("sh")
        .args(["-c", &sh])
        .env("UNIONFUSE_ROOT", w.store())
        .env("TMPDIR", w.dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    // A directory: refused in one line, with or without its slash, leaving nothing.
    for d in [
        out.to_str().unwrap().to_string(),
        format!("{}/", out.display()),
    ] {
        w.refused(&["save", "base", "-o", &d], "is a directory");
    }
    // A failure (a full filesystem) leaves the file as it was, and no temporary.
    let small = w.path("small");
    mkdir(&small);
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small));
    let _g = UnmountOnDrop(small.clone());
    write(&small.join("keep.tar"), b"precious");
    w.refused(
        &[
            "save",
            "base",
            "-o",
            small.join("keep.tar").to_str().unwrap(),
        ],
        "No space left",
    );
    assert_eq!(std::fs::read(small.join("keep.tar")).unwrap(), b"precious");
    assert_eq!(entries(&small), vec!["keep.tar"]);
    assert_eq!(
        entries(&out),
        vec!["fifo", "link.tar", "null", "plain.tar", "target.tar"]
    );
}

#[test]
fn names_are_added_and_rmi_of_an_id_asks_for_force() {
    let Some(w) = World::new() else { return };
    let tar = w.tar();
    // The same tarball imported twice in one second is the same image (its config holds the
    // second it was made in): both names are kept. Both imports start a new second, again if
    // a slow machine let them straddle two.
    w.ok(&["rmi", "base"]);
    let mut imgs = Vec::new();
    for _ in 0..5 {
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            > 100
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        w.ok(&["import", tar.to_str().unwrap(), "base"]);
        w.ok(&["import", tar.to_str().unwrap(), "second:1"]);
        imgs = w.images();
        if imgs.len() == 2 && imgs[0].1 == imgs[1].1 {
            break;
        }
        for (_, id) in &imgs {
            let _ = w.uf(&["rmi", "-f", id]);
        }
    }
    assert_eq!(imgs.len(), 2, "{imgs:?}");
    assert_eq!(imgs[0].1, imgs[1].1, "one image, two names: {imgs:?}");
    let names: Vec<&str> = imgs.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"base:latest") && names.contains(&"second:1"),
        "{names:?}"
    );
    // A load of that image adds its name too.
    let saved = w.path("second.tar");
    w.ok(&[
        "save",
        "second:1",
        "--format",
        "docker-archive",
        "-o",
        saved.to_str().unwrap(),
    ]);
    w.ok(&["tag", "base", "third:1"]);
    w.ok(&["rmi", "second:1"]);
    w.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(w.images().len(), 3, "{:?}", w.images());
    // rmi ID: refused while it has several names, the image untouched.
    let id = imgs[0].1.clone();
    let err = w.refused(&["rmi", &id], "several names");
    assert!(err.contains("rmi -f"), "{err}");
    assert_eq!(w.images().len(), 3);
    // rmi NAME: only that name.
    assert!(w.ok(&["rmi", "third:1"]).contains("untagged third:1"));
    assert_eq!(w.images().len(), 2);
    // rmi -f ID: every name, and the image.
    let out = w.ok(&["rmi", "-f", &id]);
    assert!(out.contains("deleted"), "{out}");
    assert!(w.images().is_empty(), "{:?}", w.images());
}

#[test]
fn invalid_names_are_refused_where_they_are_given() {
    let Some(w) = World::new() else { return };
    w.ok(&["run", "--name", "c1", "base", "true"]);
    let before = w.images();
    for bad in ["MyImg:1", ":1", "a:1:2", "UPPER", "a b", "x@sha256:12"] {
        w.refused(&["tag", "base", bad], "not a valid image name");
        w.refused(
            &["import", w.tar().to_str().unwrap(), bad],
            "not a valid image name",
        );
        w.refused(&["commit", "c1", bad], "not a valid image name");
    }
    assert_eq!(w.images(), before);
    // What is valid stays so.
    for good in ["localhost/app:1", "localhost:5000/team/app:v1.2_3", "app"] {
        w.ok(&["tag", "base", good]);
    }
    w.ok(&["store-check"]);
}

/// The init (pid 1 inside) shows its own command line, and no environment: the runner's
/// arguments (`-e SECRET=…`) and the caller's variables stay out of the container's `/proc`.
#[test]
fn the_init_shows_no_argument_of_the_runner() {
    let Some(w) = World::new() else { return };
    let o = w
        .cmd(&[
            "run",
            "--rm",
            "-e",
            "SECRET=hunter2",
            "base",
            "sh",
            "-c",
            "cat /proc/1/cmdline; echo; wc -c < /proc/1/environ; tr '\\0' '\\n' < /proc/1/environ | grep -c . ; ps -o args | head -3; echo \"me: $SECRET\"",
        ])
        .env("CALLER_TOKEN", "tok-987")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("unionfuse-init\0"), "{out:?}");
    assert!(!out.contains("hunter2\n") || out.ends_with("me: hunter2\n"));
    assert_eq!(
        out.matches("hunter2").count(),
        1,
        "only the command's own environment holds it: {out}"
    );
    assert!(!out.contains("tok-987"), "{out}");
    assert!(!out.contains("--rm"), "{out}");
    // The same for a --lower run, whose command gets the caller's environment.
    let rootfs = w.path("rootfs");
    let o = Command::new(bin())
        .args(["run", "--lower"])
        .arg(&rootfs)
        .args(["-e", "SECRET=hunter2", "--", "sh", "-c"])
        .arg("cat /proc/1/cmdline /proc/1/environ")
        .env("TMPDIR", w.dir.path())
        .env("CALLER_TOKEN", "tok-987")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("unionfuse-init\0"), "{out:?}");
    assert!(
        !out.contains("hunter2") && !out.contains("tok-987"),
        "{out:?}"
    );
}

/// Runs of every kind with the store on a tmpfs of its own: the runner keeps reaching it.
fn store_on_its_own_mount(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    let tar = ctx.dir.path().join("rootfs.tar");
    runenv::tar_of(&ctx.rootfs, &tar);
    let store = ctx.mkdir("store");
    let home = ctx.mkdir("home");
    run(Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size=64m,mode=0755,uid={},gid={}", ctx.uid, ctx.gid),
            "tmpfs",
        ])
        .arg(&store));
    let _g = UnmountOnDrop(store.clone());
    let uf = |args: &[&str]| -> Output {
        let mut all = vec!["--root", store.to_str().unwrap()];
        all.extend_from_slice(args);
        ctx.command(&all)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| store_cli::assert_ok(args, &uf(args));
    ok(&["import", tar.to_str().unwrap(), "base"]);
    assert_eq!(
        ok(&[
            "run",
            "--name",
            "c1",
            "base",
            "sh",
            "-c",
            "echo hi >> /f; cat /f"
        ]),
        "hi\n"
    );
    let ps = ok(&["ps", "-a"]);
    assert!(ps.contains("exited (0)"), "{who:?}: {ps}");
    assert_eq!(ok(&["start", "-a", "c1"]), "hi\nhi\n");
    assert_eq!(
        uf(&["run", "--name", "c2", "base", "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    assert!(ok(&["ps", "-a"]).contains("exited (4)"));
    ok(&["run", "--rm", "--name", "gone", "base", "true"]);
    let ps = ok(&["ps", "-a"]);
    assert!(!ps.contains("gone"), "run --rm left it: {ps}");
    assert_eq!(ok(&["logs", "c1"]), "hi\nhi\nhi\n");
    ok(&["rm", "c1", "c2"]);
    assert!(entries(&store.join("containers")).is_empty());
    drop(_g);
    ctx.assert_clean();
}

#[test]
fn a_store_on_its_own_mount_as_root() {
    store_on_its_own_mount(Who::Root);
}

#[test]
fn a_store_on_its_own_mount_rootless() {
    store_on_its_own_mount(Who::SubIds);
}

/// Rootless, a container's users' private directories (`useradd -m` with HOME_MODE 0700,
/// what apt leaves) are read for diff and commit as the container reads them.
#[test]
fn rootless_diff_and_commit_read_private_directories() {
    let Some(ctx) = RunCtx::new(Who::SubIds) else {
        return;
    };
    let tar = ctx.dir.path().join("rootfs.tar");
    runenv::tar_of(&ctx.rootfs, &tar);
    ctx.give(&tar);
    let home = ctx.mkdir("home");
    let uf = |args: &[&str]| ctx.in_home(&home, args);
    let ok = |args: &[&str]| store_cli::assert_ok(args, &uf(args));
    ok(&["import", tar.to_str().unwrap(), "base"]);
    ok(&[
        "run",
        "--name",
        "bob",
        "base",
        "sh",
        "-c",
        "mkdir -p /home/bob/.cfg && echo hi > /home/bob/notes && echo s > /home/bob/.cfg/secret \
         && chown -R 1000:1000 /home/bob && chmod 700 /home/bob /home/bob/.cfg \
         && chmod 600 /home/bob/.cfg/secret",
    ]);
    let diff = ok(&["diff", "bob"]);
    for want in [
        "A /home/bob\n",
        "A /home/bob/notes\n",
        "A /home/bob/.cfg/secret\n",
    ] {
        assert!(diff.contains(want), "{want:?} not in {diff}");
    }
    ok(&["commit", "bob", "withbob"]);
    let out = ok(&[
        "run",
        "--rm",
        "withbob",
        "sh",
        "-c",
        "cat /home/bob/notes /home/bob/.cfg/secret; stat -c '%u:%g %a' /home/bob /home/bob/.cfg/secret",
    ]);
    assert_eq!(out, "hi\ns\n1000:1000 700\n1000:1000 600\n");
    ok(&["rm", "bob"]);
    ctx.assert_clean();
}

/// `attach` to a container started with `-i` and no terminal inside: the caller's terminal
/// stays as it is (echo, lines), so what is typed arrives as lines, Enter included.
#[test]
fn attach_without_a_terminal_inside_keeps_the_callers_mode() {
    let Some(w) = World::new() else { return };
    w.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "reader",
        "base",
        "sh",
        "-c",
        "read l; echo \"got [$l]\"; read m; echo \"then [$m]\"",
    ]);
    let mut pty = pty::Pty::new(24, 80);
    let mut child = pty.spawn(
        Command::new(bin())
            .args(["attach", "reader"])
            .env("UNIONFUSE_ROOT", w.store())
            .env("TMPDIR", w.dir.path()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(pty.canonical(), "attach put the terminal in raw mode");
    // Enter on a terminal sends a carriage return; the terminal's own mode makes it a line.
    let seen = pty.send("hello\r", "got [hello]");
    assert!(seen.contains("hello"), "not echoed: {seen:?}");
    pty.send("world\r", "then [world]");
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(pty.canonical());
    assert_eq!(w.status("reader"), "exited (0)");
}

/// Every run of a named container is kept in its log, stdout and stderr apart.
#[test]
fn logs_keep_every_run_with_the_streams_apart() {
    let Some(w) = World::new() else { return };
    let script = "echo out; echo err >&2; printf part";
    let o = w.uf(&["run", "--name", "l1", "base", "sh", "-c", script]);
    assert!(o.status.success());
    // The caller gets each stream where it belongs, as before.
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\npart");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let logs = |name: &str| {
        let o = w.uf(&["logs", name]);
        assert!(o.status.success());
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(logs("l1"), ("out\npart".into(), "err\n".into()));
    let o = w.uf(&["start", "-a", "l1"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\npart");
    assert_eq!(
        logs("l1"),
        ("out\npartout\npart".into(), "err\nerr\n".into())
    );
    // A background run's too.
    w.ok(&[
        "run",
        "-d",
        "--name",
        "l2",
        "base",
        "sh",
        "-c",
        "echo bo; echo be >&2",
    ]);
    assert!(wait_until(Duration::from_secs(10), || w
        .status("l2")
        .starts_with("exited")));
    assert_eq!(logs("l2"), ("bo\n".into(), "be\n".into()));
    // A command whose reader goes away still gets its broken pipe.
    let sh = format!("{} run --name l3 base yes | head -n 2", bin().display());
    let o = Command::new("timeout")
        .args(["60", "sh", "-c", &sh])
        .env("UNIONFUSE_ROOT", w.store())
        .env("TMPDIR", w.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "y\ny\n");
    assert_eq!(
        o.status.code(),
        Some(0),
        "the pipe's reader left, yes did not"
    );
}

#[test]
fn a_killed_background_runner_is_recorded_as_exited() {
    let Some(w) = World::new() else { return };
    w.ok(&["run", "-d", "--name", "k", "base", "sleep", "600"]);
    assert!(w.status("k").starts_with("up"), "{}", w.status("k"));
    let id = w.container_id("k");
    let lock = w.store().join("containers").join(&id).join("lock");
    let runner: i32 = std::fs::read_to_string(lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(runner, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || w.status("k") == "exited (137)"),
        "{}",
        w.status("k")
    );
    let v: serde_json::Value = serde_json::from_str(&w.ok(&["inspect", "k"])).unwrap();
    assert_eq!(v["Status"], "exited (137)");
    // Nothing of it is left, and it starts again.
    let root = w.dir.path().to_string_lossy().into_owned();
    assert!(wait_until(Duration::from_secs(10), || {
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&root)
    }));
    w.ok(&["rm", "-f", "k"]);
}

#[test]
fn a_full_store_and_an_image_archive_given_to_import_are_said_as_such() {
    let Some(w) = World::new() else { return };
    let archive = w.path("base-archive.tar");
    w.ok(&[
        "save",
        "base",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
    ]);
    // import of an image archive: pointed to load, nothing made.
    let before = w.images();
    let err = w.refused(
        &["import", archive.to_str().unwrap(), "junk"],
        "is an image archive",
    );
    assert!(err.contains("unionfuse load"), "{err}");
    assert_eq!(w.images(), before);
    let oci = w.path("base-oci.tar");
    w.ok(&["save", "base", "-o", oci.to_str().unwrap()]);
    w.refused(
        &["import", oci.to_str().unwrap(), "junk"],
        "is an image archive",
    );
    // A load and an import into a store too small for them: the store is said to be full.
    let small = w.path("small");
    mkdir(&small);
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&small));
    let _g = UnmountOnDrop(small.clone());
    let tar = w.tar();
    for args in [
        vec!["load", "-i", archive.to_str().unwrap()],
        vec!["import", tar.to_str().unwrap(), "x"],
    ] {
        let mut all = vec!["--root", small.to_str().unwrap()];
        all.extend(args);
        let o = Command::new(bin()).args(&all).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains(&format!("the store at '{}' is full", small.display())),
            "{all:?}: {err}"
        );
        assert!(
            !err.starts_with(&format!("unionfuse: '{}'", archive.display())),
            "{err}"
        );
        for d in ["layers", "images", "tmp"] {
            assert!(entries(&small.join(d)).is_empty(), "{d} left");
        }
    }
}

/// A new mount of an upper waits for the daemon of the last one, whose mount is gone but
/// which is slow to finish (a loaded machine), however long it takes; a mount that still
/// serves the upper is refused.
#[test]
fn a_mount_right_after_umount_waits_for_the_daemon_to_finish() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let (l, u, a, b) = (
        d.path().join("l"),
        d.path().join("u"),
        d.path().join("a"),
        d.path().join("b"),
    );
    for p in [&l, &u, &a, &b] {
        mkdir(p);
    }
    write(&l.join("f"), b"lower\n");
    let mut first = UnionMount::with_env(
        &[&l],
        Some(&u),
        &a,
        &[("UNIONFUSE_TEST_EXIT_DELAY_MS", "4500")],
    );
    write(&a.join("g"), b"written\n");
    // While the first one serves: refused.
    let o = unionfuse(&[
        "mount".as_ref(),
        l.as_os_str(),
        u.as_os_str(),
        b.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use by another mount"));
    // Plain umount(8) returns at once; the daemon lingers 4.5 s with the upper.
    run(Command::new("umount").arg(&a));
    let t = std::time::Instant::now();
    let second = UnionMount::new(&[&l], Some(&u), &b);
    assert!(t.elapsed() > Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(first.wait_exit(Duration::from_secs(1)).is_some());
    assert_eq!(std::fs::read(b.join("g")).unwrap(), b"written\n");
    drop(second);
    // unionfuse umount returns once the daemon is done with the upper: a kernel overlay
    // of the same upper mounts right after, and sees no work directory.
    let o = Command::new(bin())
        .args(["mount"])
        .arg(&l)
        .arg(&u)
        .arg(&a)
        .env("UNIONFUSE_TEST_EXIT_DELAY_MS", "1500")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _guard = UnmountOnDrop(a.clone());
    let t = std::time::Instant::now();
    let o = Command::new(bin()).arg("umount").arg(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed() >= Duration::from_millis(1500));
    let w = d.path().join("w");
    mkdir(&w);
    assert!(entries(&u).iter().all(|n| n != ".unionfuse-work"));
    let k = KernelOverlay::new(&[&l], Some((&u, &w)), &b);
    assert_eq!(std::fs::read(b.join("g")).unwrap(), b"written\n");
    drop(k);
}

/// `chown(-1, -1)` changes nothing but the change time, on a lower file and an upper one,
/// as on kernel overlayfs.
#[test]
fn chown_to_the_same_owner_moves_the_change_time() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let p = |n: &str| d.path().join(n);
    for n in ["l", "u", "m", "ku", "kw", "km"] {
        mkdir(&p(n));
    }
    write(&p("l/lower"), b"x");
    let ours = UnionMount::new(&[&p("l")], Some(&p("u")), &p("m"));
    let kernel = KernelOverlay::new(&[&p("l")], Some((&p("ku"), &p("kw"))), &p("km"));
    for mp in [&ours.mp, &kernel.mp] {
        write(&mp.join("upper"), b"y");
        for name in ["upper", "lower"] {
            let f = mp.join(name);
            // A lower file: its first chown copies it up; the second is the one measured.
            std::os::unix::fs::chown(&f, None, None).unwrap();
            let before = std::fs::metadata(&f).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::os::unix::fs::chown(&f, None, None).unwrap();
            let after = std::fs::metadata(&f).unwrap();
            assert_ne!(
                (before.ctime(), before.ctime_nsec()),
                (after.ctime(), after.ctime_nsec()),
                "{}: ctime unchanged",
                f.display()
            );
            assert_eq!(before.mtime_nsec(), after.mtime_nsec());
            assert_eq!((before.uid(), before.mode()), (after.uid(), after.mode()));
        }
    }
    assert_eq!(std::fs::read(ours.mp.join("lower")).unwrap(), b"x");
}

/// A short interactive run under `script` (whose input ends at once): the end of input
/// pending on the caller's terminal reaches the command as an end of input, never as a NUL
/// byte the container's terminal echoes (`^@`) before the output (#29).
#[test]
fn a_short_run_on_a_terminal_shows_no_stray_byte() {
    if !require_root() {
        return;
    }
    let d = scratch();
    let rootfs = d.path().join("rootfs");
    runenv::build_rootfs(&rootfs);
    for _ in 0..5 {
        let cmd = format!(
            "{} run --lower {} -- /bin/sh -c tty",
            bin().display(),
            rootfs.display()
        );
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("TMPDIR", d.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}");
        assert_eq!(out, "/dev/pts/0\r\n", "a stray byte before the output");
    }
}
