//! Everyday tools give the same answers on unionfuse as on kernel overlayfs over the very same
//! layer directories: ls, stat, find, du, tar, cp -a, git status, sha256sum.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = format!(
        "{}{}[exit {}]",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    text.replace(&dir.display().to_string(), "MNT")
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn build_layers(base: &Path, app: &Path) {
    // base: a source tree with a git repository, links, a fifo and a larger file.
    let repo = base.join("repo");
    for i in 0..60 {
        let body = format!("fn f{i}() -> u32 {{ {i} }}\n").repeat(i % 7 + 1);
        write(
            &repo.join(format!("src/m{}/f{i}.rs", i % 6)),
            body.as_bytes(),
        );
    }
    write(&repo.join("README"), b"readme\n");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "base"]);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&base.join("data/big.bin"), &big);
    write(&base.join("data/a.txt"), b"a\n");
    std::fs::hard_link(base.join("data/a.txt"), base.join("data/a-link.txt")).unwrap();
    std::fs::hard_link(base.join("data/a.txt"), base.join("a-top-link.txt")).unwrap();
    symlink("data/a.txt", &base.join("rel-link"));
    symlink("/etc/hostname", &base.join("abs-link"));
    mknod(&base.join("data/fifo"), libc::S_IFIFO | 0o640, 0);
    write(&base.join("etc/conf"), b"base conf\n");
    write(&base.join("etc/old/x"), b"old\n");
    write(&base.join("opq/base-only"), b"hidden by opaque\n");
    chmod(&base.join("etc/conf"), 0o640);
    lchown(&base.join("etc/conf"), 1000, 65534);
    // app: shadows, kernel-format whiteouts, an opaque dir, a file over a dir.
    write(&app.join("etc/conf"), b"app conf\n");
    whiteout_chr(&app.join("etc/old"));
    mkdir(&app.join("data"));
    whiteout_chr(&app.join("data/a-link.txt"));
    write(&app.join("opq/app-only"), b"app\n");
    setxattr(&app.join("opq"), "trusted.overlay.opaque", b"y");
    write(&app.join("repo/src/m1/f1.rs"), b"changed in app layer\n");
    write(&app.join("repo/new-untracked"), b"new\n");
    setxattr(&app.join("etc/conf"), "user.origin", b"app");
}

#[test]
fn everyday_tools_match_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let t = scratch();
    let (base, app) = (t.path().join("base"), t.path().join("app"));
    mkdir(&base);
    mkdir(&app);
    build_layers(&base, &app);
    let (kmp, omp) = (t.path().join("k"), t.path().join("o"));
    mkdir(&kmp);
    mkdir(&omp);
    let commands = [
        "ls -lAR --time-style=full-iso .",
        "find . -printf '%p %y %M %u %g %s %n %T@ %l\\n' | sort",
        "find . | sort | xargs -d '\\n' stat -c '%n %F %a %u %g %s %h %Y %b %t %T'",
        "du -a --apparent-size . | sort -k2; du -s .",
        "tar -c --sort=name --numeric-owner -f - . | sha256sum",
        "tar -c --sort=name -f - . | tar -tv | sort",
        "find . -type f -print0 | sort -z | xargs -0 sha256sum",
        "d=$(mktemp -d) && cp -a . $d/c && cd $d/c && find . -printf '%p %y %M %u %g %s %n %T@ %l\\n' | sort; rm -rf $d",
        "git -C repo status --porcelain; git -C repo log --oneline | wc -l; git -C repo diff --stat",
        "getfattr -d -m - -R . 2>/dev/null | sort",
    ];
    // Ours first: the kernel's reads may touch the lowers' atimes, which no command shows.
    let ours: Vec<String> = {
        let _m = UnionMount::new(&[&app, &base], None, &omp);
        commands.iter().map(|c| sh(&omp, c)).collect()
    };
    let kernel: Vec<String> = {
        let _k = KernelOverlay::new(&[&app, &base], None, &kmp);
        commands.iter().map(|c| sh(&kmp, c)).collect()
    };
    for ((c, o), k) in commands.iter().zip(&ours).zip(&kernel) {
        assert!(
            k.ends_with("[exit 0]") || c.starts_with("git"),
            "oracle failed: {c}: {k}"
        );
        assert_eq!(
            o, k,
            "`{c}` differs (left: unionfuse, right: kernel overlayfs)"
        );
    }
    // The tree really has the features the commands are meant to see.
    assert!(kernel[1].contains("./data/a.txt f -rw-r--r-- root root 2 3 "));
    assert!(kernel[8].contains("M src/m1/f1.rs"), "{}", kernel[8]);
    assert!(!kernel[0].contains("base-only"));
}

/// Tools that write and rename on the writable union: git (commit, `git mv` of a lower
/// directory, gc, fsck), tar, mv, cp -a, rm -rf; same results as on kernel overlayfs.
#[test]
fn writing_tools_match_kernel_overlayfs() {
    if !require_root() {
        return;
    }
    let t = scratch();
    let (base, app) = (t.path().join("base"), t.path().join("app"));
    mkdir(&base);
    mkdir(&app);
    build_layers(&base, &app);
    let d = |n: &str| {
        let p = t.path().join(n);
        mkdir(&p);
        p
    };
    let (kmp, omp, ku, kw, ou) = (d("k"), d("o"), d("ku"), d("kw"), d("ou"));
    let tarball = t.path().join("t.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&base)
        .arg("repo/src")
        .status()
        .unwrap();
    assert!(st.success());
    let script = format!(
        "set -e; export GIT_AUTHOR_DATE=@1000000000 GIT_COMMITTER_DATE=@1000000000; \
         g() {{ git -c user.name=t -c user.email=t@e \"$@\"; }}; \
         cd repo; g checkout -q -b feature; echo change >> README; g commit -qam change; \
         g mv src/m2 src/moved; g commit -qm mv; g gc -q --prune=now; g fsck --no-progress; \
         g log --format='%H %s'; g status --porcelain; cd ..; \
         mkdir t; tar -xf {} -C t; mv t/repo/src t/src2; rm -rf t/repo data/big.bin; \
         mv etc etc.old; cp -a etc.old etc; rm -rf opq; \
         find . -path ./repo/.git -prune -o -printf '%p %y %M %u %g %s %n %l\\n' | sort; \
         find . -type f -not -path './repo/.git/*' -print0 | sort -z | xargs -0 sha256sum",
        tarball.display()
    );
    let ours = {
        let _m = UnionMount::new(&[&app, &base], Some(&ou), &omp);
        sh(&omp, &script)
    };
    let kernel = {
        let _k =
            KernelOverlay::with_opts(&[&app, &base], Some((&ku, &kw)), &kmp, "redirect_dir=on");
        sh(&kmp, &script)
    };
    assert!(kernel.ends_with("[exit 0]"), "oracle failed: {kernel}");
    assert!(kernel.contains(" mv\n"), "{kernel}");
    assert_eq!(ours, kernel, "left: unionfuse, right: kernel overlayfs");
}
