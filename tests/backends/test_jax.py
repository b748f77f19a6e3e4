"""Eager JAX solves as compiled pieces: the same results as the plain eager path.

From the ``COMPILE_AFTER``-th sighting of a configuration, an eager JAX solve's pieces run
compiled, with the operator's arrays as arguments (a linearization's residuals, an
explicit matrix, a conv kernel: ``LinearOperator._staged_form``). These tests run each
solve both ways (``COMPILE_AFTER`` set very high: plain; 1: compiled at once) and compare
values, product counts, converged flags and warnings, on operators drawn by hypothesis
with fixed shapes (one compilation per configuration), and check that a function
closing over arrays that are later replaced computes with the new ones, and that a
piece called again in one solve is not compiled again. Also: a Jacobian built inside
``jax.jit`` gives its products and their gradient.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import selected_backends

pytestmark = pytest.mark.skipif("jax" not in selected_backends(),
                                reason="JAX not selected")
jax = pytest.importorskip("jax")
jnp = jax.numpy
import jacspec as js  # noqa: E402
from jacspec.backends import jax as jax_backend  # noqa: E402

M, N, B = 7, 12, 3


def _spectrum(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    s = np.sort(rng.uniform(0.1, 2.0, size))[::-1]
    if kind == "repeated":
        s[1:3] = s[0]
    elif kind == "deficient":
        s[size // 2:] = 0.0
    elif kind == "clustered":
        s[:3] = s[0] * (1 - 1e-7 * np.arange(3))
    return s


def _matrices(kind: str, seed: int) -> np.ndarray:
    """A batch of ``(M, N)`` matrices with the drawn kind of spectrum."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        U = np.linalg.qr(rng.standard_normal((M, M)))[0]
        V = np.linalg.qr(rng.standard_normal((N, M)))[0]
        out.append(U @ np.diag(_spectrum(kind, M, rng)) @ V.T)
    return np.stack(out)


def _run(mode: str, solve):
    """``solve()`` with the eager path forced plain or compiled; its warnings too."""
    old = jax_backend.COMPILE_AFTER
    jax_backend.COMPILE_AFTER = 1 if mode == "compiled" else 10**9
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = solve()
    finally:
        jax_backend.COMPILE_AFTER = old
    return out, sorted(str(w.message) for w in caught)


def _same(a, b, atol: float) -> None:
    (ra, wa), (rb, wb) = a, b
    assert ra.num_matvecs == rb.num_matvecs
    np.testing.assert_array_equal(np.asarray(ra.converged), np.asarray(rb.converged))
    np.testing.assert_allclose(np.asarray(ra.values), np.asarray(rb.values), atol=atol)
    assert wa == wb


def _svds(params: dict, method: str, k: int, maxiter: int | None):
    """The solve of the batched linear map ``params["A"]`` (read at each call)."""
    x = jnp.ones((B, N), dtype=params["A"].dtype)

    def solve():
        J = js.jacobian(lambda z: jnp.einsum("bmn,bn->bm", params["A"], z), x,
                        batched=True)
        return js.svds(J, k=k, method=method, tol=1e-8, maxiter=maxiter)

    return solve


KINDS = st.sampled_from(["random", "repeated", "deficient", "clustered"])


# One configuration per case (each compiles once); hypothesis draws the operators.
@pytest.mark.parametrize("method,k,maxiter", [("lanczos", 2, None), ("power", 1, 40)])
@settings(max_examples=4)
@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_svds_compiled_matches_plain(method, k, maxiter, kind, seed):
    A = {"A": jnp.asarray(_matrices(kind, seed))}
    solve = _svds(A, method, k, maxiter)

    plain, compiled = _run("plain", solve), _run("compiled", solve)
    _same(plain, compiled, atol=1e-9)
    if method == "lanczos" and maxiter is None:
        ref = np.linalg.svd(np.asarray(A["A"]), compute_uv=False)[:, :k]
        np.testing.assert_allclose(np.asarray(compiled[0].values), ref, atol=1e-6)


