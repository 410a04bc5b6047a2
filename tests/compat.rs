//! The command lines of the ecosystem: mount(8) with `-t fuse.unionfuse` / `-t unionfuse`
//! through the helper in mount-helper/, an /etc/fstab line with `mount -a -T`, and
//! fuse-overlayfs's command line with the options containers/storage sends, uid/gid mapping
//! and squashing included.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::runenv::{processes_mentioning, shared_bin};
use common::{UnmountOnDrop, is_mounted, mkdir, require_root, run, scratch, wait_until, write};

/// mount(8) finds helpers in /sbin: they are linked to this build's binary while a test
/// needs them, and what was there before is put back when the last such test ends.
struct Helper;

const HELPERS: [&str; 2] = ["/sbin/mount.fuse.unionfuse", "/sbin/mount.unionfuse"];

/// Tests using the helper, and what the helper paths held before (a link's target).
static USERS: std::sync::Mutex<(usize, Vec<Option<PathBuf>>)> =
    std::sync::Mutex::new((0, Vec::new()));

fn install_helper() -> Helper {
    let mut u = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if u.0 == 0 {
        // A link into this suite's own shared binary is a leftover of an earlier run that
        // did not end cleanly, not something of the machine's to put back.
        u.1 = HELPERS
            .iter()
            .map(|h| std::fs::read_link(h).ok().filter(|t| *t != shared_bin()))
            .collect();
        let o = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mount-helper/install"))
            .arg(shared_bin())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount-helper/install: {o:?}");
    }
    u.0 += 1;
    Helper
}

impl Drop for Helper {
    fn drop(&mut self) {
        let mut u = USERS.lock().unwrap_or_else(|e| e.into_inner());
        u.0 -= 1;
        if u.0 > 0 {
            return;
        }
        for (h, before) in HELPERS.iter().zip(u.1.iter()) {
            let _ = std::fs::remove_file(h);
            if let Some(t) = before {
                let _ = std::os::unix::fs::symlink(t, h);
            }
        }
    }
}

struct Layers {
    dir: tempfile::TempDir,
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mp: PathBuf,
}

fn layers() -> Layers {
    let dir = scratch();
    let p = |n: &str| dir.path().join(n);
    let l = Layers {
        l1: p("l1"),
        l2: p("l2"),
        upper: p("upper"),
        work: p("work"),
        mp: p("mnt"),
        dir,
    };
    for d in [&l.l1, &l.l2, &l.upper, &l.work, &l.mp] {
        mkdir(d);
    }
    write(&l.l1.join("top"), b"from l1\n");
    write(&l.l2.join("bottom"), b"from l2\n");
    write(&l.l2.join("hidden"), b"whited out by l1\n");
    // A layer as containers/storage writes it: OCI whiteouts.
    write(&l.l1.join(".wh.hidden"), b"");
    l
}

impl Layers {
    fn opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.l1.display(),
            self.l2.display(),
            self.upper.display(),
            self.work.display()
        )
    }
    fn token(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }
    /// The merged view reads right and a write lands in the upper only.
    fn check_view(&self) {
        assert_eq!(
            std::fs::read_to_string(self.mp.join("top")).unwrap(),
            "from l1\n"
        );
        assert_eq!(
            std::fs::read_to_string(self.mp.join("bottom")).unwrap(),
            "from l2\n"
        );
        assert!(
            !self.mp.join("hidden").exists(),
            "an OCI whiteout did not hide"
        );
        assert!(!self.mp.join(".wh.hidden").exists());
        std::fs::write(self.mp.join("new"), "written\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(self.upper.join("new")).unwrap(),
            "written\n"
        );
        assert!(!self.l1.join("new").exists());
    }
    /// Unmounting ends the daemon.
    fn umount_and_check_gone(&self) {
        // A parallel test's fork can hold a copy of one of our (close-on-exec) fds for a
        // moment, making the mount busy: a busy unmount is retried, any other failure is not.
        let mut o = run(Command::new("umount").arg(&self.mp));
        for _ in 0..5 {
            if o.status.success() || !String::from_utf8_lossy(&o.stderr).contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            o = run(Command::new("umount").arg(&self.mp));
        }
        ok(&o);
        assert!(is_mounted(&self.mp).is_none());
        let token = self.token();
        assert!(
            wait_until(Duration::from_secs(10), || processes_mentioning(&token)
                .is_empty()),
            "the daemon outlived the unmount: {:?}",
            processes_mentioning(&token)
        );
    }
}

