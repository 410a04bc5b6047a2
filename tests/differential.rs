//! Differential test: random layered trees, mounted by kernel overlayfs (the oracle) and by
//! unionfuse, must show the same view entry by entry.
//!
//! Each seed builds the same logical layers twice: once in the kernel's formats (whiteouts as
//! char 0/0, opaque by `trusted.overlay.opaque`), once with every format mixed at random (OCI
//! `.wh.` files, xattr whiteouts, `user.*` and fuse-overlayfs opaque markers). The kernel
//! mounts the first, unionfuse the second.
//!
//! CI runs a fixed seed set. More seeds locally:
//!   UNIONFUSE_DIFF_SEEDS=2000 UNIONFUSE_DIFF_START=1000 cargo test --test differential -- --nocapture

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::view;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAMES: [&str; 8] = ["a", "b", "c", "dd", "e", "f", "g", "h"];
const MAX_DEPTH: usize = 4;

struct Gen<'a> {
    rng: StdRng,
    kernel: &'a Path,
    ours: &'a Path,
    /// Regular files made in the current layer, for hard links.
    files: Vec<PathBuf>,
    entries: usize,
}

impl Gen<'_> {
    fn both(&self, rel: &Path) -> [PathBuf; 2] {
        [self.kernel.join(rel), self.ours.join(rel)]
    }

    fn attrs(&mut self, rel: &Path, modes: &[u32]) {
        let mode = modes[self.rng.gen_range(0..modes.len())];
        let ids = [0u32, 1000, 65534];
        let uid = ids[self.rng.gen_range(0..3)];
        let gid = ids[self.rng.gen_range(0..3)];
        let xattr = self
            .rng
            .gen_bool(0.3)
            .then(|| self.rng.r#gen::<u32>().to_string());
        for p in self.both(rel) {
            lchown(&p, uid, gid);
            chmod(&p, mode);
            if let Some(v) = &xattr {
                setxattr(&p, "user.test", v.as_bytes());
            }
        }
    }

    fn whiteout(&mut self, dir: &Path, name: &str) {
        whiteout_chr(&self.kernel.join(dir).join(name));
        let o = self.ours.join(dir);
        // Xattr whiteouts live in directories marked for them (opaque xattr "x"), as the kernel
        // requires; an opaque ("y") directory cannot carry that mark.
        let opaque_y = ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|x| getxattr(&o, x).as_deref() == Ok(b"y".as_slice()));
        let format = match self.rng.gen_range(0..4) {
            2 | 3 if opaque_y => 0,
            f => f,
        };
        match format {
            0 => whiteout_chr(&o.join(name)),
            1 => write(&o.join(format!(".wh.{name}")), b""),
            2 => {
                write(&o.join(name), b"");
                setxattr(&o.join(name), "trusted.overlay.whiteout", b"");
                setxattr(&o, "trusted.overlay.opaque", b"x");
            }
            _ => {
                write(&o.join(name), b"");
                setxattr(&o.join(name), "user.overlay.whiteout", b"");
                setxattr(&o, "user.overlay.opaque", b"x");
            }
        }
    }

    fn opaque(&mut self, rel: &Path) {
        setxattr(&self.kernel.join(rel), "trusted.overlay.opaque", b"y");
        let o = self.ours.join(rel);
        // A directory marked "x" for xattr whiteouts is made opaque the OCI way.
        let marked_x = ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|x| getxattr(&o, x).as_deref() == Ok(b"x".as_slice()));
        let format = if marked_x {
            3
        } else {
            self.rng.gen_range(0..4)
        };
        match format {
            0 => setxattr(&o, "trusted.overlay.opaque", b"y"),
            1 => setxattr(&o, "user.overlay.opaque", b"y"),
            2 => setxattr(&o, "user.fuseoverlayfs.opaque", b"y"),
            _ => write(&o.join(".wh..wh..opq"), b""),
        }
    }

    fn dir(&mut self, rel: &Path, depth: usize, fill: f64) {
        for name in NAMES {
            let p = rel.join(name);
            let roll: f64 = self.rng.r#gen();
            if roll > fill {
                continue;
            }
            self.entries += 1;
            match self.rng.gen_range(0..100) {
                0..=34 => {
                    let len = *[0usize, 1, 100, 4096, 9000]
                        .get(self.rng.gen_range(0..5))
                        .unwrap();
                    let data: Vec<u8> = (0..len).map(|_| self.rng.r#gen()).collect();
                    for q in self.both(&p) {
                        write(&q, &data);
                    }
                    self.attrs(&p, &[0o644, 0o600, 0o755, 0o400, 0o4755]);
                    self.files.push(p);
                }
                35..=62 if depth < MAX_DEPTH => {
                    for q in self.both(&p) {
                        mkdir(&q);
                    }
                    self.attrs(&p, &[0o755, 0o700, 0o1777, 0o555]);
                    if self.rng.gen_bool(0.15) {
                        self.opaque(&p);
                    }
                    self.dir(&p, depth + 1, fill * 0.8);
                }
                63..=71 => {
                    let targets = ["a", "../b", "/etc/hostname", "missing", "dd/e"];
                    let t = targets[self.rng.gen_range(0..targets.len())];
                    for q in self.both(&p) {
                        symlink(t, &q);
                    }
                }
                72..=83 => self.whiteout(rel, name),
                84..=91 if !self.files.is_empty() => {
                    let src = self.files[self.rng.gen_range(0..self.files.len())].clone();
                    for (s, d) in self.both(&src).iter().zip(self.both(&p)) {
                        std::fs::hard_link(s, d).unwrap();
                    }
                }
                92..=95 => {
                    for q in self.both(&p) {
                        mknod(&q, libc::S_IFIFO | 0o644, 0);
                    }
                }
                96..=99 => {
                    for q in self.both(&p) {
                        mknod(&q, libc::S_IFCHR | 0o666, libc::makedev(1, 3));
                    }
                }
                _ => {
                    for q in self.both(&p) {
                        write(&q, b"fallback file");
                    }
                    self.files.push(p);
                }
            }
        }
    }
}

