//! Limits of a run (`--memory`, `--memory-swap`, `--cpus`, `--cpu-shares`, `--pids-limit`),
//! through a cgroup per run: cgroup v2 where its controllers are available, otherwise the v1
//! hierarchies of the controllers asked for. The runner makes the cgroups on the host before
//! any namespace and opens their `cgroup.procs`; the init joins them (through those fds) before
//! it starts the command; the runner reads whether the OOM killer struck and removes them when
//! the run ends.

use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, UserError, bail};

/// The limits asked for; `None`: not limited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    /// Memory plus swap, bytes; -1: unlimited swap.
    pub memory_swap: Option<i64>,
    /// CPUs' worth of time per period (0.5: half of one).
    pub cpus: Option<f64>,
    /// Relative weight, 2 to 262144 (1024 is everybody's default).
    pub cpu_shares: Option<u64>,
    pub pids: Option<i64>,
}

const CPU_PERIOD: u64 = 100_000;

/// `64m`, `1g`, `512k`, `1048576` (bytes); as docker reads them.
pub fn parse_size(opt: &str, s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| (n * mult as f64) as u64)
        .ok_or_else(|| {
            UserError(format!(
                "{opt} '{s}': expected a size such as 64m, 1g or 512k"
            ))
        })
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The limits of a run's options, checked before anything starts.
    pub fn from_options(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        cpus: Option<&str>,
        cpu_shares: Option<u64>,
        pids: Option<i64>,
    ) -> Result<Limits> {
        let memory = memory.map(|m| parse_size("--memory", m)).transpose()?;
        if let Some(m) = memory
            && m < 6 << 20
        {
            bail!("--memory: the minimum is 6m");
        }
        let memory_swap = match memory_swap {
            None => None,
            Some("-1") => Some(-1),
            Some(s) => Some(parse_size("--memory-swap", s)? as i64),
        };
        if let Some(s) = memory_swap {
            let Some(m) = memory else {
                bail!("--memory-swap needs --memory");
            };
            if s != -1 && (s as u64) < m {
                bail!("--memory-swap is memory plus swap: it must be at least --memory");
            }
        }
        let cpus = cpus
            .map(|c| {
                c.parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.01)
                    .ok_or_else(|| {
                        UserError(format!(
                            "--cpus '{c}': expected a number of CPUs such as 0.5 or 2"
                        ))
                    })
            })
            .transpose()?;
        if let Some(s) = cpu_shares
            && !(2..=262_144).contains(&s)
        {
            bail!("--cpu-shares {s}: expected 2 to 262144");
        }
        if let Some(p) = pids
            && p < 1
            && p != -1
        {
            bail!("--pids-limit {p}: expected a positive number (or -1: unlimited)");
        }
        Ok(Limits {
            memory,
            memory_swap,
            cpus,
            cpu_shares,
            pids,
        })
    }

    /// What each file gets, by controller, in cgroup v2 or v1 terms.
    fn settings(&self, v2: bool) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(m) = self.memory {
            if v2 {
                out.push(("memory", "memory.max", m.to_string()));
                // docker's rule: without --memory-swap, as much swap as memory.
                let swap = match self.memory_swap {
                    Some(-1) => "max".to_string(),
                    Some(s) => (s as u64 - m).to_string(),
                    None => m.to_string(),
                };
                out.push(("memory", "memory.swap.max", swap));
            } else {
                out.push(("memory", "memory.limit_in_bytes", m.to_string()));
                let total = match self.memory_swap {
                    Some(s) => s.to_string(),
                    None => (2 * m).to_string(),
                };
                out.push(("memory", "memory.memsw.limit_in_bytes", total));
            }
        }
        if let Some(c) = self.cpus {
            let quota = ((c * CPU_PERIOD as f64) as u64).max(1000);
            if v2 {
                out.push(("cpu", "cpu.max", format!("{quota} {CPU_PERIOD}")));
            } else {
                out.push(("cpu", "cpu.cfs_period_us", CPU_PERIOD.to_string()));
                out.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
            }
        }
        if let Some(s) = self.cpu_shares {
            if v2 {
                let weight = 1 + ((s - 2) * 9999) / 262_142;
                out.push(("cpu", "cpu.weight", weight.to_string()));
            } else {
                out.push(("cpu", "cpu.shares", s.to_string()));
            }
        }
        if let Some(p) = self.pids {
            let v = if p == -1 { "max".into() } else { p.to_string() };
            out.push(("pids", "pids.max", v));
        }
        out
    }
}