fn ok(o: &Output) {
    common::store_cli::assert_success(o);
}

#[test]
fn mount_t_fuse_unionfuse_and_umount() {
    if !require_root() {
        return;
    }
    let _helper = install_helper();
    let l = layers();
    let _g = UnmountOnDrop(l.mp.clone());
    ok(&run(Command::new("mount")
        .args(["-t", "fuse.unionfuse", "-o", &l.opts(), "none"])
        .arg(&l.mp)));
    assert_eq!(is_mounted(&l.mp).as_deref(), Some("fuse.unionfuse"));
    l.check_view();
    l.umount_and_check_gone();
}

#[test]
fn mount_t_unionfuse_with_only_lowers_is_read_only() {
    if !require_root() {
        return;
    }
    let _helper = install_helper();
    let l = layers();
    let _g = UnmountOnDrop(l.mp.clone());
    let opts = format!("lowerdir={}:{}", l.l1.display(), l.l2.display());
    ok(&run(Command::new("mount")
        .args(["-t", "unionfuse", "-o", &opts, "none"])
        .arg(&l.mp)));
    assert_eq!(
        std::fs::read_to_string(l.mp.join("top")).unwrap(),
        "from l1\n"
    );
    let e = std::fs::write(l.mp.join("x"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    l.umount_and_check_gone();
}

#[test]
fn fstab_line_with_mount_a() {
    if !require_root() {
        return;
    }
    let _helper = install_helper();
    let l = layers();
    let other = l.dir.path().join("other");
    mkdir(&other);
    let _g = UnmountOnDrop(l.mp.clone());
    let _g2 = UnmountOnDrop(other.clone());
    let fstab = l.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\nnone {} fuse.unionfuse {},nofail,_netdev,x-systemd.requires=a.mount,noatime,comment=x 0 0\nnone {} fuse.unionfuse lowerdir={},noauto 0 0\n",
            l.mp.display(),
            l.opts(),
            other.display(),
            l.l2.display()
        ),
    )
    .unwrap();
    ok(&run(Command::new("mount").arg("-a").arg("-T").arg(&fstab)));
    assert_eq!(is_mounted(&l.mp).as_deref(), Some("fuse.unionfuse"));
    assert!(
        is_mounted(&other).is_none(),
        "a noauto line was mounted by mount -a"
    );
    l.check_view();
    // mount by the mountpoint alone finds the line.
    ok(&run(Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&other)));
    assert_eq!(is_mounted(&other).as_deref(), Some("fuse.unionfuse"));
    assert!(other.join("bottom").exists());
    ok(&run(Command::new("umount").arg(&other)));
    l.umount_and_check_gone();
}

#[test]
fn helper_refuses_bad_options_and_mounts_nothing() {
    if !require_root() {
        return;
    }
    let _helper = install_helper();
    let l = layers();
    let _g = UnmountOnDrop(l.mp.clone());
    let lower_only = format!("lowerdir={}", l.l1.display());
    let cases = [
        (format!("upperdir={}", l.upper.display()), "no lowerdir"),
        (
            format!("{lower_only},frobnicate"),
            "unknown mount option 'frobnicate'",
        ),
        ("lowerdir=/no/such/layer".to_string(), "/no/such/layer"),
        (format!("{},uidmapping=0:1", l.opts()), "uidmapping"),
        (
            format!(
                "{lower_only},upperdir={},workdir=/no/such/work",
                l.upper.display()
            ),
            "workdir",
        ),
    ];
    for (opts, msg) in &cases {
        let o = run(Command::new("mount")
            .args(["-t", "fuse.unionfuse", "-o", opts, "none"])
            .arg(&l.mp));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{opts}: mounted");
        assert!(err.contains(msg), "{opts}: expected {msg:?} in {err}");
        assert!(is_mounted(&l.mp).is_none());
    }
    // mount -s (sloppy): unknown options are ignored.
    ok(&run(Command::new("mount")
        .args(["-s", "-t", "fuse.unionfuse", "-o"])
        .arg(format!("{lower_only},frobnicate"))
        .arg("none")
        .arg(&l.mp)));
    assert!(l.mp.join("top").exists());
    l.umount_and_check_gone();
}

