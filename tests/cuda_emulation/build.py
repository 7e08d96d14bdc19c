"""Compile one kernel module for the CPU with the host C++ compiler.

The input is exactly what the backend hands ``cupy.RawModule``: the code string from
``fastrnn.backends.cupy_cuda.loader.source`` and the name expressions. The code is compiled
under shim.h into a shared library with a table of its instantiations (launch.h runs them). The
library is cached in the temporary directory under a hash of everything that goes into it, so a
test session builds each module once and later sessions reuse it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")
# Warnings are errors here too; no fast-math and no FMA contraction, so float math is IEEE.
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra",
         "-Wshadow", "-Werror"]

_UNIT = """\
#include "shim.h"
#include "{module}"
#include "launch.h"

static const Entry entries[] = {{
{entries}
}};

extern "C" int fastrnn_count() {{ return {count}; }}
extern "C" const char* fastrnn_name(int i) {{ return entries[i].name; }}
extern "C" int fastrnn_describe(int i, ArgSpec* out, int capacity) {{
  return entries[i].describe(out, capacity);
}}
extern "C" void fastrnn_launch(int i, const unsigned* grid, const unsigned* block, void** args,
                               int reverse) {{
  entries[i].run(grid, block, args, reverse);
}}
"""


def translation_unit(module: str, name_expressions) -> str:
    """C++ that includes ``module`` after the shim and lists every instantiation."""
    entries = ",\n".join(
        f'  {{"{n}", &run_entry<&{n}>, &describe_entry<&{n}>}}' for n in name_expressions)
    return _UNIT.format(module=module, entries=entries, count=len(name_expressions))


def build(code: str, name_expressions) -> Path:
    """Path of the shared library for ``code``, compiling it unless the cache has it."""
    compiler = shutil.which(CXX)
    if compiler is None:
        raise RuntimeError(f"the CUDA emulation needs a C++17 compiler: {CXX!r} was not found "
                           f"(set CXX to choose another)")
    digest = hashlib.sha256()
    parts = (code, translation_unit("module.cu", name_expressions), (HERE / "shim.h").read_text(),
             (HERE / "launch.h").read_text(), compiler, " ".join(FLAGS))
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    folder = Path(tempfile.gettempdir()) / "fastrnn-cuda-emulation" / digest.hexdigest()[:20]
    library = folder / "module.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # file names of this process only, so parallel sessions never read each other's halves
    tag = os.getpid()
    (folder / f"module.{tag}.cu").write_text(code)
    unit = folder / f"unit.{tag}.cpp"
    unit.write_text(translation_unit(f"module.{tag}.cu", name_expressions))
    partial = folder / f"module.{tag}.so"
    cmd = [compiler, *FLAGS, "-I", str(HERE), "-I", str(folder), "-o", str(partial), str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling the kernels for the CPU failed:\n{' '.join(cmd)}\n"
                           f"{done.stdout}{done.stderr}")
    os.replace(partial, library)  # atomic, so parallel sessions never load a partial file
    for used in (unit, folder / f"module.{tag}.cu"):
        used.unlink()
    return library
