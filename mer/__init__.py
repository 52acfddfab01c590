"""mer: micro-expression recognition built on agentattn.

Subpackages are imported on demand (``mer.data``, ``mer.models``, ...), so ``import mer`` stays cheap.
"""

__version__ = "0.1.0"
