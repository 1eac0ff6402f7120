"""Shared fixtures: tiny vocabularies and feature folders built once per test session.

Everything is written under pytest's tmp_path_factory; the scripts' main(config) functions are
called in-process (only the CLI checks start a subprocess, via `run_cli`).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample"
SAMPLE_VI = REPO / "data" / "sample_vi"
ELECTRA_TF = REPO / "tests" / "fixtures" / "electra_tf"  # a tiny ELECTRA that TensorFlow wrote (see its scripts)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
V = 60  # the vocabulary size of hand-made batches and maskers (ids 0-4 special, as above)


def share_cores_between_workers():
    """Under pytest-xdist (the README's `-n 2`), each worker's torch takes its share of the cores, and so do the
    scripts it starts (OMP_NUM_THREADS): two workers each running torch on every core made the suite slower
    than one process (busy-waiting threads; 11 min against 8 on 2 cores), one thread each made it faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch
        from io_utils import available_cores
        share = max(1, available_cores() // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


def handle_ctrl_c_as_from_a_terminal():
    """A suite started in the background (`cmd &` in a script, whose shell then ignores SIGINT for it) inherits
    Ctrl-C ignored, as would every process it starts: the Ctrl-C test then waited forever for an interrupt that
    `_thread.interrupt_main` drops, and the checks that workers ignore it held whatever the code did."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


share_cores_between_workers()
handle_ctrl_c_as_from_a_terminal()

import argument  # noqa: E402
import create_vocab_SE  # noqa: E402
import features  # noqa: E402
import process  # noqa: E402


# The slowest files, slowest first (from a run's --durations). Under `--dist loadfile` the workers take files in
# collection order as they free up; starting the long ones first keeps one worker from running a long file alone
# at the end while the other idles (xdist's own reordering sorts by the number of tests, not by their time).
SLOWEST_FILES = ("test_training.py", "test_static_step.py", "test_compare.py", "test_start_methods.py",
                 "test_readme.py", "test_reliability.py", "test_finetune.py", "test_notebook.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist 3.7+: keep the order set below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


# ---------------------------------------------------------------- helpers
def notebook_code_cells():
    """SpanElectra.ipynb's code cells as plain Python: IPython's '!cmd' and '%magic' lines (the Colab
    set-up, which runs only there) become 'pass', so the cells can be exec'd outside a kernel."""
    import json
    import re
    with open(REPO / "SpanElectra.ipynb", encoding="utf-8") as f:
        cells = ["".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    return [re.sub(r"^(\s*)[!%].*$", r"\1pass", source, flags=re.M) for source in cells]


def train_vocab(out_dir, **kw):
    """create_vocab_SE.main with small defaults (vocab 2000 on data/sample)."""
    kw.setdefault("data_dir", str(SAMPLE))
    kw.setdefault("vocab_size", 2000)
    kw.setdefault("num_workers", 1)
    create_vocab_SE.main(argument.tok_args(out_dir=str(out_dir), **kw))
    return Path(out_dir)


def build_features(tok_dir, out_dir, **kw):
    """process.main on the bundled sample (train + valid) unless told otherwise."""
    kw.setdefault("train_input", str(SAMPLE / "train.tokens"))
    kw.setdefault("valid_input", str(SAMPLE / "valid.tokens"))
    kw.setdefault("num_workers", 1)
    meta = process.main(argument.feature_args(tokenizer_dir=str(tok_dir), out_dir=str(out_dir), **kw))
    return Path(out_dir), meta


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def text_lines(paths):
    """The non-blank lines of the files, split on '\\n' only (as the scripts read them)."""
    out = []
    for p in paths:
        for line in Path(p).read_bytes().decode("utf-8", errors="replace").split("\n"):
            line = line.rstrip("\r")
            if line.strip():
                out.append(line)
    return out


def count_tokens(tok_dir, lines, segment=None):
    """Tokens the tokenizer gives the lines (no special tokens), segmenting them first if asked."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    if segment is not None:
        lines = [segment(l) for l in lines]
    return sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))


def run_cli(script, *args, cwd=None, timeout=120):
    """Run `python script.py args...` from the repository; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    return run_or_show_where_it_hung([sys.executable, str(REPO / script), *map(str, args)], timeout, env, cwd or REPO)


def env_importing(*folders):
    """os.environ with PYTHONPATH set to the repository and the given folders of it (a `python -c` of the tests'
    own code imports the scripts, and conftest's helpers)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / folder) for folder in ("", *folders))}


def descendants(pid):
    """The pids of every process below pid (torchrun starts its workers in sessions of their own)."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children = {}
    for child, parent in zip(map(int, table[::2]), map(int, table[1::2])):
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def run_or_show_where_it_hung(argv, timeout, env, cwd=REPO):
    """subprocess.run(argv) with its output captured; where it is still running at the timeout, every Python
    process it started dumps its threads' stacks (faulthandler, on SIGABRT) and the test fails with them,
    where a bare TimeoutExpired said only that something hung (a 2-process torchrun run once, in ~50 runs)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env, PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        pids = descendants(proc.pid) + [proc.pid]
    for sig in (signal.SIGABRT, signal.SIGKILL):  # the stacks, then whatever did not end on them
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            out, err = proc.communicate(timeout=10 if sig == signal.SIGABRT else None)
            break
        except subprocess.TimeoutExpired:
            continue
    pytest.fail(f"still running after {timeout} s: {' '.join(map(str, argv))}\nwhere each process was:\n{err[-12000:]}")


def run_in_process(capsys, script, config_cls, *args):
    """A script's command line in this process (no interpreter start-up): (exit code, stderr)."""
    with pytest.raises(SystemExit) as stop:
        argument.run_main(script.main, config_cls, [str(a) for a in args])
    return stop.value.code, capsys.readouterr().err


def run_ok_in_process(capsys, script, config_cls, *args):
    """A script's command line in this process, expected to succeed: its stdout."""
    capsys.readouterr()
    argument.run_main(script.main, config_cls, [str(a) for a in args])
    return capsys.readouterr().out


def assert_one_line_error(code, err, *needles):
    """run_in_process's answer: exit code 2, one 'error:' line naming each needle, no traceback."""
    assert code == 2 and "Traceback" not in err, (code, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_cli_error(result, *needles):
    """Exit code 2, exactly one stderr line starting 'error:' naming each needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def masked_rows(features_dir, split="train", n=None):
    feats = features.PretrainingFeatures(str(features_dir))
    data = np.asarray(feats.split(split), dtype=np.int64)
    return feats, (data if n is None else data[:n])


def dense_slots(batch, name, fill=0):
    """A slot field back as a [B, L] numpy array: its value at each masked position, fill elsewhere."""
    ids = np.asarray(batch["input_ids"])
    out = np.full(ids.shape, fill, dtype=np.int64)
    w = np.asarray(batch["masked_lm_weights"]) > 0
    out[np.nonzero(w)[0], np.asarray(batch["masked_lm_positions"])[w]] = np.asarray(batch[name])[w]
    return out


def dense_labels(batch):
    """[B, L] labels (the original id where masked, -100 elsewhere) back from a batch's prediction slots."""
    return dense_slots(batch, "masked_lm_ids", fill=-100)


def se_batches(feat_dir, n, batch_size=8, seed=0):
    """The first n batches of an SEDataset over the features (dynamic masking, shuffled with the seed)."""
    ds = features.SEDataset(argument.SE_trainDataArgs(features_dir=str(feat_dir)), batch_size, seed=seed)
    return [ds[i] for i in range(n)]


SLOT_KEYS = {"masked_lm_positions", "masked_lm_ids", "masked_lm_weights", "span_position", "boundary_left",
             "boundary_right"}


def token_strings(tokenizer):
    """The token string of every id of a tokenizers.Tokenizer, as an object array."""
    return np.array([tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())], dtype=object)


def check_segmented_words_whole(feats, ids, batch, min_words=200):
    """A word segmented by pyvi (syllables joined by '_') is one byte-level word: masked all or nothing."""
    import masking
    tokens = token_strings(feats.tokenizer)
    table = masking.word_start_table(feats.tokenizer)
    underscore = np.array(["_" in t for t in tokens])
    assert not table[[i for i, t in enumerate(tokens) if t.startswith("_")]].any()  # '_…' continues a word
    masked = batch["labels"] != -100
    new_word = np.array([t.startswith("\u0120") for t in tokens])
    new_word[:5] = True
    seen = partly = 0
    special = np.isin(ids, np.arange(5))
    starts = new_word[ids] | special
    starts[:, 1:] |= special[:, :-1]  # a row's leading fragment is a word of its own
    for row in range(len(ids)):
        word_id = np.cumsum(starts[row])
        for w in np.unique(word_id[underscore[ids[row]]]):
            members = word_id == w
            if members.sum() < 2:
                continue
            seen += 1
            m = masked[row][members]
            partly += m.any() and not m.all()
    assert seen > min_words, seen
    assert partly == 0
    assert masked.sum() / (~np.isin(ids, np.arange(5))).sum() == pytest.approx(0.15, abs=0.02)
    return seen


# ---------------------------------------------------------------- session fixtures
@pytest.fixture(scope="session")
def bpe_tok(tmp_path_factory):
    return train_vocab(tmp_path_factory.mktemp("tok") / "bpe", tokenizer_type="BPE", model_name="bpe-test")


@pytest.fixture(scope="session")
def bert_tok(tmp_path_factory):
    return train_vocab(tmp_path_factory.mktemp("tok") / "bert", tokenizer_type="BERT", model_name="bert-test")


@pytest.fixture(scope="session")
def vi_tok(tmp_path_factory):
    pytest.importorskip("pyvi")
    return train_vocab(tmp_path_factory.mktemp("tok") / "vi", tokenizer_type="BPE", data_dir=str(SAMPLE_VI),
                       vocab_size=3000, word_segmenter="pyvi")


@pytest.fixture(scope="session")
def bpe_feat(bpe_tok, tmp_path_factory):
    """BPE features, max_seq_len 128, with static masks; returns (folder, meta)."""
    return build_features(bpe_tok, tmp_path_factory.mktemp("feat") / "bpe128", save_static_masks=True)


@pytest.fixture(scope="session")
def bert_feat(bert_tok, tmp_path_factory):
    return build_features(bert_tok, tmp_path_factory.mktemp("feat") / "bert128")


@pytest.fixture(scope="session")
def bpe_feat_512(bpe_tok, tmp_path_factory):
    return build_features(bpe_tok, tmp_path_factory.mktemp("feat") / "bpe512", max_seq_len=512)


@pytest.fixture(scope="session")
def vi_feat(vi_tok, tmp_path_factory):
    return build_features(vi_tok, tmp_path_factory.mktemp("feat") / "vi64", train_input=str(SAMPLE_VI / "train.txt"),
                          valid_input=str(SAMPLE_VI / "valid.txt"), max_seq_len=64)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The TensorFlow fixture converted by convert_tf_checkpoint.py: out/discriminator, out/generator."""
    import convert_tf_checkpoint
    out = tmp_path_factory.mktemp("conv") / "electra"
    convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(ELECTRA_TF), out_dir=str(out),
                                                     config_file=str(ELECTRA_TF / "hparams.json")))
    return out


def joint_batch(vocab=300, length=32):
    """A joint step's batch of two rows with one 3-token span masked (positions 5-7) and one padded slot."""
    import torch
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (2, length))
    positions = torch.tensor([[5, 6, 7, 0]] * 2)
    batch = {"input_ids": ids.clone(), "original_ids": ids, "masked_lm_positions": positions,
             "masked_lm_ids": ids.gather(1, positions), "masked_lm_weights": torch.tensor([[1.0, 1, 1, 0]] * 2),
             "span_position": torch.tensor([[0, 1, 2, 0]] * 2), "boundary_left": torch.full((2, 4), 4),
             "boundary_right": torch.full((2, 4), 8)}
    batch["input_ids"][:, 5:8] = 4
    return batch


class EpochData:
    """Three 'batches' an epoch whose value says (epoch, index): 10 * epoch + index."""
    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 3

    def __getitem__(self, i):
        import torch
        return {"x": torch.tensor([10 * self.epoch + i])}
