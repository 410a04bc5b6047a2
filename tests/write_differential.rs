//! Differential test of the write path: the same random sequences of operations on kernel
//! overlayfs and on unionfuse over the same lower layers, compared after every step (result
//! and errno) and as whole views; then each upper is read back by the other implementation.
//!
//! Directories with lower content are renamed with redirects, as kernel overlayfs does with
//! `redirect_dir=on` (the oracle is mounted that way), in the same xattr format, so each
//! side's upper reads back on the other.
//!
//! The oracle is mounted with `index=on`, the kernel's reference for hard links: the lower
//! trees have hard-link groups whose names lie in different directories, and the whole view
//! (size, content and link count of every name of every group included) is compared after
//! every step. Then the sequence goes on with the upper rotated into a lower layer under a
//! fresh upper, on both sides (the same layers: unionfuse's upper, with its redirects,
//! whiteouts and links, read as a lower by both).
//!
//! Uppers that kernel overlayfs wrote with `index=on` keep some links only in its work dir's
//! index, which unionfuse does not read: the kernel's upper is read back by unionfuse only
//! when that index is empty (counted in the summary).
//!
//! CI runs a fixed seed set. More locally (STEPS per phase, ROTATIONS phases after the first):
//!   UNIONFUSE_WDIFF_SEEDS=1000 UNIONFUSE_WDIFF_START=100 UNIONFUSE_WDIFF_STEPS=50 \
//!     cargo test --release --test write_differential -- --nocapture

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::ops::{Op, apply};
use common::view::{Desc, SET_BY_TEST, describe};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 3] = ["a", "b", "c"];

fn random_path(rng: &mut StdRng) -> String {
    let depth = rng.gen_range(1..=3);
    (0..depth)
        .map(|_| NAMES[rng.gen_range(0..NAMES.len())])
        .collect::<Vec<_>>()
        .join("/")
}

/// A lower layer in the kernel's formats, over the same small name space as the operations.
fn lower_tree(rng: &mut StdRng, root: &Path, rel: &Path, depth: usize) {
    for n in NAMES {
        let p = root.join(rel).join(n);
        match rng.gen_range(0..10) {
            0..=2 => {
                let len = rng.gen_range(0..3000);
                let data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                write(&p, &data);
                chmod(&p, [0o644, 0o600, 0o755][rng.gen_range(0..3)]);
                if rng.gen_bool(0.3) {
                    setxattr(&p, "user.x", b"lower");
                }
            }
            3..=5 if depth < 3 => {
                mkdir(&p);
                if rng.gen_bool(0.2) {
                    setxattr(&p, "trusted.overlay.opaque", b"y");
                }
                lower_tree(rng, root, &rel.join(n), depth + 1);
            }
            6 => whiteout_chr(&p),
            7 => symlink("a", &p),
            _ => {}
        }
    }
}

/// Hard-link groups across the layer's directories: a few files get more names, each in an
/// existing directory of the layer, where the name is free.
fn lower_links(rng: &mut StdRng, root: &Path) {
    let tree = walk_tree(root);
    let files: Vec<&PathBuf> = tree
        .iter()
        .filter(|(_, m)| m.as_ref().is_ok_and(|m| m.is_file() && m.size() > 0))
        .map(|(p, _)| p)
        .collect();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    dirs.extend(
        tree.iter()
            .filter(|(_, m)| m.as_ref().is_ok_and(|m| m.is_dir()))
            .map(|(p, _)| p.clone()),
    );
    if files.is_empty() {
        return;
    }
    for _ in 0..rng.gen_range(0..5) {
        let f = files[rng.gen_range(0..files.len())];
        let d = &dirs[rng.gen_range(0..dirs.len())];
        let n = ["a", "b", "c", "h1", "h2"][rng.gen_range(0..5)];
        let to = root.join(d).join(n);
        if std::fs::symlink_metadata(&to).is_err() {
            std::fs::hard_link(root.join(f), &to).unwrap();
        }
    }
}

