"""Build agentattn._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is present.

Install with ``pip install --no-build-isolation .`` (torch must already be installed; build isolation
would download a second, CUDA, torch). Environment switches:

  AGENTATTN_BUILD_CUDA   auto (default) | 1 (force, fail if impossible) | 0 (skip)
  AGENTATTN_CUDA_ARCHS   e.g. "80;90" (default: TORCH_CUDA_ARCH_LIST if set, else "80;90")
  AGENTATTN_CPU_ARCH     -march value for the C++ kernels (default: native; "none" for a portable build)
  AGENTATTN_SKIP_EXT     1: build no extension at all (the package then runs on its PyTorch reference)
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg: str) -> None:
    print(f"[agentattn build] {msg}", file=sys.stderr, flush=True)


def _extensions():
    if os.environ.get("AGENTATTN_SKIP_EXT", "0") == "1":
        _say("AGENTATTN_SKIP_EXT=1: no compiled extension, the package will use its PyTorch reference")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:  # pragma: no cover - exercised only on a machine without torch
        raise SystemExit(
            "agentattn needs torch installed before it is built. Run `bash scripts/install.sh` "
            "(installs torch==2.13.0, CPU build, when torch is missing) or "
            "`pip install torch==2.13.0` first, then `pip install --no-build-isolation .`"
        ) from e

    want = os.environ.get("AGENTATTN_BUILD_CUDA", "auto").lower()
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    torch_cuda = torch.version.cuda is not None
    if want in ("0", "no", "false"):
        use_cuda, why = False, "AGENTATTN_BUILD_CUDA=0"
    elif torch_cuda and nvcc:
        use_cuda, why = True, f"torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc is present"
    else:
        use_cuda = False
        why = ("torch is a CPU build" if not torch_cuda else "nvcc not found")
        if want in ("1", "yes", "true"):
            raise SystemExit(f"AGENTATTN_BUILD_CUDA=1 but {why}: cannot build the CUDA kernels")

    march = os.environ.get("AGENTATTN_CPU_ARCH", "native")
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]
    if march != "none":
        cxx.append(f"-march={march}")
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        archs = os.environ.get("AGENTATTN_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "80;90"
        archs = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        for a in archs:
            nvcc_flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        define_macros.append(("AGENTATTN_WITH_CUDA", "1"))
        _say(f"building C++ CPU + CUDA kernels ({why}); archs {archs}")
        ext = CUDAExtension(
            "agentattn._C", sources, define_macros=define_macros, include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"],
        )
    else:
        _say(f"building C++ CPU kernels only ({why}); -march={march}")
        ext = CppExtension(
            "agentattn._C", sources, define_macros=define_macros, include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

setup(
    name="agentattn-mer",
    version="0.1.0",
    description="Fused Agent Attention kernels (CPU/CUDA/Triton) and a micro-expression recognition "
    "pipeline (HTNet + LAPE + ESAAT + DDPM) built on them",
    packages=find_packages(include=["agentattn", "agentattn.*", "mer", "mer.*"]),
    package_data={"mer": ["data/lists/*.csv"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",  # never resolved here on a torch-less machine: scripts/install.sh pins 2.13.0 CPU first
        "numpy", "einops", "opencv-contrib-python-headless<5", "scikit-learn", "pandas", "openpyxl",
        "tqdm", "matplotlib",
    ],
    extras_require={"triton": ["triton"], "test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["mer=mer.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