@pytest.mark.parametrize("method,k,which", [("lanczos", 2, "SA"), ("power", 1, "LA")])
@settings(max_examples=3)
@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_eigsh_hessian_compiled_matches_plain(method, k, which, kind, seed):
    A = _matrices(kind, seed)[0]
    S = jnp.asarray(A.T @ A - np.eye(N))  # symmetric, indefinite
    x = jnp.ones(N, dtype=S.dtype)

    def solve():
        H = js.hessian(lambda z: 0.5 * z @ (S @ z), x)
        return js.eigsh(H, k=k, which=which, method=method, tol=1e-6, maxiter=300)

    _same(_run("plain", solve), _run("compiled", solve), atol=1e-7)


@pytest.mark.parametrize("method,k,maxiter", [("lanczos", 2, None), ("power", 1, 40),
                                              ("dense", 1, None), ("dense", 2, None)])
@settings(max_examples=2)
@given(kind=KINDS, seed=st.integers(0, 2**16), complex_=st.booleans())
def test_explicit_matrix_compiled_matches_plain(method, k, maxiter, kind, seed, complex_):
    """An explicit matrix is the compiled pieces' argument as a linearization's arrays
    are: the same results as the plain path, real and complex, single and batched."""
    A = _matrices(kind, seed)
    if complex_:
        A = A + 1j * _matrices(kind, seed + 1)

    def svds():
        return js.svds(jnp.asarray(A), k=k, method=method, tol=1e-8, maxiter=maxiter)

    _same(_run("plain", svds), _run("compiled", svds), atol=1e-9)
    S = A[0].conj().T @ A[0]

    def eigsh():
        return js.eigsh(jnp.asarray(S), k=k, which="LA", method=method, tol=1e-8,
                        maxiter=maxiter)

    plain, compiled = _run("plain", eigsh), _run("compiled", eigsh)
    _same(plain, compiled, atol=1e-9)
    if method != "power":
        ref = np.linalg.eigvalsh(S)[::-1][:k]
        np.testing.assert_allclose(np.asarray(compiled[0].values), ref, atol=1e-8)


@pytest.mark.parametrize("kind", ["eig", "singular"])
@settings(max_examples=3)
@given(spectrum=KINDS, seed=st.integers(0, 2**16))
def test_spectral_density_compiled_matches_plain(kind, spectrum, seed):
    """Stochastic Lanczos quadrature as a compiled piece per probe: the nodes and
    weights of the plain path, breakdowns (rank-deficient spectra) included."""
    A = _matrices(spectrum, seed)
    if kind == "eig":
        A = np.swapaxes(A, -1, -2) @ A  # (B, N, N), rank M < N: breakdowns

    def density():
        return js.spectral_density(jnp.asarray(A), num_probes=3, num_steps=N, kind=kind,
                                   seed=seed)

    (plain, _), (compiled, _) = _run("plain", density), _run("compiled", density)
    scale = float(np.abs(np.asarray(plain.nodes)).max())
    np.testing.assert_allclose(np.asarray(compiled.nodes), np.asarray(plain.nodes),
                               atol=1e-10 * scale)
    # weights: per probe, the same quadrature (a repeated node's weight may split
    # differently between its copies, so compare what they integrate)
    for p in range(6):
        np.testing.assert_allclose(np.asarray(compiled.probe_moments(p)),
                                   np.asarray(plain.probe_moments(p)),
                                   atol=1e-10 * scale**p)


@pytest.mark.parametrize("padding", ["same", "circular"])
def test_conv_operator_compiled_matches_plain(padding):
    """A conv operator's kernel is the compiled pieces' argument: the plain path's
    results, and a new kernel of the same shape is read afresh."""
    rng = np.random.default_rng(7)
    for i in range(2):
        w = jnp.asarray(rng.standard_normal((3, 5, 5, 2)))  # HWIO

        def solve(w=w):
            return js.svds(js.conv.operator(w, (6, 7), stride=(1, 2), padding=padding),
                           k=2, method="lanczos", tol=1e-10)

        compiled = _run("compiled", solve)
        if i == 0:
            _same(_run("plain", solve), compiled, atol=1e-9)
        op = js.conv.operator(w, (6, 7), stride=(1, 2), padding=padding)
        ref = np.linalg.svd(np.asarray(js.dense(op)), compute_uv=False)[:2]
        np.testing.assert_allclose(np.asarray(compiled[0].values), ref, rtol=1e-8)


