"""jacspec: spectra of neural-network derivatives, matrix-free, in every framework.

Jacobian spectral norms, top singular values of ``J - T``, Hessian eigenvalues,
convolution-layer operator norms and the slope of a network, computed from JVPs/VJPs of
PyTorch, JAX or TensorFlow (or from explicit NumPy/SciPy operators), and turned into
differentiable training penalties.

``import jacspec`` imports no framework: backends are detected from the arrays a call
receives.

Examples
--------
>>> import numpy as np
>>> import jacspec as js
>>> op = js.aslinearoperator(np.diag([3.0, 1.0]))
>>> op.shape
(2, 2)
"""

from __future__ import annotations

from . import conv, penalties
from .datasets import ggn
from .derivatives import hessian, jacobian
from .interop import aslinearoperator, dense, to_scipy
from .lipschitz_bounds import LipschitzBounds, lipschitz
from .operators import LinearOperator, rowsum_diagonal
from .slopes import SlopeResult, slope
from .solvers import (
    EighResult,
    SpectralDensity,
    SVDResult,
    eigsh,
    frobenius_norm,
    spectral_density,
    spectral_norm,
    svds,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    "LinearOperator",
    "jacobian",
    "hessian",
    "ggn",
    "aslinearoperator",
    "rowsum_diagonal",
    "dense",
    "to_scipy",
    "svds",
    "eigsh",
    "spectral_norm",
    "frobenius_norm",
    "trace",
    "spectral_density",
    "SpectralDensity",
    "SVDResult",
    "EighResult",
    "slope",
    "SlopeResult",
    "lipschitz",
    "LipschitzBounds",
    "conv",
    "penalties",
    "__version__",
]
