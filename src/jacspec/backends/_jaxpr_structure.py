"""The structure of a jaxpr, as a key for the programs compiled from it.

Two jaxprs with equal :func:`structure` are one program: the same equations in the
same order, wired the same way, with equal primitives, parameters, literal values
(compared bit for bit), context and types; only the values of their constants (which
the compiled programs take as arguments) may differ. Parameters compare by their own
equality, as JAX's op-by-op dispatch keys its compiled primitives; a nested jaxpr by its
structure; a constant of a nested jaxpr by identity (a JAX array never changes) or, for
a NumPy array, by value; anything else (a Python callback) by the object's own
equality, which for functions is identity. Nothing is compared by how it prints.

One exception makes programs with ``jax.custom_jvp`` functions (``jax.nn.relu``,
``jax.nn.softmax``) reusable: the rules of a custom-derivative call are left out where
the call's inputs do not depend on the tangent inputs named by the caller. The jaxprs
keyed here are JVP programs that are then linearized in those tangents only, so such a
call is evaluated (its ``call_jaxpr``, which is compared) and never differentiated: its
rule cannot change the program. The dependence is followed into calls, branches and
loop bodies (a loop's carry to a fixed point); where it cannot be followed, rules are
kept and compared by identity (a new trace never matches: safe, and recompiled).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from jax.extend import core as jcore

# Parameters holding the derivative rules of a custom-derivative call.
_RULE_PARAMS = frozenset({"jvp_jaxpr_fun", "jvp_jaxpr_thunk", "fwd_jaxpr_thunk", "bwd",
                          "out_trees"})
_RULE_CALLS = frozenset({"custom_jvp_call", "custom_vjp_call"})
# Primitives whose nested jaxprs take the equation's inputs one to one (``cond``'s
# branches: all but the first, the branch index); others are assumed to mix them.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint",
                    "custom_jvp_call", "custom_vjp_call", "cond"})


class Structure:
    """A hashable, comparable structure (see the module docstring); its hash is
    computed once."""

    __slots__ = ("_parts", "_hash")

    def __init__(self, parts: tuple) -> None:
        self._parts = parts
        self._hash = hash(parts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Structure) and self._hash == other._hash
                                 and self._parts == other._parts)

    def __repr__(self) -> str:
        return f"<jaxpr structure {self._hash:#x}>"


def structure(jaxpr: Any, tangent_inputs: Sequence[bool]) -> Structure:
    """The structure of ``jaxpr`` (a ``Jaxpr``), whose input ``i`` is a tangent where
    ``tangent_inputs[i]`` (constants never are). Raises TypeError for an unhashable
    parameter (the caller then compiles nothing)."""
    return Structure(_parts(jaxpr, list(tangent_inputs)))


class _Same:
    """An object compared by identity (a JAX array: immutable, unhashable)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


def _value(v: Any) -> Hashable:
    """A literal's or a NumPy constant's value, bit for bit (``0.0`` and ``-0.0``
    differ; a NaN equals itself)."""
    a = np.asarray(v)
    return ("value", a.dtype.str, a.shape, a.tobytes())


def _param(p: Any, tangent: bool) -> Hashable:
    if isinstance(p, (jcore.Jaxpr, jcore.ClosedJaxpr)):
        inner = p.jaxpr if isinstance(p, jcore.ClosedJaxpr) else p
        return (_parts(inner, [tangent] * len(inner.invars)), _consts(p))
    if isinstance(p, (tuple, list)):
        return (type(p), tuple(_param(q, tangent) for q in p))
    if isinstance(p, dict):
        return (dict, tuple((k, _param(q, tangent)) for k, q in p.items()))
    if isinstance(p, (float, complex, np.ndarray, np.generic)):
        return _value(p)
    return p


def _nested(eqn: Any, name: str, p: Any, flags: list[bool]) -> Hashable:
    """A nested jaxpr of ``eqn``, its inputs' tangent flags mapped where they can be."""
    inner = p.jaxpr if isinstance(p, jcore.ClosedJaxpr) else p
    prim = eqn.primitive.name
    n = len(inner.invars)
    if prim in _CALLS and n == len(flags):
        inner_flags = flags
    elif prim == "cond" and n == len(flags) - 1:
        inner_flags = flags[1:]
    else:
        inner_flags = _loop_flags(eqn, name, inner, flags) or [any(flags)] * n
    return (name, _parts(inner, inner_flags), _consts(p))


