//! How requests reach the daemon: FUSE over io_uring when the kernel offers it (the fuse
//! module's `enable_uring`), one queue per CPU; `/dev/fuse` when it does not, or when
//! `UNIONFUSE_NO_IO_URING` is set. The same work must give the same results either way, and
//! the daemon must leave by itself when the union is unmounted.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::*;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel switch is global: the tests of this file take turns.
static SWITCH: Mutex<()> = Mutex::new(());

/// Sets the fuse module's io_uring switch, and puts it back when dropped.
struct UringSwitch {
    before: String,
}

impl UringSwitch {
    fn set(on: bool) -> UringSwitch {
        let before = std::fs::read_to_string(PARAM).unwrap().trim().to_string();
        std::fs::write(PARAM, if on { "Y\n" } else { "N\n" }).unwrap();
        UringSwitch { before }
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, format!("{}\n", self.before));
    }
}

/// The kernel has FUSE over io_uring (Linux 6.14+ built with it); otherwise says so.
fn kernel_has_uring() -> bool {
    let has = Path::new(PARAM).exists();
    if !has {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({PARAM} is missing)");
    }
    has
}

/// The daemon's threads: name and context switches so far.
fn threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.push((comm.trim().to_string(), switches));
    }
    out
}

fn ring_switches(pid: u32) -> (usize, u64) {
    let ring: Vec<_> = threads(pid)
        .into_iter()
        .filter(|(n, _)| n.starts_with("fuser-uring"))
        .collect();
    (ring.len(), ring.iter().map(|(_, s)| s).sum())
}

fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            b.parse::<usize>().unwrap() + 1 - a.parse::<usize>().unwrap()
        })
        .sum()
}

