"""finetune_SE.py: GLUE layouts, metrics, layer-wise learning rates, tiny end-to-end runs and bad input."""
import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, assert_cli_error, read_json, run_cli

import argument
import finetune_SE as ft
import training_utils as tu
from io_utils import SpanElectraError
from tokenization import folder_segmenter

BOM = "\ufeff"


def write_task(folder, train, dev=None, test=None):
    """Write train.tsv, dev.tsv (train's content unless given) and test.tsv (if given) from line lists."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("dev", dev or train), ("test", test)):
        if lines is not None:
            (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def task_config(folder, **kw):
    return argument.finetune_args(task_dir=str(folder), **kw)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when another job keeps the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- layouts, as GLUE writes them
LAYOUTS = {
    "SST-2": (["sentence\tlabel", 'it \'s a " charming film . \t1', "dull , dull , dull \t0"],
              ["index\tsentence", '0\tan " unbalanced quote', "1\tanother one"],
              "single", [('it \'s a " charming film .',), ("dull , dull , dull",)], ["1", "0"],
              [('an " unbalanced quote',), ("another one",)], ["0", "1"]),
    "CoLA": (["gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
              "gj04\t0\t*\tThey drank the pub \"dry.", "cj99\t1\t\tThe sailors rode the breeze clear of the rocks."],
             ["index\tsentence", "0\tBill whistled past the house."],
             "single", [("Our friends won't buy this analysis, let alone the next one we propose.",),
                        ('They drank the pub "dry.',), ("The sailors rode the breeze clear of the rocks.",)],
             ["1", "0", "1"], [("Bill whistled past the house.",)], ["0"]),
    "MRPC": ([BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
              '1\t702876\t702977\tAmrozi called him " the witness " .\tReferring to him as " the witness .',
              "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 ."],
             ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1089874\t1089925\tPCCW 's officer .\tCurrent officer ."],
             "pair", [('Amrozi called him " the witness " .', 'Referring to him as " the witness .'),
                      ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's in 1995 .")], ["1", "0"],
             [("PCCW 's officer .", "Current officer .")], ["0"]),
    "RTE/WNLI": (["index\tsentence1\tsentence2\tlabel", "0\tNo weapons were found .\tWeapons were found .\tnot_entailment",
                  "1\tA place of beauty .\tA place is beautiful .\tentailment"],
                 ["index\tsentence1\tsentence2", "0\tMangla was built .\tMangla exists ."],
                 "pair", [("No weapons were found .", "Weapons were found ."),
                          ("A place of beauty .", "A place is beautiful .")], ["not_entailment", "entailment"],
                 [("Mangla was built .", "Mangla exists .")], ["0"]),
    "QNLI": (["index\tquestion\tsentence\tlabel", "0\tWhen ?\tIn 1990 .\tentailment", "1\tWho ?\tNobody knows .\tnot_entailment"],
             None, "pair", [("When ?", "In 1990 ."), ("Who ?", "Nobody knows .")], ["entailment", "not_entailment"],
             None, None),
    "MNLI": (["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
              "0\t31193\t31193n\tgovernment\t( ( a ) )\t( b )\t(ROOT (S a))\t(ROOT (S b))\tConceptually cream skimming .\t"
              "Product and geography .\tneutral\tneutral",
              "1\t101457\t101457e\ttelephone\t( c )\t( d )\t(ROOT c)\t(ROOT d)\tyou know during the season\tYou lose the "
              "things .\tentailment\tentailment"],
             None, "pair", [("Conceptually cream skimming .", "Product and geography ."),
                            ("you know during the season", "You lose the things .")], ["neutral", "entailment"], None, None),
    "STS-B": (["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
               "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000",
               "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man plays a bamboo flute.\t3.800"],
              ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
               "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA girl styles her hair.\tA girl brushes her hair."],
              "regression", [("A plane is taking off.", "An air plane is taking off."),
                             ("A man plays a flute.", "A man plays a bamboo flute.")], ["5.000", "3.800"],
              [("A girl styles her hair.", "A girl brushes her hair.")], ["0"]),
    "plain": (["a good film\t1", 'a " bad film\t0', "an ok film\t1"], ["an unlabelled film"],
              "single", [("a good film",), ('a " bad film',), ("an ok film",)], ["1", "0", "1"],
              [("an unlabelled film",)], ["0"]),
    "plain pair": (["the cat sat\ta cat sat\tyes", "the dog ran\ta bird flew\tno"], ["1\tone\ttwo", "2\tthree\tfour"],
                   "pair", [("the cat sat", "a cat sat"), ("the dog ran", "a bird flew")], ["yes", "no"],
                   [("one", "two"), ("three", "four")], ["1", "2"]),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_glue_layouts_are_detected(name, tmp_path):
    train, test, kind, texts, labels, test_texts, test_index = LAYOUTS[name]
    task = ft.load_task(task_config(write_task(tmp_path / "task", train, test=test)))
    expected_name = "plain" if name.startswith("plain") else name
    assert (task.layout.name, task.layout.kind) == (expected_name, kind)
    assert task.train.texts == texts and task.train.labels == labels
    assert task.dev.texts == texts and task.num_train_total == len(texts)
    if test is None:
        assert task.test is None
    else:
        assert task.test.texts == test_texts and task.test.index == test_index
    line = ft.describe_task(task)
    assert line.startswith("train.tsv: ") and f"{expected_name} layout" in line and f"{len(texts)} rows" in line


def test_a_header_of_unknown_names_is_not_read_as_an_example(tmp_path):
    """'review<TAB>sentiment' would be an example labelled 'sentiment' (a third class, in dev too): it is
    refused, naming the line; 'text<TAB>label', the usual names, is a header."""
    rows = [f"{'a good' if i % 2 else 'a bad'} film number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(20)]
    folder = write_task(tmp_path / "unknown", ["review\tsentiment"] + rows)
    with pytest.raises(SpanElectraError, match=r"first line of .* \(review \| sentiment\) looks like a header"):
        ft.load_task(task_config(folder))
    for columns in (("review", "sentiment"), ("1", "2")):  # by name or by number: the header is no example
        task = ft.load_task(task_config(folder, text_columns=columns[0], label_column=columns[1]))
        assert task.labels == ["neg", "pos"] and len(task.train.texts) == 20 and len(task.dev.texts) == 20
    numbers = write_task(tmp_path / "numbers", ["review\tsentiment"] + [f"film {i} was ok\t{i % 2}" for i in range(6)])
    task = ft.load_task(task_config(numbers, text_columns="1", label_column="2"))
    assert task.labels == ["0", "1"] and task.train.texts[0] == ("film 0 was ok",) and len(task.train.texts) == 6
    task = ft.load_task(task_config(write_task(tmp_path / "text", ["text\tlabel"] + rows)))
    assert (task.layout.kind, task.labels, len(task.train.texts)) == ("single", ["neg", "pos"], 20)
    # a small file of number labels (or scores) under a word: a header, however few its rows
    for name, labels in (("small", ["1", "0", "1"]), ("scores", ["0.53", "0.07", "0.9"])):
        folder = write_task(tmp_path / name, ["review\tscorevalue"] + [f"film {i} was ok\t{v}" for i, v in enumerate(labels)])
        with pytest.raises(SpanElectraError, match="looks like a header"):
            ft.load_task(task_config(folder))


def test_a_test_file_with_the_users_own_header_is_not_an_example(tmp_path):
    """test.tsv headed with train.tsv's own names (given by --text_columns) is read by them, not predicted."""
    rows = [f"{'a good' if i % 2 else 'a bad'} film number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(12)]
    folder = write_task(tmp_path / "t", ["review\tsentiment"] + rows, test=["review", "a fine film", "a dull film"])
    task = ft.load_task(task_config(folder, text_columns="review", label_column="sentiment"))
    assert task.test.texts == [("a fine film",), ("a dull film",)] and task.test.index == ["0", "1"]


def test_a_test_file_with_train_files_label_first_columns_is_indexed_by_position(tmp_path):
    """`label<TAB>text` in test.tsv too: its labels (numbers that repeat) are not GLUE's index column, which rises."""
    rows = [f"{i % 2}\tfilm number {i} was {'good' if i % 2 else 'bad'}" for i in range(12)]
    folder = write_task(tmp_path / "t", rows, test=["1\ta fine film", "1\tanother fine film", "0\ta dull film"])
    task = ft.load_task(task_config(folder))
    assert task.test.index == ["0", "1", "2"] and task.test.texts[2] == ("a dull film",)
    indexed = write_task(tmp_path / "i", rows, test=["0\ta fine film", "1\tanother fine film", "2\ta dull film"])
    task = ft.load_task(task_config(indexed))
    assert task.test.index == ["0", "1", "2"] and task.test.texts[0] == ("a fine film",)
    assert ft.is_index(["3", "7", "12"]) and not ft.is_index(["1", "1", "0"]) and not ft.is_index(["0", "x"])


def test_a_column_name_given_twice_is_refused_and_empty_texts_are_said(tmp_path, caplog):
    """A header naming 'sentence' twice is ambiguous (which column is the text?): refused, whether the name
    is found as GLUE's or given by --text_columns. Rows with an empty text are kept and counted in a warning."""
    folder = write_task(tmp_path / "twice", ["sentence\tsentence\tlabel", "a b\tc d\t0", "e f\tg h\t1"])
    for kw in ({}, {"text_columns": "sentence", "label_column": "label"}):
        with pytest.raises(SpanElectraError, match=r"^task_dir: the header of .*train.tsv names 'sentence' 2 times"):
            ft.load_task(task_config(folder, **kw))
    folder = write_task(tmp_path / "empty", ["sentence\tlabel", "a b\t0", "\t1", "c d\t1", " \t0"])
    task = ft.load_task(task_config(folder))
    assert task.train.texts == [("a b",), ("",), ("c d",), ("",)]
    assert "train.tsv: 2 of 4 rows have an empty text (first: line 3)" in caplog.text
    assert "dev.tsv: 2 of 4 rows have an empty text (first: line 3)" in caplog.text


def test_detected_metrics_and_label_order(tmp_path):
    metrics = {}
    for name in ("SST-2", "CoLA", "MRPC", "RTE/WNLI", "STS-B", "plain pair"):
        task = ft.load_task(task_config(write_task(tmp_path / name.replace("/", "_"), LAYOUTS[name][0])))
        metrics[name] = task.metrics
    assert metrics == {"SST-2": ["accuracy"], "CoLA": ["accuracy", "matthews_corr"], "MRPC": ["accuracy", "f1"],
                       "RTE/WNLI": ["accuracy"], "STS-B": ["pearson", "spearman"], "plain pair": ["accuracy"]}
    # MRPC-like pairs labelled 0.0 / 1.0: still F1, with 1.0 the positive class
    floats = write_task(tmp_path / "floats", [f"a b {i}\tc d {i}\t{i % 2}.0" for i in range(20)])
    task = ft.load_task(task_config(floats, task_type="pair"))
    assert task.metrics == ["accuracy", "f1"] and ft.positive_label(task.labels) == "1.0"
    folder = write_task(tmp_path / "ten", [f"text {i}\t{i % 11}" for i in range(22)])
    task = ft.load_task(task_config(folder, metric="matthews_corr"))
    assert task.labels == [str(i) for i in range(11)]  # numeric order, not '0', '1', '10', '2'
    assert task.metrics == ["accuracy", "matthews_corr"]


def test_overrides_task_type_and_columns(tmp_path):
    folder = write_task(tmp_path / "t", ["id\ttext\tcategory\tnote", "1\tgood one\tpos\tx", "2\tbad one\tneg\ty"])
    with pytest.raises(SpanElectraError, match="no label column"):
        ft.load_task(task_config(folder))  # 'text' is a text column's name, 'category' no label's
    task = ft.load_task(task_config(folder, text_columns="text", label_column="category"))
    assert task.train.texts == [("good one",), ("bad one",)] and task.labels == ["neg", "pos"]
    folder = write_task(tmp_path / "n", ["x\tgood one\t0.5", "y\tbad one\t2"])
    task = ft.load_task(task_config(folder, text_columns="2", label_column="3"))
    assert task.regression and task.train.texts == [("good one",), ("bad one",)]
    folder = write_task(tmp_path / "r", ["a film\t1", "b film\t3"])
    assert not ft.load_task(task_config(folder)).regression
    assert ft.load_task(task_config(folder, task_type="regression")).regression
    with pytest.raises(SpanElectraError, match="^task_type:"):
        ft.load_task(task_config(folder, task_type="pair"))
    wide = write_task(tmp_path / "w", ["x1\tgood one here\tmore words\t7\tpos", "x2\tbad one\tother words\t8\tneg"])
    with pytest.raises(SpanElectraError, match="pass --task_type"):
        ft.load_task(task_config(wide))
    task = ft.load_task(task_config(wide, task_type="pair"))  # texts: the columns with spaces; label: an end
    assert (task.layout.name, task.train.texts, task.labels) == (
        "guessed", [("good one here", "more words"), ("bad one", "other words")], ["neg", "pos"])
    assert ft.load_task(task_config(wide, task_type="single")).train.texts == [("good one here",), ("bad one",)]


# ---------------------------------------------------------------- metrics, against hand computations
def test_metrics_match_hand_computed_values():
    gold = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # TP 3, FN 1, FP 1, TN 5
    assert ft.accuracy(pred, gold) == 0.8
    assert ft.f1_score(pred, gold) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert ft.matthews_corr(pred, gold) == pytest.approx((3 * 5 - 1 * 1) / math.sqrt(4 * 4 * 6 * 6))
    assert ft.matthews_corr(gold, gold) == pytest.approx(1.0) and ft.matthews_corr(1 - gold, gold) == pytest.approx(-1.0)
    assert ft.matthews_corr(np.zeros(10, dtype=int), gold) == 0.0  # one class predicted: undefined, reported as 0
    # three classes, confusion [[2,1,0],[0,2,0],[1,0,1]]: c=5, s=7, t=(3,2,2), p=(3,3,1)
    gold3, pred3 = np.array([0, 0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 1, 0, 2])
    expected = (5 * 7 - (3 * 3 + 2 * 3 + 2 * 1)) / math.sqrt((49 - (9 + 9 + 1)) * (49 - (9 + 4 + 4)))
    assert ft.matthews_corr(pred3, gold3) == pytest.approx(expected)
    assert ft.f1_score([0, 0], [1, 1]) == 0.0
    # Pearson: deviations (-1.5, -.5, .5, 1.5) and (-3, -1, 0, 4): 11 / sqrt(5 * 26)
    assert ft.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert ft.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert list(ft.average_ranks([10, 20, 20, 30, 20])) == [1, 3, 3, 5, 3]
    # Spearman with a tie: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4) -> 4.5 / sqrt(4.5 * 5)
    assert ft.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert ft.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone: 1 though not linear


def test_seed_summary_is_the_median_with_min_and_max():
    """results.json's headline over seeds is the median (robust to one bad seed), with min and max beside it."""
    per_seed = [{"eval_accuracy": .1, "eval_loss": 3.0}, {"eval_accuracy": .9, "eval_loss": 1.0},
                {"eval_accuracy": .2, "eval_loss": 2.0}]
    summary = ft.summarise(per_seed, ["eval_accuracy", "eval_loss"])
    assert summary == {"eval_accuracy": pytest.approx(.2), "eval_accuracy_min": .1, "eval_accuracy_max": .9,
                       "eval_loss": pytest.approx(2.0), "eval_loss_min": 1.0, "eval_loss_max": 3.0}


# ---------------------------------------------------------------- tiny models
def tiny_config(vocab_size, layers=2):
    from transformers import ElectraConfig
    return ElectraConfig(vocab_size=vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_discriminator(bpe_tok, tmp_path_factory):
    """An untrained ElectraForPreTraining saved as trainSpanElectra.py exports one, tokenizer beside it."""
    from transformers import ElectraForPreTraining
    folder = tmp_path_factory.mktemp("disc") / "discriminator"
    torch.manual_seed(0)
    ElectraForPreTraining(tiny_config(2000)).save_pretrained(folder)
    for path in bpe_tok.iterdir():
        if path.is_file() and not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return folder


def test_layerwise_learning_rates():
    from transformers import ElectraForSequenceClassification
    model = ElectraForSequenceClassification(tiny_config(100, layers=2))
    groups = ft.layerwise_param_groups(model, 1e-3, 0.8, 0.01)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(lr) == len(params) == sum(len(g["params"]) for g in groups)  # each parameter exactly once
    expected = {"electra.embeddings.word_embeddings.weight": 1e-3 * 0.8 ** 4,
                "electra.embeddings_project.weight": 1e-3 * 0.8 ** 4,
                "electra.encoder.layer.0.attention.self.query.weight": 1e-3 * 0.8 ** 3,
                "electra.encoder.layer.1.output.dense.weight": 1e-3 * 0.8 ** 2,
                "classifier.dense.weight": 1e-3, "classifier.out_proj.bias": 1e-3}
    for name, value in expected.items():
        assert lr[id(params[name])] == pytest.approx(value), name
    assert min(lr.values()) == pytest.approx(1e-3 * 0.8 ** 4) and max(lr.values()) == 1e-3
    assert decay[id(params["electra.encoder.layer.0.output.LayerNorm.weight"])] == 0.0
    assert decay[id(params["classifier.out_proj.bias"])] == 0.0
    assert decay[id(params["electra.encoder.layer.1.output.dense.weight"])] == 0.01
    assert {g["lr"] for g in ft.layerwise_param_groups(model, 1e-3, 1.0, 0.01)} == {1e-3}
    from transformers import BertConfig, BertForSequenceClassification
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=64))
    lr = {name: g["lr"] for g in ft.layerwise_param_groups(bert, 1.0, 0.5, 0.01)
          for name, p in bert.named_parameters() if any(p is q for q in g["params"])}
    assert lr["bert.embeddings.word_embeddings.weight"] == 0.5 ** 5 and lr["bert.encoder.layer.0.output.dense.weight"] == 0.5 ** 4
    assert lr["bert.encoder.layer.2.output.dense.weight"] == 0.5 ** 2 and lr["bert.pooler.dense.weight"] == 1.0


