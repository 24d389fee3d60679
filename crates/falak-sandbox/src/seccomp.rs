//! The workload's system-call filter: an allowlist modelled on Docker's default profile.
//!
//! **Source.** moby's `profiles/seccomp/default.json` (the profile `docker run` applies unless
//! told otherwise), for x86_64 and aarch64, read as an unprivileged container sees it: the
//! unconditional allowlist, plus the entries with argument conditions (`socket`, `personality`,
//! `clone`, `clone3`), and none of the entries that Docker adds only for a capability
//! (`CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, `CAP_SYS_CHROOT`, …).
//!
//! **Default action:** `EPERM` for anything not listed, as Docker (`defaultErrnoRet: 1`). A
//! process of another ABI (i386 `int 0x80` on x86_64, arm32 on aarch64) is killed: the filter
//! checks the audit architecture first. x32 system calls (x86_64 numbers with bit 30 set) match
//! nothing and get `EPERM`.
//!
//! **Stricter than Docker.** Removed from Docker's allowlist:
//!
//! - `io_uring_setup`, `io_uring_enter`, `io_uring_register`: a large kernel attack surface,
//!   and io_uring operations bypass this filter (they are not system calls);
//! - `ptrace`, `process_vm_readv`, `process_vm_writev` (Docker allows them on kernels ≥ 4.8):
//!   a workload has no business inspecting other processes, even its own user's;
//! - `name_to_handle_at` (the other half of `open_by_handle_at`).
//!
//! Never allowed (Docker allows them only with a capability, or not at all): `bpf`,
//! `perf_event_open`, `userfaultfd`, `keyctl`, `add_key`, `request_key`, `mount`, `umount2`,
//! `mount_setattr`, `move_mount`, `open_tree`, `fsopen`, `fsconfig`, `fsmount`, `fspick`,
//! `pivot_root`, `chroot`, `unshare`, `setns`, `kexec_load`, `kexec_file_load`, `init_module`,
//! `finit_module`, `delete_module`, `reboot`, `swapon`, `swapoff`, `acct`, `settimeofday`,
//! `clock_settime`, `open_by_handle_at`, `kcmp`, `pidfd_getfd`, `process_madvise`, `syslog`,
//! `quotactl`, `quotactl_fd`, `lookup_dcookie`, `fanotify_init`, `sethostname`,
//! `setdomainname`, `iopl`, `ioperm`, `vhangup`, `mbind`, `set_mempolicy`, `get_mempolicy`,
//! `move_pages`, `migrate_pages`, `uselib`, `ustat`, `sysfs`, `_sysctl`, `nfsservctl`, …
//!
//! **With conditions,** as Docker:
//!
//! - `clone` only without namespace flags (`CLONE_NEWNS`, `NEWUTS`, `NEWIPC`, `NEWUSER`,
//!   `NEWPID`, `NEWNET`, `NEWCGROUP`): threads and `fork` work, new namespaces do not;
//! - `clone3` fails with `ENOSYS`, because a BPF filter cannot read its flags (they are behind
//!   a pointer); glibc and musl then fall back to `clone`;
//! - `personality` only with `0`, `PER_LINUX32` (8), `UNAME26` (0x20000), `PER_LINUX32 |
//!   UNAME26` and `0xffffffff` (query);
//! - `socket` for every family but `AF_VSOCK` (40).
//!
//! **Added beyond Docker's list:** `fchmodat2` (glibc 2.39 calls it for `fchmodat` and only
//! falls back on `ENOSYS`), `map_shadow_stack` (x86_64 CET shadow stacks) and `mseal`; all
//! three only restrict or change the caller's own files and memory.
//!
//! The filter is compiled once in the node ([`SeccompFilter::workload_default`]) and installed
//! in the child with a raw `prctl(PR_SET_SECCOMP)` as the last step before `exec`.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter as Filter, SeccompRule,
    TargetArch,
};

/// Namespace flags `clone` may not carry (Docker's mask `2114060288`).
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// `personality` values Docker allows.
pub const ALLOWED_PERSONALITIES: [u64; 5] = [0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: the one socket family Docker refuses (it reaches the hypervisor).
const AF_VSOCK: u64 = 40;

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// Allowed without conditions on every supported architecture.
const COMMON: &[(&str, i64)] = syscalls![
    SYS_accept,
    SYS_accept4,
    SYS_adjtimex,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_dup,
    SYS_dup3,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_ioctl,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_io_setup,
    SYS_io_submit,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lgetxattr,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_openat,
    SYS_openat2,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_pselect6,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_set_robust_list,
    SYS_setsid,
    SYS_setsockopt,
    SYS_set_tid_address,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_statfs,
    SYS_statx,
    SYS_symlinkat,
    SYS_sync,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlinkat,
    SYS_utimensat,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
    // Beyond Docker's list; see the module doc.
    SYS_mseal,
];

/// The x86_64-only system calls of Docker's list (the legacy ones aarch64 never had) and
/// `arch_prctl`/`modify_ldt`, which Docker allows on amd64.
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64)] = syscalls![
    SYS_access,
    SYS_alarm,
    SYS_chmod,
    SYS_chown,
    SYS_creat,
    SYS_dup2,
    SYS_epoll_create,
    SYS_epoll_ctl_old,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_fork,
    SYS_futimesat,
    SYS_getdents,
    SYS_getpgrp,
    SYS_getrlimit,
    SYS_get_thread_area,
    SYS_inotify_init,
    SYS_lchown,
    SYS_link,
    SYS_lstat,
    SYS_mkdir,
    SYS_mknod,
    SYS_open,
    SYS_pause,
    SYS_pipe,
    SYS_poll,
    SYS_readlink,
    SYS_rename,
    SYS_renameat,
    SYS_rmdir,
    SYS_select,
    SYS_setrlimit,
    SYS_set_thread_area,
    SYS_signalfd,
    SYS_stat,
    SYS_symlink,
    SYS_sync_file_range,
    SYS_time,
    SYS_unlink,
    SYS_utime,
    SYS_utimes,
    SYS_vfork,
    SYS_arch_prctl,
    SYS_modify_ldt,
    // Beyond Docker's list; see the module doc.
    SYS_fchmodat2,
];

