"""pycri: a Kubernetes CRI v1 runtime on runc, conmon and CNI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pycri")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
