//! unionfuse with a store of its own: the command, and the checks of its outcome that the
//! store, background and registry tests share.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::bin;

/// `unionfuse ARGS` on the store at `root`, with temporary files under `tmp` and no input.
pub fn command(root: &Path, tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("UNIONFUSE_ROOT", root)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    c
}

/// Its standard output, asserting success (both streams in the message otherwise).
pub fn assert_ok(args: &[&str], o: &Output) -> String {
    assert!(
        o.status.success(),
        "unionfuse {args:?}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its standard error, asserting a failure that says `expect`.
pub fn assert_refused(args: &[&str], o: &Output, expect: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "unionfuse {args:?} was accepted");
    assert!(
        err.contains(expect),
        "unionfuse {args:?}: '{expect}' not in: {err}"
    );
    err
}
