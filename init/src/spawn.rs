//! Starting the app: a `vfork`-style child (`clone` with `CLONE_VM | CLONE_VFORK` on a stack of
//! its own: no copy of init's page tables and no copy-on-write faults, as glibc's `posix_spawn`
//! does), then in the child its own session with its stdio
//! ([`crate::stdio::ChildStdio`]: pipes, a pseudo-terminal, or the console), the working
//! directory (entered before the credentials change), the image user's credentials, and
//! `execve` with a `PATH` lookup in the merged environment. A failure in the child comes back
//! over a close-on-exec
//! pipe, so init can give Docker's 126/127/125 with a message.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::RawFd;

use thiserror::Error;

use pod::protocol::{GuestLine, Mark};

use crate::plan::{self, Plan};
use crate::stdio::ChildStdio;
use crate::user::ExecUser;
use crate::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP, control, cvt};

/// What failed while starting the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Setsid = 1,
    Stdio,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Stage {
    fn from_u8(b: u8) -> Stage {
        match b {
            1 => Stage::Setsid,
            2 => Stage::Stdio,
            3 => Stage::Groups,
            4 => Stage::Gid,
            5 => Stage::Uid,
            6 => Stage::Chdir,
            _ => Stage::Exec,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Setsid => "setsid",
            Stage::Stdio => "set up stdio",
            Stage::Groups => "setgroups",
            Stage::Gid => "setgid",
            Stage::Uid => "setuid",
            Stage::Chdir => "chdir to the working directory",
            Stage::Exec => "exec",
        }
    }
}

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: not executable")]
    NotExecutable(String, #[source] io::Error),
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("create working directory {0}")]
    Workdir(String, #[source] io::Error),
    #[error("{step}")]
    Child {
        step: &'static str,
        source: io::Error,
    },
    #[error("start the app's process")]
    Fork(#[source] io::Error),
}

impl SpawnError {
    /// Docker's code: 127 not found, 126 not executable, 125 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            SpawnError::NotFound(_) => EXIT_NOT_FOUND,
            SpawnError::NotExecutable(..) => EXIT_NOT_EXECUTABLE,
            _ => EXIT_SETUP,
        }
    }
}

/// The paths `execve` tries for `name`: itself when it has a `/`, else each `PATH` entry
/// (an empty entry is the working directory).
pub fn candidates(name: &str, path: &str) -> Vec<String> {
    if name.contains('/') {
        return vec![name.to_string()];
    }
    path.split(':')
        .map(|dir| match dir {
            "" => format!("./{name}"),
            d => format!("{}/{name}", d.trim_end_matches('/')),
        })
        .collect()
}

/// Everything the child needs, prepared before it is started so that it only makes system calls.
pub struct Launch {
    argv0: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    workdir: CString,
    /// Leave the console cooked (`-t`); otherwise it is put in raw mode.
    tty: bool,
    /// Init's entry time, when `hyperpod.debug` asks for the init→exec time on the console.
    debug_t0: Option<u64>,
}

fn cstrings(items: &[String], what: &'static str) -> Result<Vec<CString>, SpawnError> {
    items
        .iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| SpawnError::Nul(what)))
        .collect()
}

impl Launch {
    /// Prepares the launch of `plan` as `user` with the full environment `env`.
    pub fn new(
        plan: &Plan,
        env: &[String],
        user: &ExecUser,
        debug_t0: Option<u64>,
    ) -> Result<Launch, SpawnError> {
        let path = plan::env_get(env, "PATH").unwrap_or(plan::DEFAULT_PATH);
        let argv0 = plan.argv.first().cloned().unwrap_or_default();
        Ok(Launch {
            candidates: cstrings(&candidates(&argv0, path), "command path")?,
            argv0,
            argv: cstrings(&plan.argv, "argument")?,
            envp: cstrings(env, "environment")?,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            workdir: CString::new(plan.workdir.as_str())
                .map_err(|_| SpawnError::Nul("working directory"))?,
            tty: plan.tty,
            debug_t0,
        })
    }
}

/// Creates the working directory (as root, like Docker) when the image lacks it.
pub fn ensure_workdir(dir: &str) -> Result<(), SpawnError> {
    std::fs::create_dir_all(dir).map_err(|e| SpawnError::Workdir(dir.into(), e))
}

