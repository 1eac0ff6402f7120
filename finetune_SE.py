"""Fine-tune a discriminator on a GLUE-style task: classification of one sentence or a pair, or regression.

    python finetune_SE.py --model_dir OUT/discriminator --task_dir glue_data/SST-2 --out_dir FT --num_train_epochs 3
    python finetune_SE.py ... --seeds 1,2,3            # one run per seed: median, min and max of every metric

model_dir is an exported discriminator (OUT/discriminator of trainSpanElectra.py) or any transformers
ELECTRA/BERT folder with its tokenizer; its pre-training head is replaced by a new classifier.
task_dir holds train.tsv and dev.tsv (test.tsv optional) in any GLUE layout (SST-2, CoLA, MRPC, QQP,
RTE, WNLI, QNLI, MNLI, STS-B) or plain `sentence<TAB>label` / `sentence1<TAB>sentence2<TAB>label`;
the layout is read from the header or the columns (or set with --task_type, --text_columns,
--label_column). Training follows ELECTRA: AdamW, layer-wise learning-rate decay, 10% warmup then
linear decay, metrics of the last epoch.

Writes FT/results.json (eval_accuracy, eval_f1, eval_matthews_corr or eval_pearson/eval_spearman,
eval_loss, with min/max and per-seed values), FT/test_predictions.tsv (GLUE submission style, first
seed) and FT/model (the first seed's model and tokenizer, --save_model).
"""
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

import training_utils as tu
from argument import checked_config, finetune_args, run_main, save_config
from cpu_dropout import use_cpu_dropout
from io_utils import (SpanElectraError, atomic_write_json, atomic_write_text, building_folder, first_line,
                      lies_within, make_out_dir, progress_bar, remove_paths)
from modelling_span_electra import (check_not_reshaped, load_tokenizer_of, quiet_transformers, warn_untrained_positions,
                                   weights_problem)
from tokenization import UNKNOWN_WARNING, check_tokenizer_fits, copy_tokenizer, folder_segmenter, read_tokenizer_info

logger = logging.getLogger("span_electra")

# Header names (lower-cased) as GLUE writes them: text columns, then the task they identify.
TEXT_HEADERS = [(("#1 string", "#2 string"), "MRPC"), (("question1", "question2"), "QQP"),
                (("question", "sentence"), "QNLI"), (("sentence1", "sentence2"), None),
                (("text_a", "text_b"), "sentence-pair"), (("sentence",), "SST-2"), (("text",), "single-sentence")]
LABEL_HEADERS = ("quality", "gold_label", "is_duplicate", "label", "score")  # MNLI's gold_label before label1..5
INDEX_HEADERS = ("index", "id")
SENTENCE_PAIR_TASKS = {"gold_label": "MNLI", "score": "STS-B", "label": "RTE/WNLI"}


