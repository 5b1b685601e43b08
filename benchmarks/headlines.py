"""The headline of each speed / size benchmark file for the README table: `SPEED` maps a result
file's name to a function giving (headline, target) from its content."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def _short(name: str, names: dict[str, Any]) -> str:
    """'lbw w4 (alternating)' -> 'lbw w4', or 'lbw w4 alternating' where another configuration
    shares the part before the parenthesis."""
    base, _, detail = name.partition(" (")
    shared = sum(n.partition(" (")[0] == base for n in names) > 1
    return f"{base} {detail.split(',')[0].rstrip(')')}" if shared and detail else base


def _qat_step(r: Result) -> tuple[str, str]:
    """(headline, target): QAT step / float step ratios of every configuration, per mode."""
    parts = []
    for mode, m in sorted(r["modes"].items()):
        ratios = {_short(k, m): v["ratio_vs_float"] for k, v in m.items() if k != "float"}
        parts.append(f"{mode}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    t = r.get("targets", {})
    if "every_recipe_max_ratio" in t:
        return "; ".join(parts) + " (vs float step)", f"<= {t['every_recipe_max_ratio']}x"
    return "; ".join(parts) + " (vs float step)", (
        f"weight-only <= {t.get('weight_only_max_ratio')}x, W2A4 <= {t.get('w2a4_max_ratio')}x")


def _size(n: int) -> str:
    """1000000 -> '1e6'; other numbers unchanged."""
    text = str(n)
    return f"1e{len(text) - 1}" if n >= 1000 and text.rstrip("0") == "1" else text


def _ternary_speed(r: Result) -> tuple[str, str]:
    """(headline, target): ternary_exact / torch.sort ratios at the headline thread count."""
    head = r["figures"][0]["threads"]
    parts = [f"{f['ratio_of_medians']:.2f}x (n={_size(f['n'])}, rows={f['rows']})"
             for f in r["figures"] if f["threads"] == head]
    return f"ternary_exact / sort, {head} threads: " + ", ".join(parts), (
        f"<= {r.get('target_ratio')}x")


def _loader_overhead(r: Result) -> tuple[str, str]:
    """(headline, target): Loader arm / pre-made arm time ratio and the fetch time."""
    f = r["figures"]
    return (f"loader arm / pre-made arm {f['ratio']:.3f}x, fetch "
            f"{f['loader_fetch_ms_median']} ms/batch", f"<= {f['target_ratio']}x")


def _brevitas(r: Result) -> tuple[str, str]:
    """(headline, target): lowbit / Brevitas step-time ratio, per mode."""
    parts = []
    for mode, m in sorted(r["modes"].items()):
        if "brevitas_error" in m:
            parts.append(f"{mode}: Brevitas failed")
            continue
        parts.append(f"{mode}: {m['lowbit_ms_per_step']:.0f} vs "
                     f"{m['brevitas_ms_per_step']:.0f} ms/step, "
                     f"{m['ratio_lowbit_over_brevitas']:.2f}x")
    return (f"lowbit / Brevitas {r.get('brevitas_version', '?')} W4A4 step: " + "; ".join(parts),
            f"< {r.get('target_ratio', 1.0)}x")


def _compile_step(r: Result) -> tuple[str, str]:
    """(headline, target): compiled / eager step time per configuration and mode."""
    parts = []
    for mode, m in sorted(r["modes"].items()):
        cells = [f"{k.split(' (')[0]} {v['compiled_over_eager']:.2f}x" if "error" not in v
                 else f"{k.split(' (')[0]} failed" for k, v in m.items()]
        parts.append(f"{mode}: " + ", ".join(cells))
    breaks = ", ".join(f"{k.split(' (')[0]} {v}" for k, v in r["graph_breaks"].items())
    return (f"compiled / eager step: {'; '.join(parts)}; graph breaks: {breaks}",
            "0 lowbit graph breaks")


def _onnx_speed(r: Result) -> tuple[str, str]:
    """(headline, target): onnxruntime float graph / int graph time, per batch size."""
    cells = [f"batch {x['batch']}: {x['speedup_float_over_int']:.2f}x"
             + (f" (int-exact {x['speedup_float_over_int_exact']:.2f}x)"
                if "speedup_float_over_int_exact" in x else "")
             + (f" (without load-time dequantization {x['speedup_float_over_int_unprepared']:.2f}x)"
                if "speedup_float_over_int_unprepared" in x else "") for x in r["rows"]]
    return f"ORT float / int graph ({r['checkpoint'].split('_resnet')[0]}): " + ", ".join(
        cells), ">= 2x"


def _xnor_speed(r: Result) -> tuple[str, str]:
    """(headline, target): float conv / XNOR-popcount conv time per layer shape (packing
    included), and per downsampling block with one packing for both its convs, where
    measured."""
    cells = [f"{x['cin']}->{x['cout']} k{x['kernel']}s{x['stride']} {x['size']}px "
             f"{x['speedup_float_over_xnor']:.2f}x" for x in r["rows"]]
    blocks = [f"{x['cin']}->{x['cout']} {x['size']}px "
              f"{x['speedup_float_over_xnor_shared_pack']:.2f}x "
              f"(each conv packing: {x['speedup_float_over_xnor']:.2f}x)"
              for x in r.get("blocks", [])]
    head = f"float conv / XNOR ({r['backend']}, batch {r['rows'][0]['batch']}): " + ", ".join(
        cells)
    if blocks:
        head += "; downsampling block (3x3 s2 + 1x1 s2), input packed once: " + ", ".join(blocks)
    return head, ">= 4x"


def _ort_conv_speed(r: Result) -> tuple[str, str]:
    """(headline, target): onnxruntime float Conv / QLinearConv time over ResNet-20's 3x3 convs,
    and its range over the shapes."""
    cells = []
    for batch, total in r["resnet20_speedup_float_over_int"].items():
        ratios = [x["speedup_float_over_int"] for x in r["rows"] if str(x["batch"]) == batch]
        cells.append(f"batch {batch}: {total:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x "
                     "per shape)")
    return ("ORT float Conv / QLinearConv over ResNet-20's 3x3 convs, one op per graph (the int "
            "graph's ceiling): " + ", ".join(cells), "context for onnx_speed")


def _eval_forward(r: Result) -> tuple[str, str]:
    """(headline, target): eval-mode forward time of each form / the float model's."""
    cells = [f"{x['checkpoint'].split('_resnet')[0]} " + ", ".join(
        f"{f} {v:.2f}x" for f, v in x["ratio_vs_float"].items()) for x in r["rows"]]
    return (f"eval forward / float (batch {r['batch']}, {r['threads']} threads): "
            + "; ".join(cells), "weight-only <= 1.05x; integer < 1x")


SPEED: dict[str, Callable[[Result], tuple[str, str]]] = {
    "qat_step": _qat_step, "ternary_speed": _ternary_speed,
    "loader_overhead": _loader_overhead, "brevitas": _brevitas,
    "compile_step": _compile_step, "onnx_speed": _onnx_speed, "xnor_speed": _xnor_speed,
    "eval_forward": _eval_forward, "eval_forward_groupnet": _eval_forward,
    "ort_conv_speed": _ort_conv_speed,
}
