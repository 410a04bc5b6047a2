//! Terminals: the caller's (raw mode, window size) and a pseudo-terminal of the container's
//! own devpts, plus the poll and signalfd calls of the loop that relays between them.

use super::*;

/// Whether `fd` is a terminal this process may read and set: the controlling terminal, with
/// this process in its foreground process group (a job put in the background must not take
/// the terminal into raw mode under the shell).
pub fn is_foreground_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take no pointers.
    unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty takes no pointers.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal put into raw mode; its previous mode comes back on drop.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on terminal `fd` (which the caller keeps open for the guard's life).
    pub fn enter(fd: RawFd) -> Result<RawMode> {
        // SAFETY: termios is plain data that tcgetattr fills in whole before it is read.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: saved is a live termios.
        check(unsafe { libc::tcgetattr(fd, &mut saved) })?;
        let mut raw = saved;
        // SAFETY: raw is a live, initialized termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: raw is a live, initialized termios.
        check(unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) })?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: saved is the termios read from this fd when the guard was made.
        unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) };
    }
}

/// The window size of terminal `fd`, as (rows, columns, x pixels, y pixels).
pub fn window_size(fd: RawFd) -> Option<[u16; 4]> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills in.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ws is a live winsize, as TIOCGWINSZ writes.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some([ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel])
}

/// Sets the window size of terminal `fd` (a pty's master: the kernel then sends SIGWINCH to
/// the foreground process group of its other end).
pub fn set_window_size(fd: BorrowedFd<'_>, size: [u16; 4]) -> Result<()> {
    let ws = libc::winsize {
        ws_row: size[0],
        ws_col: size[1],
        ws_xpixel: size[2],
        ws_ypixel: size[3],
    };
    // SAFETY: ws is a live winsize, as TIOCSWINSZ reads.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// A new pseudo-terminal of the devpts mounted at `/dev/pts` (through `/dev/ptmx`):
/// (master, terminal, its number). Both ends are close-on-exec.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, u32)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: the path is NUL-terminated.
    let m = check(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
    // SAFETY: m was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, which lives for the call.
    check(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into n.
    check(unsafe { libc::ioctl(m, libc::TIOCGPTN, &mut n) })?;
    let path = CString::new(format!("/dev/pts/{n}")).expect("no NUL in digits");
    // SAFETY: path is NUL-terminated.
    let s = check(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: s was just opened and is owned by nobody else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }, n))
}

/// Makes terminal `fd` the controlling terminal of this process, which must lead a session
/// that has none (just after `setsid`).
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: F_GETFL and F_SETFL take integer arguments.
    unsafe {
        let fl = check(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        check(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            fl | libc::O_NONBLOCK,
        ))
        .map(drop)
    }
}

/// `read(2)` on `fd`, retried on EINTR.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: buf is live and writable for its length.
    retry(-1, || unsafe {
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
    })
    .map(|n| n as usize)
}

/// `write(2)` on `fd`, retried on EINTR (it may write less than `buf`).
pub fn write(fd: RawFd, buf: &[u8]) -> Result<usize> {
    // SAFETY: buf is live and readable for its length.
    retry(-1, || unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len())
    })
    .map(|n| n as usize)
}

/// Waits until one of `fds` (fd, events) is ready; returns each one's `revents`. EINTR is
/// an empty answer.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: p holds p.len() live pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = Errno::last();
        if e.0 == libc::EINTR {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// The next signal queued on a signalfd, if any: (signal, whether a process sent it).
pub fn read_signal(fd: BorrowedFd<'_>) -> Option<(i32, bool)> {
    // SAFETY: signalfd_siginfo is plain data the read fills in whole.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: info is live and `size` bytes long.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    (n as usize == size).then_some((info.ssi_signo as i32, info.ssi_code != libc::SI_KERNEL))
}

/// `fchown` of an open fd (a terminal given to the command's user).
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: fchown takes no pointers.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// What was typed on terminal `fd` in canonical mode and not read yet: complete lines, and
/// an end of input (^D) as the byte 4 (VEOF's default), which raw mode would otherwise turn
/// into a NUL byte. Taken just before the terminal goes raw, to be passed on as typed.
pub fn take_pending_input(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..64 {
        match poll(&[(fd, libc::POLLIN)], 0) {
            Ok(r) if r[0] & libc::POLLIN != 0 => {}
            _ => break,
        }
        let mut buf = [0u8; 4096];
        match read(fd, &mut buf) {
            Ok(0) => {
                out.push(4);
                break;
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}