/// Paths now in the view: every entry, and the directories among them ("" is the root).
struct Existing {
    all: Vec<String>,
    dirs: Vec<String>,
    files: Vec<String>,
    /// Regular files by inode: the names of a hard-link group together.
    by_ino: BTreeMap<u64, Vec<String>>,
}

fn existing(root: &Path) -> Existing {
    let mut e = Existing {
        all: vec![],
        dirs: vec![String::new()],
        files: vec![],
        by_ino: BTreeMap::new(),
    };
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&d)) else {
            continue;
        };
        for ent in rd.flatten() {
            let n = ent.file_name().to_string_lossy().into_owned();
            let p = if d.is_empty() { n } else { format!("{d}/{n}") };
            match std::fs::symlink_metadata(root.join(&p)) {
                Ok(m) if m.is_dir() => {
                    e.dirs.push(p.clone());
                    stack.push(p.clone());
                }
                Ok(m) if m.is_file() => {
                    e.files.push(p.clone());
                    e.by_ino.entry(m.ino()).or_default().push(p.clone());
                }
                _ => {}
            }
            e.all.push(p);
        }
    }
    e
}

/// Mostly paths that exist (or new names in directories that exist), so that most
/// operations do something; sometimes any path, for the error cases.
fn pick(rng: &mut StdRng, ex: &Existing, new: bool) -> String {
    if rng.gen_bool(0.2) {
        return random_path(rng);
    }
    if new || ex.all.is_empty() {
        let d = &ex.dirs[rng.gen_range(0..ex.dirs.len())];
        let n = ["a", "b", "c", "n1", "n2", "h1"][rng.gen_range(0..6)];
        return if d.is_empty() {
            n.to_string()
        } else {
            format!("{d}/{n}")
        };
    }
    ex.all[rng.gen_range(0..ex.all.len())].clone()
}

/// Mostly an existing entry from `among` (files, or directories but the root).
fn pick_in(rng: &mut StdRng, ex: &Existing, among: &[String]) -> String {
    let among: Vec<&String> = among.iter().filter(|p| !p.is_empty()).collect();
    if among.is_empty() || rng.gen_bool(0.2) {
        return pick(rng, ex, false);
    }
    among[rng.gen_range(0..among.len())].clone()
}

