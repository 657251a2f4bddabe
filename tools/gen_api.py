"""Regenerate pycri's CRI v1 Python stubs from proto/runtime/v1/api.proto.

Usage: .venv/bin/python tools/gen_api.py [--out DIR]

Writes api_pb2.py, api_pb2_grpc.py and api_pb2.pyi (default: pycri/api/). The
output depends only on the proto and the pinned grpcio-tools version, so the
committed stubs can be checked by regenerating and comparing bytes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Relative to PROTO_ROOT; it is also the file name recorded in the descriptor pool.
PROTO_FILE = "runtime/v1/api.proto"
DEFAULT_OUT = REPO_ROOT / "pycri" / "api"
STUB_NAMES = ("api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi")

# protoc derives the import from the proto path; the stubs live in pycri.api instead.
_GENERATED_IMPORT = "from runtime.v1 import api_pb2 as "
_PACKAGE_IMPORT = "from pycri.api import api_pb2 as "


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the CRI proto and write the stubs into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pycri-gen-api-") as scratch:
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--python_out={scratch}",
                f"--grpc_python_out={scratch}",
                f"--pyi_out={scratch}",
                PROTO_FILE,
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed with exit code {exit_code} on {PROTO_ROOT / PROTO_FILE}")
        generated_dir = Path(scratch) / Path(PROTO_FILE).parent
        written = []
        for name in STUB_NAMES:
            content = (generated_dir / name).read_text(encoding="utf-8")
            if name == "api_pb2_grpc.py":
                content = _fix_grpc_import(content)
            target = out_dir / name
            target.write_text(content, encoding="utf-8", newline="\n")
            written.append(target)
    return written


def _fix_grpc_import(content: str) -> str:
    if content.count(_GENERATED_IMPORT) != 1:
        raise RuntimeError(f"expected exactly one {_GENERATED_IMPORT!r} line in the generated grpc module")
    return content.replace(_GENERATED_IMPORT, _PACKAGE_IMPORT)


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate pycri/api stubs from the CRI v1 proto.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: pycri/api)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