/// The cgroups of one run. They are reached through fds opened when they were made: the
/// runner's mount namespace lets go of the host's cgroup mounts while the run goes on.
#[derive(Debug)]
pub struct Cgroup {
    /// Made for this run, removed at its end: (the parent directory, the name).
    dirs: Vec<(OwnedFd, CString)>,
    /// Where the OOM killer's count is read: the cgroup, and `memory.events` (v2) or
    /// `memory.oom_control` (v1).
    oom_file: Option<(OwnedFd, &'static CStr)>,
    pub procs: Vec<Arc<OwnedFd>>,
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    crate::sys::open_dir_path(p).map_err(std::io::Error::from)
}

/// The cgroup filesystems mounted here: (mount point, cgroup2?, controllers of a v1 one).
fn cgroup_mounts() -> Vec<(PathBuf, bool, Vec<String>)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut f = post.split(' ');
            let fstype = f.next()?;
            let opts = f.nth(1).unwrap_or("");
            let mp = PathBuf::from(mp.replace("\\040", " "));
            match fstype {
                "cgroup2" => Some((mp, true, Vec::new())),
                "cgroup" => Some((mp, false, opts.split(',').map(String::from).collect())),
                _ => None,
            }
        })
        .collect()
}

/// This process's cgroup in a hierarchy (`0::` for v2, the controller's line for v1).
fn own_path(v2: bool, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        if (v2 && ctrls.is_empty()) || (!v2 && ctrls.split(',').any(|c| c == controller)) {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
}

fn open_procs(dir: &Path) -> std::io::Result<Arc<OwnedFd>> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(Arc::new(OwnedFd::from(f)))
}

