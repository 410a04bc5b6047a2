//! Containers in the background and their limits (#20): `run -d` outlives its caller's
//! session, `logs`, `exec` in the container's namespaces, `top`, `stop -t` of a command that
//! ignores SIGTERM, `kill`, `rm -f` leaving nothing; `--memory` (the OOM killer, status 137 and
//! `OOMKilled` in inspect), `--pids-limit`, `--cpus` measured.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::runenv::{RunCtx, Who};
use common::*;

/// A store with the busybox root filesystem imported as `base`.
type Store = store_cli::BaseStore;

impl Store {
    /// Nothing of the store's containers is left: no mount, no process, no cgroup.
    fn assert_nothing_left(&self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&root)),
            "a mount is left: {mounts}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || processes_of(&root).is_empty()),
            "processes left: {:?}",
            processes_of(&root)
        );
        // A container's cgroup is named after its hostname (its id's start); plain runs'
        // ("unionfuse-run-") belong to the other tests running beside this one.
        let leftover: Vec<PathBuf> = cgroups_named("unionfuse-")
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("unionfuse-run-"))
            .collect();
        assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for l in self.ok(&["ps"]).lines().skip(1) {
            if let Some(name) = l.split_whitespace().nth(1) {
                let _ = self.uf(&["rm", "-f", name]);
            }
        }
    }
}

/// Processes whose command line mentions `s`.
fn processes_of(s: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(s).then_some(c)
        })
        .collect()
}

/// Cgroup directories (any hierarchy, up to three levels deep) whose name starts with `p`.
fn cgroups_named(p: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, p: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(p) {
                out.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), p, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), p, 4, &mut out);
    out
}