/// The child's own stack. It runs only system calls and a little formatting, like glibc's
/// `posix_spawn` child (which gets 32 KiB plus the argument vector).
const CHILD_STACK: usize = 64 * 1024;

/// What the child runs with, all prepared before it exists: it shares init's memory until it
/// execs or exits, so it must not allocate or change anything init relies on.
struct ChildArgs<'a> {
    launch: &'a Launch,
    stdio: &'a ChildStdio,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The `Exec` mark's control line, formatted.
    exec_mark: &'a [u8],
    /// The report pipe's two ends.
    rd: RawFd,
    wr: RawFd,
}

/// Starts the app on `stdio`; returns its pid once `execve` succeeded.
pub fn spawn(l: &Launch, stdio: &ChildStdio) -> Result<libc::pid_t, SpawnError> {
    let mut argv: Vec<*const libc::c_char> = l.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = l.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let exec_mark = GuestLine::Mark(Mark::Exec).format();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(SpawnError::Fork)?;
    let (rd, wr) = (fds[0], fds[1]);
    let args = ChildArgs {
        launch: l,
        stdio,
        argv: &argv,
        envp: &envp,
        exec_mark: exec_mark.as_bytes(),
        rd,
        wr,
    };
    // Capacity only: the child touches the pages it uses, from the top down.
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    // x86-64 wants the stack 16-byte aligned at a call.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: `top` is the aligned end of CHILD_STACK bytes that outlive the child's use of
    // them: with CLONE_VFORK this thread resumes only once the child has exec'd or exited, so
    // `stack`, `args` and everything they point to stay alive and untouched meanwhile. The
    // child shares this memory and only makes system calls on prepared data (see
    // `child_main`). Init is single-threaded, so no lock can be held across the clone.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&args as *const ChildArgs<'_>).cast_mut().cast(),
        )
    };
    drop(stack);
    // SAFETY: the parent does not use the write end.
    unsafe { libc::close(wr) };
    if pid < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: `rd` is ours and unused after this.
        unsafe { libc::close(rd) };
        return Err(SpawnError::Fork(err));
    }
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: writes at most the remaining room of `report`.
        let n = unsafe { libc::read(rd, report[got..].as_mut_ptr().cast(), report.len() - got) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: `rd` is ours and unused after this.
    unsafe { libc::close(rd) };
    if got == 0 {
        // The pipe closed on execve: the app is running.
        return Ok(pid);
    }
    // The child failed and exits: reap it here so the supervisor never sees it.
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is writable.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let stage = Stage::from_u8(report[0]);
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let err = io::Error::from_raw_os_error(errno);
    Err(match (stage, errno) {
        (Stage::Exec, libc::ENOENT | libc::ENOTDIR) => SpawnError::NotFound(l.argv0.clone()),
        (Stage::Exec, _) => SpawnError::NotExecutable(l.argv0.clone(), err),
        (s, _) => SpawnError::Child {
            step: s.name(),
            source: err,
        },
    })
}