/// Allowed on x86_64 but missing from `libc`'s table: `(name, number)`.
#[cfg(target_arch = "x86_64")]
const ARCH_NUMBERS: &[(&str, i64)] = &[("io_pgetevents", 333), ("map_shadow_stack", 453)];

#[cfg(target_arch = "aarch64")]
const ARCH: &[(&str, i64)] = &[];

/// Allowed on aarch64 but missing from `libc`'s table: `(name, number)` (asm-generic numbers).
#[cfg(target_arch = "aarch64")]
const ARCH_NUMBERS: &[(&str, i64)] = &[
    ("renameat", 38),
    ("sync_file_range", 84),
    ("getrlimit", 163),
    ("setrlimit", 164),
    ("io_pgetevents", 292),
    ("fchmodat2", 452),
];

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

/// System calls the issue names as never allowed, checked by the tests: `(name, number)`.
pub const REQUIRED_DENIED: &[(&str, i64)] = syscalls![
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_bpf,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_mount,
    SYS_umount2,
    SYS_unshare,
    SYS_setns,
    SYS_ptrace,
    SYS_pivot_root,
    SYS_chroot,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_reboot,
    SYS_swapon,
    SYS_swapoff,
    SYS_acct,
    SYS_settimeofday,
    SYS_clock_settime,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_kcmp,
    SYS_pidfd_getfd,
    SYS_process_madvise,
    SYS_fsopen,
    SYS_fsmount,
    SYS_move_mount,
    SYS_open_tree,
    SYS_syslog,
    SYS_quotactl,
    SYS_fanotify_init,
    SYS_sethostname,
];

/// A compiled filter, ready to install in a child between `fork` and `exec`.
#[derive(Debug, Clone)]
pub struct SeccompFilter {
    /// Installed in order. The kernel runs every installed program and the most restrictive
    /// answer wins; between two errno answers the program installed last wins, so the
    /// `clone3 → ENOSYS` program comes after the allowlist (which answers `EPERM` for it).
    programs: Vec<BpfProgram>,
}

/// Why the filter could not be compiled (a bug in the lists above, never the host's fault).
#[derive(Debug, thiserror::Error)]
#[error("cannot compile the workload's seccomp filter: {0}")]
pub struct SeccompError(String);

impl SeccompFilter {
    /// Docker's default profile with the changes listed in the module doc.
    pub fn workload_default() -> Result<SeccompFilter, SeccompError> {
        let error = |e: seccompiler::BackendError| SeccompError(e.to_string());
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            allowed_syscalls().map(|(_, number)| (number, Vec::new())).collect();

        let condition = |index, len, op, value| SeccompCondition::new(index, len, op, value).map_err(error);
        let rule = |conditions| SeccompRule::new(conditions).map_err(error);
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![condition(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS), 0)?])?],
        );
        let personality = ALLOWED_PERSONALITIES
            .iter()
            .map(|&value| rule(vec![condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?]))
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_personality, personality);
        rules.insert(
            libc::SYS_socket,
            vec![rule(vec![condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, AF_VSOCK)?])?],
        );
        let allowlist = Filter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, TARGET)
            .map_err(error)?;

        let clone3 = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        let clone3 = Filter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), TARGET)
            .map_err(error)?;

        let compile = |filter: Filter| BpfProgram::try_from(filter).map_err(|e| SeccompError(e.to_string()));
        Ok(SeccompFilter { programs: vec![compile(allowlist)?, compile(clone3)?] })
    }

    /// Install the filter on the calling thread. The caller must have set no_new_privs (or
    /// hold `CAP_SYS_ADMIN`).
    ///
    /// # Safety
    /// Async-signal-safe (two `prctl` calls on memory owned by `self`), so it may run between
    /// `fork` and `exec`; afterwards the thread can make only the allowed system calls.
    pub unsafe fn apply(&self) -> io::Result<()> {
        for program in &self.programs {
            let fprog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                // The kernel copies the program and never writes through this pointer;
                // seccompiler's `sock_filter` has the kernel's layout (`repr(C)`).
                filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
            };
            let mode = libc::SECCOMP_MODE_FILTER as libc::c_ulong;
            let zero: libc::c_ulong = 0;
            // SAFETY: prctl reads one sock_fprog that lives on this stack frame and the program
            // it points to, which `self` keeps alive.
            let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, mode, &fprog as *const libc::sock_fprog, zero, zero) };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Every system call the filter allows without conditions, by name and number.