def test_replaced_matrix_gives_fresh_results():
    """Matrices of one shape share the compiled pieces: each solve reads its own."""
    jax_backend._compiled.clear()
    for seed in range(3):
        A = _matrices("random", seed)
        out, _ = _run("compiled", lambda A=A: js.svds(jnp.asarray(A), k=2, tol=1e-10,
                                                       method="lanczos"))
        ref = np.linalg.svd(A, compute_uv=False)[:, :2]
        np.testing.assert_allclose(np.asarray(out.values), ref, rtol=1e-8)
    assert any("dense" in str(key) for key in jax_backend._compiled)  # it was compiled


def test_nan_is_reported_compiled():
    x = jnp.zeros((B, N))  # sqrt is finite at 0, its derivative is not

    def solve(method):
        return js.svds(js.jacobian(lambda z: jnp.sqrt(z[:, :M]), x, batched=True),
                       k=2, method=method, tol=1e-8)

    for method in ("lanczos", "dense"):
        for mode in ("plain", "compiled"):
            with pytest.raises(FloatingPointError, match="NaN or Inf"):
                _run(mode, lambda method=method: solve(method))


def test_replaced_closure_gives_fresh_results():
    """A compiled solve reads the arrays f closes over as arguments: parameters
    replaced between calls (rebinding, as an optimizer step does) are seen."""
    params = {"A": jnp.asarray(_matrices("random", 0))}
    solve = _svds(params, "lanczos", 2, None)
    for i in range(3):
        out, _ = _run("compiled", solve)
        ref = np.linalg.svd(np.asarray(params["A"]), compute_uv=False)[:, :2]
        np.testing.assert_allclose(np.asarray(out.values), ref, rtol=1e-7)
        params["A"] = params["A"] * (i + 2.0) + 0.1


def _compiles(solve) -> tuple[list[str], object]:
    """The names of the programs XLA compiled during ``solve()`` (compiled mode), and
    its result."""
    names: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out, _ = _run("compiled", solve)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return names, out


@pytest.mark.parametrize("method,k", [("lanczos", 1), ("lanczos", 3), ("power", 1)])
@pytest.mark.parametrize("which", ["svds", "eigsh"])
def test_eager_solve_is_one_program(which, method, k):
    """An eager solve of a new configuration compiles one program for the solve (besides
    the linearization's), whatever its length (thick restarts, checks, the check
    restart; a power iteration: one for its start, one for its loop), and a second call
    of the configuration compiles nothing."""
    rng = np.random.default_rng(3)
    W = jnp.asarray(rng.standard_normal((43, 31)))  # shapes no other test uses
    x = jnp.ones(31)

    def solve():
        if which == "svds":
            J = js.jacobian(lambda z: W @ jnp.tanh(z), x)
            return js.svds(J, k=k, tol=1e-10, method=method, ncv=8)
        H = js.hessian(lambda z: jnp.sum(jnp.tanh(W @ z) ** 2), x)
        return js.eigsh(H, k=k, tol=1e-10, method=method, ncv=8)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first, out = _compiles(solve)
        again, _ = _compiles(solve)
    solver = [name for name in first if name.startswith("jit(stage_")]
    assert len(solver) == (2 if method == "power" else 1), first
    if method == "lanczos":  # start to result in the program: a few small ops besides
        assert out.num_matvecs > 8  # past a full basis (ncv=8): a thick restart
    assert len(first) <= (8 if method == "power" else 6), first  # a few small ops besides
    assert again == []


def test_one_placement():
    loose, placed = jnp.ones(3), jax.device_put(jnp.ones(2), jax.devices()[0])
    assert not loose.committed and placed.committed
    mixed = jax_backend._one_placement(({"a": loose}, placed, 3))
    assert mixed[0]["a"].committed and mixed[1] is placed and mixed[2] == 3
    alike = (jnp.ones(3), jnp.zeros(2))
    assert jax_backend._one_placement(alike) is alike


# -- compiled programs are the programs f computes now -----------------------------------
W3 = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])


