"""Regenerate pycri's NRI and ttrpc Python modules from proto/nri/.

Usage: .venv/bin/python tools/gen_nri_api.py [--out DIR]

Writes api_pb2.py, api_pb2.pyi, ttrpc_pb2.py and ttrpc_pb2.pyi (default: pycri/nri/pb/).
No gRPC stubs: NRI speaks ttrpc, whose framing is pycri's own (pycri/nri/ttrpc.py). The
output depends only on the protos and the pinned grpcio-tools version, so the committed
modules can be checked by regenerating and comparing bytes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Relative to PROTO_ROOT; they are also the file names recorded in the descriptor pool.
PROTO_FILES = ("nri/api.proto", "nri/ttrpc.proto")
DEFAULT_OUT = REPO_ROOT / "pycri" / "nri" / "pb"
MODULE_NAMES = ("api_pb2.py", "api_pb2.pyi", "ttrpc_pb2.py", "ttrpc_pb2.pyi")
# NRI's Field enum has a value named None: valid protobuf, but a syntax error in a Python stub, so the
# stub leaves it out (the value is still there as api_pb2.Field.Value("None")).
_STUB_LINES_DROPPED = ("    None: _ClassVar[Field]\n", "None: Field\n")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the NRI protos and write the modules into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pycri-gen-nri-") as scratch:
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={Path(protoc.__file__).parent / '_proto'}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                *PROTO_FILES,
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed with exit code {exit_code} on {', '.join(PROTO_FILES)}")
        written = []
        for name in MODULE_NAMES:
            content = (Path(scratch) / "nri" / name).read_text(encoding="utf-8")
            if name.endswith(".pyi"):
                content = "".join(line for line in content.splitlines(keepends=True) if line not in _STUB_LINES_DROPPED)
            target = out_dir / name
            target.write_text(content, encoding="utf-8", newline="\n")
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate pycri/nri/pb from proto/nri.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: pycri/nri/pb)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
