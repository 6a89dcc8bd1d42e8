//! Kernel-side protections applied to a spawned attempt. The only module of the worker that may
//! use `unsafe`, and only for the `pre_exec` hook that runs between `fork` and `exec`.
//!
//! Active today: the attempt runs in its own process group (so a signal reaches every process
//! it started) and its leader dies with SIGKILL when the thread that spawned it — a tokio worker
//! thread of the orchestra process — exits (`PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;

/// Puts the command in a new process group and makes its leader die with the orchestra process.
pub(crate) fn confine(cmd: &mut tokio::process::Command) {
    cmd.as_std_mut().process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`. It only calls `prctl` and
    // `getppid`, which are async-signal-safe, and it neither allocates nor takes locks: the
    // error path builds an `io::Error` from a raw OS code, which stores an integer.
    if std::env::var_os("NO_PDEATH").is_none() {
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between `fork` and `prctl`; the death signal would then
                // never come, so refuse to run as an orphan.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}
