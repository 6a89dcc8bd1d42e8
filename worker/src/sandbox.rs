//! Kernel-side protections applied to a spawned attempt. The only module of the worker that may
//! use `unsafe`, and only for the `pre_exec` hook that runs between `fork` and `exec`.
//!
//! Always active: the attempt runs in its own process group, so one signal reaches every process
//! it started. Opt-in ([`crate::WorkerOptions::die_with_worker`]): the group leader gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if the thread that spawned it (a tokio worker thread
//! of the orchestra process) goes away, e.g. when orchestra is SIGKILLed. Opt-in because any
//! `pre_exec` hook makes the standard library `fork` the whole worker instead of using
//! `posix_spawn` (vfork-like), which measurably slows short tasks.

use std::os::unix::process::CommandExt;

/// Puts the command in a new process group; with `die_with_worker`, its leader also dies with
/// the spawning thread.
pub(crate) fn confine(cmd: &mut tokio::process::Command, die_with_worker: bool) {
    cmd.as_std_mut().process_group(0);
    if !die_with_worker {
        return;
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before `exec`. It only calls `prctl` and
    // `getppid`, which are async-signal-safe, and it neither allocates nor takes locks: the
    // error path builds an `io::Error` from a raw OS code, which stores an integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
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
