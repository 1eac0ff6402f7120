"""The oldest declared dependencies: what the code calls exists in each of them."""
import torch

import training_utils as tu


def test_the_cudagraph_step_marker_is_found_on_this_torch():
    """--compile marks each step for CUDA graphs; torch 2.1 keeps the call outside torch.compiler."""
    assert callable(tu.cudagraph_step_marker())


def test_numpy_arrays_reach_torch():
    """Checkpoints carry numpy's RNG state through torch.from_numpy: torch < 2.3 with numpy 2 cannot."""
    import numpy as np
    assert torch.from_numpy(np.arange(3, dtype=np.int64)).tolist() == [0, 1, 2]


def test_a_torch_that_cannot_read_numpy_is_refused_before_the_run(monkeypatch):
    """torch < 2.3 beside numpy 2: one line with the fix at the start, not 'Numpy is not available' at a checkpoint."""
    import pytest
    from io_utils import SpanElectraError

    def no_numpy(array):
        raise RuntimeError("Numpy is not available")
    monkeypatch.setattr(torch, "from_numpy", no_numpy)
    with pytest.raises(SpanElectraError, match=r"cannot read numpy .*pip install 'numpy<2'"):
        tu.setup_runtime("cpu")
