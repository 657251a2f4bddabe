"""A program of its own (run by pycri as `python -I -S unshare_child.py FLAGS [HOSTNAME]`).

unshare(CLONE_NEWUSER) needs a process with one thread, which the daemon is not, so this
short-lived child makes the new namespaces instead: it unshares FLAGS (the user namespace
first, so that the others it makes belong to it), sets the UTS namespace's host name when
given one, writes "ready" and waits until pycri closes its stdin. Meanwhile pycri writes its
uid_map and gid_map and pins its namespaces by bind mounts. Only the standard library: it
runs without site-packages.
"""

import ctypes
import os
import sys


def main() -> int:
    flags = int(sys.argv[1])
    hostname = sys.argv[2].encode() if len(sys.argv) > 2 else b""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        sys.stderr.write(f"unshare: {os.strerror(ctypes.get_errno())}\n")
        return 1
    if hostname and libc.sethostname(hostname, len(hostname)) != 0:
        sys.stderr.write(f"sethostname: {os.strerror(ctypes.get_errno())}\n")
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
