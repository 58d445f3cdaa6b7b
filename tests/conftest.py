import pytest
import torch

# Small tensors on a 2-core machine run far faster single-threaded (OpenMP contention measured at
# 10-50x slowdowns); DDP tests spawn their own processes, each single-threaded too.
torch.set_num_threads(1)


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
