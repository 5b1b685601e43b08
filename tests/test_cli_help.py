"""The command line describes itself honestly: every verb and flag has a help line."""

import argparse

import pytest

from lowbit import __version__
from lowbit.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_verb_and_flag_has_a_help_line() -> None:
    parser = build_parser()
    verbs = _subparsers(parser)
    helps = {a.dest: a.help for a in parser._actions
             if isinstance(a, argparse._SubParsersAction)}
    assert helps
    todo = list(verbs.items())
    while todo:  # nested verbs too (lowbit study plan ...)
        name, sub = todo.pop()
        for action in sub._actions:
            assert action.help, f"lowbit {name} {action.option_strings or action.dest}: no help"
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {k}", v) for k, v in action.choices.items()]


def test_help_lists_exactly_the_verbs_that_exist(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    block = out.split("positional arguments:")[1].split("options:")[0]
    listed = {line.split()[0] for line in block.splitlines() if line.startswith("    ")}
    assert listed == set(_subparsers(build_parser()))


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lowbit {__version__}"


def test_methods_lists_the_registered_methods(capsys) -> None:
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["gdrq", "inq", "lbw", "qat"] or set(names) >= {"gdrq", "inq", "lbw", "qat"}
