"""Vectors of 64 bytes in registers (zmm with AVX-512, two ymm otherwise), and short loops over
one row of a flat array.

Arrays inside the kernels are flat (1-D) and addressed by offset: views (slices) would cost two
atomic reference-count updates each, which per row and step add up to more than the arithmetic.
Numba cannot tell LLVM that arrays do not overlap, and LLVM vectorises a loop only when the
overlap checks it must add stay few, so a step's pointwise work is split into such row loops.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .scalars import JIT, U, sigmoid, tanh


class Vec(types.Type):
    """An LLVM vector of ``width`` elements of ``dtype`` held in registers."""

    def __init__(self, dtype, width):
        self.dtype = dtype
        self.width = width
        super().__init__(name=f"Vec({dtype}x{width})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _vec_of(dtype):
    return Vec(dtype, 64 // (dtype.bitwidth // 8))


@intrinsic
def vload(typingctx, arr, offset):
    """The vector at arr[offset:offset + width] (no alignment assumed)."""
    vt = _vec_of(arr.dtype)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]),
                              context.get_value_type(vt).as_pointer())
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)
    return vt(arr, offset), codegen


@intrinsic
def vstore(typingctx, arr, offset, v):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), args[2].type.as_pointer())
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(arr, offset, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """A vector with every element x."""
    vt = _vec_of(x)

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(vt)
        undef = ir.Constant(llvt, ir.Undefined)
        one = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.width), [0] * vt.width)
        return builder.shuffle_vector(one, undef, mask)
    return vt(x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a*b + c, fused."""
    def codegen(context, builder, sig, args):
        vt = args[0].type
        name = f"llvm.fma.v{vt.count}{'f32' if vt.element == ir.FloatType() else 'f64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name)
        return builder.call(fn, args)
    return a(a, b, c), codegen


@intrinsic
def vwidth(typingctx, arr):
    """Elements per vector for arr's dtype (a compile-time constant)."""
    width = _vec_of(arr.dtype).width

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, width)
    return types.intp(arr), codegen


@njit(**JIT)
def add_into(dst, d0, a, a0, b, b0, n):
    """dst[d0:d0+n] += a[a0:a0+n] + b[b0:b0+n]"""
    for u in range(n):
        dst[U(d0 + u)] += a[U(a0 + u)] + b[U(b0 + u)]


@njit(**JIT)
def add_to(dst, d0, a, a0, n):
    for u in range(n):
        dst[U(d0 + u)] += a[U(a0 + u)]


@njit(**JIT)
def copy_row(dst, d0, src, s0, n):
    for u in range(n):
        dst[U(d0 + u)] = src[U(s0 + u)]


@njit(**JIT)
def zero_row(dst, d0, n):
    zero = dst.dtype.type(0)
    for u in range(n):
        dst[U(d0 + u)] = zero


@njit(**JIT)
def sigmoid_row(v, v0, n):
    for u in range(n):
        v[U(v0 + u)] = sigmoid(v[U(v0 + u)])


@njit(**JIT)
def tanh_row(v, v0, n):
    for u in range(n):
        v[U(v0 + u)] = tanh(v[U(v0 + u)])


@njit(**JIT)
def tanh_of(dst, d0, src, s0, n):
    for u in range(n):
        dst[U(d0 + u)] = tanh(src[U(s0 + u)])
