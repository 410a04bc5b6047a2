//! A pseudo-terminal for tests of interactive runs.
#![allow(dead_code)]

/// A pseudo-terminal for a runner: the test holds the master side, the runner gets the
/// other end as its controlling terminal, as a login shell would.
pub struct Pty {
    pub master: std::fs::File,
    pub term: std::fs::File,
}

impl Pty {
    pub fn new(rows: u16, cols: u16) -> Pty {
        use std::os::fd::FromRawFd;
        // SAFETY (test): plain libc calls on fds this test owns; ptsname_r writes into buf.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut buf = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
            let s = libc::open(
                buf.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0);
            let p = Pty {
                master: std::fs::File::from_raw_fd(m),
                term: std::fs::File::from_raw_fd(s),
            };
            p.resize(rows, cols);
            p
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY (test): ws is a live winsize.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    /// Whether the runner's terminal is back in canonical mode (not left raw).
    pub fn canonical(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY (test): t is a live termios the call fills in.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(self.term.as_raw_fd(), &mut t) }, 0);
        t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::ECHO != 0
    }

    /// `cmd` started on the terminal, as the leader of a session it controls.
    pub fn spawn(&self, cmd: &mut std::process::Command) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        for_stdio(cmd, &self.term);
        // SAFETY (test): setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    /// Types `keys`, then reads what the terminal shows until `until` appears (or 20 s).
    pub fn send(&mut self, keys: &str, until: &str) -> String {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        self.master.write_all(keys.as_bytes()).unwrap();
        let mut seen = Vec::new();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < end {
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY (test): one live pollfd.
            if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                continue;
            }
            let mut b = [0u8; 4096];
            match self.master.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&b[..n]),
            }
            if String::from_utf8_lossy(&seen).contains(until) {
                break;
            }
        }
        let s = String::from_utf8_lossy(&seen).into_owned();
        assert!(s.contains(until), "'{until}' not shown after {keys:?}: {s}");
        s
    }
}

fn for_stdio(cmd: &mut std::process::Command, term: &std::fs::File) {
    cmd.stdin(term.try_clone().unwrap())
        .stdout(term.try_clone().unwrap())
        .stderr(term.try_clone().unwrap());
}
