"""`lowbit demo` runs end to end on the embedded data and every method lands in its codebook."""

from pathlib import Path

from lowbit.tools.demo import run_demo


def test_demo_table(tmp_path: Path) -> None:
    rows = run_demo(epochs=6, seed=0, out_dir=str(tmp_path))
    labels = [r[0] for r in rows]
    assert labels[0] == "float" and {"INQ pow2", "LBW exact ternary", "QAT uniform"} <= set(labels)
    float_acc = float(rows[0][3])
    assert float_acc > 80.0  # 10 classes: chance is 10 %
    for row in rows:
        assert row[-1] == "yes", row  # every quantized model is in its declared codebook
    sizes = {r[0]: float(r[5]) for r in rows}
    assert sizes["LBW exact ternary"] < sizes["INQ pow2"] < sizes["float"] / 4
