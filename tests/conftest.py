"""Shared fixtures: a small simulated venue with a fixed clock and a temporary lakehouse."""
from __future__ import annotations

import pytest

from quantlib.lakehouse import Lakehouse
from quantlib.profiles import load_profile
from quantlib.sources.sim import SimExchange

AS_OF = "2026-11-25T06:00:00Z"


@pytest.fixture(scope="session")
def sim() -> SimExchange:
    return SimExchange("crypto", seed=7, as_of=AS_OF, n_bases=25)


@pytest.fixture
def lake(tmp_path) -> Lakehouse:
    return Lakehouse(tmp_path / "lakehouse")


@pytest.fixture
def data_cfg():
    """The base profile's data section with a shorter lookback (faster tests)."""
    profile = load_profile("demo", env={"FW_DATA__LOOKBACK_DAYS": "200", "FW_DATA__WORKERS": "4"}).profile
    return profile.data
