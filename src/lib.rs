//! unionfuse: a userspace union filesystem.
//!
//! `union` is the filesystem core (plain Rust, testable without FUSE); `fuse` is the thin
//! adapter to the kernel; `request` parses and checks what the user asked for, `daemon`
//! mounts and serves it; `error` holds the one-line errors of every front end;
//! `run` starts a command in namespaces of its own, on a union as its root; `store` keeps
//! images and containers, `containers` puts them to work through `run`, and `background`
//! keeps containers running detached (logs, attach, exec, top, stop, kill).
//!
//! Every `unsafe` of the crate lives in `sys`, the one syscall floor; the other modules are
//! forbidden to have any.

#[forbid(unsafe_code)]
pub mod cli;
#[forbid(unsafe_code)]
pub mod compat;
#[forbid(unsafe_code)]
pub mod containers;
#[forbid(unsafe_code)]
pub mod daemon;
#[forbid(unsafe_code)]
pub mod error;
#[forbid(unsafe_code)]
pub mod fuse;
#[forbid(unsafe_code)]
pub mod logs;
#[forbid(unsafe_code)]
pub mod records;
#[forbid(unsafe_code)]
pub mod request;
#[forbid(unsafe_code)]
pub mod run;
#[forbid(unsafe_code)]
pub mod store;
pub mod sys;
#[forbid(unsafe_code)]
pub mod union;
#[forbid(unsafe_code)]
pub mod userns;