def _spike(slope):
    """``tanh`` whose custom JVP rule scales tangents by ``slope``: models that differ
    only in a rule (``slope`` is a literal of the rule, not an array f closes over)."""

    @jax.custom_jvp
    def spike(z):
        return jnp.tanh(z)

    @spike.defjvp
    def spike_jvp(p, t):
        return spike(p[0]), slope * t[0]

    return spike


@pytest.mark.parametrize("mode", ["compiled", "plain"])
def test_custom_jvp_rule_is_part_of_the_program(mode):
    """Models that differ only in their derivative rule get their own products: the
    Jacobian, its spectral norm, and the eager spectral penalty."""
    W = jnp.asarray(W3)
    x, X = jnp.zeros(3), jnp.zeros((2, 3))
    for slope in (1.0, 5.0, 0.1):
        f = functools.partial(_apply, _spike(slope), W)
        (J, _), (s, _), (p, _) = (
            _run(mode, functools.partial(_dense_jacobian, f, x)),
            _run(mode, functools.partial(_norm_of_jacobian, f, x)),
            _run(mode, functools.partial(js.penalties.spectral, f, X, tol=1e-10)))
        np.testing.assert_allclose(np.asarray(J), slope * W3, rtol=1e-12)
        np.testing.assert_allclose(float(s), 3.0 * slope, rtol=1e-8)
        np.testing.assert_allclose(float(p), (3.0 * slope) ** 2, rtol=1e-8)


def _apply(act, W, z):
    return act(z @ W.T)


def _dense_jacobian(f, x):
    return js.dense(js.jacobian(f, x))


def _norm_of_jacobian(f, x):
    return js.spectral_norm(js.jacobian(f, x))


def test_custom_jvp_rule_in_a_hessian():
    """Second derivatives through a rule (and a rule that closes over an array, which
    the compiled program reads as an argument) are those of the rule of this call."""
    x = jnp.asarray([0.3, -0.2, 0.1])
    for scale in (1.0, 4.0):
        half_square = _half_square(jnp.full(3, scale))
        H, _ = _run("compiled", functools.partial(_dense_hessian, half_square, x))
        np.testing.assert_allclose(np.asarray(H), scale * W3.T @ W3, rtol=1e-12)


def _half_square(c):
    """``z**2 / 2`` whose rule scales the derivative by the array ``c``."""

    @jax.custom_jvp
    def half_square(z):
        return 0.5 * z**2

    @half_square.defjvp
    def half_square_jvp(p, t):
        return half_square(p[0]), c * p[0] * t[0]

    return half_square


def _dense_hessian(act, x):
    return js.dense(js.hessian(lambda z: jnp.sum(act(z @ W3.T)), x))


def test_programs_are_shared_where_the_structure_is():
    """A new function of the same structure reuses the compiled program with its own
    arrays (also through jax.nn.relu / softmax, whose rules are traced afresh at every
    call); another rule, or another literal, is another program."""
    rng = np.random.default_rng(3)
    Ws = [jnp.asarray(rng.standard_normal((9, 9))) / 3 for _ in range(2)]
    x = jnp.linspace(-1.0, 1.0, 9)

    def model(z):
        return jax.nn.softmax(Ws[1] @ jax.nn.relu(Ws[0] @ z))

    def programs():
        return {k for k in jax_backend._compiled if k[0] == "jacobian" and k[2] == (9,)}

    before = programs()
    for _ in range(3):
        J, _ = _run("compiled", functools.partial(_dense_jacobian, lambda z: model(z), x))
        ref = jax.jacfwd(model)(x)
        np.testing.assert_allclose(np.asarray(J), np.asarray(ref), rtol=1e-10, atol=1e-14)
        Ws[0] = Ws[0] * 1.5  # new parameters, same program
    assert len(programs() - before) == 1
    for slope in (1.0, 2.0, 1.0):
        f = functools.partial(_apply, _spike(slope), Ws[0])
        _run("compiled", functools.partial(_dense_jacobian, f, x))
    for c in (2.0, 3.0):
        _run("compiled", functools.partial(_dense_jacobian, functools.partial(jnp.multiply, c), x))
    # one per model above; the two slope-1 rules alike; each literal its own
    assert len(programs() - before) == 1 + 2 + 2


