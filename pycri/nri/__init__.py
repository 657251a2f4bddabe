"""NRI (Node Resource Interface): pycri hosts NRI plugins as containerd and CRI-O do.

Plugins connect to a unix socket (or are started from the plugin dir with a socket
pair), register, subscribe to pod and container lifecycle events, and may adjust a
container being created or update running ones. The wire format (ttrpc over a
two-channel multiplexer) is pycri's own sans-I/O code: ttrpc.py and mux.py.
"""
