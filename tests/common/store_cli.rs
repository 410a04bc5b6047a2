//! unionfuse with a store of its own: the command, and the checks of its outcome that the
//! store, background and registry tests share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::bin;

/// `unionfuse ARGS` on the store at `root`, with temporary files under `tmp` and no input.
pub fn command(root: &Path, tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("UNIONFUSE_ROOT", root)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    c
}

/// Its standard output, asserting success (both streams in the message otherwise).
pub fn assert_ok(args: &[&str], o: &Output) -> String {
    assert!(
        o.status.success(),
        "unionfuse {args:?}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its standard error, asserting a failure that says `expect`.
pub fn assert_refused(args: &[&str], o: &Output, expect: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "unionfuse {args:?} was accepted");
    assert!(
        err.contains(expect),
        "unionfuse {args:?}: '{expect}' not in: {err}"
    );
    err
}

/// Its standard output, asserting success (both streams in the message otherwise), for any
/// program.
pub fn assert_success(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The layer directories of an image of the store at `root`, top first (as a union takes
/// them), from what `inspect` printed of it.
pub fn image_lowers(root: &Path, inspect: &str) -> Vec<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
    v["Image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            let d = l["diff_id"].as_str().unwrap();
            root.join("layers").join(&d["sha256:".len()..])
        })
        .collect()
}

/// podman ARGS with a storage of its own under `dir` (vfs, cgroupfs, the host's network,
/// runc), its standard output, asserting success.
pub fn podman(dir: &Path, args: &[&str]) -> String {
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\nnetns = \"host\"\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let o = Command::new("timeout")
        .arg("180")
        .arg("podman")
        .arg("--root")
        .arg(dir.join("pgraph"))
        .arg("--runroot")
        .arg(dir.join("prun"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .env("CONTAINERS_CONF", &conf)
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A store of the test's own, with the busybox root filesystem (`rootfs.tar`) imported as
/// `base`: what the container tests start from. `None` without root (see `require_root`).
pub struct BaseStore {
    pub dir: tempfile::TempDir,
}

impl BaseStore {
    pub fn new() -> Option<BaseStore> {
        if !super::require_root() {
            return None;
        }
        let s = BaseStore {
            dir: super::scratch(),
        };
        let rootfs = s.path("rootfs");
        super::runenv::build_rootfs(&rootfs);
        super::runenv::tar_of(&rootfs, &s.tar());
        s.ok(&["import", s.tar().to_str().unwrap(), "base"]);
        Some(s)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The busybox tarball `base` was imported from.
    pub fn tar(&self) -> PathBuf {
        self.path("rootfs.tar")
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        command(&self.store(), self.dir.path(), args)
    }

    pub fn uf(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        assert_ok(args, &self.uf(args))
    }

    pub fn refused(&self, args: &[&str], expect: &str) -> String {
        assert_refused(args, &self.uf(args), expect)
    }

    /// A container's STATUS column in `ps -a` ("gone" when it is not listed).
    pub fn status(&self, name: &str) -> String {
        self.ok(&["ps", "-a"])
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split("ago").last().unwrap_or("").trim().to_string())
            .unwrap_or_else(|| "gone".into())
    }
}
