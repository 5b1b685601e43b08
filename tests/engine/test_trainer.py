import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from lowbit.api import train
from lowbit.config import ScheduleConfig, build_config
from lowbit.data import load_dataset
from lowbit.engine import Callback, LoopState, Phase, Trainer, recalibrate_bn
from lowbit.engine.checkpoint import CheckpointError
from lowbit.engine.optim import build_optimizer, lr_at
from lowbit.engine.rundir import RunDir, machine_info
from lowbit.models import create_model


def test_training_learns_synthetic_data(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=4))
    result = train(cfg, run_path=tmp_path / "run")
    assert result["top1"] > 70.0  # 4 classes: chance is 25 %
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "train.log",
        "last.safetensors",
        "final.safetensors",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def _trainer(cfg, run_dir: Path, hooks: list[Callback], resume: bool = False) -> Trainer:
    torch.manual_seed(cfg.train.seed)
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    return Trainer(cfg, model, load_dataset("synthetic"), hooks, RunDir(run_dir, resume=resume))


def test_resume_gives_identical_results(tmp_path: Path, tiny_config, crash_at) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=4))
    full = _trainer(cfg, tmp_path / "a", [crash_at(-1)])
    full.fit()
    crashed = _trainer(cfg, tmp_path / "b", [crash_at(2)])
    with pytest.raises(RuntimeError, match="simulated"):
        crashed.fit()
    crashed.run_dir.close()  # a process that dies releases its run directory
    resumed = _trainer(cfg, tmp_path / "b", [crash_at(-1)], resume=True)
    resumed.resume(tmp_path / "b" / "last.safetensors")
    assert resumed.epoch == 2
    resumed.fit()
    for (name, p), q in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = [
        {k: v for k, v in json.loads(r).items() if "seconds" not in k and "per_s" not in k}
        for r in rows_a + rows_b
    ]
    assert len(strip) == 8 and strip[:4] == strip[4:]


