import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the project (``../shared/data``); skips when it is absent."""
    path = Path(os.environ.get("CONVIRT_SHARED_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set CONVIRT_SHARED_DATA)")
    return path