def test_collapsed_encoder_is_noticed(bpe_tok):
    from transformers import AutoTokenizer, ElectraForSequenceClassification
    tokenizer = AutoTokenizer.from_pretrained(bpe_tok)
    examples = ft.Examples("x", [("the game was released in japan .",), ("a song by the band",)], ["0", "1"], [1, 2])
    data = {"train": ft.encode(tokenizer, examples, 32, True, pad_id=0)}
    runtime = ft.tu.Runtime(torch.device("cpu"))
    model = ElectraForSequenceClassification(tiny_config(2000))
    assert ft.token_similarity(model, data, runtime) < 0.9
    last_norm = model.electra.encoder.layer[-1].output.LayerNorm
    torch.nn.init.zeros_(last_norm.weight)  # every token gets the same vector: the bias
    torch.nn.init.normal_(last_norm.bias)
    assert ft.token_similarity(model, data, runtime) > 0.999


# ---------------------------------------------------------------- end to end
def keyword_task(folder, n_train=960, n_dev=96, pair=False, regression=False, seed=0):
    """Sentences of common words; the label says whether 'game' occurs (pairs: in the first sentence;
    regression: the score grows with how often it occurs). Learnable by a tiny model in one epoch."""
    rng = np.random.default_rng(seed)
    words = "the of and in to was a his on for as with by at from he that is it album song".split()

    def example():
        count = int(rng.integers(0, 3)) if regression else int(rng.integers(0, 2))
        tokens = list(rng.choice(words, size=6)) + ["game"] * count
        rng.shuffle(tokens)
        text = " ".join(tokens)
        if pair:
            text += "\t" + " ".join(rng.choice(words, size=4))
        return f"{text}\t{count * 1.25:.2f}" if regression else f"{text}\t{count}"  # 1.25: scores, not classes

    header = ["sentence1\tsentence2\tlabel" if pair else "sentence\tlabel"] if not regression else []
    train = header + [example() for _ in range(n_train)]
    dev = header + [example() for _ in range(n_dev)]
    test = ["index\t" + ("sentence1\tsentence2" if pair else "sentence")] + [
        f"{i}\t" + "\t".join(example().split("\t")[:-1]) for i in range(7)]
    return write_task(folder, train, dev, test)


