"""Layers with their hand-written backward passes, models built from them, losses, initialisers.

Modules: ``layers/`` (one module per family, forward and backward side by side; ``LAYER_TYPES``),
``sequential`` (the stack of layers), ``losses``, ``init``. Built on :mod:`purenn.kernels` only.
"""
