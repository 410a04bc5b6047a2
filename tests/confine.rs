//! The confinement of a run's command (#20): Docker's default profile for root and rootless
//! runs (fourteen capabilities, a seccomp filter, the kernel's sensitive files masked), and
//! the options that change it. The probes are perl one-liners inside a Debian tree (perl's
//! `syscall` reaches the calls no shell command makes).

mod common;

use std::process::{Output, Stdio};

use common::runenv::{RunCtx, Who};

/// Docker's fourteen, as bits of the /proc/self/status masks.
const DEFAULT_MASK: u64 = (1 << 0) // CHOWN
    | (1 << 1) // DAC_OVERRIDE
    | (1 << 3) // FOWNER
    | (1 << 4) // FSETID
    | (1 << 5) // KILL
    | (1 << 6) // SETGID
    | (1 << 7) // SETUID
    | (1 << 8) // SETPCAP
    | (1 << 10) // NET_BIND_SERVICE
    | (1 << 13) // NET_RAW
    | (1 << 18) // SYS_CHROOT
    | (1 << 27) // MKNOD
    | (1 << 29) // AUDIT_WRITE
    | (1 << 31); // SETFCAP

/// A perl program that makes each probed call and prints `name=errno` (0: it worked).
fn probes() -> String {
    format!(
        r#"
sub r {{ my ($n, $v) = @_; print "$n=", ($v == -1 ? $!+0 : 0), "\n"; }}
mkdir "/mnt";
my ($none, $mnt, $tmpfs, $empty) = ("none", "/mnt", "tmpfs", "");
r("mount", syscall({mount}, $none, $mnt, $tmpfs, 0, 0));
r("init_module", syscall({init_module}, $empty, 0, $empty));
r("keyctl", syscall({keyctl}, 0, -3, 0));
my $ts = pack("q q", time, 0);
r("clock_settime", syscall({clock_settime}, 0, $ts));
r("unshare_user", syscall({unshare}, 0x10000000));
r("bpf", syscall({bpf}, 0, 0, 0));
"#,
        mount = libc::SYS_mount,
        init_module = libc::SYS_init_module,
        keyctl = libc::SYS_keyctl,
        clock_settime = libc::SYS_clock_settime,
        unshare = libc::SYS_unshare,
        bpf = libc::SYS_bpf,
    )
}

/// What the shell script inside prints (it runs in the cached Debian tree, network none).
fn inside(ctx: &RunCtx, opts: &[&str], script: &str) -> Output {
    let cache = common::runenv::debian_cache();
    let tree = common::runenv::debian_tree_for(&cache, ctx.uid, ctx.gid);
    let mut c = ctx.command(&["run", "--net", "none", "--lower"]);
    c.arg(&tree)
        .args(opts)
        .args(["--", "/bin/sh", "-c", script]);
    let o = c.stdin(Stdio::null()).output().unwrap();
    ctx.assert_clean();
    o
}

fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}="))
                .or_else(|| l.strip_prefix(&format!("{key}:\t")))
        })
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
        .to_string()
}