def test_arrays_inside_a_jitted_helper_are_read_afresh():
    """A helper under jax.jit closing over an array carries it inside its own jaxpr (not
    as a constant of f's): a new array there is a new program, never the old one's."""
    x = jnp.ones(3)
    for scale in (1.0, 2.0, 3.0):
        layer = jax.jit(functools.partial(jnp.matmul, scale * jnp.asarray(W3)))
        s, _ = _run("compiled", functools.partial(_norm_of_jacobian, layer, x))
        np.testing.assert_allclose(float(s), 3.0 * scale, rtol=1e-8)


def test_rules_inside_loops_share_programs():
    """jax.nn.relu / softmax inside lax.scan and fori_loop bodies: the exact Jacobian,
    one compiled program over calls (the carries' dependence on the tangent is followed
    through the body)."""
    W = jnp.asarray(np.random.default_rng(5).standard_normal((5, 5))) / 3
    x = jnp.linspace(-1.0, 1.0, 5)

    def rnn(z):
        def step(h, _):
            h = jax.nn.relu(W @ h + z)
            return h, jax.nn.softmax(h)

        return jax.lax.scan(step, jnp.zeros(5), None, length=4)[1].sum(0)

    def loop(z):
        return jax.lax.fori_loop(0, 3, lambda i, h: jax.nn.relu(W @ h) + z, z)

    for f in (rnn, loop):
        before = set(jax_backend._compiled)
        for _ in range(3):
            J, _ = _run("compiled", functools.partial(_dense_jacobian, lambda z, f=f: f(z), x))
            np.testing.assert_allclose(np.asarray(J), np.asarray(jax.jacfwd(f)(x)),
                                       rtol=1e-10, atol=1e-14)
        assert len([k for k in set(jax_backend._compiled) - before if k[0] == "jacobian"]) == 1


def test_jacobian_under_jit_and_grad():
    """A Jacobian built inside ``jax.jit`` gives its products and their gradient."""
    W = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)))

    @jax.jit
    def product(W, x, v):
        return js.jacobian(lambda z: jnp.tanh(W @ z), x).matvec(v)

    x, v = jnp.ones(2), jnp.asarray([1.0, -1.0])
    ref = (1 - jnp.tanh(W @ x) ** 2) * (W @ v)
    np.testing.assert_allclose(np.asarray(product(W, x, v)), np.asarray(ref), rtol=1e-12)
    g = jax.grad(lambda W: product(W, x, v).sum())(W)
    g_ref = jax.grad(lambda W: ((1 - jnp.tanh(W @ x) ** 2) * (W @ v)).sum())(W)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-12)


def test_parameters_on_a_mesh():
    """Parameters placed with NamedShardings (a one-device mesh here; four devices in
    tests/_distributed_jax_sharded.py): the operator's device is the flat vectors'
    sharding, and solves on it equal the plain operator's."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    rng = np.random.default_rng(6)
    plain = {"W": jnp.asarray(rng.standard_normal((3, 4))), "b": jnp.asarray(rng.standard_normal(4))}
    specs = {"W": P(None, "model"), "b": P()}
    placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in plain.items()}
    data = [(jnp.asarray(rng.standard_normal((5, 3))), jnp.asarray(rng.standard_normal((5, 4))))
            for _ in range(2)]

    def batch_loss(p, batch):
        return jnp.mean((jnp.tanh(batch[0] @ p["W"] + p["b"]) - batch[1]) ** 2)

    H = js.hessian(batch_loss, placed, data=data, distributed=True)
    H1 = js.hessian(batch_loss, plain, data=data)
    vectors = NamedSharding(mesh, P("model"))
    assert H.device == vectors
    b = jax_backend.BACKEND
    assert b.placement(vectors, 3, 1).spec == P(None, "model", None)
    assert b.placement(vectors, 2, None).spec == P(None, None)
    top = js.eigsh(H, k=1, which="LA", tol=1e-8)
    np.testing.assert_allclose(np.asarray(top.values), np.linalg.eigvalsh(js.dense(H1))[-1:],
                               rtol=1e-7)
    np.testing.assert_allclose(float(js.trace(H, num_probes=6, method="hutchinson")),
                               float(js.trace(H1, num_probes=6, method="hutchinson")), rtol=1e-10)
