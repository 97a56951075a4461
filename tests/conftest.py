"""Shared fixtures: a tiny random VLA saved once per test session."""

import pytest


@pytest.fixture(scope="session")
def tiny_vla_dir(tmp_path_factory):
    from ee_vla.models import create_random_vla_dir

    return create_random_vla_dir(tmp_path_factory.mktemp("models") / "tiny", preset="tiny", chunk_size=3)