fn mask(out: &str, key: &str) -> u64 {
    u64::from_str_radix(&field(out, key), 16).unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{:?}: {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const STATUS: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status";

fn the_default_profile(who: Who) {
    let Some(ctx) = RunCtx::new(who) else { return };
    let script = format!(
        "{STATUS}; perl -e '{}'; \
         for f in /proc/keys /proc/timer_list /proc/kcore /proc/sched_debug; do [ -e $f ] && echo \"$f $(head -c 64 $f | wc -c)\"; done; \
         echo firmware=$(ls -A /sys/firmware | wc -l); \
         (echo x > /proc/sys/kernel/domainname) 2>/dev/null; echo procsys=$?; \
         (echo h > /proc/sysrq-trigger) 2>/dev/null; echo sysrq=$?; \
         mkfifo /tmp/p && chown 33:33 /tmp/p && echo fifo=$(stat -c %u:%g:%F /tmp/p); \
         perl -MSocket -e 'socket(S, PF_INET, SOCK_STREAM, 0) or die; bind(S, sockaddr_in(80, INADDR_ANY)) or die \"$!\"; print \"port80=0\\n\"'",
        probes().replace('\'', "'\\''")
    );
    let out = stdout(&inside(&ctx, &[], &script));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(mask(&out, set), DEFAULT_MASK, "{who:?} {set}: {out}");
    }
    assert_eq!(mask(&out, "CapAmb"), 0, "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{who:?}: {out}");
    assert_eq!(field(&out, "NoNewPrivs"), "0", "{out}");
    for call in [
        "mount",
        "init_module",
        "keyctl",
        "clock_settime",
        "unshare_user",
        "bpf",
    ] {
        assert_eq!(
            field(&out, call),
            libc::EPERM.to_string(),
            "{who:?} {call}: {out}"
        );
    }
    for l in out.lines().filter(|l| l.starts_with("/proc/")) {
        assert!(l.ends_with(" 0"), "{who:?}: a masked file reads: {l}");
    }
    assert!(out.contains("/proc/keys 0"), "{out}");
    assert_eq!(field(&out, "firmware"), "0", "{out}");
    assert_ne!(
        field(&out, "procsys"),
        "0",
        "{who:?}: /proc/sys writable: {out}"
    );
    assert_ne!(field(&out, "sysrq"), "0", "{out}");
    assert_eq!(field(&out, "fifo"), "33:33:fifo", "{out}");
    assert_eq!(field(&out, "port80"), "0", "{out}");
}

#[test]
fn the_default_profile_as_root() {
    the_default_profile(Who::Root);
}

#[test]
fn the_default_profile_rootless() {
    the_default_profile(Who::SubIds);
}

#[test]
fn options_give_back_what_they_name() {
    let Some(ctx) = RunCtx::new(Who::Root) else {
        return;
    };
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bounding = mask(&own, "CapBnd");
    let script = format!("{STATUS}; perl -e '{}'", probes().replace('\'', "'\\''"));
    let out = stdout(&inside(&ctx, &["--privileged"], &script));
    assert_eq!(mask(&out, "CapEff"), host_bounding, "{out}");
    assert_eq!(field(&out, "Seccomp"), "0", "{out}");
    assert_eq!(field(&out, "keyctl"), "0", "{out}");
    assert_eq!(field(&out, "mount"), "0", "{out}");

    let out = stdout(&inside(&ctx, &["--cap-add", "NET_ADMIN"], STATUS));
    assert_eq!(mask(&out, "CapEff"), DEFAULT_MASK | 1 << 12, "{out}");
    assert_eq!(mask(&out, "CapBnd"), DEFAULT_MASK | 1 << 12, "{out}");

    let out = stdout(&inside(
        &ctx,
        &["--cap-drop", "chown", "--security-opt", "no-new-privileges"],
        &format!("{STATUS}; touch /tmp/f; chown 33 /tmp/f 2>/dev/null; echo chown=$?"),
    ));
    assert_eq!(mask(&out, "CapEff"), DEFAULT_MASK & !1, "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    assert_ne!(field(&out, "chown"), "0", "{out}");

    let out = stdout(&inside(
        &ctx,
        &["--security-opt", "seccomp=unconfined"],
        &format!("{STATUS}; perl -e '{}'", probes().replace('\'', "'\\''")),
    ));
    assert_eq!(field(&out, "Seccomp"), "0", "{out}");
    assert_eq!(field(&out, "keyctl"), "0", "{out}");
    // Still without CAP_SYS_ADMIN: mount stays refused.
    assert_eq!(field(&out, "mount"), libc::EPERM.to_string(), "{out}");

    for (opts, expect) in [
        (vec!["--cap-add", "FLY"], "unknown capability 'FLY'"),
        (vec!["--cap-drop", ""], "unknown capability"),
        (
            vec!["--security-opt", "seccomp=maybe"],
            "--security-opt 'seccomp=maybe'",
        ),
    ] {
        let o = inside(&ctx, &opts, "echo started");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{opts:?}: {err}");
        assert!(err.contains(expect), "{opts:?}: {err}");
        assert!(o.stdout.is_empty());
    }
}
