//! `unionfuse run`: a busybox root filesystem as the lower layer, run as root and as two
//! unprivileged users (with and without a subordinate id range). Every run must leave nothing
//! behind: `RunCtx::sh` checks for left temporary directories, mounts and processes.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::runenv::{Background, RunCtx, Who, processes_mentioning};
use common::wait_until;

macro_rules! for_each_identity {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Who;
            #[test]
            fn as_root() {
                super::$name(Who::Root)
            }
            #[test]
            fn rootless_with_subids() {
                super::$name(Who::SubIds)
            }
            #[test]
            fn rootless_single_id() {
                super::$name(Who::SingleId)
            }
        }
    )*};
}

for_each_identity!(
    writes_land_in_the_upper_and_persist,
    temporary_upper_is_gone_after_the_run,
    isolated_from_the_host,
    binds_env_chdir_dev_sys_tmp,
    network_none_has_only_loopback,
    exit_statuses,
    signals_are_forwarded,
    orphans_are_reaped,
    interactive_shell_on_a_terminal,
    kill_9_of_the_runner_leaves_nothing,
    owners_and_renames_like_a_package_manager,
    bad_input_is_refused_cleanly,
);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    common::store_cli::assert_success(o)
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

const NONE: &[&str] = &[];

fn writes_land_in_the_upper_and_persist(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let up = c.mkdir("up");
    let up2 = c.mkdir("up2");
    let u = up.to_str().unwrap();
    let out = ok(&c.sh(&["--upper", u], "echo hi > /f; cat /etc/os-release"));
    assert!(out.contains("PRETTY_NAME=\"unionfuse test root\""), "{out}");
    assert_eq!(std::fs::read_to_string(up.join("f")).unwrap(), "hi\n");
    assert!(!c.rootfs.join("f").exists(), "the lower layer was written");
    let md = std::fs::metadata(up.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (c.host_id(0), c.host_id(0)));

    // A stopped and restarted container keeps its state...
    let out = ok(&c.sh(&["--upper", u], "cat /f; echo more >> /f"));
    assert_eq!(out, "hi\n");
    assert_eq!(std::fs::read_to_string(up.join("f")).unwrap(), "hi\nmore\n");
    // ...and another upper over the same lowers does not see it.
    let out = ok(&c.sh(
        &["--upper", up2.to_str().unwrap()],
        "test -e /f && echo seen || echo absent; echo other > /g",
    ));
    assert_eq!(out, "absent\n");
    assert!(!up.join("g").exists() && up2.join("g").exists());
}

fn temporary_upper_is_gone_after_the_run(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    // RunCtx::sh also checks that TMPDIR (where the temporary upper lives) is empty after.
    let out = ok(&c.sh(NONE, "echo hi > /f; mkdir -p /a/b; cat /f"));
    assert_eq!(out, "hi\n");
    let out = ok(&c.sh(NONE, "test -e /f && echo seen || echo gone"));
    assert_eq!(out, "gone\n");
    assert!(!c.rootfs.join("f").exists());
}

fn hostname() -> String {
    let mut b = [0u8; 256];
    unsafe { libc::gethostname(b.as_mut_ptr().cast(), b.len()) };
    let n = b.iter().position(|&c| c == 0).unwrap();
    text(&b[..n])
}

fn isolated_from_the_host(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let marker = c.dir.path().join("host-marker");
    std::fs::write(&marker, "x").unwrap();
    let m = marker.display();
    let before = hostname();
    let script = format!(
        r#"
echo root=$(awk '$2=="/"{{print $3}}' /proc/self/mounts)
echo ppid=$PPID pid=$$
echo init=$(cat /proc/1/comm)
echo host=$(hostname)
test -e {m} && echo marker-visible
test -e /proc/1/root{m} && echo marker-visible-through-proc
cd /.. && echo dotdot=$(pwd)
ls / > /tmp/root; ls /.. > /tmp/dotdot; ls /proc/1/root/ > /tmp/proc1
cmp -s /tmp/root /tmp/dotdot && echo dotdot-is-root
cmp -s /tmp/root /tmp/proc1 && echo proc1-root-is-root
echo mounts=$(awk '{{print $2}}' /proc/self/mounts | tr '\n' ' ')
echo procs=$(ls /proc | grep -c '^[0-9]')
"#
    );
    let out = ok(&c.sh(&["--hostname", "box-test"], &script));
    let l = lines(&out);
    for want in [
        "root=fuse.unionfuse",
        "ppid=1 pid=2",
        "init=unionfuse-init",
        "host=box-test",
        "dotdot=/",
        "dotdot-is-root",
        "proc1-root-is-root",
    ] {
        assert!(l.contains(&want), "missing {want:?} in {out}");
    }
    assert!(
        !out.contains("marker-visible"),
        "the host is reachable: {out}"
    );
    let mounts = l.iter().find_map(|x| x.strip_prefix("mounts=")).unwrap();
    for mp in mounts.split_whitespace() {
        assert!(
            mp == "/"
                || ["/proc", "/sys", "/dev", "/tmp"]
                    .iter()
                    .any(|p| mp == *p || mp.starts_with(&format!("{p}/"))),
            "a host mount is visible inside: {mp} (all: {mounts})"
        );
    }
    let procs: usize = l
        .iter()
        .find_map(|x| x.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        procs <= 5,
        "{procs} processes visible: not a pid namespace of its own"
    );
    assert_eq!(hostname(), before, "the host's hostname changed");
}

