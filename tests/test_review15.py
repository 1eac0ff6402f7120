"""Review 15: whole words in short English rows, older checkpoints' epoch-end positions, one shuffle an epoch."""
import numpy as np

import features
import masking
import training_utils as tu
from argument import MaskingArgs
from conftest import EpochData


def test_a_word_that_fits_the_slots_stays_whole_when_the_budget_is_smaller():
    """Short rows at a low ratio (budget 1 token) keep their one span a whole 3-token word, as before the
    Thai cut; only a word longer than the slots is cut to the budget."""
    starts = np.zeros(100, dtype=bool)
    starts[:10] = True  # ids 5..9 start words; ids 10.. continue them
    masker = masking.Masker(MaskingArgs(mask_ratio=0.05), starts, special_ids=range(5), mask_id=4, vocab_size=100)
    ids = np.full((256, 16), 20)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, 1:-1:3] = 7  # words of 3 tokens (the last one of 2)
    masked = (masker(ids, np.random.default_rng(0))["labels"] != masking.IGNORE_INDEX)
    assert masking.max_prediction_slots(masker.config, 16) >= 3
    assert set(masked.sum(1)) <= {2, 3} and (masked.sum(1) == 3).mean() > 0.5  # whole words, never 1 token


def test_an_epoch_end_saved_by_older_versions_turns_the_epoch():
    """Older checkpoints saved an epoch's end as (epoch, len): it resumes at the next epoch's first batch and
    the position still turns at every epoch's end (it counted index past len for the rest of the run)."""
    stream = tu.BatchStream(EpochData(), epoch=3, index=3)
    assert stream.state() == {"epoch": 4, "index": 0}
    assert [next(stream)["x"].item() for _ in range(4)] == [40, 41, 42, 50]
    assert stream.state() == {"epoch": 5, "index": 1}


def test_the_shuffle_is_made_once_an_epoch(monkeypatch):
    dataset = object.__new__(features.MLMDataset)
    dataset.data, dataset.seed, dataset.shuffle, dataset.batch_size = np.zeros((100, 4)), 7, True, 10
    dataset.rank, dataset.world_size, dataset.epoch, dataset._order = 0, 1, 0, (None, None)
    expected = {e: np.random.default_rng([7, e]).permutation(100) for e in (0, 1)}
    made, rng = [], np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed: made.append(seed) or rng(seed))
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for i in range(10):
            np.testing.assert_array_equal(dataset.rows(i), np.sort(expected[epoch][10 * i:10 * i + 10]))
    assert made == [[7, 0], [7, 1]]