/// Gives every entry a time derived from its path, children before their directory, so that
/// the two copies of a layer agree on every entry they share.
fn fix_times(root: &Path, rel: &Path, salt: u64) {
    let p = root.join(rel);
    if std::fs::symlink_metadata(&p).unwrap().is_dir() {
        for n in names(&p) {
            fix_times(root, &rel.join(n), salt);
        }
    }
    let mut h: u64 = salt ^ 0x9e3779b97f4a7c15;
    for b in rel.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    let t = (
        1_000_000_000 + (h % 700_000_000) as i64,
        (h % 1_000_000_000) as i64,
    );
    set_times(&p, t, t);
}

/// Every candidate name probed in every directory of the view (whited-out and hidden names
/// included): the errno of its lookup.
fn probes(root: &Path, view: &view::View) -> BTreeMap<PathBuf, i32> {
    let dirs = std::iter::once(PathBuf::new()).chain(
        view.entries
            .iter()
            .filter(|(_, d)| d.kind == "dir")
            .map(|(r, _)| r.clone()),
    );
    let mut out = BTreeMap::new();
    for rel in dirs {
        for n in NAMES
            .iter()
            .map(|s| s.to_string())
            .chain([".wh.a".into(), "zz".into()])
        {
            out.insert(rel.join(&n), lstat_errno(&root.join(&rel).join(&n)));
        }
    }
    out
}

struct Outcome {
    entries: usize,
    layers: usize,
    kernel_leaks: usize,
}

