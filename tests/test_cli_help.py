"""Every verb's --help ends with examples that parse with that verb's own options and name recipes that exist;
`distill --help` says a teacher checkpoint is needed."""
from __future__ import annotations

import shlex

import pytest

from kdzoo.cli import build_parser
from kdzoo.cli_examples import EXAMPLES
from tests.conftest import REPO, run_cli

VERBS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_examples_that_parse(verb, capsys):
    assert verb in EXAMPLES, f"kdzoo {verb} has no examples in cli_examples.py"
    with pytest.raises(SystemExit) as done:
        run_cli(verb, "--help")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    for example in EXAMPLES[verb]:
        argv = shlex.split(example)
        assert argv[:2] == ["kdzoo", verb] and example in out
        build_parser().parse_args(argv[1:])  # an option the verb does not have exits 2 here
        for word in argv:
            if word.startswith("configs/"):
                assert (REPO / word).is_file(), f"{example}: {word} does not exist"


def test_distill_help_says_it_needs_a_teacher_checkpoint(capsys):
    with pytest.raises(SystemExit):
        run_cli("distill", "--help")
    assert "teacher.checkpoint=" in capsys.readouterr().out