FAST = dict(train_batch_size=16, eval_batch_size=64, max_seq_length=32, device="cpu")


def read_results(out):
    with open(out / "results.json", encoding="utf-8") as f:
        return json.load(f)


def test_fine_tuning_on_a_gpu_without_native_bf16_learns_in_fp16_with_a_loss_scale(tiny_discriminator, tmp_path,
                                                                                  monkeypatch):
    """On a T4 or V100 finetune_SE.py autocasts to fp16 and scales the loss (faked on the CPU here): every step
    goes through the enabled scaler, and the keyword task is learned as in fp32. A batch whose loss overflows
    (the third here) is a skipped step and left out of the epoch's train_loss, not the end of the run."""
    scales, losses, real_step, real_loss = [], [], tu.optimizer_step, ft.task_loss

    def spy(model, optimizer, scheduler, max_grad_norm, scaler=None):
        scales.append(scaler.get_scale() if scaler is not None and scaler.is_enabled() else None)
        return real_step(model, optimizer, scheduler, max_grad_norm, scaler)

    def overflowing_third(*args):
        losses.append(real_loss(*args))
        return losses[-1] * float("inf") if len(losses) == 3 else losses[-1]
    monkeypatch.setattr(tu, "gpu_amp_dtype", lambda runtime: torch.float16)
    monkeypatch.setattr(tu, "optimizer_step", spy)
    monkeypatch.setattr(ft, "task_loss", overflowing_third)
    task_dir = keyword_task(tmp_path / "task")
    results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(tmp_path / "ft"),
                                  num_train_epochs=1, learning_rate=5e-3, layerwise_lr_decay=1.0, save_model=False,
                                  **FAST))
    assert scales and scales[0] == 65536.0 and None not in scales
    assert scales[3] == scales[2] / 2  # the third step overflowed: skipped, the scale halved
    assert results["eval_accuracy"] > 0.8, results["per_seed"][0]["epochs"]  # chance: 0.5
    train_loss = results["per_seed"][0]["epochs"][0]["train_loss"]
    kept = [x.item() for x in losses[:len(scales)]]  # the training steps' (evaluation's come after)
    kept = kept[:2] + kept[3:]
    assert train_loss == pytest.approx(sum(kept) / len(kept), rel=1e-5)  # the other batches' mean