def _loop_flags(eqn: Any, name: str, inner: Any, flags: list[bool]) -> list[bool] | None:
    """The tangent flags of a ``scan`` body's or a ``while`` loop's inputs: a carry is a
    tangent where it enters as one or where the body makes it one (a fixed point over
    the body). None for other primitives."""
    prim, params = eqn.primitive.name, eqn.params
    if prim == "scan" and name == "jaxpr":
        consts, n_carry = params["num_consts"], params["num_carry"]
        head, carry, rest = flags[:consts], flags[consts:consts + n_carry], \
            flags[consts + n_carry:]
        body = inner
    elif prim == "while" and name in ("body_jaxpr", "cond_jaxpr"):
        c, b = params["cond_nconsts"], params["body_nconsts"]
        carry, rest = flags[c + b:], []
        body = params["body_jaxpr"].jaxpr
        body_head = flags[c:c + b]
        head = flags[:c] if name == "cond_jaxpr" else body_head
    else:
        return None
    n_carry = len(carry)
    while True:  # at most n_carry rounds: flags only turn on
        body_flags = (body_head if prim == "while" else head) + carry + rest
        out = _out_tangents(body, body_flags)[:n_carry]
        grown = [a or b for a, b in zip(carry, out, strict=True)]
        if grown == carry:
            break
        carry = grown
    inner_flags = head + carry + rest
    return inner_flags if len(inner_flags) == len(inner.invars) else None


def _out_tangents(jaxpr: Any, flags: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on its tangent inputs (an equation's outputs on
    any of its inputs: an over-estimate, the safe side)."""
    tangent = {v for v, t in zip(jaxpr.invars, flags, strict=True) if t}
    for eqn in jaxpr.eqns:
        if any(not isinstance(a, jcore.Literal) and a in tangent for a in eqn.invars):
            tangent.update(eqn.outvars)
    return [not isinstance(a, jcore.Literal) and a in tangent for a in jaxpr.outvars]


def _consts(p: Any) -> tuple:
    """The constants of a nested closed jaxpr: JAX arrays by identity, NumPy arrays
    (which can be written in place) by value."""
    return tuple(_value(c) if isinstance(c, np.ndarray) else _Same(c)
                 for c in getattr(p, "consts", ()))


def _params(eqn: Any, flags: list[bool]) -> tuple:
    tangent = any(flags)
    out = []
    for name, p in eqn.params.items():
        if eqn.primitive.name in _RULE_CALLS and not tangent and name in _RULE_PARAMS:
            continue  # evaluated, never differentiated: the rule plays no part
        if isinstance(p, (jcore.Jaxpr, jcore.ClosedJaxpr)):
            out.append(_nested(eqn, name, p, flags))
        elif isinstance(p, (tuple, list)) and p and all(
                isinstance(q, (jcore.Jaxpr, jcore.ClosedJaxpr)) for q in p):
            out.append((name, tuple(_nested(eqn, name, q, flags) for q in p)))
        else:
            out.append((name, _param(p, tangent)))
    return tuple(out)


def _parts(jaxpr: Any, tangent_inputs: list[bool]) -> tuple:
    """Equations, wiring (variables numbered in order of definition), types and
    parameters of ``jaxpr``."""
    number: dict[Any, int] = {}
    tangent: set[Any] = set()

    def define(var: Any, is_tangent: bool) -> Any:
        number[var] = len(number)
        if is_tangent:
            tangent.add(var)
        return var.aval

    def use(atom: Any) -> Hashable:
        if isinstance(atom, jcore.Literal):
            return ("literal", atom.aval, _value(atom.val))
        return number[atom]

    head = (tuple(define(v, False) for v in jaxpr.constvars),
            tuple(define(v, t) for v, t in zip(jaxpr.invars, tangent_inputs, strict=True)))
    eqns = []
    for eqn in jaxpr.eqns:
        flags = [not isinstance(a, jcore.Literal) and a in tangent for a in eqn.invars]
        eqns.append((eqn.primitive, tuple(use(a) for a in eqn.invars), _params(eqn, flags),
                     eqn.ctx, tuple(define(v, any(flags)) for v in eqn.outvars)))
    return (head, tuple(eqns), tuple(use(a) for a in jaxpr.outvars),
            frozenset(jaxpr.effects))
