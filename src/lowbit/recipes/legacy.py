"""Migration of `quant:` sections written before the one-spec shape (lowbit <= 0.1, stop 8).

Old method-specific keys (`bits`, `weight_bits`, `k_w`, `skip_first_last`, ...) are moved into
the weight/act specs and `keep_float`, with one warning line naming what moved. Committed
checkpoints store such sections; they load through this and build the same model.

| method | old key | new key |
|---|---|---|
| inq | bits, strategy, n1 | weight.bits, weight.strategy, weight.n1_mode |
| inq | skip_first_last: true / false | keep_float: first_last / none |
| lbw | bits, solver, r, iters | weight.bits, weight.method, weight.r, weight.iters |
| lbw | per_channel | weight.per_channel |
| lbw, gdrq | quantize_first_last: true / false | keep_float: none / first_last |
| gdrq | weight_bits, k_w, group_size | weight.bits, weight.k, weight.group_size |
| gdrq | act_bits (null: float), k_a | act.bits (act: null), act.k |
| gdrq | stat, learnable, momentum | weight.* and act.* |
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.recipes.base import Recipe

log = logging.getLogger(__name__)

Move = Callable[[dict[str, Any], Any], None]


def _into(side: str, key: str) -> Move:
    def move(body: dict[str, Any], value: Any) -> None:
        if body.get(side, {}) is not None:  # act: null (float) takes no keys
            body.setdefault(side, {})[key] = value
    return move


def _both(key: str) -> Move:
    def move(body: dict[str, Any], value: Any) -> None:
        _into("weight", key)(body, value)
        _into("act", key)(body, value)
    return move


def _keep_float(quantize_them: bool) -> Move:
    def move(body: dict[str, Any], value: Any) -> None:
        body["keep_float"] = "none" if bool(value) == quantize_them else "first_last"
    return move


def _act_bits(body: dict[str, Any], value: Any) -> None:
    if value is None:
        body["act"] = None
    else:
        _into("act", "bits")(body, value)


_TABLE: dict[str, dict[str, Move]] = {
    "inq": {"bits": _into("weight", "bits"), "strategy": _into("weight", "strategy"),
            "n1": _into("weight", "n1_mode"), "skip_first_last": _keep_float(False)},
    "lbw": {"bits": _into("weight", "bits"), "solver": _into("weight", "method"),
            "r": _into("weight", "r"), "iters": _into("weight", "iters"),
            "per_channel": _into("weight", "per_channel"),
            "quantize_first_last": _keep_float(True)},
    "gdrq": {"act_bits": _act_bits, "weight_bits": _into("weight", "bits"),
             "k_w": _into("weight", "k"), "k_a": _into("act", "k"),
             "group_size": _into("weight", "group_size"), "stat": _both("stat"),
             "learnable": _both("learnable"), "momentum": _both("momentum"),
             "quantize_first_last": _keep_float(True)},
}


def migrate_section(cls: type[Recipe], body: dict[str, Any]) -> dict[str, Any]:
    """`body` (a quant section without `method`) with old keys moved to the new shape."""
    table = _TABLE.get(cls.name, {})
    old = [k for k in body if k in table]
    if not old:
        return body
    body = dict(body)
    for side in ("weight", "act"):
        if isinstance(body.get(side), dict):
            body[side] = dict(body[side])
    for key in sorted(old, key=lambda k: k != "act_bits"):  # act: null first
        table[key](body, body.pop(key))
    log.warning("quant (%s): old keys %s migrated to the one-spec shape (weight:/act:/"
                "keep_float; see README 'Config migration')", cls.name, ", ".join(old))
    return body
