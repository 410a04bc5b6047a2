//! `unionfuse run` the way container users type it (#18, first part): unknown options are
//! errors naming them (exit 125, as a run that could not start); `-o` takes the mount
//! options; a fresh `--upper` is made; the command gets default signal dispositions even from
//! a runner that ignores SIGINT; `unionfuse unshare` removes an upper whose files belong to
//! subordinate ids; a busy unmount says how to find the user of the mount.

mod common;

use std::ffi::OsStr;
use std::process::Stdio;

use common::pty::Pty;
use common::runenv::{RunCtx, Who};
use common::*;

fn lower(ctx: &RunCtx) -> &OsStr {
    ctx.rootfs.as_os_str()
}

#[test]
fn unknown_options_and_bad_values_are_errors_with_status_125() {
    let Some(ctx) = RunCtx::new(Who::Root) else {
        return;
    };
    for (args, expect) in [
        (vec!["--bogus"], "'--bogus'"),
        (vec!["--name"], "a value is required"),
        (
            vec!["-o", "threads=0"],
            "threads=0': expected a positive number",
        ),
        (vec!["-o", "frob"], "unknown mount option 'frob'"),
        (vec!["-o", "lowerdir=/x"], "--lower and --upper"),
    ] {
        let mut c = ctx.command(&["run"]);
        c.args(&args)
            .arg("--lower")
            .arg(lower(&ctx))
            .args(["--", "true"]);
        let o = c.stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: '{expect}' not in {err}");
        ctx.assert_clean();
    }
    let o = std::process::Command::new(bin())
        .arg("mount")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Usage: unionfuse mount [OPTIONS] LOWERS [UPPER] MOUNTPOINT"),
        "{err}"
    );
}

fn options_reach_the_union(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    let up = ctx.dir.path().join("fresh/upper");
    // Not there yet: made, as a first run of a container expects.
    let mut c = ctx.command(&["run", "-o", "whiteout=oci,volatile", "--lower"]);
    c.arg(lower(&ctx)).arg("--upper").arg(&up).args([
        "--",
        "/bin/sh",
        "-c",
        "rm /etc/passwd && echo ok",
    ]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "{who:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
    // whiteout=oci: the deletion is a .wh. file, not a character device.
    let wh = up.join("etc/.wh.passwd");
    assert!(wh.is_file(), "{who:?}: {:?}", names(&up.join("etc")));
    ctx.assert_clean();
}

#[test]
fn mount_options_reach_the_union_as_root() {
    options_reach_the_union(Who::Root);
}

#[test]
fn mount_options_reach_the_union_rootless() {
    options_reach_the_union(Who::SubIds);
}

#[test]
fn an_ignored_sigint_is_not_inherited_by_the_command() {
    let Some(ctx) = RunCtx::new(Who::Root) else {
        return;
    };
    // The runner starts with SIGINT ignored (a script's background job); the command must
    // still die of the SIGINT it sends itself.
    let script = format!(
        "trap '' INT; exec {} run --lower {} -- /bin/sh -c 'kill -INT $$; echo survived'",
        shared_bin_path(),
        ctx.rootfs.display()
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("TMPDIR", &ctx.tmp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "the command ignored SIGINT"
    );
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ctx.assert_clean();
}

fn shared_bin_path() -> String {
    common::runenv::shared_bin().display().to_string()
}

#[test]
fn unshare_removes_an_upper_with_subordinate_owners() {
    let Some(ctx) = RunCtx::new(Who::SubIds) else {
        return;
    };
    let up = ctx.mkdir("up");
    let o = ctx.sh(
        &[OsStr::new("--upper"), up.as_os_str()],
        "mkdir /d && touch /d/f && chown -R 33:33 /d",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // As the user, the files of sub-ids cannot go.
    let rm = ctx
        .program(OsStr::new("rm"))
        .arg("-rf")
        .arg(&up)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!rm.success() && up.join("d/f").exists());
    // In the user namespace they can.
    let o = ctx
        .command(&["unshare", "--", "rm", "-rf"])
        .arg(&up)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!up.exists());
    // Its exit status is the command's.
    let o = ctx
        .command(&["unshare", "--", "sh", "-c", "id -u; exit 7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n");
}

#[test]
fn a_busy_unmount_says_how_to_find_the_user() {
    if !require_root() {
        return;
    }
    let t = scratch();
    let (l, mp) = (t.path().join("l"), t.path().join("mp"));
    mkdir(&l);
    mkdir(&mp);
    let _m = UnionMount::new(&[&l], None, &mp);
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(&mp)
        .spawn()
        .unwrap();
    let o = unionfuse(&[OsStr::new("umount"), mp.as_os_str()]);
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a busy union was unmounted");
    assert!(
        err.contains("fuser -vm") && err.contains("umount -l"),
        "{err}"
    );
}

fn environment_inside(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    let script = "echo $PATH; echo $HOME; echo $HOSTNAME; echo $KEEP";
    let mut c = ctx.command(&["run", "--hostname", "box", "--lower"]);
    c.arg(lower(&ctx))
        .args(["--", "/bin/sh", "-c", script])
        .env("PATH", "/caller/bin:/usr/bin:/bin")
        .env("HOME", "/home/caller")
        .env("KEEP", "kept");
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "{who:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\nbox\nkept\n",
        "{who:?}"
    );
    let mut c = ctx.command(&["run", "-e", "PATH=/bin", "-e", "HOME=/h", "--lower"]);
    c.arg(lower(&ctx))
        .args(["--", "/bin/sh", "-c", "echo $PATH $HOME"]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/bin /h\n", "{who:?}");
    ctx.assert_clean();
}

#[test]
fn the_environment_inside_is_a_containers_as_root() {
    environment_inside(Who::Root);
}

#[test]
fn the_environment_inside_is_a_containers_rootless() {
    environment_inside(Who::SingleId);
}

#[test]
fn env_files_and_a_warning_for_lowers_a_rootless_run_cannot_map() {
    let Some(ctx) = RunCtx::new(Who::SingleId) else {
        return;
    };
    let env = ctx.dir.path().join("vars.env");
    std::fs::write(&env, "# comment\n\nA=from-file\nB=b\n").unwrap();
    ctx.give(&env);
    let mut c = ctx.command(&["run", "--env-file"]);
    c.arg(&env)
        .args(["-e", "B=from-e", "--lower"])
        .arg(lower(&ctx))
        .args(["--", "/bin/sh", "-c", "echo $A $B"]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-file from-e\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("cannot map"), "{err}");
    // A lower made by root: said once, with the fix.
    let rooted = ctx.dir.path().join("rooted");
    std::fs::create_dir(&rooted).unwrap();
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&ctx.rootfs)
        .arg(rooted.join("fs")));
    let fs = rooted.join("fs");
    run(std::process::Command::new("chown")
        .args(["-R", "0:0"])
        .arg(&fs));
    let mut c = ctx.command(&["run", "--lower"]);
    c.arg(&fs).args(["--", "/bin/true"]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot map") && err.contains("import"),
        "{err}"
    );
    ctx.assert_clean();
}

