from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.settings import Settings


def make() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_tree_depth_and_upgrade_interval_have_defaults() -> None:
    settings = make()
    assert (settings.agent_max_depth, settings.agent_upgrade_interval_s) == (3, 3600.0)


def test_kami_agent_max_depth_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAMI_AGENT_MAX_DEPTH", "5")
    monkeypatch.setenv("KAMI_AGENT_UPGRADE_INTERVAL_S", "60")
    settings = make()
    assert (settings.agent_max_depth, settings.agent_upgrade_interval_s) == (5, 60.0)


@pytest.mark.parametrize("depth", ["0", "33", "x"])
def test_a_depth_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, depth: str) -> None:
    monkeypatch.setenv("KAMI_AGENT_MAX_DEPTH", depth)
    with pytest.raises(ValidationError, match="agent_max_depth"):
        make()
