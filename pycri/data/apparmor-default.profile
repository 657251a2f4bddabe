# pycri's AppArmor profile for containers whose security context asks for RuntimeDefault.
# Namespaces, capabilities and seccomp already fence a container in; this profile
# denies what reaches past them into the host's kernel interfaces.
abi <abi/3.0>,
include <tunables/global>

profile pycri-default flags=(attach_disconnected,mediate_deleted) {
  include <abstractions/base>

  network,
  capability,
  file,
  umount,

  deny mount,
  deny pivot_root,

  signal (receive) peer=unconfined,
  signal (send,receive) peer=pycri-default,
  ptrace (trace,read,tracedby,readby) peer=pycri-default,

  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny @{PROC}/kmsg rwklx,
  deny @{PROC}/sys/kernel/** w,
  deny @{PROC}/sys/vm/** w,
  deny @{PROC}/sys/fs/** w,
  deny @{PROC}/sys/dev/** w,

  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/kernel/debug/** rwklx,
  deny /sys/fs/cgroup/** w,
  deny /sys/power/** w,
}
