//! The image store: images written by podman and skopeo (docker-archive, OCI archive, OCI
//! layout) loaded by unionfuse and compared with an independent unpack (`umoci unpack`);
//! layers shared on disk; containers that keep their writes across starts and do not see
//! each other's; diff and commit; hostile tarballs refused and contained; a load killed
//! with SIGKILL leaves nothing half-made.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A store of our own and a podman of its own (vfs storage, under the test's directory).
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Option<World> {
        if !require_root() {
            return None;
        }
        let w = World { dir: scratch() };
        std::fs::create_dir(w.store()).unwrap();
        Some(w)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn uf(&self, args: &[&str]) -> Output {
        store_cli::command(&self.store(), self.dir.path(), args)
            .output()
            .unwrap()
    }

    /// Runs unionfuse; its stdout, asserting success.
    fn ok(&self, args: &[&str]) -> String {
        store_cli::assert_ok(args, &self.uf(args))
    }

    /// Runs unionfuse expecting a refusal containing `expect`; its message.
    fn refused(&self, args: &[&str], expect: &str) -> String {
        store_cli::assert_refused(args, &self.uf(args), expect)
    }

    fn podman(&self, args: &[&str]) -> String {
        store_cli::podman(self.dir.path(), args)
    }

    /// The images as `images` lists them: name and id (not the age, which moves).
    fn image_list(&self) -> Vec<String> {
        self.ok(&["images"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Layer directories in the store.
    fn layers(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.store().join("layers"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // podman's vfs storage may hold a private bind mount of its home.
        let _ = Command::new("umount")
            .arg(self.path("pgraph/vfs"))
            .stderr(Stdio::null())
            .status();
    }
}

/// The base image's tree: busybox, plus what the second layer deletes and replaces, a hard
/// link, a setuid file and an xattr.
fn base_rootfs(at: &Path) {
    runenv::build_rootfs(at);
    for d in ["opt/old/sub", "srv"] {
        std::fs::create_dir_all(at.join(d)).unwrap();
    }
    write(&at.join("opt/old/a"), b"old a\n");
    write(&at.join("opt/old/sub/b"), b"old b\n");
    write(&at.join("srv/data"), &vec![7u8; 100_000]);
    std::fs::hard_link(at.join("srv/data"), at.join("srv/data-link")).unwrap();
    write(&at.join("srv/suid"), b"#!/bin/sh\n");
    std::fs::set_permissions(at.join("srv/suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    setxattr(&at.join("srv/data"), "user.origin", b"base");
    lchown(&at.join("srv"), 33, 33);
}

/// Builds `localhost/base:1` (imported) and `localhost/app:1` (one more layer that adds,
/// deletes and replaces a directory) in the world's podman, and writes them out in every
/// format: (docker-archive, OCI archive, OCI layout).
fn build_images(w: &World) -> (PathBuf, PathBuf, PathBuf) {
    let rootfs = w.path("rootfs");
    base_rootfs(&rootfs);
    let tarball = w.path("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("--xattrs")
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    w.podman(&[
        "import",
        "-q",
        tarball.to_str().unwrap(),
        "localhost/base:1",
    ]);
    let ctx = w.path("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM localhost/base:1\n\
         RUN mkdir -p /opt/app && echo v2 > /opt/app/f && rm /etc/group && \
         rm -rf /opt/old && mkdir /opt/old && echo new > /opt/old/n && ln -s /opt/app/f /opt/link\n",
    )
    .unwrap();
    w.podman(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        "localhost/app:1",
        ctx.to_str().unwrap(),
    ]);
    let (docker, oci, layout) = (
        w.path("app-docker.tar"),
        w.path("app-oci.tar"),
        w.path("app-layout"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    w.podman(&[
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-o",
        &s(&docker),
        "localhost/app:1",
    ]);
    w.podman(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        &s(&oci),
        "localhost/app:1",
    ]);
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("docker-archive:{}", s(&docker)),
        &format!("oci:{}:1", s(&layout)),
    ]));
    (docker, oci, layout)
}

/// A tree as compared with another: what `view::describe` sees, but not a directory's link
/// count (a merged directory cannot count its subdirectories) nor times (unpackers set
/// them differently), and `user.*` xattrs but the overlay's.
fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, view::Desc> {
    let opts = view::Options {
        mtimes: |_| false,
        xattrs: |x| x.starts_with("user.") && !x.starts_with("user.overlay."),
    };
    let v = view::describe(root, &opts);
    assert!(v.listed_but_absent.is_empty(), "{:?}", v.listed_but_absent);
    v.entries
        .into_iter()
        .map(|(p, mut d)| {
            if d.kind == "dir" {
                d.nlink = 0;
            }
            (p, d)
        })
        .collect()
}

#[test]
fn loaded_images_match_umoci_and_share_their_base() {
    let Some(w) = World::new() else { return };
    let (docker, oci, layout) = build_images(&w);
    // Every format, and the base imported on its own: one copy of each layer.
    for src in [&docker, &oci, &layout] {
        let out = w.ok(&["load", "-i", src.to_str().unwrap()]);
        assert!(out.contains("Loaded image"), "{out}");
    }
    w.ok(&["import", w.path("rootfs.tar").to_str().unwrap(), "base:1"]);
    assert_eq!(w.layers().len(), 2, "layers: {:?}", w.layers());
    let again = w.uf(&["load", "-i", docker.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.matches("already present").count(), 2, "{err}");
    let images = w.ok(&["images"]);
    assert!(
        images.contains("localhost/app:1") && images.contains("base:1"),
        "{images}"
    );
    let tree_out = w.ok(&["images", "--tree"]);
    assert!(tree_out.contains("used by 2 images"), "{tree_out}");
    w.ok(&["store-check"]);

    // The view of the loaded image against umoci's unpack of the same image.
    let bundle = w.path("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:1", layout.display()),
        bundle.to_str().unwrap(),
    ]));
    let inspect = w.ok(&["inspect", "localhost/app:1"]);
    let lowers = store_cli::image_lowers(&w.store(), &inspect);
    let refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
    let mp = w.path("mnt");
    mkdir(&mp);
    let _m = UnionMount::new(&refs, None, &mp);
    let ours = tree(&mp);
    let theirs = tree(&bundle.join("rootfs"));
    for (p, d) in &theirs {
        assert_eq!(ours.get(p), Some(d), "{p:?} (left: unionfuse)");
    }
    for p in ours.keys() {
        assert!(theirs.contains_key(p), "{p:?} only in unionfuse");
    }
    // What the second layer did, seen through the union.
    assert!(!mp.join("etc/group").exists());
    assert!(!mp.join("opt/old/a").exists());
    assert_eq!(std::fs::read(mp.join("opt/old/n")).unwrap(), b"new\n");
    assert_eq!(ino(&mp.join("srv/data")), ino(&mp.join("srv/data-link")));
}

#[test]
fn containers_keep_their_writes_and_do_not_see_each_other() {
    let Some(w) = World::new() else { return };
    let rootfs = w.path("rootfs");
    runenv::build_rootfs(&rootfs);
    let tarball = w.path("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    w.ok(&["import", tarball.to_str().unwrap(), "base"]);
    // Each start runs the container's command again, on the same writable layer.
    let count = "echo x >> /count; echo hello > /hello.txt; wc -l < /count";
    assert_eq!(
        w.ok(&["run", "--name", "c1", "base", "sh", "-c", count])
            .trim(),
        "1"
    );
    assert_eq!(w.ok(&["start", "-a", "c1"]).trim(), "2");
    assert_eq!(w.ok(&["start", "-i", "c1"]).trim(), "3");
    // --user, by number or by the container's /etc/passwd (www-data is 33 there).
    assert_eq!(
        w.ok(&["run", "--rm", "-u", "33:33", "base", "id", "-u"]),
        "33\n"
    );
    assert_eq!(
        w.ok(&["run", "--rm", "-u", "www-data", "base", "id", "-g"]),
        "33\n"
    );
    w.refused(
        &["run", "--rm", "-u", "nobody-here", "base", "true"],
        "no user",
    );
    let o = w.uf(&["run", "--name", "c2", "base", "cat", "/hello.txt"]);
    assert_eq!(o.status.code(), Some(1), "c2 sees c1's file");
    let o = w.uf(&[
        "run",
        "--name",
        "c3",
        "base",
        "sh",
        "-c",
        "cat /count || exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "c3 sees c1's file");
    let diff = w.ok(&["diff", "c1"]);
    assert!(diff.contains("A /hello.txt"), "{diff}");
    w.ok(&["commit", "c1", "withhello:1"]);
    assert_eq!(
        w.ok(&["run", "--rm", "withhello:1", "cat", "/hello.txt"]),
        "hello\n"
    );
    let ps = w.ok(&["ps", "-a"]);
    for (name, status) in [
        ("c1", "exited (0)"),
        ("c2", "exited (1)"),
        ("c3", "exited (3)"),
    ] {
        assert!(
            ps.lines().any(|l| l.contains(name) && l.contains(status)),
            "{name} {status} in:\n{ps}"
        );
    }
    assert!(!ps.contains("withhello"), "--rm left its container:\n{ps}");
    w.refused(&["run", "--name", "c1", "base", "true"], "in use");
    w.refused(&["rmi", "base"], "used by container");
    w.ok(&["rm", "c1", "c2", "c3"]);
    w.refused(&["rm", "c1"], "no container");
    w.ok(&["rmi", "withhello:1"]);
    w.ok(&["rmi", "base"]);
    let freed = w.ok(&["prune"]);
    assert!(freed.starts_with("freed"), "{freed}");
    assert!(w.layers().is_empty(), "{:?}", w.layers());
    w.ok(&["store-check"]);
}

/// One entry of a hand-made tar: kind, name, and the data or link target.
type Entry = (&'static str, String, String);

/// Writes a tar with Python's `tarfile` from a list of (kind, name, arg) entries.
fn evil_tar(at: &Path, entries: &[(&str, &str, &str)]) {
    let mut py = String::from(
        "import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n",
    );
    for (kind, name, arg) in entries {
        let line = match *kind {
            "file" => format!(
                "i = tarfile.TarInfo({name:?}); d = {arg:?}.encode(); i.size = len(d); t.addfile(i, io.BytesIO(d))\n"
            ),
            "dir" => format!(
                "i = tarfile.TarInfo({name:?}); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\n"
            ),
            "symlink" => format!(
                "i = tarfile.TarInfo({name:?}); i.type = tarfile.SYMTYPE; i.linkname = {arg:?}; t.addfile(i)\n"
            ),
            "hardlink" => format!(
                "i = tarfile.TarInfo({name:?}); i.type = tarfile.LNKTYPE; i.linkname = {arg:?}; t.addfile(i)\n"
            ),
            k => panic!("{k}"),
        };
        py.push_str(&line);
    }
    py.push_str("t.close()\n");
    run(Command::new("python3").arg("-c").arg(py).arg(at));
}

#[test]
fn hostile_tarballs_are_refused_and_contained() {
    let Some(w) = World::new() else { return };
    let outside = w.path("outside");
    mkdir(&outside);
    write(&outside.join("victim"), b"untouched\n");
    let o = outside.to_str().unwrap().to_string();
    let long = "n".repeat(300);
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![("file", "../escape".into(), "x".into())],
            "'..'",
        ),
        (
            "nested dotdot",
            vec![("file", "a/../../escape".into(), "x".into())],
            "'..'",
        ),
        (
            "absolute",
            vec![("file", format!("{o}/abs"), "x".into())],
            "absolute",
        ),
        (
            "through a symlink",
            vec![
                ("symlink", "l".into(), o.clone()),
                ("file", "l/victim".into(), "pwned".into()),
            ],
            "l/victim",
        ),
        (
            "through a chain of symlinks",
            vec![
                ("symlink", "a".into(), "b".into()),
                ("symlink", "b".into(), o.clone()),
                ("file", "a/new".into(), "pwned".into()),
            ],
            "a/new",
        ),
        (
            "a symlink over a directory made before",
            vec![
                ("dir", "d".into(), String::new()),
                ("symlink", "d".into(), o.clone()),
                ("file", "d/new".into(), "pwned".into()),
            ],
            "d/new",
        ),
        (
            "a hard link out of the layer",
            vec![("hardlink", "h".into(), format!("{o}/victim"))],
            "absolute",
        ),
        (
            "a hard link up and out",
            vec![("hardlink", "h".into(), "../outside/victim".into())],
            "'..'",
        ),
        (
            "a hard link to what is not extracted yet",
            vec![
                ("hardlink", "h".into(), "later".into()),
                ("file", "later".into(), "x".into()),
            ],
            "hard link",
        ),
        (
            "an over-long name",
            vec![("file", long.clone(), "x".into())],
            "255",
        ),
    ];
    for (what, entries, expect) in &cases {
        let tarball = w.path("evil.tar");
        let e: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|(k, n, a)| (*k, n.as_str(), a.as_str()))
            .collect();
        evil_tar(&tarball, &e);
        let err = w.refused(&["import", tarball.to_str().unwrap(), "evil"], expect);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"untouched\n",
            "{what}"
        );
        assert_eq!(names(&outside), vec!["victim".to_string()], "{what}");
        assert!(!w.path("escape").exists(), "{what}");
        // Nothing of a refused load stays in the store.
        assert!(w.layers().is_empty(), "{what}: {:?}", w.layers());
        let images = w.ok(&["images"]);
        assert_eq!(images.lines().count(), 1, "{what}: {images}");
    }
    // What is kept: a symlink pointing anywhere (never followed), a hard link inside.
    let tarball = w.path("ok.tar");
    evil_tar(
        &tarball,
        &[
            ("symlink", "etc-link", "/etc"),
            ("file", "a", "data"),
            ("hardlink", "b", "a"),
        ],
    );
    w.ok(&["import", tarball.to_str().unwrap(), "fine"]);
    let layer = &w.layers()[0];
    assert_eq!(
        std::fs::read_link(layer.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(ino(&layer.join("a")), ino(&layer.join("b")));
}

#[test]
fn a_killed_load_leaves_nothing_half_made() {
    let Some(w) = World::new() else { return };
    // A layer big enough to be killed in the middle of.
    let rootfs = w.path("big");
    mkdir(&rootfs);
    for i in 0..40 {
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|x| (x.wrapping_mul(2654435761) >> (i % 24)) as u8)
            .collect();
        write(&rootfs.join(format!("f{i}")), &data);
    }
    let tarball = w.path("big.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    let mut killed = 0;
    for delay in [50u64, 150, 300] {
        let mut child = Command::new(bin())
            .args(["import", tarball.to_str().unwrap(), "big"])
            .env("UNIONFUSE_ROOT", w.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Whatever it had made is never used: no layer, no image, until a command completes.
        let images = w.ok(&["images"]);
        if images.contains("big") {
            // It finished before the kill: the layer must be whole.
            w.ok(&["store-check"]);
            continue;
        }
        assert!(
            w.layers().is_empty(),
            "a layer without its image: {:?}",
            w.layers()
        );
    }
    w.ok(&["import", tarball.to_str().unwrap(), "big"]);
    w.ok(&["store-check"]);
    assert_eq!(w.layers().len(), 1);
    // The next command cleaned what the killed ones left.
    let tmp: Vec<_> = std::fs::read_dir(w.store().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "leftovers: {tmp:?}");
    assert!(killed > 0, "no import was killed in the middle");
}

#[test]
fn committed_changes_round_trip_through_podman() {
    let Some(w) = World::new() else { return };
    let rootfs = w.path("rootfs");
    base_rootfs(&rootfs);
    let tarball = w.path("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("--xattrs")
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    w.ok(&["import", tarball.to_str().unwrap(), "base"]);
    // Add, modify, delete, chmod, rename a lower directory, hard link, replace a directory.
    let script = "echo new > /added && echo more >> /srv/data && rm /etc/group && \
                  chmod 600 /etc/passwd && mv /opt/old /opt/renamed && \
                  ln /added /added-link && rm -rf /home && mkdir /home && echo h > /home/x";
    w.ok(&["run", "--name", "c1", "base", "sh", "-c", script]);
    let diff = w.ok(&["diff", "c1"]);
    for want in [
        "A /added",
        "C /srv/data",
        "D /etc/group",
        "C /etc/passwd",
        "A /opt/renamed",
    ] {
        assert!(diff.lines().any(|l| l == want), "'{want}' not in:\n{diff}");
    }
    w.ok(&["commit", "c1", "changed:1"]);
    let saved = w.path("changed.tar");
    w.ok(&["save", "changed:1", "-o", saved.to_str().unwrap()]);

    // podman loads it and shows the same tree as unionfuse's view of the committed image.
    w.podman(&["load", "-q", "-i", saved.to_str().unwrap()]);
    let pm = w.podman(&["image", "mount", "localhost/changed:1"]);
    let theirs = tree(Path::new(pm.trim()));
    let inspect = w.ok(&["inspect", "changed:1"]);
    let lowers = store_cli::image_lowers(&w.store(), &inspect);
    let refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
    let mp = w.path("mnt");
    mkdir(&mp);
    let ours = {
        let _m = UnionMount::new(&refs, None, &mp);
        tree(&mp)
    };
    w.podman(&["image", "unmount", "localhost/changed:1"]);
    // The runner's mount targets (/dev, /proc, /sys, /tmp) are not part of the image.
    for (p, d) in &theirs {
        assert_eq!(ours.get(p), Some(d), "{p:?} (left: unionfuse)");
    }
    for p in ours.keys() {
        assert!(theirs.contains_key(p), "{p:?} only in unionfuse");
    }
    assert!(
        ours.contains_key(Path::new("opt/renamed/sub/b")),
        "the renamed dir in full"
    );
    assert!(!ours.contains_key(Path::new("opt/old")));
    assert_eq!(
        ours[Path::new("added")].links,
        vec![PathBuf::from("added-link")]
    );

    // podman's save of it loads back with the same layers.
    let back = w.path("back.tar");
    w.podman(&[
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-o",
        back.to_str().unwrap(),
        "localhost/changed:1",
    ]);
    let store2 = w.path("store2");
    std::fs::create_dir(&store2).unwrap();
    let o = Command::new(bin())
        .args([
            "--root",
            store2.to_str().unwrap(),
            "load",
            "-i",
            back.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin())
        .args(["--root", store2.to_str().unwrap(), "inspect", "changed:1"])
        .output()
        .unwrap();
    let back: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["Image"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["diff_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&back), ids(&serde_json::from_str(&inspect).unwrap()));
}

#[test]
fn bad_input_is_refused_and_the_store_is_unchanged() {
    let Some(w) = World::new() else { return };
    let (_, _, layout) = build_images(&w);
    w.ok(&["images"]);
    let before = || {
        (
            w.layers(),
            w.image_list(),
            std::fs::read_dir(w.store().join("blobs/sha256"))
                .unwrap()
                .count(),
        )
    };
    let empty = before();
    // A layer blob whose content does not match its digest.
    let bad = w.path("bad-layout");
    run(Command::new("cp").arg("-a").arg(&layout).arg(&bad));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bad.join("blobs/sha256").join(&m["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = bad.join("blobs/sha256").join(&layer["sha256:".len()..]);
    let mut data = std::fs::read(&blob).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    w.refused(&["load", "-i", bad.to_str().unwrap()], "digest");
    assert_eq!(before(), empty, "a refused load changed the store");
    // A manifest naming a blob the layout does not hold.
    std::fs::remove_file(&blob).unwrap();
    w.refused(&["load", "-i", bad.to_str().unwrap()], "does not hold");
    assert_eq!(before(), empty);
    // Not an archive at all, and a truncated one.
    let junk = w.path("junk.tar");
    std::fs::write(&junk, vec![b'x'; 3000]).unwrap();
    w.refused(&["load", "-i", junk.to_str().unwrap()], "junk.tar");
    let docker = w.path("app-docker.tar");
    let whole = std::fs::read(&docker).unwrap();
    let cut = w.path("cut.tar");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    w.refused(&["load", "-i", cut.to_str().unwrap()], "cut.tar");
    assert_eq!(before(), empty);
    // Unknown names.
    w.refused(&["run", "nosuchimage", "true"], "no image 'nosuchimage'");
    w.refused(&["start", "nosuch"], "no container 'nosuch'");
    w.refused(&["rmi", "nosuch"], "no image");
    w.ok(&["store-check"]);
}

/// The scenario as an ordinary user, with and without a subordinate id range: the store in
/// the user's home, owners of the image kept where a range can map them, writes kept per
/// container, and everything removable (also files of subordinate ids).
fn rootless_scenario(who: runenv::Who) {
    use runenv::RunCtx;
    let Some(ctx) = RunCtx::new(who) else { return };
    let rootfs = &ctx.rootfs;
    std::fs::create_dir_all(rootfs.join("var/www")).unwrap();
    write(&rootfs.join("var/www/index"), b"page\n");
    lchown(&rootfs.join("var/www/index"), 33, 33);
    write(&rootfs.join("etc/shadow"), b"root:*:1::::::\n");
    lchown(&rootfs.join("etc/shadow"), 0, 42);
    std::fs::set_permissions(
        rootfs.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let tarball = ctx.dir.path().join("rootfs.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    ctx.give(&tarball);
    let home = ctx.mkdir("home");
    let uf = |args: &[&str]| ctx.in_home(&home, args);
    let ok = |args: &[&str]| -> String {
        let o = uf(args);
        assert!(
            o.status.success(),
            "{who:?} unionfuse {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["import", tarball.to_str().unwrap(), "base"]);
    assert!(home.join(".local/share/unionfuse/layers").is_dir());
    let owners = ok(&[
        "run",
        "--rm",
        "base",
        "stat",
        "-c",
        "%u:%g %a",
        "/var/www/index",
        "/etc/shadow",
    ]);
    // With a range, the owners themselves; without, the store keeps them in the override
    // xattr, which the union shows: ids the namespace cannot map read as the overflow id.
    let want = match who {
        runenv::Who::SubIds => "33:33 644\n0:42 640\n",
        _ => "65534:65534 644\n0:65534 640\n",
    };
    assert_eq!(owners, want, "{who:?}");
    let count = "echo x >> /count; chown 33 /count 2>/dev/null; wc -l < /count";
    assert_eq!(
        ok(&["run", "--name", "c1", "base", "sh", "-c", count]).trim(),
        "1"
    );
    assert_eq!(ok(&["start", "-a", "c1"]).trim(), "2");
    assert_eq!(
        uf(&["run", "--name", "c2", "base", "cat", "/count"])
            .status
            .code(),
        Some(1)
    );
    ok(&["commit", "c1", "counted"]);
    assert_eq!(ok(&["run", "--rm", "counted", "cat", "/count"]), "x\nx\n");
    ok(&["rm", "c1", "c2"]);
    ok(&["rmi", "counted", "base"]);
    ok(&["prune"]);
    for d in ["layers", "containers", "images"] {
        let left: Vec<_> = std::fs::read_dir(home.join(".local/share/unionfuse").join(d))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{who:?}: {d} left: {left:?}");
    }
    ctx.assert_clean();
}

#[test]
fn rootless_with_a_subordinate_range() {
    rootless_scenario(runenv::Who::SubIds);
}

#[test]
fn rootless_without_a_subordinate_range() {
    rootless_scenario(runenv::Who::SingleId);
}

#[test]
fn the_override_xattr_gives_owner_and_mode() {
    let Some(w) = World::new() else { return };
    let l = w.path("lower");
    mkdir(&l);
    write(&l.join("f"), b"x");
    setxattr(&l.join("f"), "user.containers.override_stat", b"33:44:0600");
    write(&l.join("g"), b"y");
    let mp = w.path("mnt");
    mkdir(&mp);
    {
        let _m = UnionMount::with_args(&[&l], None, &mp, &["-o", "override_stat"]);
        let md = std::fs::metadata(mp.join("f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (33, 44, 0o600));
        assert_eq!(std::fs::metadata(mp.join("g")).unwrap().uid(), 0);
    }
    // Without the option the file's own owner shows.
    let _m = UnionMount::new(&[&l], None, &mp);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(mp.join("f")).unwrap().uid(), 0);
}

#[test]
fn concurrent_loads_extract_each_layer_once() {
    let Some(w) = World::new() else { return };
    let (docker, oci, _) = build_images(&w);
    w.ok(&["images"]);
    let spawn = |src: &PathBuf| {
        Command::new(bin())
            .args(["load", "-i", src.to_str().unwrap()])
            .env("UNIONFUSE_ROOT", w.store())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = [&docker, &oci, &docker, &oci]
        .into_iter()
        .map(spawn)
        .collect();
    let mut extracted = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        extracted += String::from_utf8_lossy(&o.stderr)
            .matches("extracted")
            .count();
    }
    assert_eq!(extracted, 2, "each of the two layers extracted once");
    assert_eq!(w.layers().len(), 2);
    w.ok(&["store-check"]);
}

#[test]
fn a_killed_commit_leaves_nothing_half_made() {
    let Some(w) = World::new() else { return };
    let rootfs = w.path("rootfs");
    runenv::build_rootfs(&rootfs);
    let tarball = w.path("rootfs.tar");
    runenv::tar_of(&rootfs, &tarball);
    w.ok(&["import", tarball.to_str().unwrap(), "base"]);
    w.ok(&[
        "run",
        "--name",
        "c1",
        "base",
        "sh",
        "-c",
        "mkdir /big && for i in $(seq 60); do head -c 1000000 /dev/urandom > /big/$i; done",
    ]);
    let images_before = w.image_list();
    let mut killed = 0;
    for delay in [20u64, 80, 200] {
        let mut child = Command::new(bin())
            .args(["commit", "c1", "big:1"])
            .env("UNIONFUSE_ROOT", w.store())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(
                w.image_list(),
                images_before,
                "a killed commit made an image"
            );
            assert_eq!(w.layers().len(), 1, "a killed commit left a layer");
        } else {
            // It finished first: undo it for the next round.
            let _ = child.wait();
            w.ok(&["rmi", "big:1"]);
            w.ok(&["prune"]);
        }
    }
    w.ok(&["commit", "c1", "big:1"]);
    w.ok(&["store-check"]);
    assert_eq!(w.layers().len(), 2);
    assert!(killed > 0, "no commit was killed in the middle");
}

#[test]
fn a_full_disk_during_a_load_leaves_the_store_as_it_was() {
    let Some(w) = World::new() else { return };
    let (docker, _, _) = build_images(&w);
    // A store on a filesystem too small for the image.
    let small = w.path("small");
    mkdir(&small);
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&small));
    let _g = UnmountOnDrop(small.clone());
    let o = Command::new(bin())
        .args([
            "--root",
            small.to_str().unwrap(),
            "load",
            "-i",
            docker.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a load into 600 kB succeeded");
    assert!(err.contains("No space left"), "{err}");
    for d in ["layers", "images", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(small.join(d)).unwrap().collect();
        assert!(left.is_empty(), "{d}: {left:?}");
    }
}

#[test]
fn sparse_files_stay_sparse() {
    let Some(w) = World::new() else { return };
    let root = w.path("sparse");
    mkdir(&root);
    // 64 MiB with 8 KiB of data in the middle.
    let f = std::fs::File::create(root.join("holes")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 8192], 32 << 20).unwrap();
    drop(f);
    let tarball = w.path("sparse.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("--sparse")
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    w.ok(&["import", tarball.to_str().unwrap(), "sparse"]);
    let p = w.layers()[0].join("holes");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        md.blocks() * 512
    );
    let data = std::fs::read(&p).unwrap();
    assert!(data[(32 << 20)..(32 << 20) + 8192].iter().all(|&b| b == 7));
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 8192);
}

/// `save IMAGE | load` through a pipe, as an image goes from one host to another: the same
/// image (ids and layers); a truncated or corrupt stream is refused and leaves the store as
/// it was (#29).
#[test]
fn save_to_a_pipe_and_load_from_one_round_trip() {
    let Some(w) = World::new() else { return };
    let rootfs = w.path("rootfs");
    base_rootfs(&rootfs);
    let tar = w.path("rootfs.tar");
    runenv::tar_of(&rootfs, &tar);
    w.ok(&["import", tar.to_str().unwrap(), "base:1"]);
    w.ok(&[
        "run",
        "--name",
        "c",
        "base:1",
        "sh",
        "-c",
        "echo hi > /hello",
    ]);
    w.ok(&["commit", "c", "app:1"]);
    let other = w.path("other");
    let uf = bin().display().to_string();
    let pipe = |filter: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{uf} --root {} save app:1 | {filter} | {uf} --root {} load",
                w.store().display(),
                other.display()
            ))
            .env("TMPDIR", w.dir.path())
            .output()
            .unwrap()
    };
    let contents = |root: &Path| {
        let mut v: Vec<String> = ["images", "layers", "blobs/sha256", "tmp"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(root.join(d))
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| format!("{d}/{}", e.file_name().to_string_lossy()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        v.sort();
        v
    };
    // Cut short, and one byte flipped in the middle: refused, nothing kept.
    let size = {
        let o = w.uf(&["save", "app:1", "-o", "-"]);
        o.stdout.len()
    };
    for filter in [
        format!("head -c {}", size / 2),
        format!("perl -0777 -pe 'substr($_, {}, 1) ^= chr(1)'", size / 2),
    ] {
        let o = pipe(&filter);
        assert!(!o.status.success(), "{filter}: accepted");
        assert!(
            contents(&other).iter().all(|e| !e.starts_with("images/")),
            "{filter}: {:?}",
            contents(&other)
        );
        assert!(
            contents(&other).iter().all(|e| !e.starts_with("tmp/")),
            "{filter}: leftovers"
        );
    }
    let o = pipe("cat");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = |root: &Path| {
        let o = store_cli::command(root, w.dir.path(), &["inspect", "app:1"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["Image"]["id"].clone(), v["ChainIDs"].clone())
    };
    assert_eq!(id(&w.store()), id(&other));
    let o = store_cli::command(
        &other,
        w.dir.path(),
        &["run", "--rm", "app:1", "cat", "/hello"],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
}
