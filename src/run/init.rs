//! The init's side of a run: pid 1 of the container's pid namespace. It sets up the
//! container's root, starts the command, reaps orphans and passes signals on.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::rootfs::{self, RealHost};
use super::{
    Bind, CANNOT_EXEC, NOT_FOUND, Net, RUNNER_FAILED, RunRequest, Scratch, cstring, make_private,
    pipe, signal_set, unshare,
};
use crate::error::{Result, UserError, bail};
use crate::sys;

/// Forks the init. Returns its pid, and a pipe end that gets one byte once the init is in
/// its own mount namespace (or closes, if it never gets there).
pub(super) fn start(
    req: &RunRequest,
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
) -> Result<(i32, OwnedFd)> {
    signal_set(true).block();
    // The init watches the read end: it closes when the runner dies, whatever killed it.
    let (life_rd, life_wr) = pipe()?;
    let (ns_rd, ns_wr) = pipe()?;
    match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            drop(life_wr);
            drop(ns_rd);
            let code = match init(req, binds, scratch, full_ids, life_rd, ns_wr) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("unionfuse run: {e}");
                    RUNNER_FAILED as i32
                }
            };
            sys::exit_now(code);
        }
        Ok(sys::Forked::Parent(pid)) => {
            drop(life_rd);
            drop(ns_wr);
            // Kept open (leaked on purpose) until this process exits.
            std::mem::forget(life_wr);
            Ok((pid, ns_rd))
        }
    }
}

fn init(
    req: &RunRequest,
    binds: &[Bind],
    scratch: &Scratch,
    full_ids: bool,
    life: OwnedFd,
    ns_ready: OwnedFd,
) -> Result<i32> {
    sys::set_parent_death_signal(libc::SIGKILL);
    sys::set_process_name(c"unionfuse-init");
    if sys::poll_ready(life.as_fd()) {
        // The runner died before the death signal was armed.
        return Ok(RUNNER_FAILED as i32);
    }
    if let Some(h) = &req.hostname
        && let Err(e) = sys::sethostname(h)
    {
        bail!("cannot set the hostname: {e}");
    }
    if req.net == Net::None {
        sys::loopback_up()
            .map_err(|e| UserError(format!("cannot bring up the loopback interface: {e}")))?;
    }
    unshare(libc::CLONE_NEWNS, "the container's mount namespace")?;
    make_private()?;
    // The runner's namespace may now let go of what this one still needs (binds, /dev).
    let _ = std::fs::File::from(ns_ready).write_all(b"1");
    let root = sys::open_dir_path(&scratch.root())
        .map_err(|e| UserError(format!("the union's root: {e}")))?;
    let mut host = RealHost::new(root);
    rootfs::setup(&mut host, binds, full_ids)?;
    host.pivot()?;
    drop(host);
    let dir = req.chdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let dir = Path::new("/").join(dir);
    if let Err(e) = std::env::set_current_dir(&dir) {
        bail!("--chdir '{}': {e}", dir.display());
    }
    let ids = match &req.user {
        Some(u) => Some(resolve_user(u)?),
        None => None,
    };
    let mut env = environment(req)?;
    let home_given = req.setenv.iter().any(|(k, _)| k == "HOME");
    if let Some((_, _, Some(home))) = &ids
        && !home_given
    {
        env.retain(|e| !e.as_bytes().starts_with(b"HOME="));
        env.push(cstring(OsStr::new(&format!("HOME={home}")))?);
    }
    let argv = req
        .command
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>>>()?;
    let set = signal_set(true);
    let child = match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            if let Some((uid, gid, _)) = ids
                && let Err(e) = sys::become_user(uid, gid)
            {
                eprintln!("unionfuse run: cannot become {uid}:{gid}: {e}");
                sys::exit_now(RUNNER_FAILED as i32);
            }
            exec_command(&argv, &env)
        }
        Ok(sys::Forked::Parent(pid)) => pid,
    };
    drop(life);
    Ok(reap_until(child, &set))
}

