"""Build agentattn._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is present.

Install with ``pip install --no-build-isolation .`` (torch must already be installed; build isolation
would download a second, CUDA, torch). Environment switches:

  AGENTATTN_BUILD_CUDA   auto (default) | 1 (force, fail if impossible) | 0 (skip)
  AGENTATTN_CUDA_ARCHS   e.g. "80;90" (default: TORCH_CUDA_ARCH_LIST if set, else "80;90")
  AGENTATTN_SKIP_EXT     1: build no extension at all (the package then runs on its PyTorch reference)

The build is portable: nothing is compiled with -march=native. On x86-64 the float32 CPU kernels
(csrc/cpu/aa_kernels_<isa>.cpp) are compiled once per instruction-set level with that level's flags
(ISA_FLAGS below) and the one to use is chosen at run time from the CPU's features (or
AGENTATTN_CPU_ISA=generic|avx2|avx512); everything else is compiled for the x86-64 baseline.
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg: str) -> None:
    print(f"[agentattn build] {msg}", file=sys.stderr, flush=True)


# Per-ISA kernel sources and their extra compiler flags (x86-64 only; elsewhere only the generic kernels).
ISA_FLAGS = {
    "csrc/cpu/aa_kernels_avx2.cpp": ["-mavx2", "-mfma"],
    "csrc/cpu/aa_kernels_avx512.cpp": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
}
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _isa_build_ext(base):
    """BuildExtension that compiles each ISA_FLAGS source with its own flags and links the objects in."""

    class IsaBuildExt(base):
        def build_extension(self, ext):
            isa = getattr(ext, "isa_sources", {})
            if isa:
                args = ext.extra_compile_args
                cxx = args["cxx"] if isinstance(args, dict) else args
                objs = []
                for src, flags in isa.items():
                    objs += self.compiler.compile(
                        [src],
                        output_dir=self.build_temp,
                        macros=ext.define_macros,
                        include_dirs=ext.include_dirs,
                        debug=self.debug,
                        extra_postargs={"cxx": list(cxx) + flags, "nvcc": []},
                        depends=ext.depends,
                    )
                ext.extra_objects = [o for o in (ext.extra_objects or []) if o not in objs] + objs
            super().build_extension(ext)

    return IsaBuildExt


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
        why = "torch is a CPU build" if not torch_cuda else "nvcc not found"
        if want in ("1", "yes", "true"):
            raise SystemExit(f"AGENTATTN_BUILD_CUDA=1 but {why}: cannot build the CUDA kernels")

    if "AGENTATTN_CPU_ARCH" in os.environ:
        _say(
            "AGENTATTN_CPU_ARCH is gone: the build is portable and picks the CPU kernels' ISA at run time "
            "(AGENTATTN_CPU_ISA overrides it); ignoring it"
        )
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]
    sources = [s for s in sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp")) if s not in ISA_FLAGS]
    define_macros = [("AGENTATTN_X86_ISAS", "1")] if X86 else []
    isa_sources = dict(ISA_FLAGS) if X86 else {}
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
            "agentattn._C",
            sources,
            define_macros=define_macros,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    else:
        _say(f"building C++ CPU kernels only ({why})")
        ext = CppExtension(
            "agentattn._C",
            sources,
            define_macros=define_macros,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ext.isa_sources = isa_sources
    _say(
        "CPU kernel ISAs: generic"
        + "".join(f", {os.path.basename(k)[11:-4]}" for k in isa_sources)
        + " (chosen at run time)"
    )
    build_ext = _isa_build_ext(BuildExtension).with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}


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
        "numpy",
        "einops",
        "opencv-contrib-python-headless<5",
        "scikit-learn",
        "pandas",
        "openpyxl",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"triton": ["triton"], "test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["mer=mer.__main__:run"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
