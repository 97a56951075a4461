"""`ee_vla.flags.parse_bool`: one set of true/false words for every setting given as text (the
command line's env kwargs, ROS 2 launch arguments, decoder specs)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ee_vla.decoding.config import parse_decoder_spec
from ee_vla.flags import FALSE_WORDS, TRUE_WORDS, parse_bool
from ros_nodes.launch_args import parameter_overrides


@pytest.mark.parametrize("word", [*TRUE_WORDS, "TRUE", " Yes ", "On"])
def test_true_words(word):
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", [*FALSE_WORDS, "False", " NO", "Off "])
def test_false_words(word):
    assert parse_bool(word) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), (np.bool_(True), True), (np.bool_(False), False)],
)
def test_bools_and_zero_one(value, expected):
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["", "maybe", "tru", "2", 2, -1, 0.0, None, [True]])
def test_anything_else_is_an_error_naming_the_value(value):
    with pytest.raises(ValueError, match=f"expected true or false .*got {value!r}".replace("[", "\\[")):
        parse_bool(value)


def test_every_text_setting_takes_the_same_words():
    for word in ("on", "off", "yes", "no"):
        expected = parse_bool(word)
        assert parse_decoder_spec(f"ceed_cap:guess_in_prefill={word}")[1] == {"guess_in_prefill": expected}
        assert parameter_overrides({"dry_run": word}) == {"dry_run": expected}


@pytest.mark.parametrize(
    "value", [*TRUE_WORDS, *FALSE_WORDS, " Yes ", "OFF", True, False, 0, 1, np.bool_(True), "maybe", 2, None]
)
def test_the_envs_read_env_arguments_with_the_same_words(value):
    """sim_envs (which imports nothing from ee_vla) reads `--env-kwargs` bools with its own copy of
    the words: the same words, the same answers and errors."""
    import sim_envs.common

    assert (sim_envs.common.TRUE_WORDS, sim_envs.common.FALSE_WORDS) == (TRUE_WORDS, FALSE_WORDS)
    try:
        expected = parse_bool(value)
    except ValueError as e:
        with pytest.raises(ValueError, match=re.escape(str(e))):
            sim_envs.common.parse_bool(value)
    else:
        assert sim_envs.common.parse_bool(value) is expected