class StartRecorder(Callback):
    """Records the hooks that set a phase or an epoch up (and changes nothing)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, state: LoopState) -> None:
        self.calls.append("fit_start")

    def on_phase_start(self, state: LoopState, phase: Phase) -> None:
        self.calls.append(f"phase_start {state.epoch}")

    def on_epoch_start(self, state: LoopState) -> None:
        self.calls.append(f"epoch_start {state.epoch}")


def test_resume_inside_an_epoch_gives_identical_results(tmp_path: Path, tiny_config,
                                                        crash_at) -> None:
    """save_every_steps: killed mid-epoch, the run resumes at the batch it stopped after (same
    batches, same augmentation draws) and ends bit-identical, metrics rows included."""
    cfg = build_config(base=tiny_config(tmp_path, epochs=3, save_every_steps=2))
    full = _trainer(cfg, tmp_path / "a", [crash_at(), StartRecorder()])
    full.fit()
    steps = len(full.loader)
    assert steps >= 4, "the synthetic epoch is too short to stop inside it"
    crash = steps + 3  # in epoch 2, after the checkpoint of step steps + 2
    crashed = _trainer(cfg, tmp_path / "b", [crash_at(step=crash), StartRecorder()])
    with pytest.raises(RuntimeError, match="simulated"):
        crashed.fit()
    crashed.run_dir.close()
    recorder = StartRecorder()
    resumed = _trainer(cfg, tmp_path / "b", [crash_at(), recorder], resume=True)
    resumed.resume(tmp_path / "b" / "last.safetensors")
    expect_step = crash - crash % 2
    assert (resumed.epoch, resumed.step, resumed.partial.batches) == (
        1, expect_step, expect_step - steps)
    resumed.fit()
    for (name, p), q in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    strip = [
        {k: v for k, v in json.loads(r).items() if "seconds" not in k and "per_s" not in k}
        for d in ("a", "b") for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(strip) == 6 and strip[:3] == strip[3:]
    # the resumed epoch neither restarts its phase nor calls on_epoch_start again
    assert recorder.calls == ["fit_start", "epoch_start 2"]


def test_a_mid_epoch_checkpoint_of_another_batch_size_is_refused(tmp_path: Path, tiny_config,
                                                                  crash_at) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=2, save_every_steps=1))
    crashed = _trainer(cfg, tmp_path / "b", [crash_at(step=3)])
    with pytest.raises(RuntimeError, match="simulated"):
        crashed.fit()
    crashed.run_dir.close()
    for batch_size in (256, 32):  # fewer batches per epoch, and more
        other_cfg = build_config(base={**tiny_config(tmp_path, epochs=2),
                                       "data": {"name": "synthetic", "batch_size": batch_size}})
        other = _trainer(other_cfg, tmp_path / "b", [crash_at()], resume=True)
        with pytest.raises(CheckpointError, match="stopped after batch 3 of .* in epoch 1"):
            other.resume(tmp_path / "b" / "last.safetensors")
        other.run_dir.close()


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, state: LoopState) -> None:
        self.calls.append("fit_start")

    def on_phase_start(self, state: LoopState, phase: Phase) -> None:
        self.calls.append(f"phase {phase.name} at {state.epoch}")

    def before_step(self, state: LoopState) -> None:
        # A method masks gradients here: freeze the classifier bias completely.
        state.model.fc.bias.grad = torch.zeros_like(state.model.fc.bias)
        self.calls.append("before")

    def after_step(self, state: LoopState) -> None:
        self.calls.append("after")

    def on_epoch_end(self, state: LoopState, metrics: dict) -> None:
        self.calls.append(f"epoch{state.epoch}")


def test_callbacks_are_called_and_can_mask_gradients(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(
        base=tiny_config(tmp_path, epochs=2), overrides=["optim.weight_decay=0", "optim.momentum=0"]
    )
    data = load_dataset("synthetic")
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    bias0 = model.fc.bias.detach().clone()
    hook = Recorder()
    phases = [Phase("a", 1, index=0), Phase("b", 1, index=1)]
    trainer = Trainer(cfg, model, data, [hook], phases=phases)
    trainer.fit()
    assert hook.calls[:2] == ["fit_start", "phase a at 0"]
    assert "phase b at 1" in hook.calls and "epoch0" in hook.calls and "epoch1" in hook.calls
    assert hook.calls.index("epoch0") < hook.calls.index("phase b at 1")
    assert hook.calls.count("before") == hook.calls.count("after") == trainer.step
    assert torch.equal(model.fc.bias, bias0)
    # Each phase restarts the cosine schedule: the last LR of phase b is low again after a
    # restart, and the metrics rows name their phase.
    rows = trainer.history
    assert [r["phase"] for r in rows] == ["a", "b"] and trainer.lr < cfg.optim.lr
    assert rows[1]["lr"] == pytest.approx(rows[0]["lr"])  # phase b ran the schedule anew


def test_phases_restart_the_learning_rate(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=2), overrides=["schedule.warmup_epochs=0"])
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    trainer = Trainer(cfg, model, load_dataset("synthetic"),
                      phases=[Phase("a", 2, index=0), Phase("b", 2, index=1)])
    a, b = trainer.phases
    assert trainer.total == 4
    assert trainer._lr_for(2.0, b, 2) == pytest.approx(trainer._lr_for(0.0, a, 0))
    assert trainer._lr_for(2.0, b, 2) == pytest.approx(cfg.optim.lr)  # back to the top
    assert trainer._lr_for(1.9, a, 0) < trainer._lr_for(2.0, b, 2)
    # a phase that does not restart follows the schedule over the whole run
    flat = Phase("c", 2, restart_lr=False, index=1)
    assert trainer._lr_for(2.0, flat, 2) == pytest.approx(lr_at(2.0, 4, cfg.optim.lr, cfg.schedule))
    assert trainer._lr_for(2.0, flat, 2) < cfg.optim.lr


def test_lr_schedules() -> None:
    cos = ScheduleConfig(name="cosine", warmup_epochs=2)
    assert lr_at(1.0, 10, 0.1, cos) == pytest.approx(0.05)
    assert lr_at(2.0, 10, 0.1, cos) == pytest.approx(0.1)
    assert lr_at(6.0, 10, 0.1, cos) == pytest.approx(0.05)
    assert lr_at(10.0, 10, 0.1, cos) == pytest.approx(0.0, abs=1e-12)
    step = ScheduleConfig(name="step", step_size=3, gamma=0.5)
    assert [lr_at(e, 10, 1.0, step) for e in (0, 2.9, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    multi = ScheduleConfig(name="multistep", milestones=[2, 5])
    assert [lr_at(e, 10, 1.0, multi) for e in (1, 2, 5)] == pytest.approx([1.0, 0.1, 0.01])
    assert math.isclose(lr_at(3, 10, 0.3, ScheduleConfig(name="constant")), 0.3)


def test_bn_and_bias_are_not_decayed() -> None:
    model = create_model("resnet20")
    cfg = build_config(overrides=["optim.weight_decay=0.001"]).optim
    opt = build_optimizer(model, cfg)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.conv1.weight) in decayed and id(model.fc.weight) in decayed
    assert id(model.bn1.weight) not in decayed and id(model.fc.bias) not in decayed


def test_nan_loss_stops_with_a_clear_error(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=1))
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        Trainer(cfg, model, load_dataset("synthetic")).fit()


def test_validation_split_is_held_out_of_training(tmp_path: Path, tiny_config) -> None:
    base = tiny_config(tmp_path, epochs=1)
    base["data"]["val_fraction"] = 0.25
    result = train(build_config(base=base), run_path=tmp_path / "run")
    assert {"val_top1", "top1"} <= result.keys()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_top1" in row and "test_top1" not in row
    data = load_dataset("synthetic").with_validation(0.25, seed=1)
    assert len(data.val) == 128 and len(data.train) == 384
    seen = {tuple(x.flatten().tolist()[:8]) for x in data.train.images}
    assert not any(tuple(x.flatten().tolist()[:8]) in seen for x in data.val.images)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                           ("adamw", torch.optim.AdamW)])
def test_optimizers(name: str, cls: type, tmp_path: Path, tiny_config) -> None:
    cfg = build_config(overrides=[f"optim.name={name}", "optim.lr=0.001"])
    opt = build_optimizer(create_model("small_cnn", width=0.25), cfg.optim)
    assert isinstance(opt, cls)
    base = tiny_config(tmp_path, epochs=3)
    base["optim"] = {"name": name, "lr": 0.003}
    train(build_config(base=base), run_path=tmp_path / name)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_cpu_support_trains_in_fp32(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    native: bool,
) -> None:
    monkeypatch.setattr("lowbit.engine.device.cpu_bf16_native", lambda: native)
    cfg = build_config(base=tiny_config(tmp_path, epochs=1, bf16=True))
    with caplog.at_level(logging.WARNING):
        result = train(cfg, run_path=tmp_path / "run")
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["bf16"] is native  # what actually ran is what is recorded
    assert ("no native bf16" in caplog.text) is not native
    assert result["epochs"] == 1


def test_machine_info_names_the_cpu_and_its_bf16_support() -> None:
    info = machine_info()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert isinstance(info["cpu_bf16"], bool)


def test_recalibrate_bn_is_the_average_of_batch_statistics(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(base=tiny_config(tmp_path, epochs=1))
    trainer = _trainer(cfg, tmp_path / "run", [])
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.momentum = 0.3
    seen: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].mean((0, 2, 3))))
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    assert recalibrate_bn(trainer.loop, 3) == 3  # the trainer's loop state gives batches
    handle.remove()
    assert len(seen) == 3
    torch.testing.assert_close(bn.running_mean, torch.stack(seen).mean(0))
    assert bn.momentum == 0.3  # restored
    for k, v in trainer.model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k  # no parameter moved
    assert recalibrate_bn(trainer.loop, 0) == 0
    assert recalibrate_bn(LoopState(trainer.model), 3) == 0  # a loop without batches: skipped