def test_single_sentence_task_learns_and_writes_predictions(tiny_discriminator, tmp_path):
    task_dir, out = keyword_task(tmp_path / "task"), tmp_path / "ft"
    # a random encoder has nothing to protect from the head's updates: no layer-wise decay, a high rate
    results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(out), num_train_epochs=1,
                                  learning_rate=5e-3, layerwise_lr_decay=1.0, **FAST))
    assert read_results(out) == json.loads(json.dumps(results))
    assert results["eval_accuracy"] > 0.8, results["per_seed"][0]["epochs"]  # chance: 0.5
    # beside it, the figure of always predicting train.tsv's most frequent label, from the files themselves
    train_labels = [l.split("\t")[1] for l in (task_dir / "train.tsv").read_text().splitlines()[1:]]
    dev_labels = [l.split("\t")[1] for l in (task_dir / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(sorted(set(train_labels)), key=train_labels.count)
    assert results["majority_baseline"] == {"label": majority,
                                            "eval_accuracy": dev_labels.count(majority) / len(dev_labels)}
    assert results["per_seed"][0]["predicted_classes"] == 2
    assert 0 <= results["eval_loss"] < math.log(2)
    assert {"eval_accuracy_min", "eval_accuracy_max", "main_metric", "layout", "num_train", "num_dev", "per_seed",
            "model_dir", "seeds", "num_train_epochs"} <= set(results)
    assert "eval_f1" not in results and results["main_metric"] == "eval_accuracy"
    assert (results["layout"], results["task_kind"], results["num_train"], results["num_dev"]) == ("SST-2", "single", 960, 96)
    lines = (out / "test_predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 8
    assert [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(7)]
    assert {l.split("\t")[1] for l in lines[1:]} <= {"0", "1"}
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")  # reloads with its labels
    assert model.config.id2label == {0: "0", 1: "1"} and len(AutoTokenizer.from_pretrained(out / "model")) == 2000
    assert (out / "finetune_config.json").exists()
    # it keeps how its text is prepared (a Vietnamese model's segmenter travels with it)
    assert (out / "model" / "se_tokenizer.json").read_bytes() == (tiny_discriminator / "se_tokenizer.json").read_bytes()
    # the pre-trained model's tokenizer files as they were: a class name transformers 4 loads too
    assert (out / "model" / "tokenizer_config.json").read_bytes() == (tiny_discriminator / "tokenizer_config.json").read_bytes()
    # fine-tuned again into the same out_dir, which this run would clear first: refused, the model kept
    with pytest.raises(ft.SpanElectraError, match="^model_dir: .* is the model of out_dir"):
        ft.main(task_config(task_dir, model_dir=str(out / "model"), out_dir=str(out), **FAST))
    assert (out / "model" / "config.json").exists()


def test_pair_task_with_two_seeds(tiny_discriminator, tmp_path):
    task_dir, out = keyword_task(tmp_path / "task", n_train=96, n_dev=48, pair=True), tmp_path / "ft"
    results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(out), num_train_epochs=1,
                                  seeds="1,2", save_model=False, **FAST))
    assert results["layout"] == "RTE/WNLI" and results["task_kind"] == "pair" and results["seeds"] == [1, 2]
    assert results["main_metric"] == "eval_f1"  # a pair task labelled 0/1: paraphrase-style F1
    per_seed = results["per_seed"]
    assert [r["seed"] for r in per_seed] == [1, 2] and len(per_seed[0]["epochs"]) == 1
    for key in ("eval_accuracy", "eval_f1", "eval_loss"):
        values = [r[key] for r in per_seed]
        assert results[key] == pytest.approx(np.median(values))
        assert (results[f"{key}_min"], results[f"{key}_max"]) == (min(values), max(values))
    assert 0 <= results["eval_accuracy"] <= 1 and 0 <= results["eval_f1"] <= 1
    assert not (out / "model").exists()
    assert len((out / "test_predictions.tsv").read_text().splitlines()) == 8


def test_the_first_seed_fine_tunes_the_model_loaded_up_front_with_unchanged_results(tiny_discriminator, tmp_path,
                                                                                      monkeypatch):
    """main's up-front load (a model that will not load stops before out_dir is touched) is the first seed's model:
    loaded once per seed, not twice for the first. It is loaded just after seeding with that seed, as each later
    seed's is, so a seed's results do not depend on whether it runs first: as before this change, when every seed's
    model was loaded after seeding (a run recorded before and after it gave the same figures to the last digit)."""
    task_dir = keyword_task(tmp_path / "task", n_train=64, n_dev=32, pair=True)
    loads = []
    load_model = ft.load_model
    monkeypatch.setattr(ft, "load_model", lambda *args, **kw: loads.append(1) or load_model(*args, **kw))
    per_seed = {}
    for seeds in ("1,2", "2,1"):
        results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(tmp_path / seeds),
                                      num_train_epochs=1, seeds=seeds, save_model=False, **FAST))
        per_seed[seeds] = {r["seed"]: (r["eval_loss"], r["eval_accuracy"], r["epochs"][0]["train_loss"])
                           for r in results["per_seed"]}
    assert len(loads) == 4  # two seeds, twice (was 6)
    assert per_seed["1,2"] == per_seed["2,1"]  # bit for bit: the first seed's model is the one a later seed loads
    assert per_seed["1,2"][1] != per_seed["1,2"][2]  # the seeds do differ (the heads start differently)