fn run_seed(seed: u64, nlayers: usize, fill: f64) -> Outcome {
    let tmp = scratch();
    let t = tmp.path();
    let mut rng = StdRng::seed_from_u64(seed);
    let with_upper = rng.gen_bool(0.5);
    let total = nlayers + with_upper as usize;
    let mut kl = Vec::new();
    let mut ol = Vec::new();
    let mut generated = 0;
    for i in 0..total {
        let k = t.join(format!("k{i}"));
        let o = t.join(format!("o{i}"));
        mkdir(&k);
        mkdir(&o);
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(i as u64)),
            kernel: &k,
            ours: &o,
            files: Vec::new(),
            entries: 0,
        };
        g.dir(Path::new(""), 0, fill);
        generated += g.entries;
        fix_times(&k, Path::new(""), seed ^ i as u64);
        fix_times(&o, Path::new(""), seed ^ i as u64);
        kl.push(k);
        ol.push(o);
    }
    if total == 1 {
        // The kernel wants two lowers when there is no upper: both sides get the same empty
        // bottom layer, which keeps their views comparable.
        for (v, n) in [(&mut kl, "kempty"), (&mut ol, "oempty")] {
            mkdir(&t.join(n));
            v.push(t.join(n));
        }
    }
    let (kmp, omp, work) = (t.join("km"), t.join("om"), t.join("kw"));
    mkdir(&kmp);
    mkdir(&omp);
    mkdir(&work);
    let (kupper, klowers) = if with_upper {
        (Some(kl[0].as_path()), &kl[1..])
    } else {
        (None, &kl[..])
    };
    let (oupper, olowers) = if with_upper {
        (Some(ol[0].as_path()), &ol[1..])
    } else {
        (None, &ol[..])
    };
    let klr: Vec<&Path> = klowers.iter().map(|p| p.as_path()).collect();
    let olr: Vec<&Path> = olowers.iter().map(|p| p.as_path()).collect();
    let _k = KernelOverlay::new(&klr, kupper.map(|u| (u, work.as_path())), &kmp);
    let _o = UnionMount::new(&olr, oupper, &omp);
    // The trees' times were fixed: every time is compared, and every xattr.
    let kview = view::describe(&kmp, &view::ALL);
    let oview = view::describe(&omp, &view::ALL);
    let (kp, op) = (probes(&kmp, &kview), probes(&omp, &oview));
    let (kv, ov) = (&kview.entries, &oview.entries);
    let ctx = format!("seed {seed}, {nlayers} lowers, upper: {with_upper}");
    assert!(
        oview.listed_but_absent.is_empty(),
        "{ctx}: unionfuse lists names it cannot look up: {:?}",
        oview.listed_but_absent
    );
    for (path, want) in kv {
        match ov.get(path) {
            None => panic!("{ctx}: {path:?} missing from unionfuse (kernel: {want:?})"),
            Some(got) => assert_eq!(got, want, "{ctx}: {path:?} differs (left: ours)"),
        }
    }
    for path in ov.keys() {
        assert!(
            kv.contains_key(path),
            "{ctx}: {path:?} shown only by unionfuse"
        );
    }
    for (path, want) in &kp {
        assert_eq!(op.get(path), Some(want), "{ctx}: lookup of {path:?}");
    }
    assert!(generated > 0);
    Outcome {
        entries: kv.len(),
        layers: total,
        kernel_leaks: kview.listed_but_absent.len(),
    }
}

fn seeds() -> (u64, u64) {
    let n = std::env::var("UNIONFUSE_DIFF_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let start = std::env::var("UNIONFUSE_DIFF_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    (start, n)
}

#[test]
fn random_layered_trees_match_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let (start, n) = seeds();
    let layer_counts = [1usize, 2, 3, 4, 6, 8, 12];
    let (mut entries, mut max_entries, mut max_layers, mut leaks) = (0, 0, 0, 0);
    for seed in start..start + n {
        let nl = layer_counts[(seed as usize) % layer_counts.len()];
        let o = run_seed(seed, nl, 0.9);
        entries += o.entries;
        max_entries = max_entries.max(o.entries);
        max_layers = max_layers.max(o.layers);
        leaks += o.kernel_leaks;
    }
    eprintln!(
        "differential: {n} seeds from {start}, {entries} view entries compared \
         (largest view {max_entries}, up to {max_layers} layers), 0 divergences; \
         {leaks} whiteouts the kernel listed but could not stat"
    );
}

#[test]
fn fifty_layer_random_trees_match_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    for seed in [9001u64, 9002] {
        let o = run_seed(seed, 50, 0.75);
        eprintln!(
            "differential: seed {seed}: {} layers, {} view entries, 0 divergences",
            o.layers, o.entries
        );
    }
}
