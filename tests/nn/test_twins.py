"""Layer types users bring: subclasses of Conv2d/Linear and Conv1d get quantized twins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn import QuantLayer
from lowbit.transform import dequantize_model, every_layer_rules, quantize_model


class SameConv(nn.Conv2d):
    """'same' padding computed in forward, as many user codebases do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size[0] // 2
        return F.conv2d(F.pad(x, (pad, pad, pad, pad)), self.weight, self.bias)


class WSConv(nn.Conv2d):
    """Weight-standardised conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class MyLinear(nn.Linear):
    pass


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.same = SameConv(8, 8, 3)
        self.ws = WSConv(8, 8, 3, padding=1)
        self.seq = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = MyLinear(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.ws(torch.relu(self.same(self.stem(x)))))
        x = torch.relu(self.seq(x.flatten(2)))
        return self.head(torch.relu(self.fc(x.mean(2))))


def _manual(w: torch.Tensor) -> torch.Tensor:
    n = 1  # 2-bit symmetric uniform: levels -s, 0, s with s = max|w|
    s = w.abs().max() / n
    return torch.round(w / s).clamp(-n, n) * s


def test_subclasses_and_conv1d_are_quantized_with_their_own_forward() -> None:
    torch.manual_seed(0)
    net = Net()
    spec = {"weight": {"name": "uniform", "bits": 2}}
    report = quantize_model(net, every_layer_rules(net, spec))
    q = report.model
    names = {c.name: c.converter for c in report.converted}
    assert names == {"stem": "conv2d", "same": "twin", "ws": "twin", "seq": "twin",
                     "fc": "twin", "head": "linear"}
    for layer, cls in ((q.same, SameConv), (q.ws, WSConv), (q.seq, nn.Conv1d), (q.fc, MyLinear)):
        assert isinstance(layer, QuantLayer) and isinstance(layer, cls)
    assert set(q.state_dict()) >= set(net.state_dict())  # float keys kept
    x = torch.randn(2, 3, 6, 6)
    # each twin equals the float class's forward on the quantized weight
    ref = net.same
    with torch.no_grad():
        h = q.stem(x)
        expected = F.conv2d(F.pad(h, (1, 1, 1, 1)), _manual(ref.weight), ref.bias)
        assert torch.allclose(q.same(q.stem(x)), expected, atol=1e-6)
        assert isinstance(ref.weight, nn.Parameter) and isinstance(q.same.weight, nn.Parameter)
    out = q(x)
    out.sum().backward()
    assert q.same.weight.grad is not None and q.seq.weight.grad is not None
    baked = dequantize_model(q)
    assert type(baked.same) is SameConv and type(baked.seq) is nn.Conv1d
    assert torch.allclose(baked(x), q(x), atol=1e-5)


def test_unsupported_types_get_a_report_line() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    report = quantize_model(net, {".*": {"name": "uniform", "bits": 4}})
    kept = {f.name: f.reason for f in report.kept_float}
    assert "unsupported type ConvTranspose2d: no converter" in kept["1"]