LABELS = ("neg", "pos")


@pytest.fixture(scope="module")
def pair_run(bpe_tok, tmp_path_factory):
    """One tiny 2-epoch fine-tuning run of a pair task labelled neg/pos, with spies on what finetune_SE passes on."""
    from transformers import ElectraConfig, ElectraForPreTraining
    root = tmp_path_factory.mktemp("ft")
    model_dir = root / "model"
    torch.manual_seed(0)
    ElectraForPreTraining(ElectraConfig(vocab_size=2000, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                        type_vocab_size=2)).save_pretrained(model_dir)
    for path in bpe_tok.iterdir():
        if path.is_file() and not (model_dir / path.name).exists():
            shutil.copy(path, model_dir / path.name)
    rng = np.random.default_rng(0)
    words = "the game was released in japan by a band".split()

    def text(n):
        return " ".join(rng.choice(words, size=n))
    task = root / "task"
    task.mkdir()
    header = ["sentence1\tsentence2\tlabel"]
    (task / "train.tsv").write_text("\n".join(header + [f"{text(4)}\t{text(3)}\t{LABELS[i % 2]}" for i in range(40)])
                                    + "\n", encoding="utf-8")
    (task / "dev.tsv").write_text("\n".join(header + [f"{text(4)}\t{text(3)}\t{LABELS[i % 2]}" for i in range(8)])
                                  + "\n", encoding="utf-8")
    (task / "test.tsv").write_text("\n".join(["index\tsentence1\tsentence2"] + [f"{i}\t{text(4)}\t{text(3)}"
                                                                              for i in range(5)]) + "\n",
                                   encoding="utf-8")
    seen = {"encoded": [], "schedules": [], "grad_norms": []}
    real_encode, real_schedule, real_step = ft.encode, tu.warmup_linear_schedule, tu.optimizer_step

    def encode(tokenizer, examples, max_seq_length, token_types, pad_id, prepare=lambda t: t):
        out = real_encode(tokenizer, examples, max_seq_length, token_types, pad_id, prepare)
        seen["encoded"].append((out, tokenizer.sep_token_id))
        return out

    def schedule(optimizer, warmup_steps, total_steps):
        seen["schedules"].append((warmup_steps, total_steps))
        return real_schedule(optimizer, warmup_steps, total_steps)

    def step(model, optimizer, scheduler, max_grad_norm, scaler=None):
        seen["grad_norms"].append(max_grad_norm)
        return real_step(model, optimizer, scheduler, max_grad_norm, scaler)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "encode", encode)
        mp.setattr(tu, "warmup_linear_schedule", schedule)
        mp.setattr(tu, "optimizer_step", step)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = ft.main(argument.finetune_args(
                task_dir=str(task), model_dir=str(model_dir), out_dir=str(out), num_train_epochs=2, warmup_ratio=0.5,
                max_grad_norm=0.37, train_batch_size=16, eval_batch_size=16, max_seq_length=32, save_model=False,
                device="cpu"))
        finally:
            torch.set_num_threads(threads)
    return SimpleNamespace(results=results, out=out, **seen)


def test_pair_tasks_get_segment_ids(pair_run):
    """A pair task gives its second sentence token type 1 when the model has token types (ELECTRA, BERT)."""
    assert len(pair_run.encoded) == 3  # train, dev, test
    for encoded, sep in pair_run.encoded:
        assert "token_type_ids" in encoded
        for ids, types, n in zip(encoded["input_ids"], encoded["token_type_ids"], encoded["lengths"]):
            first_sep = int(np.flatnonzero(ids == sep)[0])
            assert not types[:first_sep + 1].any()
            assert types[first_sep + 1:n].all() and n > first_sep + 1


def test_fine_tuning_warms_up_over_warmup_ratio_of_all_steps(pair_run):
    """warmup steps = round(warmup_ratio x total steps), total = epochs x batches per epoch (2 x ceil(40/16) = 6)."""
    assert pair_run.schedules == [(3, 6)]


def test_fine_tuning_clips_gradients_at_max_grad_norm(pair_run):
    """--max_grad_norm is the clipping threshold of every optimizer step."""
    assert pair_run.grad_norms == [0.37] * 6


