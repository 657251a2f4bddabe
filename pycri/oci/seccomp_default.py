"""The syscall tables of pycri's RuntimeDefault seccomp profile.

Everything not listed fails with EPERM. The lists allow what ordinary programs need (files,
memory, processes, signals, time, sockets, System V and POSIX IPC) and keep out what lets a
container reach the host or the kernel's less-guarded corners: namespaces and mounts, kernel
modules, keyrings, kexec, io_uring, clock changes, and the like, unless the container holds the
capability that makes the syscall legitimate.
"""

from __future__ import annotations

_FILES = (
    "access faccessat faccessat2 chdir fchdir chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32"
    " fchownat lchown lchown32 close close_range creat dup dup2 dup3 fadvise64 fadvise64_64 fallocate fcntl"
    " fcntl64 fdatasync fsync sync syncfs sync_file_range flock ftruncate ftruncate64 truncate truncate64"
    " getcwd getdents getdents64 link linkat lseek _llseek mkdir mkdirat mknod mknodat open openat openat2"
    " read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2 readlink readlinkat rename"
    " renameat renameat2 rmdir stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs"
    " statfs64 fstatfs fstatfs64 symlink symlinkat umask unlink unlinkat utime utimes utimensat"
    " utimensat_time64 futimesat copy_file_range sendfile sendfile64 splice tee vmsplice readahead"
    " name_to_handle_at cachestat"
)
_EXTENDED_ATTRIBUTES = (
    "getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat listxattr llistxattr"
    " flistxattr listxattrat removexattr lremovexattr fremovexattr removexattrat"
)
_WAITING_AND_EVENTS = (
    "select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create epoll_create1 epoll_ctl"
    " epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2 inotify_init"
    " inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark signalfd signalfd4 timerfd_create"
    " timerfd_settime timerfd_settime64 timerfd_gettime timerfd_gettime64"
    " io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64"
)
_MEMORY = (
    "brk mmap mmap2 munmap mremap mprotect madvise mincore mlock mlock2 mlockall munlock munlockall msync"
    " membarrier memfd_create memfd_secret remap_file_pages pkey_alloc pkey_free pkey_mprotect"
    " map_shadow_stack mseal"
)
_PROCESSES = (
    "execve execveat exit exit_group fork vfork wait4 waitid waitpid getpid getppid gettid getpgid getpgrp"
    " setpgid getsid setsid kill tkill tgkill pidfd_open pidfd_send_signal prctl set_tid_address"
    " set_robust_list get_robust_list rseq restart_syscall seccomp getpriority setpriority"
    " sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam sched_setparam"
    " sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min sched_rr_get_interval"
    " sched_rr_get_interval_time64 sched_yield ioprio_get ioprio_set getrusage getrlimit setrlimit prlimit64"
    " ugetrlimit times process_mrelease capget capset uname sysinfo getcpu getrandom ptrace"
    " process_vm_readv process_vm_writev landlock_create_ruleset landlock_add_rule landlock_restrict_self"
    " lsm_get_self_attr lsm_set_self_attr lsm_list_modules"
)
_CREDENTIALS = (
    "getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid getresuid32 getresgid"
    " getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32 setreuid setreuid32 setregid"
    " setregid32 setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid setfsgid32"
    " setgroups setgroups32"
)
_SIGNALS_AND_TIME = (
    "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigqueueinfo rt_tgsigqueueinfo rt_sigsuspend"
    " rt_sigtimedwait rt_sigtimedwait_time64 sigaltstack sigprocmask sigreturn pause alarm getitimer setitimer"
    " clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep clock_nanosleep_time64"
    " nanosleep gettimeofday time timer_create timer_delete timer_settime timer_settime64 timer_gettime"
    " timer_gettime64 timer_getoverrun adjtimex clock_adjtime clock_adjtime64"
)
_THREADS = "futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue set_thread_area get_thread_area"
_IPC = (
    "ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget shmat shmdt shmctl"
    " mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64 mq_notify"
    " mq_getsetattr pipe pipe2"
)
_SOCKETS = (
    "socket socketpair socketcall bind connect listen accept accept4 getsockname getpeername getsockopt"
    " setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 shutdown ioctl"
)

ALWAYS_ALLOWED: tuple[str, ...] = tuple(
    sorted(
        {
            name
            for group in (
                _FILES,
                _EXTENDED_ATTRIBUTES,
                _WAITING_AND_EVENTS,
                _MEMORY,
                _PROCESSES,
                _CREDENTIALS,
                _SIGNALS_AND_TIME,
                _THREADS,
                _IPC,
                _SOCKETS,
            )
            for name in group.split()
        }
    )
)

# Syscalls only some architectures have, keyed by platform.machine().
_X86_ONLY = ("arch_prctl", "modify_ldt")
_ARM_ONLY = ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls")
ALLOWED_ON_MACHINE: dict[str, tuple[str, ...]] = {
    "x86_64": _X86_ONLY,
    "i686": _X86_ONLY,
    "i386": _X86_ONLY,
    "aarch64": _ARM_ONLY,
    "armv7l": _ARM_ONLY,
    "ppc64le": ("sync_file_range2", "spu_run", "spu_create"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
}

_NEEDING_SYS_ADMIN = (
    "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick listmount lookup_dcookie mount"
    " mount_setattr move_mount open_tree open_tree_attr perf_event_open pivot_root quotactl quotactl_fd"
    " setdomainname sethostname setns statmount swapoff swapon syslog umount umount2 unshare"
)
# Syscalls a capability makes legitimate: allowed when the container holds that capability.
ALLOWED_WITH_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": tuple(_NEEDING_SYS_ADMIN.split()),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "userfaultfd"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": (
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "migrate_pages",
        "move_pages",
    ),
}

# personality(2) values that only change how the process sees the system: Linux, 32-bit Linux,
# a 2.6-style uname, both, and the 0xffffffff query.
ALLOWED_PERSONALITIES: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000
ENOSYS = 38
