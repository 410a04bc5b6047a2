//! Rootless work: a user namespace where the caller is root, with the caller's subordinate
//! id range mapped when it has one. The runner enters one for a run; the store does its
//! work in one (extracting layers whose files belong to other users, removing them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, UserError, bail};
use crate::sys;

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    sys::pipe().map_err(|e| UserError(format!("pipe: {e}")))
}

fn unshare_user() -> Result<()> {
    if let Err(e) = sys::unshare(libc::CLONE_NEWUSER) {
        let why = match e.0 {
            libc::ENOSPC => {
                " (user namespaces are disabled or used up: see /proc/sys/user/max_user_namespaces)"
            }
            libc::EPERM => {
                " (unprivileged user namespaces are disabled: see the sysctl kernel.unprivileged_userns_clone, or a security module's policy)"
            }
            _ => "",
        };
        bail!("cannot create a user namespace: {e}{why}");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdRange {
    start: u32,
    count: u32,
}

/// The first range `/etc/subuid` (or subgid) grants a user, by name or by number.
fn subid_range(text: &str, name: Option<&str>, id: u32) -> Option<IdRange> {
    let id = id.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != id && Some(who) != name {
            return None;
        }
        let r = IdRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| sys::is_executable(p))
}

/// Whether host uid `uid` will be mapped in a rootless run's user namespace: the caller's
/// own, or in its subordinate range (when the setuid helpers are there to map it).
pub fn maps_uid(uid: u32) -> bool {
    let (me, _) = sys::real_ids();
    if uid == me {
        return true;
    }
    let name = sys::user_name(me);
    let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let helpers = find_program("newuidmap").is_some();
    subid_range(&text, name.as_deref(), me)
        .is_some_and(|r| helpers && uid >= r.start && uid - r.start < r.count)
}

/// Enters a new user namespace where the caller is root. With a subordinate id range and the
/// setuid helpers, the whole range is mapped (ids 1.. inside); otherwise only the caller's own
/// id, which is said once on stderr (unless `quiet`). Returns whether the full range is
/// mapped. The process must be single-threaded.
pub fn enter_user_namespace(quiet: bool) -> Result<bool> {
    let (uid, gid) = sys::real_ids();
    let name = sys::user_name(uid);
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let ranges = (
        subid_range(&read("/etc/subuid"), name.as_deref(), uid),
        subid_range(&read("/etc/subgid"), name.as_deref(), gid),
    );
    let tools = (find_program("newuidmap"), find_program("newgidmap"));
    let helper = match (ranges, &tools) {
        ((Some(ur), Some(gr)), (Some(nu), Some(ng))) => {
            let me = std::process::id();
            let (rd, wr) = pipe()?;
            match sys::fork() {
                Err(e) => bail!("fork: {e}"),
                Ok(sys::Forked::Child) => {
                    drop(wr);
                    let mut go = [0u8; 1];
                    let ok = std::fs::File::from(rd).read(&mut go).ok() == Some(1)
                        && map_ids(nu, me, uid, ur)
                        && map_ids(ng, me, gid, gr);
                    sys::exit_now(if ok { 0 } else { 1 });
                }
                Ok(sys::Forked::Parent(pid)) => {
                    drop(rd);
                    Some((pid, wr))
                }
            }
        }
        _ => None,
    };
    let entered = unshare_user();
    let mut full = false;
    if let Some((pid, wr)) = helper {
        if entered.is_ok() {
            let _ = std::fs::File::from(wr.try_clone().expect("dup")).write_all(b"1");
        }
        drop(wr);
        full = sys::wait_status(pid) == 0 && entered.is_ok();
    }
    entered?;
    let map_empty = |f: &str| read(f).trim().is_empty();
    if map_empty("/proc/self/uid_map") {
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))
            .map_err(|e| UserError(format!("cannot write the uid map: {e}")))?;
    }
    if map_empty("/proc/self/gid_map") {
        let _ = std::fs::write("/proc/self/setgroups", "deny");
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
            .map_err(|e| UserError(format!("cannot write the gid map: {e}")))?;
    }
    if full {
        // Supplementary groups from outside are unmapped inside: drop them.
        let _ = sys::clear_groups();
    } else if !quiet {
        let who = name.unwrap_or_else(|| uid.to_string());
        let why = match (ranges, &tools) {
            ((None, _), _) | ((_, None), _) => {
                format!("'{who}' has no range in /etc/subuid and /etc/subgid")
            }
            (_, (None, _)) | (_, (_, None)) => {
                "newuidmap/newgidmap are missing (Debian: apt-get install uidmap)".to_string()
            }
            _ => "newuidmap/newgidmap failed".to_string(),
        };
        eprintln!(
            "unionfuse run: {why}; only your own ids are mapped (to root inside), so files cannot be given to other users"
        );
    }
    Ok(full)
}

/// Runs `f` as root of a user namespace with the caller's range mapped (in a child process;
/// its error comes back as the message), or at once when the caller is root already.
pub fn in_user_namespace(f: impl FnOnce() -> Result<()>) -> Result<()> {
    in_user_namespace_with(f)
}

/// [`in_user_namespace`] for work with a result, which comes back as JSON through a pipe.
pub fn in_user_namespace_with<T>(f: impl FnOnce() -> Result<T>) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if sys::geteuid() == 0 {
        return f();
    }
    let (rd, wr) = pipe()?;
    match sys::fork() {
        Err(e) => bail!("fork: {e}"),
        Ok(sys::Forked::Child) => {
            drop(rd);
            let r = enter_user_namespace(true).and_then(|_| f());
            let msg = match &r {
                Ok(v) => serde_json::to_vec(&Ok::<&T, &str>(v)),
                Err(e) => serde_json::to_vec(&Err::<&T, &str>(&e.0)),
            };
            let ok = match msg {
                Ok(m) => std::fs::File::from(wr).write_all(&m).is_ok(),
                Err(_) => false,
            };
            sys::exit_now(if ok { 0 } else { 1 });
        }
        Ok(sys::Forked::Parent(pid)) => {
            drop(wr);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(rd).read_to_end(&mut msg);
            let status = sys::wait_status(pid);
            match serde_json::from_slice::<std::result::Result<T, String>>(&msg) {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(UserError(e)),
                Err(_) => bail!("the user namespace's worker ended with status {status}"),
            }
        }
    }
}

/// `unionfuse unshare [COMMAND...]`: the command (default: the caller's shell) as root of a
/// user namespace with the id map a rootless run has; its exit status.
pub fn unshare_command(command: &[std::ffi::OsString]) -> Result<i32> {
    if sys::geteuid() != 0 {
        enter_user_namespace(false)?;
    }
    let mut argv: Vec<std::ffi::OsString> = command.to_vec();
    if argv.is_empty() {
        argv.push(std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()));
    }
    let st = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .map_err(|e| UserError(format!("'{}': {e}", argv[0].to_string_lossy())))?;
    Ok(sys::decode_status(
        std::os::unix::process::ExitStatusExt::into_raw(st),
    ))
}

fn map_ids(tool: &Path, pid: u32, own: u32, r: IdRange) -> bool {
    std::process::Command::new(tool)
        .args([pid, 0, own, 1, 1, r.start, r.count].map(|n| n.to_string()))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_ranges_match_by_name_or_id() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            subid_range(t, Some("alice"), 1000),
            Some(IdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            subid_range(t, Some("carol"), 1001),
            Some(IdRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(subid_range(t, Some("bob"), 1002), None);
    }
}
