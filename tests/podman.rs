//! Real clients: podman and buildah from Debian with unionfuse as containers/storage's
//! `mount_program`, as root and rootless (a user with a subordinate id range). Each test has
//! its own storage, configuration and runtime directories; the mount inside the container
//! must be unionfuse's.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::runenv::{RunCtx, Who, processes_mentioning, shared_bin};
use common::wait_until;

/// The podman world of one test. Dropping it ends what podman leaves running (the rootless
/// pause process) and checks that no mount or daemon of ours is left.
struct Podman {
    c: RunCtx,
    env: Vec<(String, String)>,
    xdg: PathBuf,
}

impl Podman {
    fn new(who: Who) -> Option<Podman> {
        let c = RunCtx::new(who)?;
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is missing (scripts/setup installs it)"
        );
        let d = c.dir.path().to_path_buf();
        let xdg = d.join("xdg");
        for sub in ["home", "xdg", "graph", "run", "libpod-tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}/run\"\ngraphroot = \"{}/graph\"\n[storage.options.overlay]\nmount_program = \"{}\"\n",
                d.display(),
                d.display(),
                shared_bin().display()
            ),
        )
        .unwrap();
        // runc, not crun (which refuses these machines' cgroups); runc with the default
        // ulimits fails; rootless needs the host's network.
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\nnetns = \"host\"\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"{}/libpod-tmp\"\n",
                d.display()
            ),
        )
        .unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&c.rootfs)
            .arg("-cf")
            .arg(d.join("rootfs.tar"))
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        c.give(&d);
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
        let env = vec![
            (
                "PATH",
                "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_string(),
            ),
            ("HOME", d.join("home").display().to_string()),
            ("XDG_RUNTIME_DIR", xdg.display().to_string()),
            (
                "CONTAINERS_STORAGE_CONF",
                d.join("storage.conf").display().to_string(),
            ),
            (
                "CONTAINERS_CONF",
                d.join("containers.conf").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Some(Podman { c, env, xdg })
    }

    /// `PROGRAM ARGS` as the test's identity, in this world, with a time limit.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.c.program(OsStr::new("timeout"));
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("180")
            .arg(program)
            .args(args)
            .current_dir(self.c.dir.path())
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }

    fn ok(&self, program: &str, args: &[&str]) -> String {
        let o = self.run(program, args);
        assert!(
            o.status.success(),
            "{program} {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn import(&self) {
        self.ok(
            "podman",
            &["import", "-q", "rootfs.tar", "localhost/uftest:latest"],
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Rootless podman keeps a pause process holding its user namespace.
        let pid_file = self.xdg.join("libpod/tmp/pause.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let token = self.c.dir.path().to_string_lossy().into_owned();
        // containers/storage bind-mounts its overlay home on itself and takes that away only
        // when the last layer mount is gone; podman's asynchronous container cleanup can
        // come after the last command. That mount is podman's, not a union: let it go.
        let home = self.c.dir.path().join("graph/overlay");
        wait_until(Duration::from_secs(10), || {
            processes_mentioning(&token).is_empty()
                && !std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .any(|l| l.contains(&token) && l.contains("fuse.unionfuse"))
        });
        let _ = std::process::Command::new("umount")
            .arg(&home)
            .stderr(std::process::Stdio::null())
            .status();
        let clean = wait_until(Duration::from_secs(10), || {
            processes_mentioning(&token).is_empty()
                && !std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .contains(&token)
        });
        if !std::thread::panicking() {
            let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(&token))
                .map(String::from)
                .collect();
            assert!(
                clean,
                "left behind: processes {:?}, mounts {mounts:?}",
                processes_mentioning(&token)
            );
        }
    }
}

const ROOT_FS: &str = "grep ' / ' /proc/self/mounts | cut -d' ' -f3";

fn podman_run_write_and_commit(who: Who) {
    let Some(p) = Podman::new(who) else { return };
    p.import();
    let out = p.ok(
        "podman",
        &[
            "run",
            "--rm",
            "localhost/uftest",
            "sh",
            "-c",
            &format!("{ROOT_FS}; cat /etc/os-release; echo hi > /f; cat /f"),
        ],
    );
    assert_eq!(
        out,
        "fuse.unionfuse\nPRETTY_NAME=\"unionfuse test root\"\nID=uftest\nhi\n"
    );
    p.ok(
        "podman",
        &[
            "run",
            "--name",
            "c1",
            "localhost/uftest",
            "sh",
            "-c",
            "echo committed > /etc/marker; chown 33:33 /etc/marker; rm /etc/os-release; mkdir -p /var/new",
        ],
    );
    p.ok("podman", &["commit", "-q", "c1", "localhost/uftest:v2"]);
    p.ok("podman", &["rm", "c1"]);
    let out = p.ok(
        "podman",
        &[
            "run",
            "--rm",
            "localhost/uftest:v2",
            "sh",
            "-c",
            "cat /etc/marker; stat -c %u:%g /etc/marker; test -e /etc/os-release || echo gone; ls -d /var/new",
        ],
    );
    assert_eq!(out, "committed\n33:33\ngone\n/var/new\n");

    // The changes of a running container (what a commit of it would take) are the writes
    // alone: nothing of unionfuse's own in the upper.
    p.ok(
        "podman",
        &[
            "run",
            "-d",
            "--name",
            "c2",
            "localhost/uftest",
            "sh",
            "-c",
            "echo x > /running; touch /ready; sleep 1000",
        ],
    );
    let ready = wait_until(Duration::from_secs(30), || {
        p.run("podman", &["exec", "c2", "test", "-e", "/ready"])
            .status
            .success()
    });
    assert!(ready, "the container did not start");
    let diff = p.ok("podman", &["diff", "c2"]);
    p.ok("podman", &["rm", "-f", "-t", "0", "c2"]);
    // (podman itself adds /etc/hosts and friends: "C /etc".)
    let lines: Vec<&str> = diff.lines().collect();
    assert!(
        lines.contains(&"A /ready") && lines.contains(&"A /running"),
        "podman diff: {diff}"
    );
    assert!(!diff.contains("unionfuse"), "podman diff: {diff}");
}

fn buildah_from_run_commit(who: Who) {
    let Some(p) = Podman::new(who) else { return };
    p.import();
    let ctr = p.ok("buildah", &["from", "localhost/uftest"]);
    let ctr = ctr.trim();
    let out = p.ok(
        "buildah",
        &[
            "run",
            ctr,
            "--",
            "sh",
            "-c",
            &format!("echo built > /built; {ROOT_FS}"),
        ],
    );
    assert_eq!(out, "fuse.unionfuse\n");
    p.ok("buildah", &["commit", "-q", ctr, "localhost/uftest:built"]);
    p.ok("buildah", &["rm", ctr]);
    let out = p.ok(
        "podman",
        &["run", "--rm", "localhost/uftest:built", "cat", "/built"],
    );
    assert_eq!(out, "built\n");
}

#[test]
fn podman_as_root() {
    podman_run_write_and_commit(Who::Root)
}

#[test]
fn podman_rootless() {
    podman_run_write_and_commit(Who::SubIds)
}

#[test]
fn buildah_as_root() {
    buildah_from_run_commit(Who::Root)
}

#[test]
fn buildah_rootless() {
    buildah_from_run_commit(Who::SubIds)
}
