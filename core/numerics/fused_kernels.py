"""The Triton kernels behind core.numerics.fused (imported only where Triton is; see that module)."""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def rounded(x, dtype: tl.constexpr):
    """x (float32) rounded to dtype, back in float32."""
    return x.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def rounded_product(x, y, dtype: tl.constexpr):
    """x · y rounded to dtype, back in float32. mul_rn, not ``*``: the compiler narrows a product of two
    rounded values to a half-precision multiply and contracts it with the following add into an FMA,
    skipping this rounding (24% of rotary outputs differed from PyTorch's on an H100 with ``*``)."""
    return rounded(libdevice.mul_rn(x, y), dtype)


@triton.jit
def rotary_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, scale, heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_D: tl.constexpr, SCALED: tl.constexpr):
    # One token: x (heads, 2·HALF) -> out (may be x); cos, sin: (2·HALF,) for its position.
    token = tl.program_id(0).to(tl.int64)  # offsets past 2³¹ elements: large token budgets on wide models
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < heads) & (d < HALF)
    offset = token * heads * 2 * HALF + h * 2 * HALF + d
    row = x_ptr + offset
    dtype = x_ptr.dtype.element_ty
    x1 = tl.load(row, mask=mask).to(tl.float32)
    x2 = tl.load(row + HALF, mask=mask).to(tl.float32)
    if SCALED:  # fair-esm: q = q_proj(x) * scaling, rounded, before the rotation
        x1 = rounded_product(x1, scale, dtype)
        x2 = rounded_product(x2, scale, dtype)
    table = token * 2 * HALF + tl.arange(0, BLOCK_D)[None, :]
    dmask = d < HALF
    cos1 = tl.load(cos_ptr + table, mask=dmask).to(tl.float32)
    cos2 = tl.load(cos_ptr + table + HALF, mask=dmask).to(tl.float32)
    sin1 = tl.load(sin_ptr + table, mask=dmask).to(tl.float32)
    sin2 = tl.load(sin_ptr + table + HALF, mask=dmask).to(tl.float32)
    # x·cos + rotate_half(x)·sin, rotate_half(x) = (−x2, x1); each product and the sum rounded.
    out1 = libdevice.add_rn(rounded_product(x1, cos1, dtype), rounded_product(-x2, sin1, dtype))
    out2 = libdevice.add_rn(rounded_product(x2, cos2, dtype), rounded_product(x1, sin2, dtype))
    tl.store(out_ptr + offset, out1.to(dtype, fp_downcast_rounding="rtne"), mask=mask)
    tl.store(out_ptr + offset + HALF, out2.to(dtype, fp_downcast_rounding="rtne"), mask=mask)


@triton.jit
def gelu_kernel(x_ptr, out_ptr, n, inv_sqrt2, BLOCK: tl.constexpr):
    # fair-esm's gelu: x * 0.5 * (1.0 + erf(x / sqrt(2))), each operation rounded in that order.
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # may pass 2³¹ (fc1 is 4 × wide)
    mask = offsets < n
    dtype = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    half_x = rounded_product(x, 0.5, dtype)
    scaled = rounded_product(x, inv_sqrt2, dtype)
    erf = rounded(tl.math.erf(scaled), dtype)
    one_plus = rounded(libdevice.add_rn(erf, 1.0), dtype)
    tl.store(out_ptr + offsets, libdevice.mul_rn(half_x, one_plus).to(dtype, fp_downcast_rounding="rtne"), mask=mask)