def test_test_predictions_are_label_names(pair_run):
    """test_predictions.tsv holds train.tsv's label strings (GLUE submission style), not class numbers."""
    lines = (pair_run.out / "test_predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index\tprediction" and [l.split("\t")[0] for l in lines[1:]] == [str(i) for i in range(5)]
    assert {l.split("\t")[1] for l in lines[1:]} <= set(LABELS)
    assert pair_run.results["labels"] == list(LABELS)


def test_regression_task(tiny_discriminator, tmp_path):
    task_dir, out = keyword_task(tmp_path / "task", n_train=128, n_dev=48, regression=True), tmp_path / "ft"
    results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(out), num_train_epochs=1,
                                  learning_rate=2e-3, save_model=False, **FAST))
    assert results["layout"] == "plain" and results["task_kind"] == "regression" and results["labels"] == []
    assert -1 <= results["eval_pearson"] <= 1 and -1 <= results["eval_spearman"] <= 1
    assert results["eval_loss"] >= 0 and "eval_accuracy" not in results and results["main_metric"] == "eval_spearman"
    assert results["majority_baseline"] is None
    predictions = [float(l.split("\t")[1]) for l in (out / "test_predictions.tsv").read_text().splitlines()[1:]]
    assert len(predictions) == 7 and all(math.isfinite(p) for p in predictions)


def test_bert_folder_fine_tunes(bert_tok, tmp_path):
    from transformers import BertConfig, BertForMaskedLM
    folder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    for path in bert_tok.iterdir():
        shutil.copy(path, folder / path.name)
    task_dir = keyword_task(tmp_path / "task", n_train=64, n_dev=16, pair=True)
    results = ft.main(task_config(task_dir, model_dir=str(folder), out_dir=str(tmp_path / "ft"), num_train_epochs=1,
                                  save_model=False, **FAST))
    assert results["task_kind"] == "pair" and 0 <= results["eval_f1"] <= 1


def test_a_generator_beside_its_discriminator_is_flagged(caplog, tmp_path):
    """An ELECTRA generator (a discriminator beside it) warns that the discriminator was likely meant; a
    masked LM alone (the MLM baseline, trainMLM_SpanElectra.py's OUT/generator) is fine-tuned BERT-style."""
    caplog.set_level("INFO", logger="span_electra")
    ft.announce_masked_lm(str(tmp_path / "generator"))
    assert [r.levelname for r in caplog.records] == ["INFO"] and "BERT-style" in caplog.text
    (tmp_path / "discriminator").mkdir()
    caplog.clear()
    ft.announce_masked_lm(str(tmp_path / "generator") + "/")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"beside it ({tmp_path / 'discriminator'})" in caplog.text


def test_real_sst2_few_steps(tiny_discriminator, tmp_path):
    sst2 = SHARED_DATA / "glue" / "SST-2"
    if not (sst2 / "train.tsv").exists():
        pytest.skip(f"{sst2} not present")
    results = ft.main(task_config(sst2, model_dir=str(tiny_discriminator), out_dir=str(tmp_path / "ft"),
                                  num_train_epochs=1, max_train_examples=64, save_model=False, **FAST))
    assert results["num_train"] == 64 and results["num_train_total"] == 67349 and results["num_dev"] == 872
    assert results["layout"] == "SST-2" and 0 <= results["eval_accuracy"] <= 1
    assert len((tmp_path / "ft" / "test_predictions.tsv").read_text().splitlines()) == 1822


# ---------------------------------------------------------------- bad input
def _run_in_process(args, capsys):
    """argument.run_main(finetune_SE.main, ...) as `python finetune_SE.py args` runs it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        argument.run_main(ft.main, argument.finetune_args, [str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


def test_bad_input_cli(tiny_discriminator, tmp_path, capsys):
    good = keyword_task(tmp_path / "good", n_train=8, n_dev=4)
    base = ["--model_dir", tiny_discriminator, "--out_dir", tmp_path / "out"]
    unseen = write_task(tmp_path / "unseen", ["sentence\tlabel", "a b\t0", "c d\t1"],
                        ["sentence\tlabel", "a b\t0", "e f\tmaybe"])
    # one case as a real subprocess (`python finetune_SE.py ...`), the others through the same entry point here
    assert_cli_error(run_cli("finetune_SE.py", *base, "--task_dir", tmp_path / "nothing"), "task_dir", "nothing")
    assert_cli_error(_run_in_process(base + ["--task_dir", unseen], capsys), "dev.tsv line 3", "maybe", "train labels: 0, 1")

    bad_bytes = write_task(tmp_path / "bytes", ["sentence\tlabel", "a b\t0", "c d\t1"])
    (bad_bytes / "train.tsv").write_bytes(b"sentence\tlabel\na b\t0\nc d\xff\xfe\t1\n")
    ragged = write_task(tmp_path / "ragged", ["sentence\tlabel", "a b\t0", "c\td\t1"])
    empty = write_task(tmp_path / "empty", ["x"])
    (empty / "train.tsv").write_text("\n\n")
    unknown = write_task(tmp_path / "unknown", ["w\tx\ty\tz\tq", "a b\tc d\te f\tg h\ti j"])
    no_dev = write_task(tmp_path / "nodev", ["a b\t0"])
    (no_dev / "dev.tsv").unlink()
    dev_folder = write_task(tmp_path / "dev_folder", ["a b\t0"])
    (dev_folder / "dev.tsv").unlink()
    (dev_folder / "dev.tsv").mkdir()
    test_folder = write_task(tmp_path / "test_folder", ["sentence\tlabel", "a b\t0", "c d\t1"])
    (test_folder / "test.tsv").mkdir()
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_discriminator / name, no_tokenizer / name)
    reshaped = tmp_path / "reshaped"
    shutil.copytree(tiny_discriminator, reshaped)
    model_config = read_json(reshaped / "config.json")
    (reshaped / "config.json").write_text(json.dumps({**model_config, "intermediate_size": 2 * model_config["intermediate_size"]}))
    cases = [
        (["--task_dir", bad_bytes], ["train.tsv line 3", "UTF-8"]),
        (["--task_dir", good, "--model_dir", reshaped, "--max_seq_length", 64], ["config.json in", "does not describe its weights",
                                                          "intermediate.dense", "put back the config.json"]),
        (["--task_dir", ragged], ["train.tsv line 3", "3 tab-separated columns", "line 1 has 2"]),
        (["--task_dir", empty], ["train.tsv", "empty"]),
        (["--task_dir", unknown], ["unknown/train.tsv", "--task_type", "--text_columns"]),
        (["--task_dir", no_dev], ["task_dir", "dev.tsv"]),
        (["--task_dir", dev_folder], ["dev_folder/dev.tsv cannot be read", "a TSV file"]),
        (["--task_dir", test_folder], ["test_folder/test.tsv cannot be read", "a TSV file"]),
        (["--task_dir", good, "--layerwise_lr_decay", 1.5], ["layerwise_lr_decay", "1.5"]),
        (["--task_dir", good, "--num_train_epochs", -1], ["num_train_epochs", "-1"]),
        (["--task_dir", good, "--learning_rate", 0], ["learning_rate"]),
        (["--task_dir", good, "--train_batch_size", 0], ["train_batch_size"]),
        (["--task_dir", good, "--seeds", "1,two"], ["seeds", "1,two"]),
        (["--task_dir", good, "--metric", "f1", "--task_type", "regression"], ["metric", "regression"]),
        (["--task_dir", good, "--model_dir", no_model], ["model_dir", "config.json"]),
        (["--task_dir", good, "--model_dir", no_tokenizer], ["model_dir", "no tokenizer"]),
        (["--task_dir", good, "--max_seq_length", 100], ["max_seq_length", "64"]),
    ]
    for args, needles in cases:
        assert_cli_error(_run_in_process(base + args, capsys), *needles)
    assert not (tmp_path / "out").exists()  # nothing is written before the input is checked


def test_batches_are_padded_to_a_few_bucket_widths(bpe_tok):
    """Batches take a handful of shapes (multiples of 32 up to the longest example), not one per batch."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(bpe_tok)
    texts = [("word " * n,) for n in range(1, 90)]
    examples = ft.Examples("x", texts, ["0"] * len(texts), list(range(len(texts))))
    encoded = ft.encode(tokenizer, examples, 128, False, pad_id=0)
    widths = set()
    for start in range(0, len(texts), 7):
        batch = ft.make_batch(encoded, range(start, min(start + 7, len(texts))), torch.device("cpu"),
                              np.arange(len(texts)))
        lengths = encoded["lengths"][start:start + 7]
        assert batch["input_ids"].shape[1] >= lengths.max() and batch["attention_mask"].sum(1).tolist() == lengths.tolist()
        assert batch["targets"].tolist() == list(range(start, min(start + 7, len(texts))))
        widths.add(batch["input_ids"].shape[1])
    assert widths <= {32, 64, 96, encoded["input_ids"].shape[1]} and len(widths) <= 4