# ---------------------------------------------------------------- reading task files
def read_tsv(path):
    """The non-blank lines of a TSV as (line number, fields). Quotes are plain characters: GLUE files
    hold unbalanced '"', which csv's default quoting would swallow across lines."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:  # a folder named dev.tsv, no permission
        raise SpanElectraError(f"task_dir: {path} cannot be read ({e.strerror}); it must be a TSV file") from None
    try:
        text = data.decode("utf-8-sig")  # MRPC starts with a byte-order mark
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SpanElectraError(f"task_dir: {path} line {line} holds bytes that are not UTF-8 "
                               f"({data[e.start:e.end + 3]!r}); save the file as UTF-8") from None
    rows = [(no, [part.strip() for part in line.rstrip("\r").split("\t")])
            for no, line in enumerate(text.split("\n"), 1) if line.strip()]  # not splitlines: it splits on \x1c too
    if not rows:
        raise SpanElectraError(f"task_dir: {path} is empty; it must hold one example per line")
    width = len(rows[0][1])
    for no, fields in rows:
        if len(fields) != width:
            raise SpanElectraError(f"task_dir: {path} line {no} has {len(fields)} tab-separated columns but line "
                                   f"{rows[0][0]} has {width}; fix that line (a tab inside a text?)")
    return rows


def is_number(value):
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def has_fractions(values):
    """All numbers, some of them not whole: scores (STS-B's 3.8), not class labels."""
    return all(is_number(v) for v in values) and any(not float(v).is_integer() for v in values)


def is_header(fields):
    """A first line naming GLUE columns (sentence, label, #1 String, ...) is a header."""
    known = {n for names, _ in TEXT_HEADERS for n in names} | set(LABEL_HEADERS) | set(INDEX_HEADERS)
    return any(f.lower() in known for f in fields)


def text_like(values):
    """A column of texts: most values hold a space."""
    return sum(any(c.isspace() for c in v) for v in values) >= len(values) / 2


def label_like(values):
    """A column of labels: numbers, or short words without spaces from a small set."""
    if all(is_number(v) for v in values):
        return True
    return all(v and not any(c.isspace() for c in v) for v in values) and len(set(values)) <= 100


@dataclass
class Layout:
    """Where a task file keeps its texts and labels."""
    name: str                    # 'MRPC', 'CoLA', 'plain', 'custom', ...
    header: Optional[List[str]]  # the header line's names, None when the file has no header
    width: int                   # columns per line
    text_cols: List[int]
    label_col: int
    regression: bool = False

    @property
    def kind(self):
        return "regression" if self.regression else ("single" if len(self.text_cols) == 1 else "pair")

    def column(self, i):
        return f"'{self.header[i]}'" if self.header else str(i + 1)

    def describe(self):
        """e.g. "sentence pairs (MRPC layout: label column 'Quality', text '#1 String' + '#2 String')"."""
        what = "sentence pairs" if len(self.text_cols) == 2 else "single sentences"
        if self.regression:
            what = f"regression on {what}"
        where = ", no header" if self.header is None else ""
        texts = " + ".join(self.column(i) for i in self.text_cols)
        label = "score" if self.regression else "label"
        plural = "s" if len(self.text_cols) > 1 else ""
        return (f"{what} ({self.name} layout{where}: {label} column {self.column(self.label_col)}, text "
                f"column{plural} {texts})")


def detect_layout(rows, path, config):
    """The layout of train.tsv: --text_columns/--label_column, else header names, else column contents."""
    first = rows[0][1]
    if config.text_columns or config.label_column:
        layout = custom_layout(rows, path, config)
    elif is_header(first):
        layout = header_layout(first, path)
    else:
        layout = headerless_layout(rows, path, config)
        if unknown_header(rows, layout):
            raise SpanElectraError(
                f"task_dir: the first line of {path} ({' | '.join(f[:30] for f in first)}) looks like a header with "
                "names I don't know; pass --text_columns and --label_column with its names")
    values = [fields[layout.label_col] for _, fields in rows[1 if layout.header else 0:]]
    named_score = layout.header is not None and first[layout.label_col].lower() == "score"  # STS-B
    scores = has_fractions(values) or (named_score and all(is_number(v) for v in values))
    layout.regression = config.task_type == "regression" or (config.task_type == "auto" and scores)
    expected = {"single": 1, "pair": 2}.get(config.task_type)
    if expected and len(layout.text_cols) != expected:
        raise SpanElectraError(f"task_type: '{config.task_type}' but {path} has {len(layout.text_cols)} text "
                               f"column(s) ({layout.describe()}); pass --text_columns to choose")
    return layout


def unknown_header(rows, layout):
    """A first line that names columns (e.g. 'review<TAB>sentiment'), read as data, would become an example:
    a word where every other label is a number, or a label that occurs nowhere else among a few repeated
    labels, with single-word texts."""
    labels = [fields[layout.label_col] for _, fields in rows]
    if len(labels) > 1 and labels[0] and not is_number(labels[0]) and all(is_number(v) for v in labels[1:]):
        return True
    return (len(rows) > 10 and labels.count(labels[0]) == 1 and len(set(labels)) <= 20
            and not any(c.isspace() for i in layout.text_cols for c in rows[0][1][i]))


def column_of(names, name, path):
    """The index of a header name (lower-cased) that must occur once: a repeated one is ambiguous."""
    if names.count(name) > 1:
        raise SpanElectraError(f"task_dir: the header of {path} names '{name}' {names.count(name)} times; rename the "
                               "columns so each name occurs once, or pass --text_columns/--label_column as numbers")
    return names.index(name)


def header_layout(header, path):
    """Text and label columns found by GLUE's header names."""
    lower = [h.lower() for h in header]
    for names, name in TEXT_HEADERS:
        if all(n in lower for n in names):
            break
    else:
        raise SpanElectraError(f"task_dir: {path} has a header without a text column I know ({', '.join(header)}); "
                               "pass --text_columns and --label_column (names or numbers from 1)")
    label = next((n for n in LABEL_HEADERS if n in lower), None)
    if label is None:
        raise SpanElectraError(f"task_dir: {path} has no label column ({', '.join(header)}); pass --label_column "
                               f"(one of its names) or rename the label column to 'label'")
    if name is None:  # sentence1/sentence2: the label column tells RTE/WNLI, MNLI and STS-B apart
        name = SENTENCE_PAIR_TASKS.get(label, "sentence-pair")
    elif name == "SST-2" and label != "label":
        name = "single-sentence"
    return Layout(name, header, len(header), [column_of(lower, n, path) for n in names], column_of(lower, label, path))


def headerless_layout(rows, path, config):
    """CoLA (source, label, author mark, sentence), else `text [text] label` or `label text [text]`;
    with --task_type, also wider files: the label column at either end and the first text-like columns."""
    columns = list(zip(*(fields for _, fields in rows)))
    width = len(columns)
    if width == 4 and set(columns[1]) <= {"0", "1"} and all(c in "*?#" for v in columns[2] for c in v):
        return Layout("CoLA", None, 4, [3], 1)
    label = next((i for i in (width - 1, 0) if width > 1 and label_like(columns[i])), None)
    if width in (2, 3) and label is not None:
        return Layout("plain", None, width, [i for i in range(width) if i != label], label)
    if config.task_type != "auto" and label is not None:
        texts = [i for i in range(width) if i != label and text_like(columns[i])]
        wanted = {"single": 1, "pair": 2}.get(config.task_type, min(len(texts), 2))
        if 1 <= wanted <= len(texts):
            return Layout("guessed", None, width, texts[:wanted], label)
    raise SpanElectraError(
        f"task_dir: cannot tell the layout of {path} ({len(columns)} columns, no header I know, first line "
        f"{rows[0][0]}: {' | '.join(f[:30] for f in rows[0][1])}); pass --task_type (single, pair or regression) "
        "and --text_columns/--label_column (names or numbers from 1)")


def custom_layout(rows, path, config):
    """The columns the user named (header names) or numbered (from 1)."""
    first = rows[0][1]
    lower = [f.lower() for f in first]
    by_name = False

    def resolve(spec, name):
        nonlocal by_name
        if spec.isdigit():
            if not 1 <= int(spec) <= len(first):
                raise SpanElectraError(f"{name}: column {spec} does not exist; {path} has {len(first)} columns")
            return int(spec) - 1
        if spec.lower() not in lower:
            raise SpanElectraError(f"{name}: '{spec}' is not in the header of {path} ({', '.join(first)}); use one of "
                                   "its names or a column number from 1")
        by_name = True
        return column_of(lower, spec.lower(), path)

    if not (config.text_columns and config.label_column):
        missing, given = ("label_column", "text_columns") if config.text_columns else ("text_columns", "label_column")
        raise SpanElectraError(f"{missing}: missing; --{given} needs --{missing} too")
    texts = [resolve(s.strip(), "text_columns") for s in config.text_columns.split(",") if s.strip()]
    label = resolve(config.label_column.strip(), "label_column")
    if not 1 <= len(texts) <= 2 or label in texts:
        raise SpanElectraError(f"text_columns: give one or two text columns, not the label column ('{config.text_columns}')")
    layout = Layout("custom", None, len(first), texts, label)
    # columns given by number on a file headed with other names ('review<TAB>sentiment'): still its header, as
    # auto-detection reads it, not an example with a label of its own
    if by_name or is_header(first) or unknown_header(rows, layout):
        layout.header = first
    return layout


# ---------------------------------------------------------------- examples
@dataclass
class Examples:
    """One split: text tuples, raw label strings ('' in test.tsv), line numbers and test indices."""
    path: str
    texts: List[tuple]
    labels: List[str]
    lines: List[int]
    index: List[str] = field(default_factory=list)
    targets: Optional[np.ndarray] = None  # label ids (classification) or scores (regression)

    def __len__(self):
        return len(self.texts)


@dataclass
class Task:
    layout: Layout
    labels: List[str]   # the classes, in id order ([] for regression)
    metrics: List[str]  # e.g. ['accuracy', 'f1'] or ['pearson', 'spearman']
    train: Examples
    dev: Examples
    test: Optional[Examples]
    num_train_total: int
    majority: Optional[int] = None  # the most frequent label of all of train.tsv (before any subsampling)

    @property
    def regression(self):
        return self.layout.regression

    @property
    def main_metric(self):
        return "eval_" + self.metrics[-1]


def read_examples(rows, path, layout):
    """Texts and labels of a labelled file (train.tsv, dev.tsv) read with train.tsv's layout."""
    if layout.header is not None:
        names = [f.lower() for f in rows[0][1]]
        wanted = [layout.header[i].lower() for i in layout.text_cols + [layout.label_col]]
        if not all(w in names for w in wanted):
            raise SpanElectraError(f"task_dir: the header of {path} ({', '.join(rows[0][1])}) lacks "
                                   f"{', '.join(w for w in wanted if w not in names)}; give it train.tsv's column names")
        cols = [column_of(names, w, path) for w in wanted]
        rows = rows[1:]
    else:
        if len(rows[0][1]) <= max(layout.text_cols + [layout.label_col]):
            raise SpanElectraError(f"task_dir: {path} has {len(rows[0][1])} columns, fewer than train.tsv's layout "
                                   f"needs ({layout.describe()})")
        cols = layout.text_cols + [layout.label_col]
    if not rows:
        raise SpanElectraError(f"task_dir: {path} has a header but no examples")
    texts = [tuple(fields[c] for c in cols[:-1]) for _, fields in rows]
    labels = [fields[cols[-1]] for _, fields in rows]
    return Examples(path, texts, labels, [no for no, _ in rows])


def read_test(rows, path, layout):
    """test.tsv: the texts found by train.tsv's header names (or GLUE's) or by position, and the index column."""
    first = rows[0][1]
    n_text = len(layout.text_cols)
    own_names = layout.header and {layout.header[i].lower() for i in layout.text_cols} <= {f.lower() for f in first}
    if is_header(first) or own_names:  # GLUE's names, or train.tsv's own (--text_columns review)
        names = [f.lower() for f in first]
        candidates = ([tuple(layout.header[i].lower() for i in layout.text_cols)] if layout.header else []) + \
            [names_ for names_, _ in TEXT_HEADERS if len(names_) == n_text]
        found = next((c for c in candidates if all(n in names for n in c)), None)
        if found is None:
            raise SpanElectraError(f"task_dir: cannot find the text columns in the header of {path} "
                                   f"({', '.join(first)}); give it train.tsv's column names, or remove it")
        text_cols = [column_of(names, n, path) for n in found]
        index_col = next((names.index(n) for n in INDEX_HEADERS if n in names), None)
        rows = rows[1:]
    elif len(first) == n_text:
        text_cols, index_col = list(range(n_text)), None
    elif len(first) == n_text + 1 and is_index([f[0] for _, f in rows]):
        text_cols, index_col = list(range(1, n_text + 1)), 0  # GLUE's index column, without the header
    elif len(first) == layout.width:
        text_cols, index_col = layout.text_cols, None  # train.tsv's columns (the label, if any, is ignored)
    else:
        raise SpanElectraError(f"task_dir: cannot find the {n_text} text column(s) in {path} ({len(first)} columns, "
                               "no header); give it train.tsv's columns, or remove it")
    texts = [tuple(fields[c] for c in text_cols) for _, fields in rows]
    index = [fields[index_col] if index_col is not None else str(i) for i, (_, fields) in enumerate(rows)]
    return Examples(path, texts, [""] * len(texts), [no for no, _ in rows], index)


def is_index(values):
    """GLUE's index column: whole numbers, rising. Not a label column in train.tsv's `label text` layout, whose
    numbers repeat."""
    return all(v.isdigit() for v in values) and all(int(a) < int(b) for a, b in zip(values, values[1:]))


def shown(labels, limit=20):
    """The first labels, comma-separated, for messages."""
    return ", ".join(labels[:limit]) + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def positive_label(labels):
    """F1's positive class: the label 1 ('1', or '1.0' where every label is a number: 0/1 written as
    floats), else None."""
    numeric = all(is_number(v) for v in labels)
    return next((v for v in labels if v == "1" or (numeric and float(v) == 1)), None)


def zero_one(labels):
    """Labels 0 and 1 (MRPC's, QQP's), however written."""
    return len(labels) == 2 and all(is_number(v) for v in labels) and {float(v) for v in labels} == {0.0, 1.0}


def label_order(labels):
    """Classes sorted numerically when they are numbers (0, 1, 2, ..., 10), else alphabetically."""
    unique = set(labels)
    return sorted(unique, key=float) if all(is_number(v) for v in unique) else sorted(unique)


def set_targets(examples, task):
    """Label ids (classification) or float scores (regression); an unknown label is an error."""
    if task.regression:
        for label, no in zip(examples.labels, examples.lines):
            if not is_number(label):
                raise SpanElectraError(f"task_dir: {examples.path} line {no}: the score '{label}' is not a number")
        examples.targets = np.array([float(v) for v in examples.labels], dtype=np.float32)
        return
    ids = {label: i for i, label in enumerate(task.labels)}
    if all(is_number(v) for v in task.labels):  # number labels match as numbers: dev's '1.0' is train's '1'
        by_value = {float(v): i for v, i in ids.items()}
        ids.update({v: by_value[float(v)] for v in set(examples.labels) if is_number(v) and float(v) in by_value})
    for label, no in zip(examples.labels, examples.lines):
        if label not in ids:
            what = "is empty" if not label else f"'{label}' does not occur in train.tsv"
            raise SpanElectraError(f"task_dir: {examples.path} line {no}: the label {what} (train labels: "
                                   f"{shown(task.labels)}); " + ("these are scores: pass --task_type regression"
                                   if has_fractions(task.labels) else "fix the file or add such examples to train.tsv"))
    examples.targets = np.array([ids[v] for v in examples.labels], dtype=np.int64)


def choose_metrics(layout, labels, config):
    """Accuracy plus F1 (0/1 pairs, positive label '1') or Matthews (CoLA); Pearson/Spearman for scores."""
    if layout.regression:
        if config.metric != "auto":
            raise SpanElectraError(f"metric: '{config.metric}' does not apply to a regression task (Pearson and "
                                   "Spearman correlation are reported); leave it at auto")
        return ["pearson", "spearman"]
    extra = config.metric
    if extra == "auto":
        extra = ("matthews_corr" if layout.name == "CoLA" else
                 "f1" if layout.kind == "pair" and zero_one(labels) else "accuracy")
    if extra == "f1" and not positive_label(labels):
        raise SpanElectraError(f"metric: f1 takes label '1' as the positive class but the labels are "
                               f"{shown(labels)}; use --metric accuracy or matthews_corr")
    return ["accuracy"] + ([extra] if extra != "accuracy" else [])


def warn_empty_texts(examples):
    """Say how many rows have an empty text column (kept, as GLUE's QQP keeps its few: the model sees only
    [CLS] [SEP] there), so a wrong --text_columns or a broken file does not pass unnoticed."""
    empty = [no for no, texts in zip(examples.lines, examples.texts) if not all(t.strip() for t in texts)]
    if empty:
        logger.warning("task_dir: %s: %d of %d rows have an empty text (first: line %d); they are kept; check the "
                       "file or --text_columns if that is more than a few", examples.path, len(empty), len(examples),
                       empty[0])


def load_task(config, seed=None):
    """Read train.tsv, dev.tsv and test.tsv of config.task_dir, subsample train, choose the metrics."""
    paths = {name: os.path.join(config.task_dir, f"{name}.tsv") for name in ("train", "dev", "test")}
    train_rows = read_tsv(paths["train"])
    layout = detect_layout(train_rows, paths["train"], config)
    train = read_examples(train_rows, paths["train"], layout)
    dev = read_examples(read_tsv(paths["dev"]), paths["dev"], layout)
    test = read_test(read_tsv(paths["test"]), paths["test"], layout) if os.path.exists(paths["test"]) else None
    if test is not None and not len(test):
        logger.warning("%s has a header but no examples; no test predictions", paths["test"])
        test = None
    for examples in (train, dev, test):
        if examples is not None:
            warn_empty_texts(examples)
    if not layout.regression and any(not v for v in train.labels):
        no = train.lines[train.labels.index("")]
        raise SpanElectraError(f"task_dir: {paths['train']} line {no}: the label is empty; fill it in or drop the line")
    labels = [] if layout.regression else label_order(train.labels)
    if len(labels) == 1:
        logger.warning("task_dir: every row of %s has the label '%s': a classifier learns nothing from one class; "
                       "check the label column (--label_column)", train.path, labels[0])
    task = Task(layout, labels, choose_metrics(layout, labels, config), train, dev, test, len(train))
    for examples in (train, dev):
        set_targets(examples, task)
    if not task.regression:
        task.majority = int(np.bincount(train.targets.astype(np.int64), minlength=len(labels)).argmax())
    if config.max_train_examples and config.max_train_examples < len(train):
        # one subset for every seed, so seeds differ only in initialisation and order
        keep = np.sort(np.random.default_rng(config.seed if seed is None else seed).choice(
            len(train), config.max_train_examples, replace=False))
        task.train = Examples(train.path, [train.texts[i] for i in keep], [train.labels[i] for i in keep],
                              [train.lines[i] for i in keep], targets=train.targets[keep])
    return task


def describe_task(task):
    """The one line saying what was detected, e.g. "train.tsv: sentence pairs (...), 3668 rows, 2 labels: 0, 1"."""
    if task.regression:
        scores = task.train.targets
        values = f"scores {scores.min():g} to {scores.max():g}"
    else:
        values = f"{len(task.labels)} labels: {shown(task.labels)}"
    return f"train.tsv: {task.layout.describe()}, {task.num_train_total} rows, {values}"


# ---------------------------------------------------------------- metrics (numpy only)
def accuracy(pred, gold):
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_score(pred, gold, positive=1):
    """F1 of the positive class: 2TP / (2TP + FP + FN)."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp, fp, fn = np.sum(pred & gold), np.sum(pred & ~gold), np.sum(~pred & gold)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def matthews_corr(pred, gold, num_classes=None):
    """Matthews correlation (Gorodkin's multi-class form; the usual one for two classes); 0 when undefined."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    k = num_classes or int(max(pred.max(), gold.max())) + 1
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (gold, pred), 1)
    t, p, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    denominator = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def pearson(x, y):
    """Pearson correlation; 0 when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator else 0.0


def average_ranks(x):
    """Ranks from 1, ties sharing the average of their ranks (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse]


def spearman(x, y):
    return pearson(average_ranks(x), average_ranks(y))


def compute_metrics(task, outputs, targets):
    """eval_* metrics of the task from model outputs (logits, or scores for regression)."""
    if task.regression:
        scores = outputs.reshape(-1)
        return {"eval_pearson": pearson(scores, targets), "eval_spearman": spearman(scores, targets)}
    pred = outputs.argmax(-1)
    metrics = {"eval_accuracy": accuracy(pred, targets)}
    if "f1" in task.metrics:
        metrics["eval_f1"] = f1_score(pred, targets, positive=task.labels.index(positive_label(task.labels)))
    if "matthews_corr" in task.metrics:
        metrics["eval_matthews_corr"] = matthews_corr(pred, targets, len(task.labels))
    return metrics


def majority_baseline(task):
    """(label, dev metrics) of always predicting train.tsv's most frequent label (over the whole file, also
    when fine-tuning uses a subset): the figure a model that learned nothing reaches; None for regression."""
    if task.regression:
        return None
    majority = task.majority
    outputs = np.zeros((len(task.dev.targets), len(task.labels)), dtype=np.float32)
    outputs[:, majority] = 1.0
    return task.labels[majority], compute_metrics(task, outputs, task.dev.targets)


def predicted_classes(task, outputs):
    """How many different labels the model predicts over a split (1: it learned only the majority)."""
    return None if task.regression else int(len(np.unique(outputs.argmax(-1))))


# ---------------------------------------------------------------- model and optimizer
def load_model_config(model_dir):
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as e:
        raise SpanElectraError(f"model_dir: '{model_dir}' holds no transformers model config ({first_line(e)}); point "
                               "it at OUT/discriminator of trainSpanElectra.py or an ELECTRA/BERT folder") from None


def load_model_tokenizer(model_dir, model_config, max_seq_length):
    """The model's tokenizer, checked against its vocabulary and positions."""
    tokenizer = load_tokenizer_of(model_dir)
    check_tokenizer_fits(tokenizer, model_config.vocab_size, model_dir)
    positions = getattr(model_config, "max_position_embeddings", max_seq_length)
    if max_seq_length > positions:
        raise SpanElectraError(f"max_seq_length: {max_seq_length} exceeds the model's {positions} positions; use at "
                               f"most {positions}")
    warn_untrained_positions(model_dir, "model", max_seq_length, "max_seq_length", "fine-tuning takes up to",
                             "--max_seq_length {trained} keeps to what it learned (or pre-train on longer features)")
    return tokenizer


def announce_masked_lm(model_dir):
    """A masked LM is fine-tuned BERT-style; where it is an ELECTRA generator, with its discriminator
    beside it (trainSpanElectra.py's OUT/generator), the discriminator was most likely meant."""
    discriminator = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "discriminator")
    if os.path.isdir(discriminator):
        logger.warning("model_dir: %s holds the generator (ElectraForMaskedLM); ELECTRA fine-tunes the discriminator "
                       "beside it (%s), which usually does much better", model_dir, discriminator)
    else:
        logger.info("model_dir: %s holds a masked LM (ElectraForMaskedLM): fine-tuned BERT-style", model_dir)


