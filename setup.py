"""Build script: the pure-Python package plus the optional native extension ``effreason._C``.

The extension is built only when torch is importable at build time (install with
``pip install --no-build-isolation -e .`` so the build sees your torch) and a C++
compiler exists. Source layout under ``csrc/<part>/``:

* ``*.cpp``       CPU code and op schemas, always compiled.
* ``*_cuda.cpp``  torch-facing CUDA glue (tensor checks, stream, registration), CUDA builds only.
* ``*.cu``        CUDA kernels with plain launchers (toolkit headers only), CUDA builds only.

Environment switches:

* ``EFFREASON_SKIP_NATIVE=1``   build no native code at all.
* ``EFFREASON_SKIP_CUDA=1``     build the CPU part only, even where CUDA is available.
* ``EFFREASON_CUDA_ARCHS``      semicolon list of SM targets, default ``80;90``: machine code for each,
                                plus PTX of the newest, which GPUs newer than every target compile at load.

``python setup.py --print-cuda-flags`` prints the nvcc flags of a build (CI's compile check uses them).
"""

import glob
import os
import shutil
import sys

from setuptools import setup



def _python_packages():
    """Every package under effreason/ plus the top-level kernels/ folder installed as effreason.kernels."""
    found = ["effreason"]
    for init in glob.glob("effreason/**/__init__.py", recursive=True):
        package = os.path.dirname(init).replace(os.sep, ".")
        if package != "effreason":
            found.append(package)
    return sorted(set(found)) + ["effreason.kernels"]


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _have_cxx():
    return any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++"))


DEFAULT_CUDA_ARCHS = "80;90"
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp"]  # -fopenmp: at::parallel_for is an OpenMP pragma in ATen's headers
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]


def cuda_gencode_flags():
    """``sm_XX`` machine code per target in ``EFFREASON_CUDA_ARCHS`` and ``compute_XX`` PTX of the newest
    (without an ``a``/``f`` suffix: architecture-specific PTX cannot be compiled for other GPUs)."""
    archs = [arch.strip() for arch in os.environ.get("EFFREASON_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";") if arch.strip()]
    flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in archs]
    newest = max((arch.rstrip("af") for arch in archs), key=int)
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def _native_extensions():
    """Return (ext_modules, cmdclass) for effreason._C, or ([], {}) when it cannot be built."""
    if _flag("EFFREASON_SKIP_NATIVE"):
        print("effreason: EFFREASON_SKIP_NATIVE set, building the pure-Python package only", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("effreason: torch not importable at build time, skipping effreason._C "
              "(install torch first and use --no-build-isolation to build it)", file=sys.stderr)
        return [], {}
    if not _have_cxx():
        print("effreason: no C++ compiler found, skipping effreason._C", file=sys.stderr)
        return [], {}

    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    if not cpp_sources:
        return [], {}
    cpu_sources = [s for s in cpp_sources if not s.endswith("_cuda.cpp")]
    cuda_sources = [s for s in cpp_sources if s.endswith("_cuda.cpp")]
    cuda_sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
    with_cuda = (
        not _flag("EFFREASON_SKIP_CUDA")
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is not None
    )
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            name="effreason._C",
            sources=cpu_sources + cuda_sources,
            include_dirs=[os.path.abspath("csrc")],
            define_macros=[("EFFREASON_WITH_CUDA", "1")],
            extra_link_args=["-fopenmp"],
            extra_compile_args={
                "cxx": CXX_FLAGS,
                "nvcc": NVCC_FLAGS + cuda_gencode_flags(),
            },
        )
    else:
        extension = cpp_extension.CppExtension(
            name="effreason._C",
            sources=cpu_sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    print(f"effreason: building effreason._C ({'CPU + CUDA' if with_cuda else 'CPU'})", file=sys.stderr)
    return [extension], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


def main():
    if sys.argv[1:] == ["--print-cuda-flags"]:
        print(" ".join(NVCC_FLAGS + cuda_gencode_flags()))
        return
    ext_modules, cmdclass = _native_extensions()
    setup(
        packages=_python_packages(),
        package_dir={"effreason": "effreason", "effreason.kernels": "kernels"},
        package_data={"effreason": ["assets/**/*", "data/fixtures/*"]},
        include_package_data=True,
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )


if __name__ == "__main__":
    main()