fn binds_env_chdir_dev_sys_tmp(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let shared = c.mkdir("shared");
    std::fs::write(shared.join("in"), "from-host\n").unwrap();
    let ro = c.mkdir("ro");
    std::fs::write(ro.join("r"), "read-only\n").unwrap();
    c.give(&shared);
    c.give(&ro);
    let up = c.mkdir("up");
    let script = r#"
echo A=$A
pwd
cat /mnt/shared/in; echo from-container > /mnt/shared/out
cat /opt/ro/r; echo x 2>/dev/null > /opt/ro/w && echo ro-writable
echo x > /dev/null && echo null-ok
echo zero=$(head -c 4 /dev/zero | od -An -tx1 | tr -d ' ')
echo x 2>/dev/null > /dev/full || echo full-ok
echo rand=$(head -c 16 /dev/urandom | wc -c)
echo dev=$(ls /dev | tr '\n' ' ')
touch /sys/x 2>/dev/null || echo sys-ro
echo t > /tmp/t && echo tmp=$(stat -c %a /tmp) $(awk '$2=="/tmp"{print $3}' /proc/self/mounts)
echo shm=$(awk '$2=="/dev/shm"{print $3}' /proc/self/mounts) pts=$(awk '$2=="/dev/pts"{print $3}' /proc/self/mounts)
"#;
    let shared_arg = format!("{}:/mnt/shared", shared.display());
    let ro_arg = format!("{}:/opt/ro", ro.display());
    let out = ok(&c.sh(
        &[
            "--upper",
            up.to_str().unwrap(),
            "--setenv",
            "A=b=c",
            "--chdir",
            "/etc",
            "--bind",
            &shared_arg,
            "--ro-bind",
            &ro_arg,
        ],
        script,
    ));
    let l = lines(&out);
    for want in [
        "A=b=c",
        "/etc",
        "from-host",
        "read-only",
        "null-ok",
        "zero=00000000",
        "full-ok",
        "rand=16",
        "dev=fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "sys-ro",
        "tmp=1777 tmpfs",
        "shm=tmpfs pts=devpts",
    ] {
        assert!(l.contains(&want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("ro-writable"), "a --ro-bind was writable");
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "from-container\n"
    );
    assert_eq!(
        std::fs::metadata(shared.join("out")).unwrap().uid(),
        c.host_id(0)
    );
    assert!(!ro.join("w").exists());
    // Bind destinations that the image lacks are made in the upper, not the layer.
    assert!(up.join("mnt/shared").is_dir() && up.join("opt/ro").is_dir());
    assert!(!c.rootfs.join("mnt").exists());
}

fn interfaces(dev: &str) -> Vec<String> {
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

fn network_none_has_only_loopback(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let script = "cat /proc/net/dev; echo flags=$(cat /sys/class/net/lo/flags)";
    let out = ok(&c.sh(&["--net", "none"], script));
    let ifs: Vec<_> = interfaces(&out)
        .into_iter()
        .filter(|i| !i.starts_with("flags="))
        .collect();
    assert_eq!(ifs, ["lo"], "{out}");
    let flags = out.lines().find_map(|l| l.strip_prefix("flags=")).unwrap();
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is not up: {flags:#x}");
    // The default keeps the caller's network.
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let out = ok(&c.sh(NONE, "cat /proc/net/dev"));
    let mut inside = interfaces(&out);
    let mut host = host;
    inside.sort();
    host.sort();
    assert_eq!(inside, host);
}

fn exit_statuses(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    assert_eq!(c.sh(NONE, "exit 42").status.code(), Some(42));
    assert_eq!(c.sh(NONE, "kill -9 $$").status.code(), Some(128 + 9));
    assert_eq!(c.sh(NONE, "kill -TERM $$").status.code(), Some(128 + 15));
    let run = |cmd: &[&str]| {
        let mut a = vec!["run", "--lower", c.rootfs.to_str().unwrap(), "--"];
        a.extend_from_slice(cmd);
        let o = c.command(&a).stdin(Stdio::null()).output().unwrap();
        c.assert_clean();
        o
    };
    let o = run(&["no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("'no-such-command': command not found"));
    let o = run(&["/etc/os-release"]);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
    let o = run(&["true"]);
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["false"]);
    assert_eq!(o.status.code(), Some(1));
}

fn start(c: &RunCtx, cmd: &[&str]) -> Background {
    let mut a = vec!["run", "--lower", c.rootfs.to_str().unwrap(), "--"];
    a.extend_from_slice(cmd);
    Background::start(c.command(&a))
}

fn signals_are_forwarded(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let script = r#"
for s in INT HUP QUIT USR1 USR2 WINCH; do trap "echo got $s" $s; done
trap 'echo got TERM; exit 7' TERM
echo ready
while :; do sleep 0.05; done
"#;
    let mut b = start(&c, &["/bin/sh", "-c", script]);
    let t = Duration::from_secs(10);
    b.expect_line("ready", t);
    for (sig, name) in [
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGWINCH, "WINCH"),
    ] {
        b.signal(sig);
        b.expect_line(&format!("got {name}"), t);
    }
    b.signal(libc::SIGTERM);
    b.expect_line("got TERM", t);
    assert_eq!(b.wait(t).code(), Some(7));
    drop(b);
    c.assert_clean();

    // Without a handler the command dies of the signal: 128+N.
    let mut b = start(&c, &["/bin/sh", "-c", "echo ready; exec sleep 1000"]);
    b.expect_line("ready", t);
    std::thread::sleep(Duration::from_millis(100));
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait(t).code(), Some(128 + 15));
    drop(b);
    c.assert_clean();
}

fn orphans_are_reaped(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    // The inner shell exits at once; its background sleeps are left to pid 1.
    let script = r#"
sh -c 'sleep 0.1 & sleep 0.1 & sleep 0.1 &'
sleep 1
for f in /proc/[0-9]*/stat; do read -r line < $f && echo "$line"; done
"#;
    let out = ok(&c.sh(NONE, script));
    let zombies: Vec<_> = out
        .lines()
        .filter(|l| {
            l.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .collect();
    assert!(zombies.is_empty(), "zombies inside: {zombies:?}");
    assert!(out.lines().count() >= 2, "{out}");
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn openpty() -> Pty {
    let (mut m, mut s) = (0, 0);
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(m),
            slave: OwnedFd::from_raw_fd(s),
        }
    }
}

/// Reads the terminal until `want` shows up in a line of its own.
fn read_until(master: &mut std::fs::File, seen: &mut String, want: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        if seen.split(['\r', '\n']).any(|l| l.trim() == want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{want:?} not seen on the terminal; got {seen:?}"
        );
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
            let mut buf = [0u8; 4096];
            match master.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&text(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn interactive_shell_on_a_terminal(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let pty = openpty();
    let mut cmd = c.command(&[
        "run",
        "--lower",
        c.rootfs.to_str().unwrap(),
        "--setenv",
        "PS1=box$ ",
        "--",
        "/bin/sh",
        "-i",
    ]);
    let slave = pty.slave.as_raw_fd();
    for fd in 0..3 {
        let f = pty.slave.try_clone().unwrap();
        match fd {
            0 => cmd.stdin(Stdio::from(f)),
            1 => cmd.stdout(Stdio::from(f)),
            _ => cmd.stderr(Stdio::from(f)),
        };
    }
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own with the terminal as its controlling terminal.
            libc::setsid();
            libc::ioctl(slave, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut b = BackgroundChild(child);
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();
    let t = Duration::from_secs(10);
    master.write_all(b"echo $((6*7))\n").unwrap();
    read_until(&mut master, &mut seen, "42", t);
    master
        .write_all(b"test -t 0 && test -t 1 && echo IS-A-TTY\n")
        .unwrap();
    read_until(&mut master, &mut seen, "IS-A-TTY", t);
    master.write_all(b"exit 5\n").unwrap();
    let end = Instant::now() + t;
    let status = loop {
        // Keep draining the terminal so the shell never blocks on output.
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut pfd, 1, 20) } > 0 {
            let mut buf = [0u8; 4096];
            let _ = master.read(&mut buf);
        }
        if let Some(st) = b.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < end,
            "the shell did not exit; terminal: {seen:?}"
        );
    };
    assert_eq!(status.code(), Some(5), "terminal: {seen:?}");
    drop(b);
    c.assert_clean();
}

struct BackgroundChild(std::process::Child);

impl Drop for BackgroundChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The processes below `pid` (its children, theirs, and so on).
fn descendants(pid: i32) -> Vec<i32> {
    let parent_of = |p: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        s.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    all.into_iter()
        .filter(|&p| {
            let mut q = p;
            for _ in 0..64 {
                match parent_of(q) {
                    Some(pp) if pp == pid => return true,
                    Some(pp) if pp > 1 => q = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Live processes in the pid namespace `ns` (a `pid:[N]` link).
fn in_pid_ns(ns: &std::path::Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_deref()
            == Some(ns)
        {
            out.push((pid, comm(pid)));
        }
    }
    out
}

fn kill_9_of_the_runner_leaves_nothing(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let up = c.mkdir("up");
    let token = c.dir.path().to_string_lossy().into_owned();
    for upper in [None, Some(&up)] {
        let mut a = vec!["run", "--lower", c.rootfs.to_str().unwrap()];
        if let Some(u) = upper {
            a.extend(["--upper", u.to_str().unwrap()]);
        }
        a.extend([
            "--",
            "/bin/sh",
            "-c",
            "echo data > /f; sleep 1000 & echo ready; wait",
        ]);
        let mut b = Background::start(c.command(&a));
        b.expect_line("ready", Duration::from_secs(10));
        // The runner, its daemon and the init carry the token; the shell and the sleep
        // are found by their pid namespace, the init's.
        let before = processes_mentioning(&token);
        assert!(
            before.len() >= 3,
            "expected the run's processes, found {before:?}"
        );
        // The init shows none of the runner's arguments: it is found as the runner's
        // descendant.
        let init = descendants(b.child.id() as i32)
            .into_iter()
            .find(|p| comm(*p) == "unionfuse-init")
            .expect("no init among the run's processes");
        let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
        assert!(in_pid_ns(&ns).len() >= 3, "{:?}", in_pid_ns(&ns));
        b.child.kill().unwrap(); // SIGKILL
        b.child.wait().unwrap();
        let gone = wait_until(Duration::from_secs(10), || {
            processes_mentioning(&token).is_empty()
                && in_pid_ns(&ns).is_empty()
                && std::fs::read_dir(&c.tmp).unwrap().next().is_none()
        });
        assert!(
            gone,
            "after kill -9 of the runner: processes {:?}, TMPDIR {:?}",
            processes_mentioning(&token),
            std::fs::read_dir(&c.tmp)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        c.assert_clean();
    }
    // What was written with a kept upper survived the kill.
    assert_eq!(std::fs::read_to_string(up.join("f")).unwrap(), "data\n");
}

fn owners_and_renames_like_a_package_manager(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let up = c.mkdir("up");
    let u = up.to_str().unwrap();
    let show = "stat -c '%u:%g %n' /var/www /var/www/html/index.html /home/user /etc/app.conf /usr/lib/pkg/files";
    let script = format!(
        r#"
mkdir -p /var/www/html /home/user /usr/lib/pkg.new
echo page > /var/www/html/index.html
echo files > /usr/lib/pkg.new/files
echo conf > /etc/app.conf
chown -R 33:33 /var/www || exit 10
chown 1000:1000 /home/user || exit 11
chown 1000:33 /etc/app.conf || exit 12
chown -R 1000:1000 /usr/lib/pkg.new || exit 13
mv /usr/lib/pkg.new /usr/lib/pkg || exit 14
mv /home /home.old && mv /home.old /home || exit 15
{show}
"#
    );
    let o = c.sh(&["--upper", u], &script);
    if who == Who::SingleId {
        // Only the caller's id exists inside: chown to another fails, and the run said why,
        // once.
        assert_eq!(o.status.code(), Some(10), "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert_eq!(
            err.matches("only your own ids are mapped").count(),
            1,
            "{err}"
        );
        return;
    }
    let out = ok(&o);
    let want = "33:33 /var/www\n33:33 /var/www/html/index.html\n1000:1000 /home/user\n1000:33 /etc/app.conf\n1000:1000 /usr/lib/pkg/files\n";
    assert_eq!(out, want);
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(up.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("var/www"), (c.host_id(33), c.host_id(33)));
    assert_eq!(owner("home/user"), (c.host_id(1000), c.host_id(1000)));
    assert_eq!(owner("etc/app.conf"), (c.host_id(1000), c.host_id(33)));
    assert_eq!(
        owner("usr/lib/pkg/files"),
        (c.host_id(1000), c.host_id(1000))
    );
    // The next run over the same upper sees the same owners.
    assert_eq!(ok(&c.sh(&["--upper", u], show)), want);
    assert!(!text(&o.stderr).contains("only your own ids"));
}

fn bad_input_is_refused_cleanly(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let root = c.rootfs.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--lower", root], "COMMAND"),
        (&["run", "--lower", root, "--"], "COMMAND"),
        (
            &["run", "--lower", "/no/such/layer", "--", "true"],
            "lower layer '/no/such/layer'",
        ),
        (
            &[
                "run",
                "--lower",
                root,
                "--upper",
                "/etc/passwd/upper",
                "--",
                "true",
            ],
            "--upper '/etc/passwd/upper'",
        ),
        (
            &[
                "run",
                "--lower",
                root,
                "--bind",
                "/no/such/src:/x",
                "--",
                "true",
            ],
            "bind source '/no/such/src'",
        ),
        (
            &[
                "run",
                "--lower",
                root,
                "--bind",
                "/etc:relative",
                "--",
                "true",
            ],
            "absolute",
        ),
        (
            &[
                "run",
                "--lower",
                root,
                "--chdir",
                "/no/such/dir",
                "--",
                "true",
            ],
            "--chdir '/no/such/dir'",
        ),
        (
            &["run", "--lower", root, "--net", "bridge", "--", "true"],
            "--net 'bridge'",
        ),
    ];
    for (args, msg) in cases {
        let o = c.command(args).stdin(Stdio::null()).output().unwrap();
        let err = text(&o.stderr);
        assert!(
            !o.status.success() && o.status.signal().is_none(),
            "{args:?} did not fail cleanly: {:?} {err}",
            o.status
        );
        assert!(err.contains(msg), "{args:?}: expected {msg:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        c.assert_clean();
    }
}

/// Without /dev/fuse the run says so and mounts nothing.
#[test]
fn no_dev_fuse_is_refused_cleanly() {
    let Some(c) = RunCtx::new(Who::Root) else {
        return;
    };
    let bin = common::runenv::shared_bin();
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --lower {} -- /bin/true",
        bin.display(),
        c.rootfs.display()
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("TMPDIR", &c.tmp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot open /dev/fuse"), "{err}");
    c.assert_clean();
}

/// Where user namespaces are disabled the rootless run says so and mounts nothing. The test
/// turns them off only inside a user namespace of its own (its limit binds every namespace
/// below it), so nothing else on the machine is affected.
#[test]
fn rootless_without_user_namespaces_is_refused_cleanly() {
    let Some(c) = RunCtx::new(Who::SubIds) else {
        return;
    };
    let (ready, go) = (c.dir.path().join("ready"), c.dir.path().join("go"));
    for f in [&ready, &go] {
        let p = common::cpath(f);
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
    }
    let bin = common::runenv::shared_bin();
    // Stage two runs once the maps are written: exec gives it back its capabilities.
    let stage2 = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 99; exec setpriv --reuid={} --regid={} --clear-groups -- {} run --lower {} -- /bin/true",
        c.uid,
        c.gid,
        bin.display(),
        c.rootfs.display()
    );
    let stage1 = format!(
        "echo $$ > {}; read x < {}; exec sh -c '{stage2}'",
        ready.display(),
        go.display()
    );
    let child = std::process::Command::new("unshare")
        .args(["--user", "sh", "-c", &stage1])
        .env("TMPDIR", &c.tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = std::fs::read_to_string(&ready).unwrap().trim().to_string();
    for m in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{m}"), "0 0 1000000\n").unwrap();
    }
    std::fs::write(&go, "go\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("cannot create a user namespace"), "{err}");
    assert!(err.contains("max_user_namespaces"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    c.assert_clean();
}

/// A real distribution as the image: a Debian minbase tree (debootstrap, cached), where dpkg
/// installs a package and useradd makes a user with a home, as root and rootless.
fn debian_package_install(who: Who) {
    let Some(c) = RunCtx::new(who) else { return };
    let cache = common::runenv::debian_cache();
    let tree = common::runenv::debian_tree_for(&cache, c.uid, c.gid);
    let up = c.mkdir("up");
    let debs = format!("{}:/debs", cache.join("debs").display());
    let args = |extra: &[&str]| {
        let mut a = vec![
            "run".to_string(),
            "--lower".into(),
            tree.display().to_string(),
            "--upper".into(),
            up.display().to_string(),
            "--ro-bind".into(),
            debs.clone(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let script = "dpkg -i /debs/hello.deb >/dev/null && hello && useradd -m -u 1234 bob && stat -c '%u:%g %n' /home/bob && dpkg -s hello | grep '^Status'";
    let o = c
        .command(&args(&["--", "/bin/sh", "-c", script]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    c.assert_clean();
    let out = ok(&o);
    assert_eq!(
        out,
        "Hello, world!\n1234:1234 /home/bob\nStatus: install ok installed\n"
    );
    let md = std::fs::symlink_metadata(up.join("home/bob")).unwrap();
    assert_eq!((md.uid(), md.gid()), (c.host_id(1234), c.host_id(1234)));
    assert!(up.join("usr/bin/hello").exists());
    assert!(
        !tree.join("usr/bin/hello").exists(),
        "the image layer was written"
    );
    // The next run on the same upper has the package and the user.
    let o = c
        .command(&args(&["--", "/bin/sh", "-c", "hello && id bob"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    c.assert_clean();
    assert_eq!(
        ok(&o),
        "Hello, world!\nuid=1234(bob) gid=1234(bob) groups=1234(bob)\n"
    );
}

#[test]
fn debian_package_install_as_root() {
    debian_package_install(Who::Root)
}

#[test]
fn debian_package_install_rootless_with_subids() {
    debian_package_install(Who::SubIds)
}

/// Mounts made on the host before a container starts are not held by the run's namespaces:
/// unmounted on the host while the container runs, another union's daemon ends, and a
/// kernel overlay's upper can be mounted again (index=on refuses an upper still in use).
fn holds_no_host_mount(who: Who) {
    let Some(c) = RunCtx::new(who) else {
        return;
    };
    let (l, u, m) = (c.mkdir("hl"), c.mkdir("hu"), c.mkdir("hm"));
    let (ku, kw, km) = (c.mkdir("hku"), c.mkdir("hkw"), c.mkdir("hkm"));
    std::fs::write(l.join("f"), b"x").unwrap();
    let mut other = common::UnionMount::new(&[&l], Some(&u), &m);
    let kernel = common::KernelOverlay::with_opts(&[&l], Some((&ku, &kw)), &km, "index=on");
    let t = Duration::from_secs(10);
    let mut b = start(&c, &["/bin/sh", "-c", "echo ready; exec sleep 1000"]);
    b.expect_line("ready", t);
    // Give the runner time to let go of the host's mounts after the init's namespace exists.
    std::thread::sleep(Duration::from_millis(300));
    let st = std::process::Command::new("umount")
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        other.wait_exit(t).is_some(),
        "the other union's daemon did not end while a container ran"
    );
    drop(kernel);
    // Other tests of this binary start containers meanwhile, and each run's namespaces hold a
    // copy of the host's mounts for the moment before they let go of them: a few tries.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=on",
        l.display(),
        ku.display(),
        kw.display()
    );
    let mounted = wait_until(t, || {
        std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&km)
            .status()
            .unwrap()
            .success()
    });
    assert!(
        mounted,
        "the kernel overlay's upper stayed in use while a container ran"
    );
    let guard = common::UnmountOnDrop(km.clone());
    assert_eq!(std::fs::read(km.join("f")).unwrap(), b"x");
    drop(guard);
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait(t).code(), Some(128 + 15));
    drop(b);
    c.assert_clean();
}

#[test]
fn a_running_container_holds_no_host_mount() {
    holds_no_host_mount(Who::Root)
}

/// Rootless, the copies are locked to the run's user namespace: the run's namespace moves
/// onto a root of its own instead of detaching them one by one.
#[test]
fn a_running_rootless_container_holds_no_host_mount() {
    holds_no_host_mount(Who::SubIds)
}
