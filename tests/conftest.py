import pytest
import torch


@pytest.fixture
def no_global_rng():
    """Core code takes generators; the global RNG must come out untouched. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("no_global_rng")`` (Lightning code seeds globally by design)."""
    state = torch.random.get_rng_state()
    yield
    assert torch.equal(state, torch.random.get_rng_state()), "test or code under test used the global RNG"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