pub fn allowed_syscalls() -> impl Iterator<Item = (&'static str, i64)> {
    COMMON.iter().chain(ARCH).chain(ARCH_NUMBERS).map(|&(name, number)| (name.trim_start_matches("SYS_"), number))
}

/// System calls allowed only with conditions on their arguments.
pub const CONDITIONAL: &[&str] = &["clone", "personality", "socket"];

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn none_of_the_required_denied_system_calls_is_allowed() {
        let allowed: BTreeMap<i64, &str> = allowed_syscalls().map(|(name, number)| (number, name)).collect();
        for (name, number) in REQUIRED_DENIED {
            assert!(!allowed.contains_key(number), "{name} ({number}) is allowed as {:?}", allowed.get(number));
        }
        for name in ["clone3", "io_uring_setup", "bpf", "keyctl", "perf_event_open", "userfaultfd"] {
            assert!(allowed.values().all(|allowed| *allowed != name), "{name} is allowed");
        }
        assert!(!allowed.contains_key(&libc::SYS_clone3));
        assert_eq!(allowed.len(), allowed_syscalls().count(), "no number is listed twice");
    }

    #[test]
    fn the_filter_compiles_within_the_kernel_limit() {
        let filter = SeccompFilter::workload_default().unwrap();
        let instructions: usize = filter.programs.iter().map(Vec::len).sum();
        // BPF_MAXINSNS: the kernel refuses longer programs.
        assert!(instructions < 4096, "{instructions} instructions");
    }

    /// Run `program` under the filter (and no_new_privs, which an unprivileged process needs).
    fn run_filtered(program: &str, args: &[&str]) -> std::process::Output {
        let filter = SeccompFilter::workload_default().unwrap();
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: prctl and the filter's apply are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) == -1 {
                    return Err(io::Error::last_os_error());
                }
                filter.apply()
            })
        };
        command.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    #[test]
    fn a_shell_and_python_still_run_under_the_filter() {
        let shell = run_filtered("/bin/sh", &["-c", "ls / >/dev/null && cat /etc/hostname && echo ok"]);
        assert!(shell.status.success(), "{shell:?}");
        assert!(String::from_utf8_lossy(&shell.stdout).ends_with("ok\n"), "{shell:?}");

        let script = "import os, threading, subprocess, socket\n\
                      t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
                      print(subprocess.run(['echo', 'child'], capture_output=True).stdout.decode().strip())\n\
                      socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n\
                      print(os.getpid() > 0)";
        let python = run_filtered("python3", &["-c", script]);
        assert!(python.status.success(), "{python:?}");
        assert_eq!(String::from_utf8_lossy(&python.stdout), "child\nTrue\n");
    }

    #[test]
    fn denied_system_calls_fail_with_eperm_and_clone3_with_enosys() {
        let script = "import ctypes, os\n\
                      libc = ctypes.CDLL(None, use_errno=True)\n\
                      buf = ctypes.create_string_buffer(256)\n\
                      for name, nr in NUMBERS:\n\
                      \x20   rc = libc.syscall(nr, 1, buf, 0, 0, 0)\n\
                      \x20   print(name, rc, ctypes.get_errno())\n";
        let numbers: Vec<String> = [
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("bpf", libc::SYS_bpf),
            ("keyctl", libc::SYS_keyctl),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("clone3", libc::SYS_clone3),
        ]
        .iter()
        .map(|(name, nr)| format!("('{name}', {nr})"))
        .collect();
        let script = script.replace("NUMBERS", &format!("[{}]", numbers.join(", ")));
        let output = run_filtered("python3", &["-c", &script]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let expected = format!(
            "io_uring_setup -1 {eperm}\nbpf -1 {eperm}\nkeyctl -1 {eperm}\nperf_event_open -1 {eperm}\n\
             userfaultfd -1 {eperm}\nclone3 -1 {enosys}\n",
            eperm = libc::EPERM,
            enosys = libc::ENOSYS
        );
        assert_eq!(stdout, expected, "{output:?}");
    }

    #[test]
    fn clone_with_a_namespace_flag_is_refused() {
        let script = format!(
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             print(libc.syscall({clone}, {newnet}, 0, 0, 0, 0), ctypes.get_errno())\n\
             print(libc.syscall({personality}, 0x0400000), ctypes.get_errno())\n",
            clone = libc::SYS_clone,
            newnet = libc::CLONE_NEWNET,
            personality = libc::SYS_personality,
        );
        let output = run_filtered("python3", &["-c", &script]);
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("-1 {0}\n-1 {0}\n", libc::EPERM), "{output:?}");
    }
}