/// containers/storage runs its mount_program as `PROGRAM -o OPTIONS MOUNTPOINT` and expects
/// it to return once the mount is live.
#[test]
fn fuse_overlayfs_command_line() {
    if !require_root() {
        return;
    }
    let l = layers();
    let _g = UnmountOnDrop(l.mp.clone());
    let link = l.dir.path().join("l1-link");
    std::os::unix::fs::symlink(&l.l1, &link).unwrap();
    let opts = format!(
        ",lowerdir={}:{},upperdir={},,workdir={},volatile,noacl,",
        link.display(),
        l.l2.display(),
        l.upper.display(),
        l.work.display()
    );
    ok(&run(Command::new(shared_bin())
        .arg("-o")
        .arg(&opts)
        .arg(&l.mp)));
    assert_eq!(is_mounted(&l.mp).as_deref(), Some("fuse.unionfuse"));
    l.check_view();
    // The given workdir is used: the upper (which containers/storage turns into a layer on
    // commit, also of a running container) holds nothing but the changes.
    assert!(l.work.join("unionfuse").is_dir());
    let names: Vec<_> = std::fs::read_dir(&l.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["new"], "the upper holds more than the change");
    l.umount_and_check_gone();
    assert!(
        !l.work.join("unionfuse").exists(),
        "work dir left after unmount"
    );

    let o = run(Command::new(shared_bin()).arg("--version"));
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
    let o = run(Command::new(shared_bin()).arg("-o").arg("upperdir=/x"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no mountpoint"));
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn mount_with(l: &Layers, extra: &str) {
    let opts = format!("{},{extra}", l.opts());
    ok(&run(Command::new(shared_bin())
        .arg("-o")
        .arg(&opts)
        .arg(&l.mp)));
}

#[test]
fn uid_gid_mapping_and_squashing() {
    if !require_root() {
        return;
    }
    let l = layers();
    common::lchown(&l.l1.join("top"), 0, 0);
    common::lchown(&l.l2.join("bottom"), 1, 1);
    let _g = UnmountOnDrop(l.mp.clone());

    // The example of fuse-overlayfs's manual: stored 0 and 1 shown as 1000 and 110000.
    mount_with(
        &l,
        "uidmapping=0:1000:1:1:110000:65536,gidmapping=0:2000:1:1:120000:65536",
    );
    assert_eq!(owner(&l.mp.join("top")), (1000, 2000));
    assert_eq!(owner(&l.mp.join("bottom")), (110000, 120000));
    // Written back through the mapping: a chown, and the owner of a new file.
    std::os::unix::fs::lchown(l.mp.join("bottom"), Some(110005), Some(2000)).unwrap();
    assert_eq!(owner(&l.upper.join("bottom")), (6, 0));
    assert_eq!(owner(&l.mp.join("bottom")), (110005, 2000));
    let e = std::os::unix::fs::lchown(l.mp.join("top"), Some(5), None).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EINVAL),
        "an unmapped id was stored"
    );
    // Root of the host is not in the mapping: it cannot own anything new.
    assert_eq!(
        std::fs::write(l.mp.join("by-root"), "x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    l.umount_and_check_gone();

    mount_with(&l, "squash_to_root");
    assert_eq!(owner(&l.mp.join("bottom")), (0, 0));
    l.umount_and_check_gone();
    mount_with(&l, "squash_to_uid=7,squash_to_root");
    assert_eq!(owner(&l.mp.join("top")), (7, 0));
    l.umount_and_check_gone();
    mount_with(&l, "squash_to_uid=7,squash_to_gid=8");
    assert_eq!(owner(&l.mp.join("top")), (7, 8));
    l.umount_and_check_gone();
}