/// The init's loop: reaps every child (orphans land here), passes signals on to the command,
/// and ends with the command's status. Its exit kills whatever else still runs inside.
fn reap_until(child: i32, set: &sys::SigSet) -> i32 {
    loop {
        while let Ok(Some((pid, st))) = sys::waitpid(-1, libc::WNOHANG) {
            if pid == child {
                return sys::decode_status(st);
            }
        }
        let (sig, forward) = set.wait_info();
        if forward && sig != libc::SIGCHLD {
            let _ = sys::kill(child, sig);
        }
    }
}

/// The command's environment: the caller's (a container of an image: only `TERM`), but
/// with the standard `PATH` and root's `HOME` (a rootless caller's `PATH` lacks the sbin
/// directories root needs inside), `HOSTNAME` when one is given; `--setenv` over all.
fn environment(req: &RunRequest) -> Result<Vec<CString>> {
    let own = ["PATH", "HOME", "HOSTNAME"];
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            if req.clean_env {
                k == "TERM"
            } else {
                !own.iter().any(|o| k == o)
            }
        })
        .collect();
    vars.push((
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ));
    vars.push(("HOME".into(), "/root".into()));
    if let Some(h) = &req.hostname {
        vars.push(("HOSTNAME".into(), h.into()));
    }
    for (k, v) in &req.setenv {
        vars.retain(|(x, _)| x != k);
        vars.push((k.clone(), v.clone()));
    }
    vars.iter()
        .map(|(k, v)| {
            let mut b = k.clone();
            b.push("=");
            b.push(v);
            cstring(&b)
        })
        .collect()
}

/// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`, by the container's /etc/passwd and
/// /etc/group (read after the pivot): the ids, and the user's home when it has an entry.
fn resolve_user(spec: &str) -> Result<(u32, u32, Option<String>)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let table = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let passwd = table("/etc/passwd");
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && (f[0] == user || f[2] == user)).then(|| f.clone())
    });
    let uid = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => f[2].parse().ok(),
        (None, Ok(n)) => Some(n),
        _ => None,
    }
    .ok_or_else(|| {
        UserError(format!(
            "--user '{spec}': no user '{user}' in the container"
        ))
    })?;
    let gid = match group {
        None => entry
            .as_ref()
            .and_then(|f| f[3].parse().ok())
            .unwrap_or(uid),
        Some(g) => {
            let groups = table("/etc/group");
            groups
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .or_else(|| g.parse().ok())
                .ok_or_else(|| {
                    UserError(format!("--user '{spec}': no group '{g}' in the container"))
                })?
        }
    };
    Ok((uid, gid, entry.map(|f| f[5].to_string())))
}

/// In the command's process: default signal handling, then exec, searching the container's
/// PATH. Never returns.
fn exec_command(argv: &[CString], env: &[CString]) -> ! {
    sys::SigSet::of(&[]).set_mask();
    // Dispositions a runner started with (SIGINT ignored by a script's background job)
    // would stay across exec: the command gets the defaults.
    sys::default_signals(&super::FORWARDED);
    let name = argv[0].as_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![argv[0].clone()]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/bin:/bin");
        path.split(|&c| c == b':')
            .map(|d| {
                let d = if d.is_empty() { b".".as_slice() } else { d };
                let mut p = d.to_vec();
                p.push(b'/');
                p.extend_from_slice(name);
                CString::new(p).unwrap_or_default()
            })
            .collect()
    };
    let mut err = libc::ENOENT;
    for c in &candidates {
        let e = sys::execve(c, argv, env).0;
        // As execvp: a later directory may still hold a runnable file.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            err = e;
        }
    }
    let shown = String::from_utf8_lossy(name);
    let (code, msg) = if err == libc::ENOENT {
        (NOT_FOUND, format!("'{shown}': command not found"))
    } else {
        (
            CANNOT_EXEC,
            format!("'{shown}': {}", std::io::Error::from_raw_os_error(err)),
        )
    };
    eprintln!("unionfuse run: {msg}");
    sys::exit_now(code)
}
