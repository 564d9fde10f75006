"""Build cascade_rt and its native extension ``cascade_rt._C``.

Environment switches (read here only; nothing probes hardware or the network):
  CASCADE_RT_NO_NATIVE=1     skip the native extension (pure Python + Triton install)
  CASCADE_RT_CUDA=1 / =0     force the CUDA extension on / off (default: on when torch has
                             CUDA and nvcc is found through CUDA_HOME or PATH)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")
  MAX_JOBS                   parallel compile jobs
"""
import glob
import os
import re

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    with open(os.path.join(ROOT, "cascade_rt", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _native_extensions():
    """``cascade_rt._C``: a CppExtension always, a CUDAExtension when CUDA is wanted.

    CUDA is wanted when ``CASCADE_RT_CUDA=1``, or (unset) when torch is a CUDA build and nvcc
    is found; a GPU is never looked for. The ops' schemas live in csrc/registration.cpp, their
    CPU kernels in csrc/cpu/, their CUDA kernels in csrc/cuda/.
    """
    if os.environ.get("CASCADE_RT_NO_NATIVE", "0") == "1":
        print("cascade_rt: CASCADE_RT_NO_NATIVE=1, not building the native extension")
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    if not cpp:
        return [], {}
    import torch
    from torch.utils import cpp_extension as ce

    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    want_cuda = os.environ.get("CASCADE_RT_CUDA")
    nvcc_found = ce.CUDA_HOME is not None and os.path.exists(
        os.path.join(ce.CUDA_HOME, "bin", "nvcc.exe" if os.name == "nt" else "nvcc"))
    if want_cuda is None:
        use_cuda = bool(cu) and torch.version.cuda is not None and nvcc_found
    else:
        use_cuda = want_cuda == "1"
        if use_cuda and torch.version.cuda is None:
            raise RuntimeError(f"CASCADE_RT_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        if use_cuda and not nvcc_found:
            raise RuntimeError("CASCADE_RT_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit root")
    # torch's build helper picks the C++ standard its headers need (C++20 for recent torch)
    # -fno-trapping-math lets GCC vectorise the branch-free softmax/exp loops (no FP traps used)
    cxx = ["-O3", "-fno-trapping-math"]
    link = []
    if os.name != "nt":
        cxx += ["-fopenmp"]  # at::parallel_for in the CPU kernels runs on OpenMP
        link += ["-fopenmp"]
    if use_cuda:
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # reported by build_info(); one identifier-safe token (the build runs through a shell)
        arch_tag = "sm_" + "_".join(re.sub(r"[^0-9A-Za-z]", "", a) for a in re.split(r"[;\s]+", archs) if a)
        ext = ce.CUDAExtension(
            "cascade_rt._C", cpp + cu,
            define_macros=[("CASCADE_RT_WITH_CUDA", "1"), ("CASCADE_RT_CUDA_ARCHS", arch_tag)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=link,
        )
    else:
        ext = ce.CppExtension("cascade_rt._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_extensions()

setup(
    version=_version(),
    packages=["cascade_rt", "cascade_rt.kernels"] + [
        f"cascade_rt.{p}" for p in ("data", "train", "evaluate") if os.path.isdir(os.path.join(ROOT, "cascade_rt", p))
    ],
    package_dir={"cascade_rt": "cascade_rt", "cascade_rt.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
