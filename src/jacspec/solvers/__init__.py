"""Spectral solvers: top singular values and eigenvalues, norms and trace estimators.

Written once against the array namespace of the operator's framework, the products of
the operator and the capabilities the ``Backend`` declares; batched operators carry
``B`` problems through one product per step.

- :func:`svds` / :func:`spectral_norm` (:mod:`.svd`): Golub–Kahan–Lanczos, power, dense.
- :func:`eigsh` (:mod:`.eig`): symmetric Lanczos, power, dense.
- :func:`trace`, :func:`frobenius_norm` (:mod:`.stochtrace`): Hutchinson, Hutch++,
  Hoffman et al.'s random projection, exact.
- :mod:`.krylov`: Golub–Kahan–Lanczos and Lanczos as ``init``/``step`` over an explicit
  state, and ``decompose`` (a number of steps under the backend's loop primitive);
  :mod:`.ritz`: extraction and thick restarts; :mod:`.driver`: the adaptive loop
  (convergence, restarts, warnings); :mod:`.power`: power iteration as steps;
  :mod:`.solve`: method dispatch.
"""

from __future__ import annotations

from .density import SpectralDensity, spectral_density
from .eig import EighResult, eigsh
from .stochtrace import frobenius_norm, trace
from .svd import SVDResult, spectral_norm, svds

__all__ = [
    "svds",
    "eigsh",
    "spectral_norm",
    "frobenius_norm",
    "trace",
    "spectral_density",
    "SpectralDensity",
    "SVDResult",
    "EighResult",
]
