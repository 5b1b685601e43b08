"""Quantizers: pure maths (`functional`), straight-through estimators (`ste`), and small
`nn.Module` quantizers registered by name (`get_quantizer("ternary")`, `list_quantizers()`).

| name      | what                                             | paper                 |
|-----------|--------------------------------------------------|-----------------------|
| pow2      | {0, ±2^n2..±2^n1}, n1 from max|W|                | INQ                   |
| ternary   | exact argmin ||W - alpha Q||, Q ternary          | LBW-Net               |
| lbw       | alpha*{0, ±1, ±2, .., ±2^(n-1)}, n = 2^(b-1)-1   | LBW-Net               |
| binary    | sign(W)*mean|W|                                  | Group-Net, XNOR       |
| sign      | sign(x), Bi-Real gradient                        | Group-Net, Bi-Real    |
| uniform   | k-bit uniform, max/fixed/learned(PACT)/EMA clip  | §1.3, Group-Net, PACT |
| scaleclip | clip at k*mean|x| per group, then uniform        | GDRQ                  |
| twn       | 0.7*mean|W| threshold ternary                    | TWN (baseline)        |
| dorefa    | tanh-normalised k-bit weights                    | DoReFa (baseline)     |
| lsq       | learned step size                                | LSQ (baseline)        |
| inq       | pow2 with INQ's frozen mask (partial quantization) | INQ                 |
"""

from lowbit.quant import functional, lbwfit, ste
from lowbit.quant.base import Quantizer, check_finite, check_input, set_debug_checks
from lowbit.quant.codebook import LBW, TWN, Binary, CodebookQuantizer, Pow2, Sign, Ternary
from lowbit.quant.inq import INQWeight
from lowbit.quant.registry import get_quantizer, list_quantizers, register_quantizer
from lowbit.quant.uniform import LSQ, DoReFa, ScaleClip, Uniform

__all__ = [
    "INQWeight", "LBW", "LSQ", "TWN", "Binary", "CodebookQuantizer", "DoReFa", "Pow2", "Quantizer",
    "ScaleClip", "Sign", "Ternary", "Uniform", "check_finite", "check_input", "functional",
    "get_quantizer", "lbwfit", "list_quantizers", "register_quantizer", "set_debug_checks", "ste",
]
