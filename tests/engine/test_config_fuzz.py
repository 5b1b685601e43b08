"""Fuzz the config parser: any tree of plain values is a Run or one clear config error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.build import load_run
from lowbit.errors import LowbitError

SECTIONS = {
    "model": ["name", "width", "kwargs"],
    "data": ["name", "batch_size", "val_fraction", "image_size", "augment"],
    "optim": ["name", "lr", "momentum", "weight_decay", "betas", "nesterov"],
    "schedule": ["name", "warmup_epochs", "min_lr", "milestones", "gamma"],
    "train": ["epochs", "seed", "bf16", "threads", "metrics", "label_smoothing"],
    "quant": ["method", "weight", "act", "rules", "keep_float", "portions", "bases", "bits",
              "reshape_epochs", "structure"],
    "distill": ["teacher", "temperature", "weight"],
}
LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["inq", "lbw", "gdrq", "qat", "groupnet", "resnet20", "synthetic",
                     "uniform", "binary", "cosine", "sgd", "first_last", "v1"]),
)
VALUE = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


@st.composite
def trees(draw: st.DrawFn) -> dict:
    tree: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = st.one_of(st.sampled_from(SECTIONS[section]), st.text(max_size=6))
        value = draw(st.one_of(st.dictionaries(keys, VALUE, max_size=4), LEAF))
        tree[section] = value
    return tree


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_any_config_tree_is_a_run_or_a_config_error(tree: dict) -> None:
    try:
        run = load_run(base=tree)
    except LowbitError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip()
    else:
        assert run.cfg.train.epochs is not None and run.cfg.train.epochs >= 0