impl Cgroup {
    /// The cgroups for `limits`, named after `name`; `None` without limits. A limit this
    /// machine cannot apply is an error naming why.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<Cgroup>> {
        if limits.is_empty() {
            return Ok(None);
        }
        let mounts = cgroup_mounts();
        let mut cg = Cgroup {
            dirs: Vec::new(),
            oom_file: None,
            procs: Vec::new(),
        };
        let leaf = format!("unionfuse-{name}-{}", std::process::id());
        let r = match Self::v2_with_controllers(&mounts, limits) {
            Some(root) => cg.make_v2(&root, &leaf, limits),
            None => cg.make_v1(&mounts, &leaf, limits),
        };
        match r {
            Ok(()) => Ok(Some(cg)),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// The cgroup2 mount, if it offers every controller the limits need.
    fn v2_with_controllers(
        mounts: &[(PathBuf, bool, Vec<String>)],
        limits: &Limits,
    ) -> Option<PathBuf> {
        let (mp, _, _) = mounts.iter().find(|(_, v2, _)| *v2)?;
        let have = std::fs::read_to_string(mp.join("cgroup.controllers")).unwrap_or_default();
        let need: Vec<&str> = limits.settings(true).iter().map(|s| s.0).collect();
        need.iter()
            .all(|c| have.split_whitespace().any(|h| h == *c))
            .then(|| mp.clone())
    }

    fn make_v2(&mut self, root: &Path, leaf: &str, limits: &Limits) -> Result<()> {
        let settings = limits.settings(true);
        let mut ctrls: Vec<&str> = settings.iter().map(|s| s.0).collect();
        ctrls.dedup();
        let enable: String = ctrls.iter().map(|c| format!("+{c} ")).collect();
        // As root, a subtree of the root cgroup (which may have processes and still hand
        // controllers down); rootless, below the caller's own, where it is delegated.
        let parent = if crate::sys::geteuid() == 0 {
            root.join("unionfuse")
        } else {
            root.join(own_path(true, "")).join("unionfuse")
        };
        let fail = |what: &str, e: std::io::Error| {
            UserError(format!(
                "limits are unavailable: {what}: {e} (cgroup v2 at {})",
                root.display()
            ))
        };
        let grand = parent.parent().unwrap_or(root);
        write(grand, "cgroup.subtree_control", enable.trim())
            .map_err(|e| fail("enabling the controllers", e))?;
        if !parent.exists() {
            std::fs::create_dir(&parent).map_err(|e| fail("a parent cgroup", e))?;
        }
        write(&parent, "cgroup.subtree_control", enable.trim())
            .map_err(|e| fail("enabling the controllers", e))?;
        let dir = self
            .make(&parent, leaf)
            .map_err(|e| fail("the container's cgroup", e))?;
        for (_, file, value) in &settings {
            write(&dir, file, value).map_err(|e| fail(file, e))?;
        }
        if limits.memory.is_some() {
            let fd = open_dir(&dir).map_err(|e| fail("the container's cgroup", e))?;
            self.oom_file = Some((fd, c"memory.events"));
        }
        self.procs
            .push(open_procs(&dir).map_err(|e| fail("cgroup.procs", e))?);
        Ok(())
    }

    fn make_v1(
        &mut self,
        mounts: &[(PathBuf, bool, Vec<String>)],
        leaf: &str,
        limits: &Limits,
    ) -> Result<()> {
        let settings = limits.settings(false);
        let mut ctrls: Vec<&str> = settings.iter().map(|s| s.0).collect();
        ctrls.dedup();
        for ctrl in ctrls {
            let Some((mp, _, _)) = mounts
                .iter()
                .find(|(_, v2, opts)| !v2 && opts.iter().any(|o| o == ctrl))
            else {
                bail!(
                    "limits are unavailable: no cgroup has the {ctrl} controller (neither v2 nor a v1 hierarchy is mounted with it)"
                );
            };
            let fail = |what: &str, e: std::io::Error| {
                UserError(format!(
                    "limits are unavailable: {what}: {e} (cgroup v1 {ctrl} at {})",
                    mp.display()
                ))
            };
            let own = mp.join(own_path(false, ctrl));
            let parent = if own.is_dir() { own } else { mp.clone() };
            let dir = self
                .make(&parent, leaf)
                .map_err(|e| fail("the container's cgroup", e))?;
            for (c, file, value) in &settings {
                if *c != ctrl {
                    continue;
                }
                let r = write(&dir, file, value);
                // Without swap accounting there is no memsw file: the swap limit is what
                // the kernel cannot apply, said only when it was asked for.
                if let Err(e) = r {
                    if *file == "memory.memsw.limit_in_bytes" && limits.memory_swap.is_none() {
                        continue;
                    }
                    return Err(fail(file, e));
                }
            }
            if ctrl == "memory" {
                let fd = open_dir(&dir).map_err(|e| fail("the container's cgroup", e))?;
                self.oom_file = Some((fd, c"memory.oom_control"));
            }
            self.procs
                .push(open_procs(&dir).map_err(|e| fail("cgroup.procs", e))?);
        }
        Ok(())
    }

    /// `parent/leaf`, made and kept for removal.
    fn make(&mut self, parent: &Path, leaf: &str) -> std::io::Result<PathBuf> {
        let dir = parent.join(leaf);
        let pfd = open_dir(parent)?;
        std::fs::create_dir(&dir)?;
        let name =
            CString::new(leaf).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        self.dirs.push((pfd, name));
        Ok(dir)
    }

    /// Whether the OOM killer killed a process of the run.
    pub fn oom_killed(&self) -> bool {
        let Some((dir, name)) = &self.oom_file else {
            return false;
        };
        let mut text = String::new();
        if let Ok(fd) = crate::sys::openat(dir.as_fd(), name, libc::O_RDONLY, 0) {
            let _ = std::fs::File::from(fd).read_to_string(&mut text);
        }
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }

    /// Removes the run's cgroups (its processes are gone, or going: the pid namespace's end
    /// killed them).
    pub fn remove(&mut self) {
        self.procs.clear();
        self.oom_file = None;
        for (parent, name) in self.dirs.drain(..).rev() {
            for i in 0..200 {
                match crate::sys::unlinkat(parent.as_fd(), &name, libc::AT_REMOVEDIR) {
                    Err(e) if e.0 == libc::EBUSY && i < 199 => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits_parse_as_docker_reads_them() {
        assert_eq!(parse_size("-m", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("-m", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("-m", "512kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("-m", "1048576").unwrap(), 1 << 20);
        assert!(parse_size("-m", "lots").is_err());
        assert!(parse_size("-m", "-5m").is_err());
        let l = Limits::from_options(Some("64m"), None, Some("0.5"), Some(512), Some(20)).unwrap();
        let v1 = l.settings(false);
        assert!(v1.contains(&("memory", "memory.limit_in_bytes", (64u64 << 20).to_string())));
        assert!(v1.contains(&("cpu", "cpu.cfs_quota_us", "50000".into())));
        assert!(v1.contains(&("pids", "pids.max", "20".into())));
        let v2 = l.settings(true);
        assert!(v2.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert!(v2.contains(&("memory", "memory.swap.max", (64u64 << 20).to_string())));
        assert!(Limits::from_options(None, Some("1g"), None, None, None).is_err());
        assert!(Limits::from_options(Some("1g"), Some("512m"), None, None, None).is_err());
        assert!(Limits::from_options(Some("1m"), None, None, None, None).is_err());
        assert!(Limits::from_options(None, None, Some("x"), None, None).is_err());
        assert!(Limits::from_options(None, None, None, Some(1), None).is_err());
        assert!(Limits::from_options(None, None, None, None, Some(0)).is_err());
        assert!(
            Limits::from_options(None, None, None, None, None)
                .unwrap()
                .is_empty()
        );
    }
}