def load_model(config, task, announce=False):
    """AutoModelForSequenceClassification on model_dir: its encoder, a new classifier head (announce: log
    what was loaded and what starts new); on a CPU its dropout masks come from cpu_dropout."""
    kwargs = {"num_labels": 1} if task.regression else {
        "num_labels": len(task.labels), "id2label": dict(enumerate(task.labels)),
        "label2id": {label: i for i, label in enumerate(task.labels)}}
    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                config.model_dir, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except Exception as e:  # never pass on torch's advice to unpickle with weights_only=False
        problem = weights_problem(config.model_dir) or first_line(e)
        raise SpanElectraError(f"model_dir: cannot load a model from '{config.model_dir}' ({problem}); point it "
                               "at OUT/discriminator of trainSpanElectra.py or an ELECTRA/BERT folder") from None
    layers = model.config.num_hidden_layers
    # ignore_mismatched_sizes is there for a new task head, never for a body config.json contradicts
    check_not_reshaped(info, config.model_dir, "model_dir", counts=lambda key: layer_depth(key, layers) <= layers)
    if announce and "ElectraForMaskedLM" in (getattr(model.config, "architectures", None) or []):
        announce_masked_lm(config.model_dir)
    if announce:
        new = sorted(set(info["missing_keys"]) | {k for k, *_ in info.get("mismatched_keys", [])})
        random_body = [k for k in new if layer_depth(k, layers) <= layers]
        logger.info("model: %s from %s, %s parameters, %d layers; new classifier head (%d tensors), pre-training "
                    "head dropped (%d tensors)", type(model).__name__, config.model_dir, tu.parameter_count(model), layers,
                    len(new) - len(random_body), len(info["unexpected_keys"]))
        if random_body:
            logger.warning("%d encoder tensors were not in %s and start random (e.g. %s): is it the right model?",
                           len(random_body), config.model_dir, ", ".join(random_body[:3]))
    return use_cpu_dropout(model)


