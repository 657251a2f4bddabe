"""Container Device Interface: devices named vendor.com/class=name, described by CDI spec files
(JSON or YAML) in the configured spec dirs, whose container edits pycri applies to the OCI spec.

names.py parses qualified names and the cdi.k8s.io/ annotations, spec.py reads and checks one
spec file, registry.py gathers the spec dirs into devices, inject.py edits the OCI spec.
"""