def test_batch_width_is_the_longest_rounded_up_to_32_and_the_mask_covers_each_length():
    """A batch whose longest example is exactly 32 tokens is 32 wide (not 64); attention covers each example's tokens."""
    ids = np.arange(2 * 70).reshape(2, 70)
    encoded = {"lengths": np.array([32, 5]), "input_ids": ids, "token_type_ids": np.ones_like(ids)}
    batch = ft.make_batch(encoded, [0, 1], torch.device("cpu"), np.array([7, 8]))
    assert batch["input_ids"].shape == (2, 32) and batch["token_type_ids"].shape == (2, 32)
    assert batch["attention_mask"].sum(1).tolist() == [32, 5] and batch["attention_mask"][1, :5].all()
    assert batch["targets"].tolist() == [7, 8]
    encoded["lengths"] = np.array([33, 1])
    assert ft.make_batch(encoded, [0, 1], torch.device("cpu"))["input_ids"].shape == (2, 64)
    encoded["lengths"] = np.array([65, 1])  # capped at the encoded width
    assert ft.make_batch(encoded, [1, 0], torch.device("cpu"))["input_ids"].shape == (2, 70)


def test_task_text_the_vocabulary_does_not_cover_is_warned_about(bert_tok, caplog):
    """process.py counts [UNK]s in the corpus; fine-tuning does so for the task's text: an English WordPiece
    vocabulary stores a large share of Vietnamese as [UNK] (35% in process.py), English text hardly any."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(bert_tok)
    def warned(lines):
        examples = ft.Examples("x", [(line,) for line in lines], ["0"] * len(lines), list(range(len(lines))))
        caplog.clear()
        with caplog.at_level("WARNING", logger="span_electra"):
            ft.warn_unknown_share(ft.encode(tokenizer, examples, 128, False, pad_id=0), tokenizer)
        return [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
    read = lambda path: [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:200]  # noqa
    assert warned(read(REPO / "data" / "sample" / "valid.tokens")) == []
    vietnamese = warned(read(REPO / "data" / "sample_vi" / "valid.txt"))
    assert len(vietnamese) == 1 and "of the task's train tokens are [UNK]" in vietnamese[0]
    assert int(vietnamese[0].split("%")[0]) >= 10


def test_the_unk_share_of_a_task_counts_its_text_not_the_special_tokens(caplog):
    """process.py's share excludes [CLS]/[SEP]; finetune's counted them, so a pair task of short sentences with 5.6%
    of its text [UNK] (1 in 18) read as 1 in 21 (4.8%) and went unwarned."""
    import numpy as np
    import finetune_SE

    class Tok:
        unk_token_id, all_special_ids = 1, [0, 1, 2, 3, 4]
    row = [2] + [1] + [9] * 8 + [3] + [9] * 9 + [3]  # [CLS] [UNK] 8 words [SEP] 9 words [SEP], then padding
    encoded = {"input_ids": np.array([row + [0, 0]] * 4), "lengths": np.array([len(row)] * 4)}
    with caplog.at_level("WARNING", logger="span_electra"):
        finetune_SE.warn_unknown_share(encoded, Tok())
    assert "6% of the task's train tokens are [UNK]" in caplog.text


def test_linear_probe_learns_from_frozen_features(tiny_discriminator, tmp_path):
    """--linear_probe: logistic regression on the frozen encoder's mean-pooled outputs, deterministic."""
    task_dir = keyword_task(tmp_path / "task")
    runs = [ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(tmp_path / f"probe{i}"),
                                linear_probe=True, seeds="1,2", **FAST)) for i in range(2)]
    assert runs[0]["linear_probe"] is True and runs[0]["seeds"] == [1]  # one run stands for every seed
    assert runs[0]["eval_accuracy"] == runs[1]["eval_accuracy"] > 0.7  # chance: 0.5
    assert 0 <= runs[0]["eval_loss"] < math.log(2)
    assert not (tmp_path / "probe0" / "model").exists()


