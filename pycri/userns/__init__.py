"""Pods in a user namespace of their own (Kubernetes hostUsers: false).

mappings.py checks the ID mappings kubelet sends; namespaces.py makes and pins the pod's
user namespace with the network, IPC and UTS namespaces it owns; syscalls.py and
mounts.py make the ID-mapped mounts runc 1.1 cannot make itself; layout.py says where those
pods' layers live and who may walk there.
"""