def layer_depth(name, num_layers):
    """0 for the embeddings, i + 1 for encoder layer i, num_layers + 2 for the task head (pooler,
    classifier), as google-research/electra's _get_layer_lrs counts them."""
    match = re.search(r"\.layers?\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if "embeddings" in name:  # also ELECTRA's embeddings_project
        return 0
    return num_layers + 2


def layerwise_param_groups(model, learning_rate, layer_decay, weight_decay):
    """AdamW groups with ELECTRA's layer-wise decay: the head gets learning_rate, the top layer
    learning_rate * decay^2, ..., the embeddings learning_rate * decay^(num_layers + 2); no weight decay
    on biases and LayerNorm weights (training_utils.decays)."""
    num_layers = model.config.num_hidden_layers
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, num_layers)
        no_decay = not tu.decays(name, p)
        group = groups.setdefault((depth, no_decay), {
            "params": [], "depth": depth, "lr": learning_rate * layer_decay ** (num_layers + 2 - depth),
            "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


# ---------------------------------------------------------------- batches
BUCKET = 32  # batches are padded to a multiple of this: a handful of shapes, not one per batch


def encode(tokenizer, examples, max_seq_length, token_types, pad_id, prepare=lambda text: text):
    """Token ids of every example (pairs as tokenizer(a, b)), padded once into [N, longest] numpy
    arrays, with each example's length. prepare: text -> text as the model's pre-training text was
    (tokenization.folder_segmenter)."""
    first = [prepare(t[0]) for t in examples.texts]
    second = [prepare(t[1]) for t in examples.texts] if examples.texts and len(examples.texts[0]) == 2 else None
    encoded = tokenizer(first, second, truncation=True, max_length=max_seq_length, return_token_type_ids=token_types)
    lengths = np.array([len(x) for x in encoded["input_ids"]], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 1
    out = {"lengths": lengths, "input_ids": np.full((len(lengths), width), pad_id, dtype=np.int64)}
    if token_types:
        out["token_type_ids"] = np.zeros((len(lengths), width), dtype=np.int64)
    for row, ids in enumerate(encoded["input_ids"]):
        out["input_ids"][row, :len(ids)] = ids
        if token_types:
            out["token_type_ids"][row, :len(ids)] = encoded["token_type_ids"][row]
    return out


def warn_unknown_share(encoded, tokenizer, split="train"):
    """Warn when many of a split's tokens are [UNK] (as process.py does for the corpus): the model's
    vocabulary does not cover the task's text (another language or script, or characters its corpus lacked)."""
    unk = tokenizer.unk_token_id
    if unk is None or not len(encoded["lengths"]):
        return
    ids = encoded["input_ids"]
    real = np.arange(ids.shape[1])[None, :] < encoded["lengths"][:, None]
    real &= ~np.isin(ids, [i for i in (getattr(tokenizer, "all_special_ids", None) or []) if i != unk])  # text only,
    share = ((ids == unk) & real).sum() / max(int(real.sum()), 1)  # as process.py counts: [CLS]/[SEP] left out
    if share > UNKNOWN_WARNING:
        logger.warning("%.0f%% of the task's %s tokens are [UNK]: the model's vocabulary does not cover this text "
                       "(another language or script?); fine-tune a model pre-trained on text like it", 100 * share,
                       split)


def make_batch(encoded, indices, device, targets=None):
    """The examples at indices, padded to their longest rounded up to a multiple of BUCKET (so
    few shapes ever reach the model), with their targets; copied to the device without waiting."""
    indices = np.asarray(indices)
    lengths = encoded["lengths"][indices]
    width = min(-(-int(lengths.max()) // BUCKET) * BUCKET, encoded["input_ids"].shape[1])
    batch = {"input_ids": encoded["input_ids"][indices, :width],
             "attention_mask": (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)}
    if "token_type_ids" in encoded:
        batch["token_type_ids"] = encoded["token_type_ids"][indices, :width]
    if targets is not None:
        batch["targets"] = targets[indices]
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    if device.type == "cuda":  # pinned: the copy runs alongside the GPU's work
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return tu.to_device(batch, device)


def task_loss(task, logits, targets):
    """Cross-entropy, or mean squared error on the single output of a regression head."""
    if task.regression:
        return F.mse_loss(logits.float().reshape(-1), targets.float())
    return F.cross_entropy(logits.float(), targets)


# ---------------------------------------------------------------- training and evaluation
@torch.no_grad()
def predict(model, encoded, config, runtime):
    """Logits (scores for regression) of every example, in order, as a float numpy array."""
    model.eval()
    outputs = []
    n = len(encoded["lengths"])
    for start in range(0, n, config.eval_batch_size):
        batch = make_batch(encoded, range(start, min(start + config.eval_batch_size, n)), runtime.device)
        with tu.autocast(runtime, tu.gpu_amp_dtype(runtime)):
            outputs.append(model(**batch).logits.float())
    model.train()
    return torch.cat(outputs).cpu().numpy()  # one copy back for the whole split


def evaluate(model, task, encoded, config, runtime):
    """The dev metrics of the model, eval_loss included."""
    outputs = predict(model, encoded, config, runtime)
    loss = task_loss(task, torch.from_numpy(outputs), torch.from_numpy(task.dev.targets)).item()
    return {**compute_metrics(task, outputs, task.dev.targets), "eval_loss": loss,
            "predicted_classes": predicted_classes(task, outputs)}


@torch.no_grad()
def token_similarity(model, data, runtime, n=16):
    """Mean cosine similarity of the encoder's output vectors over the tokens of a few training examples.
    Near 1 means pre-training collapsed (every token gets the same vector): nothing to fine-tune from."""
    model.eval()
    batch = make_batch(data["train"], range(min(n, len(data["train"]["lengths"]))), runtime.device)
    hidden = model.base_model(**batch).last_hidden_state[batch["attention_mask"].bool()]
    model.train()
    vectors = F.normalize(hidden.float(), dim=-1)
    return (vectors @ vectors.T).mean().item()


# ---------------------------------------------------------------- linear probe
@torch.no_grad()
def pooled_features(encoder, encoded, config, runtime):
    """The frozen encoder's last hidden states averaged over each example's tokens: [N, hidden]."""
    encoder.eval()
    features, n = [], len(encoded["lengths"])
    for start in range(0, n, config.eval_batch_size):
        batch = make_batch(encoded, range(start, min(start + config.eval_batch_size, n)), runtime.device)
        with tu.autocast(runtime, tu.gpu_amp_dtype(runtime)):
            hidden = encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        features.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(features)


def fit_linear_probe(task, train_x, train_y, l2=1e-3, iterations=200):
    """Logistic (or, for regression, linear) regression on standardised features, full batch with
    L-BFGS from zero weights: deterministic. Returns a function features -> logits."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    x = (train_x - mean) / std
    head = torch.nn.Linear(x.shape[1], 1 if task.regression else len(task.labels), device=x.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = task_loss(task, head(x), train_y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return lambda features: head((features - mean) / std).detach()


def linear_probe(task, data, config, runtime, model):
    """Dev metrics of a linear probe on the frozen encoder's mean-pooled outputs (model: main's, loaded)."""
    encoder = model.base_model.to(runtime.device)
    train_x = pooled_features(encoder, data["train"], config, runtime)
    dev_x = pooled_features(encoder, data["dev"], config, runtime)
    probe = fit_linear_probe(task, train_x, torch.as_tensor(task.train.targets, device=runtime.device))
    outputs = probe(dev_x).cpu()
    loss = task_loss(task, outputs, torch.from_numpy(task.dev.targets)).item()
    return {**compute_metrics(task, outputs.numpy(), task.dev.targets), "eval_loss": loss}


def train_one_seed(seed, task, data, config, runtime, announce, model=None):
    """Fine-tune a fresh copy of the model with one seed (model: one load_model gave just after seeding with
    it); returns (model, final dev metrics, per-epoch rows)."""
    if model is None:
        tu.seed_everything(seed)  # before loading: the new classifier head's initialisation depends on it
        model = load_model(config, task)
    model = model.to(runtime.device)
    if announce and token_similarity(model, data, runtime) > 0.99:
        logger.warning("model: %s gives (almost) the same vector to every token: its pre-training collapsed, and "
                       "fine-tuning will likely not get past the majority class; check its pre-training",
                       config.model_dir)
    optimizer = tu.adamw(layerwise_param_groups(model, config.learning_rate, config.layerwise_lr_decay,
                                                config.weight_decay), runtime.device)
    n = len(task.train)
    total = config.num_train_epochs * math.ceil(n / config.train_batch_size)
    scheduler = tu.warmup_linear_schedule(optimizer, tu.warmup_steps(config.warmup_ratio, total), total)
    amp_dtype = tu.gpu_amp_dtype(runtime)
    scaler = tu.loss_scaler(runtime.device, amp_dtype == torch.float16)  # fp16 on GPUs without native bf16
    order_rng = torch.Generator().manual_seed(seed)
    history, step = [], 0
    model.train()
    bar = progress_bar(total=total, desc=f"fine-tune (seed {seed})")
    loop_seconds = 0.0  # training steps only: loading and evaluation excluded
    for epoch in range(1, config.num_train_epochs + 1):
        epoch_start = time.perf_counter()
        losses = tu.MetricSums(skip_nonfinite=scaler.is_enabled())  # on the device, read per epoch
        order = torch.randperm(n, generator=order_rng).numpy()
        for start in range(0, n, config.train_batch_size):
            batch = make_batch(data["train"], order[start:start + config.train_batch_size], runtime.device,
                               task.train.targets)
            targets = batch.pop("targets")
            with tu.autocast(runtime, amp_dtype):
                logits = model(**batch).logits
            loss = task_loss(task, logits, targets)
            scaler.scale(loss).backward()
            tu.optimizer_step(model, optimizer, scheduler, config.max_grad_norm, scaler)
            step += 1
            losses.add({"loss": loss})
            bar.update(1)
        train_loss = losses.read(runtime)["loss"]  # the epoch's one sync (fp16: overflowed batches left out)
        loop_seconds += time.perf_counter() - epoch_start
        overflowed = " (float16 overflowed in every batch of the epoch)" if scaler.is_enabled() else ""
        tu.check_finite(train_loss, step, f"seed {seed}: lower --learning_rate (now {config.learning_rate:g}){overflowed}")
        bar.set_postfix(train_loss=f"{train_loss:.4f}")
        row = {"epoch": epoch, "train_loss": train_loss, "train_steps_per_sec": round(step / loop_seconds, 2),
               **evaluate(model, task, data["dev"], config, runtime)}
        history.append(row)
        logger.info("seed %d epoch %d/%d: train_loss %.4f (%.1f steps/s), dev %s", seed, epoch, config.num_train_epochs,
                    row["train_loss"], row["train_steps_per_sec"], ", ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("eval_")))
    bar.close()
    return model, history[-1], history


def fine_tune_seeds(seeds, task, data, config, runtime, first):
    """One fine-tuning run per seed, the first from the model in the list first (taken out, so that it is freed
    after that run). Returns (a row per seed, the first seed's test predictions and saved model)."""
    per_seed, outputs = [], {}
    for i, seed in enumerate(seeds):
        start = time.time()
        model, final, history = train_one_seed(seed, task, data, config, runtime, announce=i == 0,
                                               model=first.pop() if i == 0 else None)
        if final.get("predicted_classes") == 1 and len(task.labels) > 1:
            logger.warning("seed %d predicts one label for every dev example: it learned no more than the majority "
                           "class; try more epochs, another --learning_rate, or a longer pre-trained model", seed)
        final = {k: v for k, v in final.items() if k not in ("epoch", "train_steps_per_sec")}
        per_seed.append({"seed": seed, **final, "train_seconds": round(time.time() - start, 1),
                         "train_steps_per_sec": history[-1]["train_steps_per_sec"], "epochs": history})
        if i == 0 and task.test is not None:
            outputs["test_predictions"] = write_test_predictions(model, task, data, config, runtime)
        if i == 0 and config.save_model:
            outputs["model"] = save_model(model, config.out_dir, config.model_dir)
        del model
    return per_seed, outputs


def write_test_predictions(model, task, data, config, runtime):
    """out_dir/test_predictions.tsv: `index<TAB>prediction` with train.tsv's label strings (GLUE style)."""
    outputs = predict(model, data["test"], config, runtime)
    if task.regression:
        predictions = [f"{v:.3f}" for v in outputs.reshape(-1)]
    else:
        predictions = [task.labels[i] for i in outputs.argmax(-1)]
    path = os.path.join(config.out_dir, "test_predictions.tsv")
    atomic_write_text(path, "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in zip(task.test.index, predictions)))
    return path


def save_model(model, out_dir, model_dir):
    """out_dir/model, built under a temporary name and published whole, with model_dir's tokenizer files
    as they are (the class name both transformers 4 and 5 load), se_tokenizer.json among them (how its
    text is segmented: a Vietnamese model's must travel with it)."""
    final = os.path.join(out_dir, "model")
    with building_folder(final) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        copy_tokenizer(model_dir, tmp)
    return final


RUN_OUTPUTS = ("results.json", "test_predictions.tsv", "model")


def check_model_outside_outputs(config):
    """Fine-tuning replaces out_dir's earlier outputs first: a model_dir among them would be deleted."""
    output = lies_within(config.model_dir, [os.path.join(config.out_dir, name) for name in RUN_OUTPUTS])
    if output:
        raise SpanElectraError(f"model_dir: '{config.model_dir}' is the {os.path.basename(output)} of out_dir "
                               f"'{config.out_dir}', which this run replaces; give another --out_dir")


def clear_outputs(out_dir):
    """Remove an earlier run's results from out_dir, so an interrupted run never leaves them beside
    its own config looking like its results."""
    remove_paths(os.path.join(out_dir, name) for name in RUN_OUTPUTS)


def summarise(per_seed, keys):
    """Median, min and max of each metric over the seeds (the median is the headline number)."""
    summary = {}
    for key in keys:
        values = [run[key] for run in per_seed]
        summary.update({key: float(np.median(values)), f"{key}_min": min(values), f"{key}_max": max(values)})
    return summary


# ---------------------------------------------------------------- main
def main(config: finetune_args = None):
    config = checked_config(config, finetune_args)
    config.validate()
    check_model_outside_outputs(config)
    seeds = config.seed_list()
    task = load_task(config, seeds[0] if config.subset_seed < 0 else config.subset_seed)
    logger.info(describe_task(task))
    logger.info("dev.tsv: %d rows; test.tsv: %s; metrics: %s", len(task.dev),
                f"{len(task.test)} rows" if task.test is not None else "none", ", ".join(task.metrics + ["loss"]))
    model_config = load_model_config(config.model_dir)
    tokenizer = load_model_tokenizer(config.model_dir, model_config, config.max_seq_length)
    # task text segmented as the model's corpus was (pyvi for a Vietnamese model), or each segmented
    # word would reach it as syllables it never saw joined; a missing segmenter stops before out_dir is touched
    segmenter, prepare = (read_tokenizer_info(config.model_dir)["word_segmenter"], lambda text: text) \
        if config.pre_segmented else folder_segmenter(config.model_dir, "model_dir")
    runtime = tu.setup_runtime(config.device)
    # a model that will not load stops before out_dir is touched; loaded as train_one_seed loads one, just after
    # seeding with the first seed (its new head is initialised from that state), so the first seed's run takes it
    # (in a list it leaves, so that it is freed after that run); nothing between draws random numbers
    tu.seed_everything(seeds[0])
    first = [load_model(config, task, announce=True)]
    make_out_dir(config.out_dir)
    clear_outputs(config.out_dir)
    save_config(config, config.out_dir, "finetune")

    token_types = getattr(model_config, "type_vocab_size", 0) > 1  # segment ids for pairs (ELECTRA, BERT)
    pad_id = tokenizer.pad_token_id or 0
    if segmenter != "none":
        logger.info("task texts %s, as the model's pre-training text was", "used as given (--pre_segmented): "
                    f"already segmented with {segmenter}" if config.pre_segmented else f"segmented with {segmenter}")
    elif config.pre_segmented:
        logger.warning("pre_segmented: the model's corpus was not segmented, so there is nothing to skip")
    data = {name: encode(tokenizer, examples, config.max_seq_length, token_types, pad_id, prepare)
            for name, examples in (("train", task.train), ("dev", task.dev), ("test", task.test))
            if examples is not None}
    warn_unknown_share(data["train"], tokenizer)
    if config.linear_probe:  # deterministic (L-BFGS from zero weights): one run stands for every seed
        logger.info("linear probe on %d of %d training examples: the encoder frozen, logistic regression on its "
                    "mean-pooled features (one deterministic fit: no epochs, seeds, test predictions or saved model), "
                    "on %s", len(task.train), task.num_train_total, runtime.device)
        start = time.time()
        seeds, outputs = seeds[:1], {"linear_probe": True}
        per_seed = [{"seed": seeds[0], **linear_probe(task, data, config, runtime, first.pop()),
                     "train_seconds": round(time.time() - start, 1)}]
    else:
        logger.info("fine-tuning on %d of %d training examples, %d epoch(s), lr %g (layer-wise decay %g), batch %d, "
                    "seeds %s, on %s", len(task.train), task.num_train_total, config.num_train_epochs,
                    config.learning_rate, config.layerwise_lr_decay, config.train_batch_size,
                    ",".join(map(str, seeds)), runtime.device)
        per_seed, outputs = fine_tune_seeds(seeds, task, data, config, runtime, first)

    metric_keys = [k for k in per_seed[0] if k.startswith("eval_")]
    baseline = majority_baseline(task)
    results = {
        **summarise(per_seed, metric_keys), "main_metric": task.main_metric,
        "majority_baseline": baseline and {"label": baseline[0], **baseline[1]},
        "task_dir": config.task_dir, "model_dir": config.model_dir, "layout": task.layout.name,
        "task_kind": task.layout.kind, "detected": describe_task(task), "labels": task.labels,
        "num_train": len(task.train), "num_train_total": task.num_train_total, "num_dev": len(task.dev),
        "num_test": len(task.test) if task.test is not None else 0, "num_train_epochs": config.num_train_epochs,
        "learning_rate": config.learning_rate, "layerwise_lr_decay": config.layerwise_lr_decay,
        "train_batch_size": config.train_batch_size, "max_seq_length": config.max_seq_length, "seeds": seeds,
        "device": str(runtime.device), "per_seed": per_seed, **outputs}
    atomic_write_json(os.path.join(config.out_dir, "results.json"), results)
    logger.info("dev, median [min, max] over %d seed(s): %s; results in %s", len(seeds),
                ", ".join(f"{k[5:]} {results[k]:.4f} [{results[k + '_min']:.4f}, {results[k + '_max']:.4f}]"
                          for k in metric_keys), os.path.join(config.out_dir, "results.json"))
    if baseline:
        logger.info("dev, always predicting train.tsv's most frequent label '%s' (no learning): %s", baseline[0],
                    ", ".join(f"{k[5:]} {v:.4f}" for k, v in baseline[1].items()))
    return results


if __name__ == "__main__":
    run_main(main, finetune_args)
