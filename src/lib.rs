//! unionfuse: a userspace union filesystem.
//!
//! `union` is the filesystem core (plain Rust, testable without FUSE); `fuse` is the thin
//! adapter to the kernel; `mount` parses and checks what the user asked for;
//! `run` starts a command in namespaces of its own, on a union as its root.

pub mod compat;
pub mod fuse;
pub mod mount;
pub mod run;
pub mod sys;
pub mod union;
