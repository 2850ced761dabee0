"""The Layer protocol every layer follows.

- ``y = layer.forward(x, training=True)`` computes the output and keeps exactly what ``backward``
  needs; ``training=False`` is inference (Dropout is the identity, BatchNorm uses running stats).
- ``dx = layer.backward(dy)`` returns the gradient with respect to the last forward's input and
  *overwrites* the parameter gradients in ``layer.grads`` (in place: the arrays live as long as
  the layer, so optimizers can hold them). ``backward(dy, input_grad=False)`` may skip the input
  gradient and return None (a model's first layer: nobody needs dL/d(image)). ``dy`` is read
  only: a layer never writes into it (the array it returns may be ``dy`` itself or a view of it,
  as Flatten's and Add's are).
- ``layer.params`` / ``layer.grads``: dicts from PyTorch's parameter names to arrays of PyTorch's
  shapes; ``layer.buffers``: non-trained state (BatchNorm's running statistics).
- ``get_config()`` returns the constructor arguments (JSON-able), so a layer can be rebuilt
  from its type name and config.
"""

from __future__ import annotations

import inspect

import numpy as np

from purenn.kernels.workspace import Workspace


def check_dtype(dtype) -> np.dtype:
    """The layer dtype, restricted to float32 and float64."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, received: dtype={dtype}")
    return dtype


def as_float_array(x, dtype: np.dtype | None = None) -> np.ndarray:
    """``x`` as a float array: ``dtype`` when given, else x's own float dtype (float32 otherwise).

    No copy when x already has that dtype, so float32 stays float32 with no silent upcast.
    """
    x = np.asarray(x)
    if dtype is None:
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    return x.astype(dtype, copy=False)


class Layer:
    """Base class: holds parameters, gradients and buffers by name; subclasses add the math."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._scratch = Workspace()

    # -- the protocol -------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Inference only: ``forward(x, training=False)``, keeping nothing for a backward.

        The eval-mode fast path (``purenn.nn.inference``) runs it; layers whose forward keeps
        arrays for their backward override it. Merge layers take a list of tensors.
        """
        return self.forward(x, training=False)

    #: True for layers whose input is a list of tensors (Add, Concatenate).
    merges = False

    def __call__(self, x, training: bool = True):
        """``layer(x)`` is ``layer.forward(x, training)``, as in PyTorch.

        On a symbolic tensor (``pn.Input`` and what layers made of it; for a merge layer a list
        of them) it runs nothing: it adds this layer to that tensor's graph and returns the
        symbolic output, as in Keras' functional API.
        """
        inputs = x if isinstance(x, list | tuple) else [x]
        if any(hasattr(item, "graph") for item in inputs):
            return inputs[0].graph.add_node(self, list(inputs))
        return self.forward(x, training)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape (no batch axis) for a per-sample input shape; validates it."""
        return tuple(input_shape)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward floating-point operations for one sample (a multiply-add counts as 2)."""
        return 0

    def get_config(self) -> dict:
        """Constructor arguments as a JSON-able dict."""
        return {}

    # -- parameter bookkeeping ----------------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a trainable array and its zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def scratch(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A work array kept across calls and reallocated only when shape or dtype change.

        Large temporaries (im2col matrices) then cost no fresh page faults per training step.
        Only for internal use: an array returned to the caller must be new. Its content on
        return is whatever the last user left there.
        """
        return self._scratch.get(name, shape, dtype)

    def zero_grad(self) -> None:
        for grad in self.grads.values():
            grad.fill(0)

    def astype(self, dtype) -> Layer:
        """Cast parameters, gradients and buffers (new arrays: create optimizers afterwards)."""
        dtype = check_dtype(dtype)
        for store in (self.params, self.grads, self.buffers):
            for name, value in store.items():
                store[name] = value.astype(dtype)
        if hasattr(self, "dtype"):
            self.dtype = dtype
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.size for p in self.params.values())

    def check_input(self, x: np.ndarray, ndim: int, axis: int | None, expected: int | None) -> None:
        """Check a batch's rank and, optionally, its size along ``axis``.

        Raises:
            ValueError: naming the layer, the expected and the received shapes.
        """
        if x.ndim != ndim or (expected is not None and x.shape[axis] != expected):
            want = ["N"] + ["*"] * (ndim - 1)
            if expected is not None:
                want[axis] = str(expected)
            raise ValueError(
                f"{self!r} expected input of shape ({', '.join(want)}), "
                f"received shape {tuple(x.shape)}"
            )

    def __repr__(self) -> str:
        """Class name with the constructor arguments that differ from their defaults."""
        defaults = {
            name: param.default for name, param in inspect.signature(type(self)).parameters.items()
        }
        args = []
        for key, value in self.get_config().items():
            default = defaults.get(key, inspect.Parameter.empty)
            if isinstance(default, type):
                default = np.dtype(default).name
            if isinstance(value, list) and len(set(value)) == 1:
                value = value[0]
            if value != default:
                args.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"