/// An interactive run on a terminal: the command's terminal is one of the container's own
/// (`tty` names it, `[ -t 0 ]` holds, `ps` shows it), sized as the caller's and resized with
/// it; job control works (a background job, ^C to a foreground one), `su` to another user
/// keeps it; the exit status comes through and the caller's terminal is left as it was.
fn a_terminal_inside(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    let mut pty = Pty::new(33, 101);
    let mut c = ctx.command(&["run", "--lower"]);
    c.arg(lower(&ctx)).args(["--", "/bin/sh", "-i"]);
    let mut child = pty.spawn(&mut c);
    // Marks computed by the shell, so the echo of the typed line does not match them.
    pty.send("echo M$((1+1))\n", "M2");
    let s = pty.send(
        "tty; [ -t 0 ] && [ -t 1 ] && echo T$((2+2)); stty size\n",
        "T4",
    );
    assert!(s.contains("/dev/pts/0"), "{who:?}: {s}");
    assert!(!s.contains("not a tty"), "{who:?}: {s}");
    let s = pty.send("stty size; echo S$((0+1))\n", "S1");
    assert!(s.contains("33 101"), "{who:?}: {s}");
    let s = pty.send("ps -o pid,tty,comm; echo P$((3+3))\n", "P6");
    assert!(
        s.lines().any(|l| l.contains(" sh") && !l.contains(" ? ")),
        "{who:?}: the shell has no terminal in ps: {s}"
    );
    let s = pty.send("sleep 60 &\njobs; echo J$((4+4))\n", "J8");
    assert!(
        s.contains("Running") && s.contains("sleep 60"),
        "{who:?}: {s}"
    );
    pty.send("kill %1; echo K$((5+5))\n", "K10");
    // ^C reaches the foreground job through the container's terminal.
    let t0 = std::time::Instant::now();
    pty.send("sleep 30\n", "sleep 30");
    std::thread::sleep(std::time::Duration::from_millis(300));
    pty.send("\x03", "#");
    pty.send("echo C$((6+6))\n", "C12");
    assert!(
        t0.elapsed().as_secs() < 20,
        "{who:?}: ^C did not stop sleep"
    );
    if who == Who::Root {
        let s = pty.send("su user -c 'tty; id -u'; echo U$((7+7))\n", "U14");
        assert!(s.contains("/dev/pts/0") && s.contains("1000"), "{s}");
    }
    pty.resize(40, 120);
    let s = pty.send("sleep 0.2; stty size; echo R$((8+8))\n", "R16");
    assert!(s.contains("40 120"), "{who:?}: resize not passed on: {s}");
    pty.send("exit 7\n", "exit 7");
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(7), "{who:?}");
    assert!(
        pty.canonical(),
        "{who:?}: the terminal was left in raw mode"
    );
    ctx.assert_clean();
}

#[test]
fn an_interactive_run_has_a_terminal_inside_as_root() {
    a_terminal_inside(Who::Root);
}

#[test]
fn an_interactive_run_has_a_terminal_inside_rootless() {
    a_terminal_inside(Who::SubIds);
}

/// `--no-tty` keeps the caller's streams; `-t` gives a terminal without one outside.
#[test]
fn tty_can_be_forced_or_refused() {
    let Some(ctx) = RunCtx::new(Who::Root) else {
        return;
    };
    let o = ctx.sh(&["-t"], "tty; [ -t 0 ] && echo yes");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("/dev/pts/0") && out.contains("yes"), "{out}");
    let mut pty = Pty::new(24, 80);
    let mut c = ctx.command(&["run", "--no-tty", "--lower"]);
    c.arg(lower(&ctx))
        .args(["--", "/bin/sh", "-c", "tty || echo N$((2+3))"]);
    let mut child = pty.spawn(&mut c);
    let s = pty.send("", "N5");
    assert!(s.contains("not a tty"), "{s}");
    assert!(child.wait().unwrap().success());
    ctx.assert_clean();
}
