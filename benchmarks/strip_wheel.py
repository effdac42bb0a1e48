"""Strip the debug sections of the shared libraries inside a wheel, in place, keeping its RECORD true.

fast-downward-textworld (ALFWorld's planner) has no wheel on PyPI; pip builds one here whose
``libdownward.so`` carries 20+ MB of debug info. ``strip --strip-debug`` removes only that (the symbols
``ctypes`` looks up stay), which brings the wheel from about 12 MB to a few, so the GPU bundle stays well
inside the 64 MiB that can be copied to the GPU machine.

    python benchmarks/strip_wheel.py wheels/fast_downward_textworld-*.whl
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def is_shared_library(name: str) -> bool:
    return name.endswith(".so") or ".so." in Path(name).name


def strip_wheel(path: str | Path) -> tuple[int, int]:
    """Strip every shared library of the wheel at ``path``; rewrite RECORD; the sizes before and after."""
    path = Path(path)
    before = path.stat().st_size
    with zipfile.ZipFile(path) as wheel:
        infos = {info.filename: info for info in wheel.infolist() if not info.is_dir()}  # modes kept
        files = {name: wheel.read(info) for name, info in infos.items()}
    record = next(name for name in files if name.endswith(".dist-info/RECORD"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in files if is_shared_library(n)]:
            lib = Path(tmp) / "lib.so"
            lib.write_bytes(files[name])
            subprocess.run(["strip", "--strip-debug", str(lib)], check=True)
            files[name] = lib.read_bytes()
    files[record] = ("\n".join([record_line(n, d) for n, d in files.items() if n != record] + [f"{record},,"]) + "\n").encode()
    staged = path.with_suffix(".tmp")
    with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(infos[name], data, compress_type=zipfile.ZIP_DEFLATED)
    staged.replace(path)
    return before, path.stat().st_size


if __name__ == "__main__":
    for wheel_path in sys.argv[1:]:
        old, new = strip_wheel(wheel_path)
        print(f"{wheel_path}: {old / 1e6:.1f} MB -> {new / 1e6:.1f} MB")
