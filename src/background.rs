//! Containers in the background: `run -d` / `start -d` (a monitor process of its own session
//! runs the container, its output kept in a bounded log), `logs`, `attach`, `exec`, `top`,
//! `stop -t`, `kill`. A running container is found through its record's lock (held by the
//! runner, whose pid it holds) and the init's pid the runner writes beside it.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::containers;
use crate::error::{Result, UserError, bail};
use crate::logs;
use crate::run::{self, RunRequest};
use crate::store::{Container, Store};
use crate::sys;

fn log_path(store: &Store, c: &Container) -> PathBuf {
    store.container_dir(&c.id).join("log")
}

fn stdin_fifo(store: &Store, c: &Container) -> PathBuf {
    store.container_dir(&c.id).join("stdin")
}

/// Starts `c` in the background and returns once it runs: the monitor (a new session, no
/// terminal) runs it as `start` would, its output going to the container's log; with
/// `interactive`, its standard input is a fifo `attach` writes into; with `remove_after`
/// (`run -d --rm`), the container is removed when it ends.
pub fn start_detached(
    store: &Store,
    c: &Container,
    req: RunRequest,
    interactive: bool,
    remove_after: bool,
) -> Result<()> {
    if store.is_running(c) {
        bail!("container '{}' is already running", c.name);
    }
    let fifo = stdin_fifo(store, c);
    let _ = std::fs::remove_file(&fifo);
    if interactive {
        let dir = sys::open_dir_path(&store.container_dir(&c.id))
            .map_err(|e| UserError(format!("{}: {e}", c.id)))?;
        sys::mknodat(dir.as_fd(), c"stdin", libc::S_IFIFO | 0o600, 0)
            .map_err(|e| UserError(format!("the container's stdin fifo: {e}")))?;
    }
    let stdin = if interactive {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
    } else {
        std::fs::File::open("/dev/null")
    }
    .map_err(|e| UserError(format!("the container's stdin: {e}")))?;
    let (out_rd, out_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    let (err_rd, err_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    // Closes when the monitor ends, whatever ends it.
    let (alive_rd, alive_wr) = sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))?;
    let log = log_path(store, c);
    match sys::fork().map_err(|e| UserError(format!("fork: {e}")))? {
        sys::Forked::Child => {
            drop(alive_rd);
            sys::setsid();
            // Twice forked: the monitor's parent is the system's init (or subreaper), which
            // reaps it, not this short-lived command.
            match sys::fork() {
                Ok(sys::Forked::Child) => {}
                _ => sys::exit_now(0),
            }
            // The logger: what the container writes, into the bounded log.
            match sys::fork() {
                Ok(sys::Forked::Child) => {
                    drop((out_wr, err_wr, alive_wr));
                    // Not the caller's streams: who waits for their end must not wait for
                    // the container's.
                    crate::daemon::redirect_stdio_to_null();
                    logs::keep(&log, out_rd, err_rd, None);
                    sys::exit_now(0);
                }
                Ok(sys::Forked::Parent(_)) => {}
                Err(_) => sys::exit_now(run::RUNNER_FAILED as i32),
            }
            drop((out_rd, err_rd));
            let redirect = sys::dup_onto(stdin.as_fd(), 0)
                .and_then(|()| sys::dup_onto(out_wr.as_fd(), 1))
                .and_then(|()| sys::dup_onto(err_wr.as_fd(), 2));
            if redirect.is_err() {
                sys::exit_now(run::RUNNER_FAILED as i32);
            }
            drop((stdin, out_wr, err_wr));
            // A terminal inside is recorded, for attach (raw mode only then).
            let tty = store.container_dir(&c.id).join("tty");
            let _ = if req.tty == Some(true) {
                std::fs::write(&tty, "")
            } else {
                std::fs::remove_file(&tty)
            };
            let r = if remove_after {
                containers::run_once(store, c, req)
            } else {
                containers::start_logged(store, c, req)
            };
            let code = match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("unionfuse: {e}");
                    run::RUNNER_FAILED as i32
                }
            };
            drop(alive_wr);
            sys::exit_now(code);
        }
        sys::Forked::Parent(first) => {
            drop((stdin, out_wr, out_rd, err_wr, err_rd, alive_wr));
            sys::wait_status(first);
            // Until the container runs, or the monitor gave up.
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if init_pid(store, c).is_some() {
                    return Ok(());
                }
                if sys::poll_ready(alive_rd.as_fd()) {
                    let records = logs::Follower::from_start(&log).next_records();
                    let last = records
                        .last()
                        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                        .unwrap_or_else(|| "it ended at once".into());
                    bail!("container '{}' did not start: {last}", c.name);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            bail!("container '{}' did not start within 30 s", c.name)
        }
    }
}

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

fn running(store: &Store, c: &Container) -> Result<i32> {
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

/// `logs [-f]`: what the container wrote, each stream to its own (the rotated part first);
/// with `follow`, what it writes next, until it ends.
pub fn logs(
    store: &Store,
    c: &Container,
    follow: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    let log = log_path(store, c);
    logs::write_records(&logs::Follower::rotated(&log), out, err);
    let mut f = logs::Follower::from_start(&log);
    loop {
        let running = store.is_running(c);
        logs::write_records(&f.next_records(), out, err);
        if !follow || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `attach`: the container's output from now on, and (when it was started with `-i`) what is
/// typed, until it ends; on a terminal, Ctrl-P Ctrl-Q detaches.
pub fn attach(store: &Store, c: &Container) -> Result<i32> {
    running(store, c)?;
    let log = log_path(store, c);
    let mut follow = logs::Follower::from_end(&log);
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(stdin_fifo(store, c))
        .ok();
    // Raw mode only when the container has a terminal of its own, which echoes and
    // edits lines itself; otherwise the caller's terminal does, and `read` gets lines.
    let has_tty = store.container_dir(&c.id).join("tty").exists();
    let raw = (fifo.is_some() && has_tty && sys::is_foreground_terminal(0))
        .then(|| sys::RawMode::enter(0).ok())
        .flatten();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut stdin_open = fifo.is_some();
    let mut last = 0u8;
    let mut buf = [0u8; 4096];
    while store.is_running(c) {
        logs::write_records(&follow.next_records(), &mut stdout, &mut stderr);
        let fds = if stdin_open {
            vec![(0, libc::POLLIN)]
        } else {
            vec![]
        };
        let ready = if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            false
        } else {
            sys::poll(&fds, 50).is_ok_and(|r| r[0] != 0)
        };
        if ready {
            match sys::read(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let data = &buf[..n];
                    // Ctrl-P Ctrl-Q: detach (raw mode only, as docker's default keys).
                    if raw.is_some()
                        && (data.windows(2).any(|w| w == [16, 17]) || (last == 16 && data[0] == 17))
                    {
                        drop(raw);
                        eprintln!("\r\nunionfuse: detached from '{}'", c.name);
                        return Ok(0);
                    }
                    last = data[n - 1];
                    if let Some(f) = &fifo
                        && (&*f).write_all(data).is_err()
                    {
                        stdin_open = false;
                    }
                }
            }
        }
    }
    logs::write_records(&follow.next_records(), &mut stdout, &mut stderr);
    drop(raw);
    let rec = store.find_container(&c.id)?;
    Ok(match rec.state {
        crate::store::State::Exited(n) => n,
        crate::store::State::Created | crate::store::State::Running => 0,
    })
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
