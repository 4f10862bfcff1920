"""Fail unless this Python can build and load a C extension the way Triton
does on the first launch of a kernel: the C compiler Triton looks for (CC,
else gcc, else clang), the Python headers of this interpreter's install scheme,
`-shared -fPIC -O3`, then an import. Without it the KTransformers decode kernel
dies on every chat's first token with "Failed to find C compiler", after the
server has loaded the model and passed its healthcheck."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kta_launcher", NULL, -1, methods};
PyMODINIT_FUNC PyInit_kta_launcher(void) { return PyModule_Create(&module); }
"""


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")


def include_dir() -> str:
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":  # Debian's patched default; Triton does the same
        scheme = "posix_prefix"
    return sysconfig.get_paths(scheme=scheme)["include"]


def main() -> int:
    cc = compiler()
    if cc is None:
        print("check-triton-toolchain: no C compiler (CC, gcc or clang): Triton cannot build its launcher",
              file=sys.stderr)
        return 1
    include = include_dir()
    if not os.path.isfile(os.path.join(include, "Python.h")):
        print(f"check-triton-toolchain: no Python.h in {include}: install this Python's dev headers",
              file=sys.stderr)
        return 1
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "main.c")
        so = os.path.join(work, "kta_launcher" + suffix)
        with open(src, "w") as handle:
            handle.write(SOURCE)
        done = subprocess.run([cc, src, "-O3", "-shared", "-fPIC", "-Wno-psabi", "-o", so, f"-I{include}"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"check-triton-toolchain: {cc} could not build a Python extension:\n{done.stderr.strip()}",
                  file=sys.stderr)
            return 1
        spec = importlib.util.spec_from_file_location("kta_launcher", so)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.answer() != 42:
            print("check-triton-toolchain: the built extension gave a wrong answer", file=sys.stderr)
            return 1
    print(f"check-triton-toolchain: {cc} builds and loads Python extensions against {include}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
