//! Helpers for `unionfuse run` tests: a busybox root filesystem as the lower layer, and the
//! identities the runs are made as (root, and unprivileged users with and without a
//! subordinate id range, created here on first use).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Root,
    /// An ordinary user with a range in /etc/subuid and /etc/subgid.
    SubIds,
    /// An ordinary user without one: only its own id is mapped.
    SingleId,
}

pub const SUB_USER: &str = "ufrun-sub";
pub const SOLO_USER: &str = "ufrun-solo";
/// The range given to SUB_USER (the tests check owners on disk against it).
pub const SUB_START: u32 = 700000;
pub const SUB_COUNT: u32 = 65536;

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "setup command failed: {cmd}");
}

fn edit_subid_files(user: &str, range: Option<(u32, u32)>) {
    for f in ["/etc/subuid", "/etc/subgid"] {
        let old = std::fs::read_to_string(f).unwrap_or_default();
        let mut s: String = old
            .lines()
            .filter(|l| l.split(':').next() != Some(user))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some((start, count)) = range {
            s.push_str(&format!("{user}:{start}:{count}\n"));
        }
        if s != old {
            std::fs::write(f, s).unwrap();
        }
    }
}

/// Creates the test users once per process (idempotent across runs).
fn ensure_users() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for u in [SUB_USER, SOLO_USER] {
            let exists = Command::new("id")
                .arg("-u")
                .arg(u)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if !exists {
                sh(&format!("useradd --no-create-home --shell /bin/sh {u}"));
            }
        }
        edit_subid_files(SUB_USER, Some((SUB_START, SUB_COUNT)));
        edit_subid_files(SOLO_USER, None);
    });
}

pub fn user_ids(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").arg(flag).arg(name).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The binary, copied where every user can execute it (the build tree may be private).
pub fn shared_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from("/tmp/unionfuse-run-tests");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = dir.join(format!("unionfuse.{}", std::process::id()));
        std::fs::copy(super::bin(), &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("unionfuse");
        std::fs::rename(&tmp, &dst).unwrap();
        dst
    })
    .clone()
}

/// `tar -C dir -cf to .`: a tree as a tarball, as `import` takes it.
pub fn tar_of(dir: &Path, to: &Path) {
    let o = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(to)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A root filesystem from Debian's busybox-static: /bin with every applet, /etc with
/// os-release, passwd and group.
pub fn build_rootfs(at: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (scripts/setup does)"
    );
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "var",
    ] {
        std::fs::create_dir_all(at.join(d)).unwrap();
    }
    std::fs::copy(busybox, at.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let p = at.join("bin").join(applet);
        if !p.exists() {
            std::os::unix::fs::symlink("busybox", p).unwrap();
        }
    }
    let files = [
        (
            "etc/os-release",
            "PRETTY_NAME=\"unionfuse test root\"\nID=uftest\n",
        ),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        ),
        (
            "etc/group",
            "root:x:0:\ntty:x:5:\nwww-data:x:33:\nuser:x:1000:\n",
        ),
    ];
    for (p, c) in files {
        std::fs::write(at.join(p), c).unwrap();
    }
}

/// One test's world: a scratch directory owned by the identity the runs are made as, holding
/// the root filesystem (`rootfs`), a `tmp` given to the runner as TMPDIR (its temporary
/// uppers go there, and it must be empty after every run), and whatever the test adds.
pub struct RunCtx {
    pub who: Who,
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub tmp: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

static SETUP: Mutex<()> = Mutex::new(());

impl RunCtx {
    pub fn new(who: Who) -> Option<RunCtx> {
        if !super::require_root() {
            return None;
        }
        let _g = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        ensure_users();
        let (uid, gid) = match who {
            Who::Root => (0, 0),
            Who::SubIds => user_ids(SUB_USER),
            Who::SingleId => user_ids(SOLO_USER),
        };
        let dir = super::scratch();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctx = RunCtx {
            who,
            rootfs: dir.path().join("rootfs"),
            tmp: dir.path().join("tmp"),
            dir,
            uid,
            gid,
        };
        build_rootfs(&ctx.rootfs);
        std::fs::create_dir(&ctx.tmp).unwrap();
        ctx.give(ctx.dir.path());
        Some(ctx)
    }

    /// Gives a path (recursively) to the test's identity.
    pub fn give(&self, p: &Path) {
        let st = Command::new("chown")
            .arg("-hR")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// A new directory in the scratch space, owned by the test's identity.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        self.give(&p);
        p
    }

    /// `unionfuse ARGS` as the test's identity, with TMPDIR pointing into the scratch space.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = self.program(shared_bin().as_os_str());
        c.args(args).env("TMPDIR", &self.tmp);
        c
    }

