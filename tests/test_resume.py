"""Resuming where a run stopped: the checkpoints kept and the one resumed, the random state, the batch stream's
position (epoch and batch) and the metrics log cut back to the resumed step."""
import training_utils as tu
from conftest import EpochData


def test_an_epoch_end_saved_by_older_versions_turns_the_epoch():
    """Older checkpoints saved an epoch's end as (epoch, len): it resumes at the next epoch's first batch and
    the position still turns at every epoch's end (it counted index past len for the rest of the run)."""
    stream = tu.BatchStream(EpochData(), epoch=3, index=3)
    assert stream.state() == {"epoch": 4, "index": 0}
    assert [next(stream)["x"].item() for _ in range(4)] == [40, 41, 42, 50]
    assert stream.state() == {"epoch": 5, "index": 1}
