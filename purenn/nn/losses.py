"""Loss functions: softmax cross-entropy (with label smoothing), the outlier-exposure term
(cross-entropy to the uniform distribution) and mean squared error.

Each loss is a small object: ``forward`` (or calling the object: ``loss_fn(logits, y)``)
returns the mean loss over the batch as a Python float and keeps what ``backward`` needs;
``backward`` returns the gradient of that mean with respect to the prediction, with the
prediction's shape and dtype.
"""

from __future__ import annotations

import numpy as np

from purenn.kernels.ops import log_softmax


class SoftmaxCrossEntropy:
    """Softmax cross-entropy from logits, with optional label smoothing (PyTorch's definition).

    Per sample, with ``log_p = log_softmax(logits)`` over ``K`` classes and smoothing ``eps``::

        loss = (1 - eps) * -log_p[label] + eps * mean_k(-log_p[k])

    which is the cross-entropy against the target distribution ``(1 - eps) * onehot + eps / K``.
    The reported loss is the mean over the batch, exactly as
    ``torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps)``.

    Args:
        label_smoothing: ``eps`` in ``[0, 1]``; 0 gives the plain cross-entropy.

    Input shape:
        ``logits``: ``(N, K)`` floating (float32 or float64). ``labels``: ``(N,)`` integer class
        indices in ``[0, K)``.

    Output shape:
        ``forward`` returns a Python float; ``backward`` returns ``(N, K)`` in the logits' dtype.

    Raises:
        ValueError: ``label_smoothing`` outside ``[0, 1]``, or (in ``forward``) logits that are not
            a 2-D floating array, labels that are not a 1-D integer array of length ``N``, or
            labels outside ``[0, K)``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1], received: label_smoothing={label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)
        self._probs: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing:g})"

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """Computes the mean smoothed cross-entropy over the batch.

        Args:
            logits: ``(N, K)`` float32 or float64 unnormalised scores.
            labels: ``(N,)`` integer class indices in ``[0, K)``.

        Returns:
            The mean loss as a Python float.
        """
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2 or logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(
                "logits must be a non-empty 2-D floating array of shape (N, K), received: "
                f"logits of shape {logits.shape}, dtype {logits.dtype}"
            )
        n, k = logits.shape
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array of shape ({n},) to match logits of shape "
                f"{logits.shape}, received: labels of shape {labels.shape}, dtype {labels.dtype}"
            )
        if labels.min() < 0 or labels.max() >= k:
            i = np.flatnonzero((labels < 0) | (labels >= k))[0]
            raise ValueError(
                f"labels must be class indices in [0, {k}), received: labels[{i}]={labels[i]}"
            )

        eps = self.label_smoothing
        log_p = log_softmax(logits, axis=1)
        nll = -log_p[np.arange(n), labels]
        uniform = -log_p.mean(axis=1)
        self._probs = np.exp(log_p)
        self._labels = labels
        return float(((1.0 - eps) * nll + eps * uniform).mean())

    __call__ = forward

    def backward(self) -> np.ndarray:
        """Gradient of the mean loss with respect to the logits of the last ``forward``.

        Per sample, with target ``t = (1 - eps) * onehot + eps / K`` and ``p = softmax(z)``,
        ``d/dz [-sum_k t_k * log_softmax(z)_k] = p * sum(t) - t = p - t`` since ``t`` sums to 1;
        the batch mean divides by ``N``.

        Returns:
            ``(N, K)`` array in the logits' dtype.

        Raises:
            RuntimeError: ``forward`` has not been called.
        """
        if self._probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward() called before forward()")
        n, k = self._probs.shape
        eps = self.label_smoothing
        grad = self._probs - eps / k
        grad[np.arange(n), self._labels] -= 1.0 - eps
        grad /= n
        return grad


class UniformCrossEntropy:
    """Outlier exposure (Hendrycks et al. 2019): cross-entropy of outliers' predictions to uniform.

    For ``N`` outlier images with logits ``z_i`` over ``K`` classes::

        loss = lam * mean_i [ -(1 / K) sum_k log_softmax(z_i)_k ]
             = lam * mean_i [ logsumexp(z_i) - mean_k z_ik ]

    minimal (``lam * log K``) when every outlier's softmax is uniform. Added to the training
    loss, it teaches the model to spread its probability over the classes on images that are
    none of them.

    Args:
        weight: ``lam >= 0``, the term's weight beside the in-distribution loss.

    Input shape:
        ``logits``: ``(N, K)`` floating. ``forward`` returns a Python float; ``backward``
        returns ``(N, K)`` in the logits' dtype.

    Raises:
        ValueError: ``weight`` negative or not finite; (in ``forward``) logits that are not a
            non-empty 2-D floating array.
    """

    def __init__(self, weight: float = 0.5) -> None:
        if isinstance(weight, bool) or not (
            isinstance(weight, (int, float)) and 0 <= weight < np.inf
        ):
            raise ValueError(f"weight must be a finite number >= 0, received: weight={weight!r}")
        self.weight = float(weight)
        self._probs: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"UniformCrossEntropy(weight={self.weight:g})"

    def forward(self, logits: np.ndarray) -> float:
        """The weighted mean cross-entropy to uniform of ``(N, K)`` logits."""
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(
                "logits must be a non-empty 2-D floating array of shape (N, K), received: "
                f"logits of shape {logits.shape}, dtype {logits.dtype}"
            )
        log_p = log_softmax(logits, axis=1)
        self._probs = np.exp(log_p)
        return self.weight * float(-log_p.mean(axis=1).mean())

    __call__ = forward

    def backward(self) -> np.ndarray:
        """Gradient of the loss with respect to the logits of the last ``forward``.

        ``d/dz_ij [logsumexp(z_i) - mean_k z_ik] = p_ij - 1 / K`` (``p = softmax(z_i)``); the
        batch mean divides by ``N``: ``lam * (p - 1 / K) / N`` (docs/MATH.md).

        Raises:
            RuntimeError: ``forward`` has not been called.
        """
        if self._probs is None:
            raise RuntimeError("UniformCrossEntropy.backward() called before forward()")
        n, k = self._probs.shape
        return (self._probs - 1.0 / k) * (self.weight / n)


class MSE:
    """Mean squared error over all elements, as ``torch.nn.functional.mse_loss``.

    ``loss = mean((pred - target) ** 2)``.

    Input shape:
        ``pred``: any shape, floating. ``target``: the same shape; it is cast to ``pred``'s dtype.

    Output shape:
        ``forward`` returns a Python float; ``backward`` returns ``pred``'s shape and dtype.

    Raises:
        ValueError: ``pred`` is not floating, or ``target``'s shape differs from ``pred``'s.
    """

    def __init__(self) -> None:
        self._diff: np.ndarray | None = None

    def __repr__(self) -> str:
        return "MSE()"

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """Computes the mean squared error.

        Args:
            pred: Floating array of any shape.
            target: Array of the same shape.

        Returns:
            The mean loss as a Python float.
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if not np.issubdtype(pred.dtype, np.floating):
            raise ValueError(f"pred must be a floating array, received: pred.dtype={pred.dtype}")
        if target.shape != pred.shape:
            raise ValueError(
                f"target must have pred's shape {pred.shape}, received: target.shape={target.shape}"
            )
        self._diff = np.subtract(pred, target, dtype=pred.dtype)
        return float(np.mean(np.square(self._diff)))

    __call__ = forward

    def backward(self) -> np.ndarray:
        """Gradient of the mean loss with respect to ``pred``: ``2 * (pred - target) / size``.

        Returns:
            Array of ``pred``'s shape and dtype.

        Raises:
            RuntimeError: ``forward`` has not been called.
        """
        if self._diff is None:
            raise RuntimeError("MSE.backward() called before forward()")
        return self._diff * (2.0 / self._diff.size)
