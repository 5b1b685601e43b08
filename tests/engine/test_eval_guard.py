"""`lowbit eval` never reports a non-finite loss as a result."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.api import evaluate_checkpoint, train
from lowbit.build import load_run
from lowbit.cli import main
from lowbit.engine.checkpoint import load_checkpoint, save_checkpoint


def test_overflowing_outputs_are_an_error_not_a_result(tmp_path: Path, tiny_config,
                                                       capsys) -> None:
    train(load_run(base=tiny_config(tmp_path, epochs=1)), run_path=tmp_path / "run")
    path = tmp_path / "run" / "final.safetensors"
    tensors, meta = load_checkpoint(path)
    fc = next(k for k in tensors if k.endswith("fc.weight"))
    tensors[fc] = tensors[fc].sign() * 3e38  # finite weights whose logits overflow
    save_checkpoint(path, tensors, meta)
    with pytest.raises(Exception, match="evaluation gave a (nan|inf) loss"):
        evaluate_checkpoint(path)
    assert main(["eval", str(path)]) == 2
    assert "not finite" in capsys.readouterr().err