/// Creates, reads, renames and removes through the union, with payloads bigger than one
/// request (a write is cut at 1 MiB) and a listing bigger than one reply; checks each result.
fn workload(mp: &Path) {
    let d = mp.join("w");
    std::fs::create_dir(&d).unwrap();
    for i in 0..300 {
        write(
            &d.join(format!("f{i:03}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 12345)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("big"), &big).unwrap();
    assert_eq!(names(&d).len(), 301);
    for i in 0..300 {
        let got = std::fs::read_to_string(d.join(format!("f{i:03}"))).unwrap();
        assert_eq!(got, format!("file {i}\n"));
    }
    assert!(
        std::fs::read(d.join("big")).unwrap() == big,
        "big file read back changed"
    );
    for i in 0..150 {
        std::fs::rename(d.join(format!("f{i:03}")), d.join(format!("g{i:03}"))).unwrap();
    }
    assert_eq!(std::fs::read_to_string(d.join("g007")).unwrap(), "file 7\n");
    assert_eq!(lstat_errno(&d.join("f007")), libc::ENOENT);
    // The lower's file, read and then changed (a copy-up) through the same transport.
    assert_eq!(std::fs::read_to_string(mp.join("low")).unwrap(), "lower\n");
    std::fs::write(mp.join("low"), "changed\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(mp.join("low")).unwrap(),
        "changed\n"
    );
    std::fs::remove_dir_all(&d).unwrap();
    assert_eq!(lstat_errno(&d), libc::ENOENT);
}

struct Layers {
    _t: tempfile::TempDir,
    lower: std::path::PathBuf,
    upper: std::path::PathBuf,
    mp: std::path::PathBuf,
}

fn layers() -> Layers {
    let t = scratch();
    let (lower, upper, mp) = (t.path().join("l"), t.path().join("u"), t.path().join("m"));
    for d in [&lower, &upper, &mp] {
        mkdir(d);
    }
    write(&lower.join("low"), b"lower\n");
    Layers {
        _t: t,
        lower,
        upper,
        mp,
    }
}

/// A test's turn at the kernel switch, set as it wants it; when dropped, the switch is put
/// back before the turn is given up (tuple fields drop in order). `None` where the test
/// cannot run (no root, or a kernel without FUSE over io_uring).
fn switch_turn(on: bool) -> Option<(UringSwitch, std::sync::MutexGuard<'static, ()>)> {
    if !require_root() || !kernel_has_uring() {
        return None;
    }
    let turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    Some((UringSwitch::set(on), turn))
}

/// Checks that the daemon left by itself, successfully, once `after` happened.
fn expect_clean_exit(m: &mut UnionMount, after: &str) {
    let exit = m.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(exit, Some(s) if s.success()),
        "the daemon did not leave cleanly after {after}: {exit:?}; log: {}",
        m.log()
    );
}

/// Unmounts and checks that the daemon left by itself, successfully.
fn unmount_and_expect_exit(mut m: UnionMount) {
    let st = std::process::Command::new("umount")
        .arg(&m.mp)
        .status()
        .unwrap();
    assert!(st.success(), "umount failed");
    expect_clean_exit(&mut m, "umount");
}

#[test]
fn requests_are_served_over_io_uring_when_the_kernel_offers_it() {
    let Some(_turn) = switch_turn(true) else {
        return;
    };
    let l = layers();
    // Without passthrough, file data too goes through the queues' payload buffers.
    let m = UnionMount::with_env(
        &[&l.lower],
        Some(&l.upper),
        &l.mp,
        &[("UNIONFUSE_NO_PASSTHROUGH", "1")],
    );
    let pid = m.pid();
    let (queues, before) = ring_switches(pid);
    assert_eq!(queues, possible_cpus(), "one queue thread per possible CPU");
    workload(&l.mp);
    let (_, after) = ring_switches(pid);
    // Every request served wakes a queue thread: 300 creates alone are over a thousand.
    assert!(
        after - before >= 1000,
        "the io_uring queues served {} wake-ups for the whole workload",
        after - before
    );
    assert_eq!(std::fs::read(l.upper.join("low")).unwrap(), b"changed\n");
    unmount_and_expect_exit(m);
}

#[test]
fn with_io_uring_turned_down_requests_go_through_dev_fuse() {
    let Some(_turn) = switch_turn(true) else {
        return;
    };
    let l = layers();
    let m = UnionMount::with_env(
        &[&l.lower],
        Some(&l.upper),
        &l.mp,
        &[("UNIONFUSE_NO_IO_URING", "1")],
    );
    assert_eq!(ring_switches(m.pid()).0, 0, "no queue threads");
    workload(&l.mp);
    unmount_and_expect_exit(m);
}

#[test]
fn with_the_kernel_switch_off_the_daemon_uses_dev_fuse() {
    let Some(_turn) = switch_turn(false) else {
        return;
    };
    let l = layers();
    let m = UnionMount::new(&[&l.lower], Some(&l.upper), &l.mp);
    assert_eq!(ring_switches(m.pid()).0, 0, "no queue threads");
    workload(&l.mp);
    unmount_and_expect_exit(m);
}

#[test]
fn a_lazily_unmounted_union_still_busy_lets_its_daemon_go_when_released() {
    let Some(_turn) = switch_turn(true) else {
        return;
    };
    let l = layers();
    let mut m = UnionMount::new(&[&l.lower], Some(&l.upper), &l.mp);
    // The queues are set up once the kernel's INIT is answered, which may come after the
    // mount shows in the table.
    assert!(wait_until(Duration::from_secs(5), || ring_switches(
        m.pid()
    )
    .0 > 0));
    let open = std::fs::File::open(l.mp.join("low")).unwrap();
    let st = std::process::Command::new("umount")
        .arg("-l")
        .arg(&l.mp)
        .status()
        .unwrap();
    assert!(st.success());
    // Still served while the file is open.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &open, &mut s).unwrap();
    assert_eq!(s, "lower\n");
    drop(open);
    expect_clean_exit(&mut m, "the last user let go");
}

/// A rootless container's union (a daemon in the run's user namespace) is served over
/// io_uring too: no capability is needed for the rings.
#[test]
fn a_rootless_container_is_served_over_io_uring() {
    use common::runenv::{Background, RunCtx, Who};
    let Some(_turn) = switch_turn(true) else {
        return;
    };
    let Some(ctx) = RunCtx::new(Who::SubIds) else {
        return;
    };
    let mut c = ctx.command(&[
        std::ffi::OsStr::new("run"),
        std::ffi::OsStr::new("--lower"),
        ctx.rootfs.as_os_str(),
    ]);
    c.args([
        "--",
        "/bin/sh",
        "-c",
        "mkdir /w; i=0; while [ $i -lt 200 ]; do echo $i > /w/f$i; i=$((i+1)); done; \
         cat /w/f199; echo ready; sleep 3",
    ]);
    let mut run = Background::start(c);
    run.expect_line("199", Duration::from_secs(30));
    run.expect_line("ready", Duration::from_secs(30));
    let token = ctx.dir.path().to_string_lossy().into_owned();
    let served: Vec<(u32, usize, u64)> = common::runenv::processes_mentioning(&token)
        .into_iter()
        .map(|(pid, _)| {
            let (n, sw) = ring_switches(pid as u32);
            (pid as u32, n, sw)
        })
        .filter(|&(_, n, _)| n > 0)
        .collect();
    assert_eq!(
        served.len(),
        1,
        "one process of the run (its daemon) has io_uring queues: {served:?}"
    );
    let (_, queues, switches) = served[0];
    assert_eq!(queues, possible_cpus());
    assert!(
        switches >= 200,
        "the queues were woken {switches} times for 200 files written to the union"
    );
    assert!(run.wait(Duration::from_secs(30)).success());
    ctx.assert_clean();
}
