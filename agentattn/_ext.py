"""Loading the compiled extension and reporting what is available. Nothing here touches a GPU."""

from __future__ import annotations

import importlib
import os
import warnings

_C = None
_load_error: str | None = None
_warned = False


def _load():
    global _C, _load_error
    if _C is not None or _load_error is not None:
        return _C
    if os.environ.get("AGENTATTN_DISABLE_EXT", "0") == "1":
        _load_error = "disabled by AGENTATTN_DISABLE_EXT=1"
        return None
    try:
        import torch  # noqa: F401  (libtorch must be loaded before the extension)

        _C = importlib.import_module("agentattn._C")
    except ImportError as e:
        _load_error = f"{type(e).__name__}: {e}"
    return _C


def has_ext() -> bool:
    """True when agentattn._C (the compiled kernels) is loaded."""
    return _load() is not None


def has_cuda_ext() -> bool:
    """True when agentattn._C was built with its CUDA kernels: whether the dispatcher holds a CUDA kernel for
    the op. A registry query, not an op call, so torch.jit.trace / torch.export record nothing for it (the
    ``built_with_cuda`` op returns a bool, which a traced graph cannot hold)."""
    if not has_ext():
        return False
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key("agentattn::agent_attention_fwd", "CUDA")


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def warn_fallback(what: str) -> None:
    """One warning per process when a compiled kernel is missing and the reference is used."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"agentattn: compiled extension not available ({_load_error}); {what} runs on the PyTorch "
        "reference (slower, same results). Build it with `pip install --no-build-isolation .` or "
        "`bash scripts/install.sh`.",
        RuntimeWarning,
        stacklevel=3,
    )


def under_vmap(*tensors) -> bool:
    """True when a tensor is batched by ``torch.func.vmap`` (at any level of functorch wrapping). The
    compiled and Triton ops have no batching rule: PyTorch would run them once per batch entry, with a
    performance warning on every call; the reference composition uses PyTorch's own batching rules."""
    import torch

    F = getattr(torch._C, "_functorch", None)
    if F is None or torch.compiler.is_compiling():  # torch.compile traces through vmap itself
        return False
    for t in tensors:
        while isinstance(t, torch.Tensor) and F.is_functorch_wrapped_tensor(t):
            if F.is_batchedtensor(t):
                return True
            t = F.get_unwrapped(t)
    return False


def backends() -> dict:
    """What this installation can run, per device; queries no GPU.

    Returns e.g. ``{'cpu': ['cpp', 'reference'], 'cuda': ['triton', 'reference'], 'extension': True,
    'extension_error': None, 'cuda_kernels_built': False, 'triton': True, 'cpu_isa': 'avx512',
    'cpu_isas': ['avx512', 'avx2', 'generic']}``. The first entry of each list is the default.
    ``cpu_isa`` is the instruction set the C++ CPU kernels use (the best this CPU supports, or
    ``AGENTATTN_CPU_ISA``), ``cpu_isas`` those this build and CPU can run (both None without the extension).
    """
    import torch

    return {
        "cpu": device_backends("cpu"),
        "cuda": device_backends("cuda"),
        "extension": has_ext(),
        "extension_error": _load_error,
        "cuda_kernels_built": has_cuda_ext(),
        "triton": has_triton(),
        "cpu_isa": cpu_isa(),
        "cpu_isas": list(torch.ops.agentattn.cpu_isas()) if has_ext() else None,
    }


def device_backends(device_type: str) -> list:
    """The backends for ``device_type`` ('cpu' or 'cuda'), default first. Calls no op, so the dispatch can
    ask it inside a traced function (``backends()`` also asks the kernels' ISA, an op returning a string,
    which ``torch.export`` cannot trace)."""
    if device_type == "cpu":
        return (["cpp"] if has_ext() else []) + ["reference"]
    return (["cuda"] if has_cuda_ext() else []) + (["triton"] if has_triton() else []) + ["reference"]


def cpu_isa() -> str | None:
    """The instruction set of the C++ CPU kernels in use ('avx512', 'avx2' or 'generic'); None without the
    extension."""
    if not has_ext():
        return None
    import torch

    return str(torch.ops.agentattn.cpu_isa())


BACKEND_CHOICES = ("auto", "cpp", "cuda", "triton", "reference")
_SWITCHES: dict = {}  # environment switches, read once (first use): name -> value or None


def env_switch(name: str) -> str | None:
    """The value of the environment switch ``name`` as it was at its first use in this process (the
    environment is not read per call). ``reread_switches()`` forgets them (tests that change the environment)."""
    if name not in _SWITCHES:
        _SWITCHES[name] = os.environ.get(name)
    return _SWITCHES[name]


def reread_switches() -> None:
    """Forget the environment switches read so far; the next use reads the environment again."""
    _SWITCHES.clear()


def choose_backend(op: str, device_type: str, backend: str | None, avail) -> str:
    """The backend an ``op`` call on ``device_type`` uses: the argument, else ``AGENTATTN_BACKEND`` (CPU) /
    ``AGENTATTN_CUDA_BACKEND`` (CUDA) as read at first use (``AGENTATTN_BACKEND=reference``: the one global way
    to run the reference composition), else the first of ``avail`` (the available backends, fastest first).
    Falling back to the reference on CPU warns once; an unavailable explicit choice is an error."""
    env = "AGENTATTN_CUDA_BACKEND" if device_type == "cuda" else "AGENTATTN_BACKEND"
    choice = (backend or env_switch(env) or "auto").lower()
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {choice!r}")
    if choice == "auto":
        if avail[0] == "reference" and device_type == "cpu":
            warn_fallback(op)
        return avail[0]
    if choice not in avail:
        raise ValueError(
            f"backend {choice!r} is not available for {device_type} tensors here; available: {list(avail)}"
        )
    return choice
