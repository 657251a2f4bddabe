"""Test support: a local registry and OCI test images built from busybox-static."""