#[test]
fn a_detached_container_outlives_its_caller_and_is_reachable() {
    let Some(s) = Store::new() else { return };
    // The caller: a shell in a session of its own that starts the container and exits.
    let script = format!(
        "exec {} run -d --name bg base sh -c 'echo early; echo data > /made; sleep 1; echo late; exec sleep 600'",
        bin().display()
    );
    let mut c = Command::new("setsid");
    c.args(["sh", "-c", &script])
        .env("UNIONFUSE_ROOT", s.store())
        .env("TMPDIR", s.dir.path())
        .stdin(Stdio::null());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the id: {id}");
    assert!(s.status("bg").starts_with("up"), "{}", s.status("bg"));
    // Written after the caller was gone.
    assert!(
        wait_until(Duration::from_secs(10), || s
            .ok(&["logs", "bg"])
            .contains("late")),
        "logs: {}",
        s.ok(&["logs", "bg"])
    );
    assert_eq!(s.ok(&["logs", "bg"]), "early\nlate\n");
    // exec: the container's files, hostname and pid namespace, and its profile.
    let out = s.ok(&[
        "exec",
        "bg",
        "sh",
        "-c",
        "cat /made; hostname; ls /proc | grep -c '^[0-9]'; grep Seccomp: /proc/self/status",
    ]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "data", "{out}");
    assert_eq!(l[1], &id[..12], "{out}");
    // init, sleep, the exec'd sh, ls, grep: only the container's own processes.
    let n: u32 = l[2].parse().unwrap();
    assert!((3..=6).contains(&n), "{out}");
    assert!(l[3].ends_with('2'), "{out}");
    assert_eq!(
        s.uf(&["exec", "bg", "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let top = s.ok(&["top", "bg"]);
    assert!(
        top.contains("unionfuse-init") && top.contains("sleep 600"),
        "{top}"
    );
    // logs -f follows until the container ends.
    let mut follow = s
        .cmd(&["logs", "-f", "bg"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(follow.try_wait().unwrap(), None, "logs -f ended early");
    s.ok(&["kill", "bg"]);
    let st = follow.wait().unwrap();
    assert!(st.success());
    assert_eq!(s.status("bg"), "exited (137)");
    // A second start runs in the background again, on the same writable layer.
    s.ok(&["start", "bg"]);
    assert!(s.status("bg").starts_with("up"));
    assert_eq!(s.ok(&["exec", "bg", "cat", "/made"]), "data\n");
    s.ok(&["rm", "-f", "bg"]);
    assert_eq!(s.status("bg"), "gone");
    s.assert_nothing_left();
}

#[test]
fn stop_ends_a_command_that_ignores_sigterm_within_its_timeout() {
    let Some(s) = Store::new() else { return };
    s.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "base",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    assert!(wait_until(Duration::from_secs(10), || s
        .ok(&["logs", "stubborn"])
        .contains("ready")));
    let t0 = Instant::now();
    s.ok(&["stop", "-t", "2", "stubborn"]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2), "SIGTERM ended it: {took:?}");
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert_eq!(s.status("stubborn"), "exited (137)");
    // One that heeds SIGTERM ends with it, at once.
    s.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "base",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    assert!(wait_until(Duration::from_secs(10), || s
        .ok(&["logs", "polite"])
        .contains("ready")));
    let t0 = Instant::now();
    s.ok(&["stop", "polite"]);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(s.status("polite"), "exited (143)");
    // Bad input.
    for (args, expect) in [
        (vec!["stop", "polite"], "is not running"),
        (vec!["exec", "polite", "true"], "is not running"),
        (vec!["kill", "-s", "NOPE", "polite"], "unknown signal"),
        (vec!["logs", "nosuch"], "no container"),
        (
            vec!["run", "-d", "--lower", "/", "--", "true"],
            "-d starts a container",
        ),
    ] {
        let o = s.uf(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    s.ok(&["rm", "stubborn", "polite"]);
    s.assert_nothing_left();
}

#[test]
fn memory_past_its_limit_is_killed_and_said() {
    let Some(s) = Store::new() else { return };
    // tail keeps the whole of a line, and /dev/zero never ends one.
    let o = s.uf(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "64m",
        "base",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("out of memory"), "{err}");
    assert_eq!(s.status("hog"), "exited (137)");
    let inspect = s.ok(&["inspect", "hog"]);
    assert!(inspect.contains("\"reason\": \"OOMKilled\""), "{inspect}");
    assert!(inspect.contains("\"memory\": \"64m\""), "{inspect}");
    // Under the limit, the same container runs to its end.
    let o = s.uf(&[
        "run",
        "--rm",
        "--memory",
        "64m",
        "base",
        "sh",
        "-c",
        "head -c 10000000 /dev/zero | wc -c",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "10000000");
    s.assert_nothing_left();
}

fn limits_hold(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    // A fork loop stops at the limit.
    let o = ctx.sh(
        &["--pids-limit", "20"],
        // The inner shell dies at its first failed fork; the count needs none.
        "sh -c 'i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done' 2>/dev/null; set -- /proc/[0-9]*; echo $#",
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if who != Who::Root {
        // Rootless on a machine without a delegated cgroup tree: a notice, and no limits.
        assert!(stderr.contains("limits are unavailable"), "{stderr}");
        return;
    }
    let n: u32 = stdout.trim().parse().unwrap_or(999);
    assert!(n <= 21, "{n} processes under --pids-limit 20: {stderr}");
    // Half a CPU: a busy loop gets about half of the wall time (tolerance for a busy machine).
    let o = ctx.sh(
        &["--cpus", "0.5"],
        "sh -c 'while :; do :; done' & p=$!; sleep 3; cat /proc/$p/stat; kill $p",
    );
    let stat = String::from_utf8_lossy(&o.stdout);
    let f: Vec<&str> = stat.split_whitespace().collect();
    let ticks: u64 = f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap();
    let share = ticks as f64 / 100.0 / 3.0;
    assert!(
        (0.3..=0.65).contains(&share),
        "--cpus 0.5 gave {share:.2} of a CPU"
    );
    // Bad values are refused before anything starts.
    for (opt, val, expect) in [
        ("--memory", "lots", "expected a size"),
        ("--cpus", "-1", "expected a number of CPUs"),
        ("--pids-limit", "0", "expected a positive number"),
        ("--memory-swap", "1g", "needs --memory"),
    ] {
        let o = ctx.sh(&[opt, val], "echo started");
        assert_eq!(o.status.code(), Some(125), "{opt} {val}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expect),
            "{opt} {val}"
        );
        assert!(o.stdout.is_empty());
    }
    assert!(cgroups_named("unionfuse-run-").is_empty());
}

#[test]
fn limits_hold_as_root() {
    limits_hold(Who::Root);
}

#[test]
fn limits_rootless_say_when_unavailable() {
    limits_hold(Who::SubIds);
}

/// `exec` on a terminal: a terminal of the container's own, as for an interactive run.
#[test]
fn exec_on_a_terminal_gets_one_inside() {
    let Some(s) = Store::new() else { return };
    s.ok(&["run", "-d", "--name", "t", "base", "sleep", "600"]);
    let mut pty = common::pty::Pty::new(30, 90);
    let mut c = s.cmd(&["exec", "-it", "t", "/bin/sh"]);
    let mut child = pty.spawn(&mut c);
    pty.send("echo M$((1+1))\n", "M2");
    let out = pty.send("tty; stty size; echo T$((2+2))\n", "T4");
    assert!(out.contains("/dev/pts/") && out.contains("30 90"), "{out}");
    pty.send("exit 4\n", "exit 4");
    assert_eq!(child.wait().unwrap().code(), Some(4));
    assert!(pty.canonical());
    s.ok(&["rm", "-f", "t"]);
    s.assert_nothing_left();
}

/// `attach` to a container started with `-i`: what is typed reaches it, what it writes
/// comes back, and attach ends with the container.
#[test]
fn attach_passes_input_and_output() {
    use std::io::{Read, Write};
    let Some(s) = Store::new() else { return };
    s.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "echoer",
        "base",
        "sh",
        "-c",
        "while read l; do echo \"got $l\"; [ \"$l\" = bye ] && exit 5; done",
    ]);
    let mut a = s
        .cmd(&["attach", "echoer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = a.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    input.write_all(b"hello\nbye\n").unwrap();
    let mut out = String::new();
    a.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let st = a.wait().unwrap();
    assert_eq!(out, "got hello\ngot bye\n");
    assert_eq!(
        st.code(),
        Some(5),
        "attach ends with the container's status"
    );
    assert_eq!(s.status("echoer"), "exited (5)");
    s.ok(&["rm", "echoer"]);
    s.assert_nothing_left();
}
