"""nvcc compiles every kernel source, every dtype instantiation, for sm_75, sm_80 and sm_90.

What is compiled is what the backend hands cupy.RawModule (loader.source: the file with
common.cuh pasted in), followed by a table that takes the address of every name expression the
loader asks NVRTC for, so each one is instantiated. Warnings are errors for nvcc, for the host
compiler and for ptxas. ptxas reports each entry function it compiles per architecture; the
tests check that every instantiation is there for every architecture and spills no registers.
The three files compile in parallel, once per session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastrnn.backends.cupy_cuda import loader

ARCHS = ("75", "80", "90")


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(Path(home, "bin", "nvcc"), os.X_OK):
            return str(Path(home, "bin", "nvcc"))
    return None


NVCC = _find_nvcc()

pytestmark = [
    pytest.mark.nvcc,
    pytest.mark.skipif(NVCC is None, reason="nvcc not found (not on PATH, CUDA_HOME, "
                                            "CUDA_PATH or /usr/local/cuda)"),
]

FILES = sorted(loader.TEMPLATES)


def instantiating_source(file: str) -> str:
    table = ",\n".join(f"    (void*)&{n}" for n in loader.name_expressions(file))
    return (f"{loader.source(file)}\n"
            f"// Every instantiation the backend loads, as NVRTC would through name_expressions.\n"
            f"void* fastrnn_instantiations[] = {{\n{table}\n}};\n")


def nvcc_command(src: Path, obj: Path) -> list:
    cmd = [NVCC, "-std=c++17", "-c", str(src), "-o", str(obj),
           "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
           "-Xptxas", "--warning-as-error", "--resource-usage"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """file -> (command, return code, output); the nvcc runs proceed side by side."""
    folder = tmp_path_factory.mktemp("nvcc")
    running = {}
    for file in FILES:
        src = folder / file
        src.write_text(instantiating_source(file))
        cmd = nvcc_command(src, folder / f"{file}.o")
        running[file] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True))
    results = {}
    for file, (cmd, proc) in running.items():
        out, _ = proc.communicate()
        results[file] = (cmd, proc.returncode, out)
    return results


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILLS = re.compile(r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, "
                     r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(symbols):
    out = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True,
                         check=True).stdout.split("\n")
    # "void lstm_forward<float>(float const*, ...)" -> "lstm_forward<float>"
    return [re.sub(r"^void ", "", s).split("(")[0] for s in out[:len(symbols)]]


@pytest.mark.parametrize("file", FILES)
def test_compiles_without_warnings(compiled, file):
    cmd, code, out = compiled[file]
    assert code == 0, f"{' '.join(cmd)}\n{out}"
    assert "warning" not in out.lower(), out


@pytest.mark.parametrize("file", FILES)
def test_every_instantiation_for_every_architecture(compiled, file):
    _, code, out = compiled[file]
    assert code == 0, out
    entries = _ENTRY.findall(out)
    names = demangle([symbol for symbol, _ in entries])
    found = {arch: sorted(n for n, (_, a) in zip(names, entries) if a == arch) for arch in ARCHS}
    expected = sorted(loader.name_expressions(file))
    for arch in ARCHS:
        assert found[arch] == expected, f"sm_{arch}"


@pytest.mark.parametrize("file", FILES)
def test_no_register_spills(compiled, file):
    _, code, out = compiled[file]
    assert code == 0, out
    props = _SPILLS.findall(out)
    assert len(props) == len(ARCHS) * len(loader.name_expressions(file))
    for symbol, stack, stores, loads in props:
        assert (int(stack), int(stores), int(loads)) == (0, 0, 0), symbol


def test_the_check_sees_a_warning(tmp_path):
    """The flags turn a warning in a kernel into a failure (here an unused variable)."""
    src = tmp_path / "warn.cu"
    src.write_text("template <typename T> __global__ void k(T* p) { int unused = 1; p[0] = 0; }\n"
                   "void* table[] = {(void*)&k<float>};\n")
    done = subprocess.run(nvcc_command(src, tmp_path / "warn.o"), capture_output=True, text=True)
    assert done.returncode != 0
    assert "unused" in (done.stdout + done.stderr)