fn random_op(rng: &mut StdRng, ex: &Existing) -> Op {
    let creating = rng.gen_range(0..100);
    let p = pick(rng, ex, matches!(creating, 0..=9 | 41..=59));
    let data = |rng: &mut StdRng| -> Vec<u8> {
        let n = rng.gen_range(0..5000);
        (0..n).map(|_| rng.r#gen()).collect()
    };
    let file = pick_in(rng, ex, &ex.files);
    let dir = pick_in(rng, ex, &ex.dirs);
    match creating {
        0..=9 => Op::Create(p, [0o644, 0o600, 0o755][rng.gen_range(0..3)], data(rng)),
        10..=16 => Op::Write(file, rng.gen_range(0..4000), data(rng)),
        17..=20 => Op::Append(file, data(rng)),
        21..=24 => Op::Truncate(file, rng.gen_range(0..6000)),
        25..=26 => Op::OpenTrunc(file),
        27..=30 => Op::Chmod(p, [0o600, 0o644, 0o755, 0o700, 0o4755][rng.gen_range(0..5)]),
        31..=33 => Op::Chown(
            p,
            [0, 1000, 65534][rng.gen_range(0..3)],
            [0, 1000][rng.gen_range(0..2)],
        ),
        34..=35 => Op::Utime(p, rng.gen_range(1_000_000..2_000_000_000)),
        36..=38 => Op::SetXattr(p, format!("v{}", rng.gen_range(0..100)).into_bytes()),
        39..=40 => Op::RemoveXattr(p),
        41..=44 => Op::Link(file, p),
        45..=47 => Op::Symlink(["a", "../b", "/x"][rng.gen_range(0..3)].into(), p),
        48..=57 => Op::Mkdir(p, [0o755, 0o700][rng.gen_range(0..2)]),
        58..=59 => Op::Mkfifo(p),
        60..=69 => Op::Unlink(p),
        70..=77 => Op::Rmdir(dir),
        78..=89 => {
            let flags =
                [0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE][rng.gen_range(0..5)];
            let fresh = rng.gen_bool(0.5);
            let to = pick(rng, ex, fresh);
            Op::Rename(p, to, flags)
        }
        90..=93 => Op::Read(file),
        94..=95 => {
            let groups: Vec<&Vec<String>> = ex.by_ino.values().filter(|g| g.len() > 1).collect();
            let (held, other) = if !groups.is_empty() && rng.gen_bool(0.8) {
                let g = groups[rng.gen_range(0..groups.len())];
                (
                    g[rng.gen_range(0..g.len())].clone(),
                    g[rng.gen_range(0..g.len())].clone(),
                )
            } else {
                (file.clone(), pick_in(rng, ex, &ex.files))
            };
            Op::WriteWhileHeld(held, other, rng.gen_range(0..4000), data(rng))
        }
        _ => Op::List(p),
    }
}

/// The whole view under `root`. With `strict`, a listed name that cannot be looked up fails
/// the test (unionfuse); without, it is skipped (the kernel's whiteouts in unmerged dirs).
fn view(root: &Path, strict: bool) -> BTreeMap<PathBuf, Desc> {
    let v = describe(root, &SET_BY_TEST);
    assert!(
        !strict || v.listed_but_absent.is_empty(),
        "{:?} listed but cannot be looked up",
        v.listed_but_absent
    );
    v.entries
}

fn assert_same_view(ours: &BTreeMap<PathBuf, Desc>, kernel: &BTreeMap<PathBuf, Desc>, ctx: &str) {
    assert_same_view_but(ours, kernel, ctx, &Default::default())
}

/// Names under `view` whose object is an upper file of `upper` carrying a link count
/// adjustment (`trusted.overlay.nlink`): kernel overlayfs honours it only for files it
/// indexed itself, so it shows the upper's own count there.
fn adjusted_names(view: &Path, upper: &Path) -> std::collections::BTreeSet<PathBuf> {
    let adjusted: std::collections::BTreeSet<u64> = walk_tree(upper)
        .into_iter()
        .filter(|(r, m)| {
            m.as_ref().is_ok_and(|m| m.is_file())
                && getxattr(&upper.join(r), "trusted.overlay.nlink").is_ok()
        })
        .map(|(_, m)| m.unwrap().ino())
        .collect();
    walk_tree(view)
        .into_iter()
        .filter(|(_, m)| m.as_ref().is_ok_and(|m| adjusted.contains(&m.ino())))
        .map(|(r, _)| r)
        .collect()
}

fn assert_same_view_but(
    ours: &BTreeMap<PathBuf, Desc>,
    kernel: &BTreeMap<PathBuf, Desc>,
    ctx: &str,
    nlink_may_differ: &std::collections::BTreeSet<PathBuf>,
) {
    for (p, k) in kernel {
        match ours.get(p) {
            Some(o) if nlink_may_differ.contains(p) && o.nlink != k.nlink => {
                let mut o = o.clone();
                o.nlink = k.nlink;
                assert_eq!(
                    &o, k,
                    "{ctx}: {p:?} differs (left: kernel on unionfuse's upper)"
                );
            }
            None => panic!("{ctx}: {p:?} missing from unionfuse (kernel: {k:?})"),
            Some(o) if o.kind == "dir" && o.nlink == 1 && k.nlink != 1 => {
                // A directory that unionfuse merged with its upper copy while the kernel did
                // not: the copy-up of a hard-link group links every name of it into the
                // upper at once (the kernel keeps them in its index until each is used), and
                // a merged directory counts no subdirectories. The rest must match.
                let mut o = o.clone();
                o.nlink = k.nlink;
                assert_eq!(&o, k, "{ctx}: {p:?} differs (left: unionfuse)");
                MERGED_DIR_NLINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(o) => assert_eq!(o, k, "{ctx}: {p:?} differs (left: unionfuse)"),
        }
    }
    for p in ours.keys() {
        assert!(kernel.contains_key(p), "{ctx}: {p:?} only in unionfuse");
    }
}

/// Directory comparisons where only the link count of a merged directory differed.
static MERGED_DIR_NLINK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Default)]
struct Stats {
    steps: usize,
    errors: usize,
    rotations: usize,
    kernel_index_skips: usize,
    /// WriteWhileHeld through two different names of one hard-link group.
    held_writes_across_names: usize,
}