/// The child: sets itself up and execs, or reports the failed stage and errno on the pipe and
/// exits.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` keeps alive until this child execs or exits.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: closes this child's copy of the parent's end (the descriptor table is not shared).
    unsafe { libc::close(a.rd) };
    let (stage, errno) = child(a);
    let mut report = [0u8; 5];
    report[0] = stage as u8;
    report[1..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: `report` is 5 readable bytes; _exit ends the child without running init's atexit
    // handlers or destructors.
    unsafe {
        libc::write(a.wr, report.as_ptr().cast(), report.len());
        libc::_exit(EXIT_SETUP as i32)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child's side: returns only on failure, with the failed stage and errno.
fn child(a: &ChildArgs<'_>) -> (Stage, i32) {
    let (l, argv, envp) = (a.launch, a.argv, a.envp);
    // SAFETY: every call below is a plain system call on valid, prepared arguments; the
    // signal dispositions are reset, then the mask, so the app starts like any process (and no
    // handler of init's could run on this shared memory in between).
    unsafe {
        for sig in 1..32 {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::setsid() < 0 {
            return (Stage::Setsid, errno());
        }
        match a.stdio {
            ChildStdio::Console => {
                controlling_terminal();
                if !l.tty {
                    raw_console();
                }
            }
            ChildStdio::Fds(fds) => {
                for (target, &fd) in fds.iter().enumerate() {
                    if libc::dup2(fd, target as libc::c_int) < 0 {
                        return (Stage::Stdio, errno());
                    }
                }
            }
            ChildStdio::Pty(path) => {
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return (Stage::Stdio, errno());
                }
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
                if fd > 2 {
                    libc::close(fd);
                }
            }
        }
        // The working directory is entered as root, before the credentials change, as runc
        // does: a user may run in a directory it cannot enter. If root cannot (a directory only
        // the user can reach), try again as the user.
        let entered = libc::chdir(l.workdir.as_ptr()) == 0;
        if libc::setgroups(l.groups.len(), l.groups.as_ptr()) < 0 {
            return (Stage::Groups, errno());
        }
        if libc::setgid(l.gid) < 0 {
            return (Stage::Gid, errno());
        }
        if libc::setuid(l.uid) < 0 {
            return (Stage::Uid, errno());
        }
        if !entered && libc::chdir(l.workdir.as_ptr()) < 0 {
            return (Stage::Chdir, errno());
        }
    }
    if let Some(fd) = control::fd() {
        control::write_all(fd, a.exec_mark);
    }
    if let Some(t0) = l.debug_t0 {
        // Also the absolute CLOCK_MONOTONIC reading, which bench/boot.sh places on the kernel
        // log's clock, and the TSC: under QEMU's icount it counts guest time from power-on in
        // nanoseconds, a clock that loses none of the early boot's ticks (docs/BENCHMARKS.md).
        // Formatted on the stack: this child must not allocate.
        let now = crate::monotonic_us();
        let us = now.saturating_sub(t0);
        // SAFETY: rdtsc reads the time-stamp counter; it has no memory effects.
        let tsc = unsafe { std::arch::x86_64::_rdtsc() };
        let mut line = [0u8; 128];
        let room = line.len();
        let mut rest = &mut line[..];
        if writeln!(
            rest,
            "hyperpod: init->exec {us} us, clock {now} us, tsc {tsc}"
        )
        .is_ok()
        {
            let len = room - rest.len();
            control::write_all(2, &line[..len]);
        }
    }
    let mut result = libc::ENOENT;
    for path in &l.candidates {
        // SAFETY: `path`, `argv` and `envp` are NUL-terminated strings and null-terminated
        // pointer arrays that outlive the call.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => result = libc::EACCES,
            other => return (Stage::Exec, other),
        }
    }
    (Stage::Exec, result)
}

/// Makes the console the controlling terminal and the app's stdio, when the VM has no stdio
/// device (best effort: without a terminal the app still runs, on init's descriptors).
///
/// # Safety
/// Call only in the app's child (`child`), after `setsid`.
unsafe fn controlling_terminal() {
    for path in [c"/dev/console", c"/dev/ttyS0"] {
        // SAFETY: NUL-terminated path; plain system calls on the returned descriptor.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if fd < 0 {
                continue;
            }
            if libc::ioctl(fd, libc::TIOCSCTTY, 1) == 0 {
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
                if fd > 2 {
                    libc::close(fd);
                }
                return;
            }
            libc::close(fd);
        }
    }
}

/// Puts the app's terminal (fd 0) in raw mode, so its bytes reach the host unchanged (no
/// `\n` -> `\r\n`, no echo), as `docker run` without `-t` (best effort).
///
/// # Safety
/// Call only in the app's child (`child`).
unsafe fn raw_console() {
    // SAFETY: termios is plain data, filled by tcgetattr before use; fd 0 is the console.
    unsafe {
        let mut tio: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut tio) == 0 {
            libc::cfmakeraw(&mut tio);
            libc::tcsetattr(0, libc::TCSANOW, &tio);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_candidates() {
        assert_eq!(candidates("/bin/app", "/x"), ["/bin/app"]);
        assert_eq!(candidates("./app", "/x"), ["./app"]);
        assert_eq!(
            candidates("sh", "/usr/bin:/bin/::/opt"),
            ["/usr/bin/sh", "/bin/sh", "./sh", "/opt/sh"]
        );
    }

    #[test]
    fn codes_follow_docker() {
        assert_eq!(SpawnError::NotFound("x".into()).exit_code(), 127);
        let e = SpawnError::NotExecutable("x".into(), io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.exit_code(), 126);
        let e = SpawnError::Child {
            step: "chdir",
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(e.exit_code(), 125);
    }
}
