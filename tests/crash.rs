//! Crash safety: the daemon is killed (SIGKILL) in the middle of copy-ups, creates and
//! renames; a fresh mount of the same upper shows no partial file, no half-done rename, no
//! temporary name, and every write that returned from fsync.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FILES: usize = 120;
const SIZE: usize = 256 * 1024;

fn pattern(i: usize) -> Vec<u8> {
    (0..SIZE).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

fn marker(i: usize) -> Vec<u8> {
    format!("NEW{i:05}").into_bytes()
}

#[derive(Default)]
struct Done {
    /// Files whose marker write returned from fsync.
    synced: Vec<usize>,
    /// Files renamed f -> g (rename returned).
    renamed: Vec<usize>,
    /// New files whose content returned from fsync.
    created: Vec<usize>,
}

/// Works through the files until the mount dies under it.
fn workload(mp: &Path, order: Vec<usize>, done: Arc<Mutex<Done>>) {
    for i in order {
        let f = mp.join(format!("f{i}"));
        let r = (|| -> std::io::Result<()> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&f)?;
            file.write_all_at(&marker(i), 0)?;
            file.sync_all()?;
            done.lock().unwrap().synced.push(i);
            if i % 3 == 0 {
                std::fs::rename(&f, mp.join(format!("g{i}")))?;
                done.lock().unwrap().renamed.push(i);
            }
            if i % 4 == 0 {
                let h = std::fs::File::create(mp.join(format!("h{i}")))?;
                h.write_all_at(&pattern(i + 1000), 0)?;
                h.sync_all()?;
                done.lock().unwrap().created.push(i);
            }
            Ok(())
        })();
        if r.is_err() {
            return;
        }
    }
}

#[test]
fn killing_the_daemon_mid_work_loses_nothing_synced_and_leaves_nothing_partial() {
    if !require_root() {
        return;
    }
    let t = scratch();
    let (lower, upper, mp) = (t.path().join("l"), t.path().join("u"), t.path().join("m"));
    for d in [&lower, &upper, &mp] {
        mkdir(d);
    }
    for i in 0..FILES {
        write(&lower.join(format!("f{i}")), &pattern(i));
    }
    let mut rng = StdRng::seed_from_u64(7);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut rounds = 0;
    let mut killed_mid_work = 0;
    // The same upper across rounds: each round continues from what the last crash left.
    let done = Arc::new(Mutex::new(Done::default()));
    while rounds < 8 && Instant::now() < deadline {
        rounds += 1;
        let mut m = UnionMount::new(&[&lower], Some(&upper), &mp);
        check(&mp, &upper, &done.lock().unwrap(), rounds);
        let mut order: Vec<usize> = (0..FILES).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, rng.gen_range(0..=k));
        }
        let d = done.clone();
        let mpc = mp.clone();
        let worker = std::thread::spawn(move || workload(&mpc, order, d));
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..250)));
        unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
        assert!(m.wait_exit(Duration::from_secs(10)).is_some());
        worker.join().unwrap();
        if done.lock().unwrap().synced.len() < FILES {
            killed_mid_work += 1;
        }
        drop(m); // unmounts the dead mount
    }
    let _m = UnionMount::new(&[&lower], Some(&upper), &mp);
    check(&mp, &upper, &done.lock().unwrap(), rounds + 1);
    assert!(
        killed_mid_work > 0,
        "no round was killed in the middle of its work"
    );
    eprintln!("crash: {rounds} rounds, {killed_mid_work} killed mid-work, all consistent");
}

/// The view after a crash: every file once, whole, with what was synced.
fn check(mp: &Path, upper: &Path, done: &Done, round: usize) {
    let work = upper.join(".unionfuse-work");
    assert!(
        !work.exists() || names(&work).is_empty(),
        "round {round}: stale temporaries not cleaned: {:?}",
        names(&work)
    );
    let listed = names(mp);
    assert!(
        !listed.iter().any(|n| n.starts_with(".unionfuse")),
        "{listed:?}"
    );
    for i in 0..FILES {
        let f = mp.join(format!("f{i}"));
        let g = mp.join(format!("g{i}"));
        let (fe, ge) = (f.exists(), g.exists());
        assert!(
            fe ^ ge,
            "round {round}: f{i} exists: {fe}, g{i} exists: {ge}"
        );
        if done.renamed.contains(&i) {
            assert!(ge, "round {round}: rename of f{i} returned but is lost");
        }
        let data = std::fs::read(if fe { &f } else { &g }).unwrap();
        assert_eq!(data.len(), SIZE, "round {round}: f{i} has a partial size");
        let mut want = pattern(i);
        let m = marker(i);
        if data[..m.len()] == m[..] {
            want[..m.len()].copy_from_slice(&m);
        } else {
            assert!(
                !done.synced.contains(&i),
                "round {round}: the fsync'd write to f{i} is lost"
            );
        }
        assert!(data == want, "round {round}: f{i} is partial or corrupt");
    }
    for i in &done.created {
        let h = std::fs::read(mp.join(format!("h{i}"))).unwrap();
        assert!(
            h == pattern(i + 1000),
            "round {round}: h{i} lost its synced content"
        );
    }
}