def test_a_vietnamese_model_reads_task_text_segmented_as_its_corpus(vi_tok, tmp_path):
    """A model pre-trained on pyvi-segmented text (its tokenizer records it) fine-tunes on task text
    segmented the same way: 'Việt Nam' reaches it as its one word token, not as two syllables."""
    from transformers import AutoTokenizer, ElectraForPreTraining
    folder = tmp_path / "discriminator"
    ElectraForPreTraining(tiny_config(3000)).save_pretrained(folder)
    for path in vi_tok.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    word = tokenizer(" Việt_Nam", add_special_tokens=False)["input_ids"]
    assert len(word) == 1  # one vocabulary entry for the segmented word
    examples = ft.Examples("x", [("Tôi yêu Việt Nam",)], ["1"], [1])
    _, segment = folder_segmenter(str(folder), "model_dir")
    segmented = ft.encode(tokenizer, examples, 64, False, 0, segment)["input_ids"][0]
    raw = ft.encode(tokenizer, examples, 64, False, 0)["input_ids"][0]
    assert word[0] in segmented.tolist() and word[0] not in raw.tolist()

    lines = [f"{'Tôi yêu Việt Nam' if i % 2 else 'Hà Nội mưa lạnh'} {i}\t{i % 2}" for i in range(64)]
    results = ft.main(task_config(write_task(tmp_path / "vi_task", lines), model_dir=str(folder),
                                  out_dir=str(tmp_path / "ft"), num_train_epochs=1, max_seq_length=64, device="cpu"))
    assert results["num_train"] == 64 and 0 <= results["eval_accuracy"] <= 1
    # without pyvi the refusal comes before out_dir is touched: the earlier results stay
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "pyvi", None)
        with pytest.raises(SpanElectraError, match="pip install pyvi"):
            ft.main(task_config(tmp_path / "vi_task", model_dir=str(folder), out_dir=str(tmp_path / "ft"),
                                max_seq_length=64, device="cpu"))
    assert read_results(tmp_path / "ft")["num_train"] == 64
    # a task already segmented (pyvi is not idempotent: 'A._Mayor' becomes 'A. _Mayor') is used as given,
    # and needs no pyvi
    segmented = [f"{'Tôi yêu Việt_Nam' if i % 2 else 'Hà_Nội mưa lạnh'} {i}\t{i % 2}" for i in range(64)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "pyvi", None)
        given = ft.main(task_config(write_task(tmp_path / "vi_seg", segmented), model_dir=str(folder), pre_segmented=True,
                                    out_dir=str(tmp_path / "ft_seg"), num_train_epochs=1, max_seq_length=64, device="cpu"))
    assert given["num_train"] == 64


def test_a_vietnamese_model_without_pyvi_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "se_tokenizer.json").write_text(json.dumps({"word_segmenter": "pyvi"}), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "pyvi", None)  # import pyvi now fails, as where it is missing
    with pytest.raises(SpanElectraError, match=r"^model_dir: .* segmented with pyvi, .* run `pip install pyvi`$"):
        folder_segmenter(str(tmp_path), "model_dir")


def test_a_model_that_predicts_one_label_is_flagged(tiny_discriminator, tmp_path, caplog):
    """A learning rate of almost 0 leaves the random head on one side: every dev example gets the same
    label, which the log says, as it says what the majority class alone scores."""
    task_dir, out = keyword_task(tmp_path / "task", n_train=64, n_dev=48, pair=True), tmp_path / "ft"
    with caplog.at_level("INFO", logger="span_electra"):
        results = ft.main(task_config(task_dir, model_dir=str(tiny_discriminator), out_dir=str(out),
                                      num_train_epochs=1, learning_rate=1e-9, save_model=False, **FAST))
    assert results["per_seed"][0]["predicted_classes"] == 1
    assert "seed 42 predicts one label for every dev example" in caplog.text
    assert "always predicting train.tsv's most frequent label '1'" in caplog.text
    # F1 of the positive label '1' when every example is predicted '1': 2p / (1 + p), p its dev share
    p = results["majority_baseline"]["eval_accuracy"]
    assert results["majority_baseline"]["eval_f1"] == pytest.approx(2 * p / (1 + p))


def test_the_majority_baseline_is_the_whole_train_files(tmp_path):
    """With --max_train_examples, the no-learning figure is still train.tsv's most frequent label: a model
    that always predicts it must not look above a subset's other majority."""
    rows = ["sentence\tlabel"] + [f"good film {i}\t1" for i in range(30)] + [f"bad film {i}\t0" for i in range(20)]
    task_dir = write_task(tmp_path / "t", rows)
    for seed in range(20):  # a subset whose own majority is '0'
        task = ft.load_task(task_config(task_dir, max_train_examples=5), seed)
        if list(task.train.labels).count("0") > 2:
            break
    assert list(task.train.labels).count("0") > 2
    label, metrics = ft.majority_baseline(task)
    assert label == "1" and metrics["eval_accuracy"] == pytest.approx(30 / 50)


def test_number_labels_match_as_numbers(tmp_path):
    """A dev.tsv that writes train's 0/1 as 0.0/1.0 is the same classes, not unknown labels."""
    train = ["sentence\tlabel"] + [f"film {i} was {'good' if i % 2 else 'bad'}\t{i % 2}" for i in range(20)]
    dev = ["sentence\tlabel"] + [f"film {i} was {'good' if i % 2 else 'bad'}\t{i % 2}.0" for i in range(6)]
    task = ft.load_task(task_config(write_task(tmp_path / "t", train, dev)))
    assert task.labels == ["0", "1"] and task.dev.targets.tolist() == [0, 1, 0, 1, 0, 1]


def test_fine_tuning_past_the_pre_trained_length_is_warned(tiny_discriminator, tmp_path, caplog):
    """A model pre-trained on 32-token rows, fine-tuned at 64: its positions past 32 never trained, said once."""
    from modelling_span_electra import HEAD_CONFIG
    folder = tmp_path / "disc"
    shutil.copytree(tiny_discriminator, folder)
    (folder / HEAD_CONFIG).write_text(json.dumps({"trained_seq_len": 32}), encoding="utf-8")
    config = ft.load_model_config(str(folder))
    with caplog.at_level("WARNING", logger="span_electra"):
        ft.load_model_tokenizer(str(folder), config, 32)
        assert "trained on" not in caplog.text
        ft.load_model_tokenizer(str(folder), config, 64)
    assert "max_seq_length: the model was trained on 32-token sequences, fine-tuning takes up to 64" in caplog.text
    assert "--max_seq_length 32" in caplog.text