fn trace() -> bool {
    std::env::var_os("UNIONFUSE_WDIFF_TRACE").is_some()
}

fn run_sequence(seed: u64, steps: usize, rotations: usize, metacopy: bool, stats: &mut Stats) {
    let ours_opts: &[&str] = if metacopy {
        &["-o", "metacopy=on"]
    } else {
        &[]
    };
    let t = scratch();
    let d = |n: &str| {
        let p = t.path().join(n);
        mkdir(&p);
        p
    };
    let (l1, l2, kmp, omp) = (d("l1"), d("l2"), d("km"), d("om"));
    let mut rng = StdRng::seed_from_u64(seed);
    lower_tree(&mut rng, &l2, Path::new(""), 1);
    lower_links(&mut rng, &l2);
    lower_tree(&mut rng, &l1, Path::new(""), 1);
    lower_links(&mut rng, &l1);

    if trace() {
        for l in [&l1, &l2] {
            let out = Command::new("sh").arg("-c").arg(format!("cd {} && find . -printf '%p %y %i\\n' | sort; getfattr -R -d -m trusted . 2>/dev/null", l.display())).output().unwrap();
            eprintln!(
                "layer {}:\n{}",
                l.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let mut lowers: Vec<PathBuf> = vec![l1, l2];
    for phase in 0..=rotations {
        let (ku, kw, ou) = (
            d(&format!("ku{phase}")),
            d(&format!("kw{phase}")),
            d(&format!("ou{phase}")),
        );
        let lower_refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
        let ctx = |i: usize| format!("seed {seed} phase {phase} step {i}");
        {
            let _k = mount_kernel(&lower_refs, &ku, &kw, &kmp, metacopy);
            let _o = UnionMount::with_args(&lower_refs, Some(&ou), &omp, ours_opts);
            assert_same_view(&view(&omp, true), &view(&kmp, false), &ctx(0));
            for i in 0..steps {
                let ex = existing(&kmp);
                let op = &random_op(&mut rng, &ex);
                if let Op::WriteWhileHeld(h, o, ..) = op
                    && h != o
                    && ex.by_ino.values().any(|g| g.contains(h) && g.contains(o))
                {
                    stats.held_writes_across_names += 1;
                }
                if trace() {
                    let short = format!("{op:?}");
                    eprintln!("phase {phase} step {i}: {}", &short[..short.len().min(80)]);
                }
                let kr = apply(&kmp, op);
                let or = apply(&omp, op);
                assert_eq!(or, kr, "{}: {op:?} (left: unionfuse)", ctx(i));
                stats.steps += 1;
                stats.errors += kr.is_err() as usize;
                // Every name, hard-link groups' sizes, contents and link counts included.
                assert_same_view(&view(&omp, true), &view(&kmp, false), &ctx(i));
            }
        }
        let ours_final = {
            let _o = UnionMount::with_args(&lower_refs, Some(&ou), &omp, ours_opts);
            view(&omp, true)
        };
        let kernel_final = {
            let _k = mount_kernel(&lower_refs, &ku, &kw, &kmp, metacopy);
            view(&kmp, false)
        };
        let ctx = format!("seed {seed} phase {phase}");
        assert_same_view(&ours_final, &kernel_final, &format!("{ctx} after remount"));
        // Interop: each upper read back by the other implementation.
        let (kw2, m2) = (d(&format!("kw2-{phase}")), d(&format!("m2-{phase}")));
        {
            let _k = mount_kernel(&lower_refs, &ou, &kw2, &m2, metacopy);
            assert_same_view_but(
                &view(&m2, false),
                &kernel_final,
                &format!("{ctx}: unionfuse's upper under kernel overlayfs"),
                &adjusted_names(&m2, &ou),
            );
        }
        let kernel_index = std::fs::read_dir(kw.join("index"))
            .map(|d| d.count())
            .unwrap_or(0);
        if kernel_index == 0 {
            let _o = UnionMount::with_args(&lower_refs, Some(&ku), &m2, ours_opts);
            assert_same_view(
                &view(&m2, true),
                &kernel_final,
                &format!("{ctx}: kernel's upper under unionfuse"),
            );
        } else {
            stats.kernel_index_skips += 1;
        }
        // The upper becomes the top lower layer, under a fresh upper, on both sides.
        if phase < rotations {
            lowers.insert(0, ou);
            stats.rotations += 1;
        }
    }
}

/// The oracle: kernel overlayfs with redirects and the inode index, the reference for hard
/// links and directory renames.
fn mount_kernel(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    mp: &Path,
    metacopy: bool,
) -> KernelOverlay {
    let opts = if metacopy {
        "redirect_dir=on,index=on,metacopy=on"
    } else {
        "redirect_dir=on,index=on"
    };
    KernelOverlay::with_opts(lowers, Some((upper, work)), mp, opts)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The sequences of the seeds the environment asks for (`seeds_var`, else `default` of
/// them from `UNIONFUSE_WDIFF_START`): (first seed, count, what they did).
fn run_sequences(seeds_var: &str, default: u64, metacopy: bool) -> (u64, u64, Stats) {
    let start = env("UNIONFUSE_WDIFF_START", 1);
    let n = env(seeds_var, default);
    let steps = env("UNIONFUSE_WDIFF_STEPS", 40) as usize;
    let rotations = env("UNIONFUSE_WDIFF_ROTATIONS", 2) as usize;
    let mut stats = Stats::default();
    for seed in start..start + n {
        run_sequence(seed, steps, rotations, metacopy, &mut stats);
    }
    (start, n, stats)
}

#[test]
fn random_operation_sequences_match_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let (start, n, stats) = run_sequences("UNIONFUSE_WDIFF_SEEDS", 40, false);
    eprintln!(
        "write differential: {n} sequences from seed {start}, {} steps ({} of them errors, \
         each matched by errno), {} rotations of the upper into a lower, 0 divergences; the \
         kernel's upper read back by unionfuse in all but {} phases (kernel index in use); \
         {} directory views differed only in a merged directory's link count; {} writes \
         through one name of a hard-link group while another was held open",
        stats.steps,
        stats.errors,
        stats.rotations,
        stats.kernel_index_skips,
        MERGED_DIR_NLINK.load(std::sync::atomic::Ordering::Relaxed),
        stats.held_writes_across_names
    );
}

/// The same with metadata-only copy-up on both sides (kernel overlayfs' `metacopy=on`,
/// unionfuse's `-o metacopy=on`): chmod, chown and utimes of lower files copy metadata
/// alone, and each upper is read back by the other implementation (#34).
#[test]
fn random_operation_sequences_match_kernel_overlayfs_with_metacopy() {
    if !require_root() {
        return;
    }
    let (_, n, stats) = run_sequences("UNIONFUSE_WDIFF_METACOPY_SEEDS", 20, true);
    eprintln!(
        "write differential with metacopy: {n} sequences, {} steps, {} rotations, 0 divergences",
        stats.steps, stats.rotations
    );
}
