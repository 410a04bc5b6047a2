//! A running container, found through its record's lock (held by the runner, whose pid it
//! holds) and the init's pid the runner writes beside it: `stop -t`, `kill`, `exec`, `top`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Result, UserError, bail};
use crate::run;
use crate::store::{Container, Store};
use crate::sys;

/// The host pid of a running container's init, checked to be one.
pub fn init_pid(store: &Store, c: &Container) -> Option<i32> {
    if !store.is_running(c) {
        return None;
    }
    let p = store.container_dir(&c.id).join("init.pid");
    let pid: i32 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "unionfuse-init").then_some(pid)
}

fn runner_pid(store: &Store, c: &Container) -> Option<i32> {
    std::fs::read_to_string(store.container_dir(&c.id).join("lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn running(store: &Store, c: &Container) -> Result<i32> {
    init_pid(store, c).ok_or_else(|| UserError(format!("container '{}' is not running", c.name)))
}

/// `stop [-t N]`: SIGTERM to the command; after `timeout`, SIGKILL to the whole container.
pub fn stop(store: &Store, c: &Container, timeout: Duration) -> Result<()> {
    if !store.is_running(c) {
        bail!("container '{}' is not running", c.name);
    }
    let runner = runner_pid(store, c)
        .ok_or_else(|| UserError(format!("container '{}': no runner pid", c.name)))?;
    // The runner passes it on to the command.
    let _ = sys::kill(runner, libc::SIGTERM);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !store.is_running(c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(store, c, libc::SIGKILL)
}

/// `kill [-s SIG]`: SIGKILL ends the container's init, and so everything in it (its runner
/// then unmounts and cleans up); another signal goes to the command.
pub fn kill(store: &Store, c: &Container, sig: i32) -> Result<()> {
    let init = running(store, c)?;
    let to = if sig == libc::SIGKILL {
        init
    } else {
        runner_pid(store, c).unwrap_or(init)
    };
    sys::kill(to, sig).map_err(|e| UserError(format!("container '{}': {e}", c.name)))?;
    if sig == libc::SIGKILL {
        let end = Instant::now() + Duration::from_secs(10);
        while store.is_running(c) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// A signal by name or number: `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>()
        && (1..=64).contains(&n)
    {
        return Ok(n);
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => bail!("unknown signal '{s}' (TERM, KILL, HUP, INT, USR1… or a number)"),
    };
    Ok(n)
}

/// What `exec` takes beyond the command.
pub struct ExecArgs {
    pub command: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub user: Option<String>,
    pub workdir: Option<PathBuf>,
    pub tty: Option<bool>,
}

/// `exec`: a command in the running container's namespaces and root, with its environment,
/// user and profile.
pub fn exec(store: &Store, c: &Container, a: ExecArgs) -> Result<i32> {
    let init = running(store, c)?;
    let mut env: Vec<(OsString, OsString)> = c
        .env
        .iter()
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            Some((OsString::from(k), OsString::from(v)))
        })
        .collect();
    if let Some(h) = &c.hostname {
        env.push(("HOSTNAME".into(), h.into()));
    }
    if let Ok(t) = std::env::var("TERM") {
        env.push(("TERM".into(), t.into()));
    }
    for (k, v) in a.env {
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    }
    run::exec::exec(run::exec::ExecRequest {
        init,
        command: a.command,
        env,
        user: a.user.or(c.user.clone()),
        chdir: a.workdir.or(c.workdir.as_ref().map(PathBuf::from)),
        tty: a.tty,
        profile: c.host.profile()?,
    })
}

/// `top`: the container's processes, with their pid on the host and inside.
pub fn top(store: &Store, c: &Container) -> Result<String> {
    let init = running(store, c)?;
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let theirs = ns(&init.to_string());
    let mut rows = Vec::new();
    for e in std::fs::read_dir("/proc").map_err(|e| UserError(format!("/proc: {e}")))? {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if ns(&name) != theirs {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let inner = field("NSpid:").last().copied().unwrap_or("?").to_string();
        let uid = field("Uid:").first().copied().unwrap_or("?").to_string();
        // The init's own name (its command line is the same).
        let cmd = if pid == init {
            b"unionfuse-init".to_vec()
        } else {
            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
        };
        let cmd = String::from_utf8_lossy(&cmd)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        rows.push((pid, inner, uid, cmd));
    }
    rows.sort();
    let mut out = format!("{:<8} {:<8} {:<8} {}\n", "PID", "INSIDE", "UID", "COMMAND");
    for (pid, inner, uid, cmd) in rows {
        out.push_str(&format!("{pid:<8} {inner:<8} {uid:<8} {cmd}\n"));
    }
    Ok(out)
}
