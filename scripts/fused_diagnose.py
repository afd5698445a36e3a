"""Where the fused rotary kernel and PyTorch's op sequence differ (a diagnostic for the device)."""
import torch
from core.numerics.esm2_packed import apply_rotary
from core.numerics.fused import fused_scaled_rotary

torch.manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    T, H, D = 3001, 40, 64
    x = (3 * torch.randn(T, H, D, device="cuda")).to(dtype)
    angles = torch.rand(T, D // 2, device="cuda") * 1000
    cos, sin = (torch.cat((f(angles), f(angles)), dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    for scale in (None, D ** -0.5):
        xs = x * scale if scale is not None else x
        want = apply_rotary(xs, cos, sin)
        for inplace in (False, True):
            src = x.clone()
            got = fused_scaled_rotary(src, cos, sin, scale, out=src if inplace else None)
            bad = got != want
            print(dtype, "scaled" if scale else "unscaled", "inplace" if inplace else "out-of-place",
                  f"{bad.float().mean().item():.4%} differ", "halves:", bad[..., : D // 2].float().mean().item(),
                  bad[..., D // 2:].float().mean().item(), "heads>=32:", bad[:, 32:].float().mean().item())
        # fp64 emulation of the rounded steps, and of no intermediate rounding
        x64, c64, s64 = xs.double(), cos.double()[:, None], sin.double()[:, None]
        x1, x2 = x64[..., : D // 2], x64[..., D // 2:]
        r = lambda t: t.to(dtype).double()
        steps = torch.cat((r(r(x1 * c64[..., :D//2]) + r(-x2 * s64[..., :D//2])), r(r(x2 * c64[..., D//2:]) + r(x1 * s64[..., D//2:]))), -1)
        fma = torch.cat((r(x1 * c64[..., :D//2] - x2 * s64[..., :D//2]), r(x2 * c64[..., D//2:] + x1 * s64[..., D//2:])), -1)
        got = fused_scaled_rotary(x.clone(), cos, sin, scale).double()
        print("   eager vs steps", (want.double() != steps).float().mean().item(), " fused vs steps",
              (got != steps).float().mean().item(), " fused vs unrounded", (got != fma).float().mean().item())
        idx = (got != want.double()).nonzero()[:3]
        for t, h, d in idx.tolist():
            print("   at", t, h, d, "x", xs[t, h, d].item(), "partner", xs[t, h, (d + D // 2) % D].item(), "cos", cos[t, d].item(),
                  "sin", sin[t, d].item(), "eager", want[t, h, d].item(), "fused", got[t, h, d].item())