    /// `unionfuse ARGS` as the test's identity with its store in `home` (the default one
    /// of a user whose home that is), run to the end with no input.
    pub fn in_home(&self, home: &Path, args: &[&str]) -> Output {
        self.command(args)
            .env("HOME", home)
            .env_remove("UNIONFUSE_ROOT")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Any program, run as the test's identity.
    pub fn program(&self, prog: &OsStr) -> Command {
        match self.who {
            Who::Root => Command::new(prog),
            _ => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", self.uid))
                    .arg(format!("--regid={}", self.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(prog);
                c
            }
        }
    }

    /// `unionfuse run --lower ROOTFS EXTRA... -- sh -c SCRIPT`, run to the end.
    pub fn sh<S: AsRef<OsStr>>(&self, extra: &[S], script: &str) -> Output {
        let mut c = self.command(&[
            OsStr::new("run"),
            OsStr::new("--lower"),
            self.rootfs.as_os_str(),
        ]);
        c.args(extra).args(["--", "/bin/sh", "-c", script]);
        let out = c.stdin(Stdio::null()).output().unwrap();
        self.assert_clean();
        out
    }

    /// Nothing of a finished run is left: its temporary directories, mounts and processes.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in TMPDIR after the run: {left:?}");
        let token = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&token),
            "a mount of the run is left: {mounts}"
        );
        let procs = processes_mentioning(&token);
        assert!(procs.is_empty(), "processes of the run are left: {procs:?}");
    }

    /// The owner on disk of an id inside the container.
    pub fn host_id(&self, inside: u32) -> u32 {
        match self.who {
            Who::Root => inside,
            Who::SubIds if inside == 0 => self.uid,
            Who::SubIds => SUB_START + inside - 1,
            Who::SingleId => {
                assert_eq!(inside, 0);
                self.uid
            }
        }
    }
}

/// Live (not zombie) processes whose command line contains `token`, other than this one.
pub fn processes_mentioning(token: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(token) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        if state != Some('Z') && !stat.is_empty() {
            out.push((pid, cmd));
        }
    }
    out
}

/// A runner started in the background, its stdout read line by line. Dropping it kills the
/// runner (SIGKILL) and reaps it: the run's own guards must then end everything else.
pub struct Background {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn start(mut c: Command) -> Background {
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `want`; panics with what was seen on a timeout.
    pub fn expect_line(&mut self, want: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l == want;
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no line {want:?} within {timeout:?}; seen {:?}", self.seen),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "the runner did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Debian minbase tree made by debootstrap, and `hello`'s package beside it in `debs/`:
/// built once per machine under /var/tmp (the only step that needs the network), reused.
pub fn debian_cache() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let cache = PathBuf::from("/var/tmp/unionfuse-test-cache");
        let tree = cache.join("bookworm-minbase");
        let debs = cache.join("debs");
        std::fs::create_dir_all(&cache).unwrap();
        if !cache.join("bookworm-minbase.done").exists() {
            let _ = std::fs::remove_dir_all(&tree);
            let o = Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&tree)
                .arg("http://deb.debian.org/debian")
                .output()
                .expect("debootstrap (scripts/setup installs it)");
            assert!(
                o.status.success(),
                "debootstrap failed: {}",
                String::from_utf8_lossy(&o.stdout)
            );
            std::fs::write(cache.join("bookworm-minbase.done"), "").unwrap();
        }
        if !debs.join("hello.deb").exists() {
            std::fs::create_dir_all(&debs).unwrap();
            let o = Command::new("apt-get")
                .args(["download", "hello"])
                .current_dir(&debs)
                .output()
                .unwrap();
            assert!(o.status.success(), "apt-get download hello: {o:?}");
            let deb = std::fs::read_dir(&debs)
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("hello_"))
                .expect("no hello_*.deb")
                .path();
            std::fs::rename(deb, debs.join("hello.deb")).unwrap();
        }
        std::fs::set_permissions(&debs, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            debs.join("hello.deb"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        cache
    })
    .clone()
}

/// The cached Debian tree with its owners shifted into `uid`/`gid` (for 0) and the
/// subordinate range (for 1 and up), as a rootless user's image layer is: made once per id.
pub fn debian_tree_for(cache: &Path, uid: u32, gid: u32) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let base = cache.join("bookworm-minbase");
    if uid == 0 {
        return base;
    }
    let shifted = cache.join(format!("bookworm-minbase-{uid}-{gid}-{SUB_START}"));
    let done = shifted.with_extension("done");
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if done.exists() {
        return shifted;
    }
    let _ = std::fs::remove_dir_all(&shifted);
    let st = Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&shifted)
        .status()
        .unwrap();
    assert!(st.success());
    let map = |id: u32, own: u32| if id == 0 { own } else { SUB_START + id - 1 };
    let mut stack = vec![shifted.clone()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let c = super::cpath(&p);
        unsafe { libc::lchown(c.as_ptr(), map(md.uid(), uid), map(md.gid(), gid)) };
        if !md.file_type().is_symlink() {
            // chown cleared the set-id bits.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(md.mode() & 0o7777))
                .unwrap();
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    std::fs::write(&done, "").unwrap();
    shifted
}
