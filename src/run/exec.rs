//! `unionfuse exec`: another command in a running container. It enters the namespaces of the
//! container's init (user, ipc, uts, net, pid, cgroup, mount), its root and its cgroups, and
//! runs under the container's profile, on a terminal of the container's own when standard
//! input and output are the caller's terminal.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use super::init::{self, RealConfine};
use super::{cstring, profile, signal_set};
use crate::error::{Result, UserError, bail};
use crate::sys;

pub struct ExecRequest {
    /// The host pid of the container's init.
    pub init: i32,
    pub command: Vec<OsString>,
    /// The whole environment of the command.
    pub env: Vec<(OsString, OsString)>,
    pub user: Option<String>,
    pub chdir: Option<PathBuf>,
    pub tty: Option<bool>,
    pub profile: profile::Profile,
}

/// The namespaces entered, in order: the user namespace first (it gives the rights for the
/// others), the mount namespace last (after it, `/proc` is the container's).
const NAMESPACES: [(&str, i32); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

fn open(path: &str) -> Result<OwnedFd> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| UserError(format!("{path}: {e} (has the container ended?)")))
}

/// The cgroups of `pid`, joined by this process (its limits hold for what exec starts).
fn join_cgroups_of(pid: i32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in text.lines() {
        if mine.lines().any(|l| l == line) {
            continue;
        }
        let mut f = line.splitn(3, ':');
        let (ctrls, path) = (f.nth(1).unwrap_or(""), f.next().unwrap_or("/"));
        let mount = info.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut p = post.split(' ');
            let fstype = p.next()?;
            let opts = p.nth(1).unwrap_or("");
            let ok = if ctrls.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
            };
            ok.then(|| pre.split(' ').nth(4).map(String::from))
                .flatten()
        });
        if let Some(mp) = mount {
            let procs = format!("{mp}{path}/cgroup.procs");
            let _ = std::fs::write(procs, "0");
        }
    }
}

pub fn exec(req: ExecRequest) -> Result<i32> {
    if req.command.is_empty() {
        bail!("no command given");
    }
    let base = format!("/proc/{}", req.init);
    let root = sys::open_dir_path(std::path::Path::new(&format!("{base}/root")))
        .map_err(|e| UserError(format!("the container's root: {e} (has it ended?)")))?;
    let mut targets = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = open(&format!("{base}/ns/{name}"))?;
        let ours = open(&format!("/proc/self/ns/{name}"))?;
        let same = match (sys::fstat(theirs.as_fd()), sys::fstat(ours.as_fd())) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        };
        if !same || name == "mnt" {
            targets.push((name, flag, theirs));
        }
    }
    join_cgroups_of(req.init);
    for (name, flag, fd) in &targets {
        sys::setns(fd.as_fd(), *flag).map_err(|e| {
            UserError(format!(
                "cannot enter the container's {name} namespace: {e}"
            ))
        })?;
    }
    sys::enter_root(root.as_fd())
        .map_err(|e| UserError(format!("cannot enter the container's root: {e}")))?;
    let dir = std::path::Path::new("/").join(req.chdir.clone().unwrap_or_default());
    std::env::set_current_dir(&dir)
        .map_err(|e| UserError(format!("-w '{}': {e}", dir.display())))?;
    let ids = match &req.user {
        Some(u) => Some(init::resolve_user(u)?),
        None => None,
    };
    let mut env: Vec<(OsString, OsString)> = req.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let env = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.clone();
            b.push("=");
            b.push(v);
            cstring(&b)
        })
        .collect::<Result<Vec<_>>>()?;
    let argv = req
        .command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>>>()?;
    let filters = req.profile.programs()?;
    let tty = req
        .tty
        .unwrap_or_else(|| sys::is_foreground_terminal(0) && sys::is_terminal(1));
    let pty = if tty {
        Some(init::terminal(ids.as_ref().map(|(u, _, _)| *u))?)
    } else {
        None
    };
    let set = signal_set(true);
    set.block();
    let child = match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            sys::set_parent_death_signal(libc::SIGKILL);
            let confine = || {
                let mut real = RealConfine {
                    filters: &filters,
                    cgroups: &[],
                };
                profile::confine(&mut real, &req.profile)
            };
            init::command_process(
                "exec",
                pty.as_ref().map(|(_, t)| t.as_fd()),
                confine,
                ids.as_ref().map(|(u, g, _)| (*u, *g)),
                &argv,
                &env,
            )
        }
        Ok(sys::Forked::Parent(pid)) => pid,
    };
    Ok(match pty {
        Some((master, term)) => {
            drop(term);
            let _raw = sys::is_foreground_terminal(0)
                .then(|| sys::RawMode::enter(0).ok())
                .flatten();
            init::relay_until(child, &set, master, &[])
        }
        None => init::reap_until(child, &set),
    })
}
