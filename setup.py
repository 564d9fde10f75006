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
    if os.environ.get("CASCADE_RT_NO_NATIVE", "0") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    if not cpp:
        return [], {}
    from torch.utils import cpp_extension as ce

    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    want_cuda = os.environ.get("CASCADE_RT_CUDA")
    if want_cuda is None:
        use_cuda = bool(cu) and __import__("torch").version.cuda is not None and ce.CUDA_HOME is not None
    else:
        use_cuda = want_cuda == "1"
    cxx = ["-O3", "-std=c++17"]
    if os.name != "nt":
        cxx += ["-fopenmp"]
    define = [("CASCADE_RT_WITH_CUDA", "1")] if use_cuda else []
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = ce.CUDAExtension(
            "cascade_rt._C", cpp + cu, define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"] if os.name != "nt" else [],
        )
    else:
        ext = ce.CppExtension(
            "cascade_rt._C", cpp, extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"] if os.name != "nt" else [],
        )
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
