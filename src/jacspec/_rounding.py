"""Floating-point error bounds behind the certified norm bounds.

A bound that claims certification must hold in the arithmetic it is computed in. The
helpers here give the standard a-priori bounds of numerical linear algebra (Higham,
"Accuracy and Stability of Numerical Algorithms", 2002): ``gamma(n) = n u / (1 - n u)``
bounds the relative error of any sum of ``n`` products in any order, so a computed
matrix product satisfies ``|fl(A B) - A B| <= gamma(k) |A| |B|`` entrywise (``k`` the
inner dimension); a Cholesky factorization that runs to completion on ``A`` is the
exact one of ``A + E`` with ``||E||_2 <= n gamma(n + 1) ||A + E||_2`` (Theorem 10.3).

Scales are handled by exact powers of two (:func:`exponent`), so that squares neither
overflow nor underflow and the rescaling itself adds no rounding.
"""

from __future__ import annotations

import math

import numpy as np

#: Unit roundoff of each real dtype (half the machine epsilon).
UNIT = {"float32": 2.0**-24, "float64": 2.0**-53}
#: The smallest positive (subnormal) number of each real dtype.
TINIEST = {"float32": 2.0**-149, "float64": 2.0**-1074}


def gamma(n: int, u: float) -> float:
    """``n u / (1 - n u)``: relative error bound of a sum of ``n`` rounded terms."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 0.5 else math.inf


def exponent(x: float) -> int:
    """``e`` with ``x / 2**e`` in ``[0.5, 1)`` (0 for ``x == 0``)."""
    return math.frexp(x)[1] if x > 0 and math.isfinite(x) else 0


def times_pow2(x: float, e: int) -> float:
    """``x * 2**e`` exactly (``inf`` past the float64 range)."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.inf


def round_up(value: float, dtype_name: str, ulps: int = 4) -> float:
    """A number representable in ``dtype_name``, at least ``value`` plus ``ulps`` units
    in the last place: casting it into an array of that dtype and adding or subtracting
    a nearby number there cannot bring it below ``value``."""
    if value == 0 or not math.isfinite(value):
        return value  # zero (a zero matrix's norm) is exact
    dt = np.dtype(dtype_name)
    with np.errstate(over="ignore"):
        v = dt.type(value)
        if float(v) < value:
            v = np.nextafter(v, dt.type(np.inf))
        for _ in range(ulps):
            v = np.nextafter(v, dt.type(np.inf))
    return float(v)


def _chol_ok(A: np.ndarray) -> bool:
    """Whether LAPACK's Cholesky factorization of the symmetric ``A`` runs to completion."""
    from scipy.linalg import lapack

    _, info = lapack.dpotrf(A, lower=False, clean=False, overwrite_a=True)
    return info == 0


class GramCertificate:
    """Certified upper bounds on ``||M||_2`` from Cholesky tests of ``mu^2 I - M^T M``.

    ``M`` (float64 NumPy, entries of modulus at most 1 after an exact power-of-two
    rescaling) is given once; its Gram matrix of the smaller side is formed in float64
    with the error bound ``||fl(G) - G||_2 <= gamma(k) || |M| ||_2^2 <= gamma(k)
    ||M||_F^2`` (``k`` the long side). :meth:`bound` then turns a passing Cholesky test
    into ``lambda_max(G) <= mu^2 + u (mu^2 + max G_ii) + kappa a + e_G`` with ``a = mu^2
    + e_G + u (mu^2 + max G_ii)`` bounding ``||mu^2 I - fl(G)||``, ``kappa = c
    gamma(c + 1) / (1 - c gamma(c + 1))`` from the Cholesky backward error and ``e_G``
    the Gram matrix's error (plus underflow: at most ``k`` subnormal units per entry).
    """

    def __init__(self, M: np.ndarray) -> None:
        M = np.asarray(M, dtype=np.float64)
        m, n = M.shape
        u = UNIT["float64"]
        self.c, k = min(m, n), max(m, n)
        self.G = M.T @ M if n <= m else M @ M.T
        fro2 = float(np.sum(M * M)) / (1.0 - gamma(m * n, u))
        self.fro2 = fro2
        self.e_G = gamma(k, u) * fro2 + self.c * k * TINIEST["float64"]
        self.d = float(np.max(np.abs(np.diag(self.G)))) if self.c else 0.0
        g = gamma(self.c + 1, u)
        self.kappa = self.c * g / (1.0 - self.c * g)

    def bound(self, mu: float) -> float | None:
        """A certified upper bound on ``||M||_2`` near ``mu``, or None where the Cholesky
        test of ``mu^2 I - fl(G)`` fails (``mu`` too low)."""
        if self.fro2 == 0.0:
            return 0.0
        u = UNIT["float64"]
        mu2 = mu * mu
        if not (mu2 > 0 and math.isfinite(mu2)):
            return None
        A = -self.G
        A[np.diag_indices_from(A)] += mu2
        if not _chol_ok(A):
            return None
        diag = u * (mu2 + self.d)
        a = mu2 + self.e_G + diag
        lam = mu2 + diag + self.kappa * a + self.e_G
        return math.sqrt(lam) * (1.0 + 8 * u)  # the few scalar operations above

    def frobenius(self) -> float:
        """``||M||_F`` from above: the bound of last resort."""
        return math.sqrt(self.fro2) * (1.0 + 8 * UNIT["float64"])

    def top(self) -> tuple[float, np.ndarray]:
        """The top eigenpair of ``fl(G)`` in float64 (an estimate, not a bound)."""
        from scipy.linalg import eigh

        lam, vec = eigh(self.G, subset_by_index=[self.c - 1, self.c - 1])
        return max(float(lam[-1]), 0.0), vec[:, -1:]
