"""Ops: one folder per op, each with ``naive.py`` (the reference that defines the semantics) beside the
dispatch/registration code (``op.py``) and the Triton kernels (``triton.py``)."""
