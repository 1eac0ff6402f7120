"""convert_tf_checkpoint.py on a tiny google-research/electra checkpoint that TensorFlow wrote
(tests/fixtures/make_tf_checkpoint.py made it; TensorFlow is never imported here)."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining

import argument
import convert_tf_checkpoint as convert
import tf_checkpoint
from conftest import ELECTRA_TF as FIXTURE, assert_one_line_error, read_json, run_in_process

HEADS = 2  # the fixture's hparams


@pytest.fixture(scope="module")
def tf_values():
    with np.load(FIXTURE / "values.npz") as f:
        return {k: f[k] for k in f.files}


def test_reader_returns_what_tensorflow_wrote(tf_values):
    ckpt = tf_checkpoint.TFCheckpoint(str(FIXTURE))  # a folder whose `checkpoint` file names another machine's path
    assert ckpt.prefix.endswith("model.ckpt-3") and ckpt.num_shards == 1
    assert len(ckpt.names()) == len(tf_values) + 2 * (len(tf_values) - 1)  # + adam_m, adam_v of each variable
    for name, value in tf_values.items():
        got = ckpt.tensor(name)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), name


def test_crc32c_known_values():
    assert tf_checkpoint.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tf_checkpoint.crc32c(b"") == 0
    assert tf_checkpoint.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, 32 zero bytes


def test_every_converted_tensor_equals_tensorflows(converted, tf_values):
    disc = ElectraForPreTraining.from_pretrained(converted / "discriminator").state_dict()
    gen = ElectraForMaskedLM.from_pretrained(converted / "generator").state_dict()
    checked = 0
    for name, value in tf_values.items():
        if name == "global_step":
            continue
        model, hf, transpose = convert.hf_name(name)
        expected = torch.from_numpy(value.T if transpose else value)
        for state in ([disc, gen] if model == "both" else [disc] if model == "disc" else [gen]):
            assert torch.equal(state[hf], expected), name
            checked += 1
    assert checked == len(tf_values) - 1 + 5  # the 5 shared embedding tensors are in both models
    summary = read_json(converted / "conversion.json")
    assert summary["unmapped"] == [] and summary["skipped"] == 2 * (len(tf_values) - 1) + 1


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def layer_norm(x, gamma, beta, eps=1e-12):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def reference_logits(v, ids):
    """ELECTRA's discriminator in numpy, straight from TensorFlow's tensors (BERT's equations)."""
    p = "electra/"
    x = v[p + "embeddings/word_embeddings"][ids] + v[p + "embeddings/position_embeddings"][:len(ids)] + \
        v[p + "embeddings/token_type_embeddings"][0]
    x = layer_norm(x, v[p + "embeddings/LayerNorm/gamma"], v[p + "embeddings/LayerNorm/beta"])
    x = x @ v[p + "embeddings_project/kernel"] + v[p + "embeddings_project/bias"]
    n, h = len(ids), x.shape[-1]
    for layer in range(2):
        q = f"{p}encoder/layer_{layer}/"

        def dense(t, name):
            return t @ v[q + name + "/kernel"] + v[q + name + "/bias"]
        heads = [dense(x, f"attention/self/{k}").reshape(n, HEADS, h // HEADS).transpose(1, 0, 2)
                 for k in ("query", "key", "value")]
        scores = heads[0] @ heads[1].transpose(0, 2, 1) / math.sqrt(h // HEADS)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ heads[2]).transpose(1, 0, 2).reshape(n, h)
        x = layer_norm(dense(context, "attention/output/dense") + x, v[q + "attention/output/LayerNorm/gamma"],
                       v[q + "attention/output/LayerNorm/beta"])
        x = layer_norm(dense(gelu(dense(x, "intermediate/dense")), "output/dense") + x,
                       v[q + "output/LayerNorm/gamma"], v[q + "output/LayerNorm/beta"])
    x = gelu(x @ v["discriminator_predictions/dense/kernel"] + v["discriminator_predictions/dense/bias"])
    return (x @ v["discriminator_predictions/dense_1/kernel"] + v["discriminator_predictions/dense_1/bias"])[:, 0]


def test_converted_discriminator_computes_electras_logits(converted, tf_values):
    model = ElectraForPreTraining.from_pretrained(converted / "discriminator").eval()
    ids = np.array([101, 130, 131, 132, 133, 134, 138, 102])
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()
    np.testing.assert_allclose(logits, reference_logits({k: v.astype(np.float64) for k, v in tf_values.items()}, ids),
                               rtol=1e-4, atol=1e-5)


def test_converted_folders_work_with_transformers_and_the_explorer(converted):
    import explore_SE
    tok = AutoTokenizer.from_pretrained(converted / "discriminator")
    assert tok.convert_ids_to_tokens(tok("The cat SAT.")["input_ids"]) == ["[CLS]", "the", "cat", "sat", ".", "[SEP]"]
    assert tok("the cat", "sat")["token_type_ids"] == [0, 0, 0, 0, 1, 1]  # [CLS] the cat [SEP] | sat [SEP]
    assert read_json(converted / "generator" / "span_electra.json")["use_sbo"] is False  # ELECTRA has no SBO head
    explorer = explore_SE.Explorer(str(converted))
    assert explorer.fill("the [[ cat ]] sat on the mat .")
    assert len(explorer.detect("the cat sat on the mat .")) > 0



@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_converted_tokenizer_loads_alike_in_every_bert_class(converted, tmp_path, lowercase):
    """A converted folder loaded with BertTokenizer / ElectraTokenizerFast (which rebuild the normalizer
    from tokenizer_config.json) tokenizes as our pipeline: uncased strips accents as BERT's uncased
    models do, --do_lower_case false keeps case and accents (unknown here: [UNK])."""
    import transformers
    import tokenization
    folder = converted / "discriminator"
    if not lowercase:
        convert.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(tmp_path / "cased"),
                                           config_file=str(FIXTURE / "hparams.json"), do_lower_case=False))
        folder = tmp_path / "cased" / "discriminator"
    text = "The Café SAT on the mat"
    tok, _ = tokenization.load_tokenizer(str(folder))
    expected = tok.encode(text).ids
    assert tok.encode(text).tokens[1:5] == (["the", "c", "##a", "##f"] if lowercase else ["[UNK]", "[UNK]", "[UNK]", "on"])
    for cls in ("BertTokenizer", "ElectraTokenizerFast", "AutoTokenizer"):
        assert getattr(transformers, cls).from_pretrained(folder)(text)["input_ids"] == expected, cls
    config = read_json(folder / "tokenizer_config.json")
    assert (config["do_lower_case"], config["strip_accents"]) == ((True, None) if lowercase else (False, None))



def test_converted_tokenizer_keeps_typed_special_tokens_whole(converted):
    """tokenizer.json of a converted folder lists BERT's special tokens (ids 0, 100-103) as added tokens:
    our pipeline and transformers both keep a typed '[UNK] [CLS] [MASK]' whole."""
    import tokenization
    folder = converted / "discriminator"
    text = "the [UNK] [CLS] [MASK] cat"
    tok, _ = tokenization.load_tokenizer(str(folder))
    assert tok.encode(text).ids == [101, 130, 100, 101, 103, 131, 102]
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == [101, 130, 100, 101, 103, 131, 102]
    added = {t["content"]: t["id"] for t in read_json(folder / "tokenizer.json")["added_tokens"]}
    assert added == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}



def test_a_converted_out_dir_as_tokenizer_names_its_model_folder(converted, tmp_path):
    """The out_dir itself holds no tokenizer: the error says which of its folders does."""
    import tokenization
    with pytest.raises(tokenization.SpanElectraError) as error:
        tokenization.load_tokenizer(str(converted))
    assert str(error.value) == (f"tokenizer_dir: '{converted}' has no tokenizer.json or vocab.txt; "
                                f"did you mean '{converted / 'discriminator'}'?")
    with pytest.raises(tokenization.SpanElectraError, match="did you mean"):  # process.py's check says it too
        argument.feature_args(tokenizer_dir=str(converted), train_input=str(FIXTURE / "vocab.txt")).validate()
    (tmp_path / "empty").mkdir()
    assert "did you mean" not in tokenization.no_tokenizer_message(str(tmp_path / "empty"))
    shutil.copytree(converted / "generator", tmp_path / "gen_only" / "generator")
    assert tokenization.no_tokenizer_message(str(tmp_path / "gen_only")).endswith(
        f"did you mean '{tmp_path / 'gen_only' / 'generator'}'?")


def test_hparams_beside_the_checkpoint_are_read_without_config_file(tmp_path, caplog):
    """google-research/electra keeps hparams.json in the model folder: without --config_file it is read
    there (the heads, 2, are not in the shapes), and said; the generator's heads follow its width as in
    get_generator_config."""
    import convert_tf_checkpoint
    caplog.set_level("INFO", logger="span_electra")
    out = tmp_path / "electra"
    convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(out)))
    assert read_json(out / "discriminator" / "config.json")["num_attention_heads"] == 2
    assert read_json(out / "generator" / "config.json")["num_attention_heads"] == 1  # 24 wide: max(1, 24 // 64)
    assert f"config_file: using {FIXTURE / 'hparams.json'}, beside the checkpoint" in caplog.text
    # its max_seq_length is the length the model was pre-trained on (fine-tuning past it is warned about)
    assert read_json(out / "discriminator" / "span_electra.json")["trained_seq_len"] == 512


def test_hparams_given_as_config_point_at_config_file(capsys):
    """--config takes a saved convert config; an ELECTRA hparams.json there is pointed at --config_file."""
    import convert_tf_checkpoint
    code, err = run_in_process(capsys, convert_tf_checkpoint, argument.convert_args, "--config", FIXTURE / "hparams.json")
    assert_one_line_error(code, err, "unknown field(s)", "an ELECTRA hparams JSON goes to --config_file")


def test_a_bad_max_seq_length_in_the_hparams_is_one_line(tmp_path):
    """The hparams' max_seq_length becomes the models' pre-training length: a value that is no length is refused."""
    import convert_tf_checkpoint
    hparams = tmp_path / "hp.json"
    hparams.write_text(json.dumps({"max_seq_length": "512"}))
    with pytest.raises(argument.SpanElectraError, match="^config_file: max_seq_length '512' is not a positive whole"):
        convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(tmp_path / "e"),
                                                         config_file=str(hparams)))


def test_heads_follow_the_width_whatever_model_size_says(tmp_path):
    """As get_bert_config: width / 64 heads unless model_hparam_overrides names them; 'small' with a
    hidden size of 32 is 1 head, not small's 4 (a silently different model)."""
    import convert_tf_checkpoint
    hparams = tmp_path / "hp.json"
    hparams.write_text(json.dumps({"model_size": "small", "do_lower_case": True}))
    out = tmp_path / "electra"
    convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(out), config_file=str(hparams)))
    assert read_json(out / "discriminator" / "config.json")["num_attention_heads"] == 1  # max(1, 32 // 64)


@pytest.mark.parametrize("hparams, needle", [
    ({"do_lower_case": "yes"}, "config_file: do_lower_case 'yes' must be true or false"),
    ({"model_size": "tiny"}, "config_file: model_size 'tiny' is not one of google-research/electra's small, base, large"),
    ({"model_hparam_overrides": {"hidden_size": 256}}, "config_file: hidden_size 256 contradicts the checkpoint's 32"),
    ({"model_hparam_overrides": {"num_hidden_layers": 12}}, "config_file: num_hidden_layers 12 contradicts the checkpoint's 2"),
    ({"vocab_size": 30522}, "config_file: vocab_size 30522 contradicts the checkpoint's 182"),
    ({"model_hparam_overrides": [1]}, "config_file: model_hparam_overrides must be a JSON object"),
])
def test_hparams_that_cannot_be_this_checkpoints_are_one_line(tmp_path, capsys, hparams, needle):
    """hparams naming sizes the shapes contradict are another model's (their head count would be a guess);
    a do_lower_case that is no boolean or a model_size ELECTRA never had is refused before anything is written."""
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(hparams))
    code, err = run_in_process(capsys, convert, argument.convert_args, "--checkpoint", FIXTURE, "--out_dir",
                               tmp_path / "out", "--config_file", path)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_null_sizes_in_the_hparams_are_defaults_not_contradictions(tmp_path):
    """google-research/electra writes its config's None (embedding_size: null, the hidden size) into
    hparams.json: such a value contradicts nothing."""
    hparams = tmp_path / "hp.json"
    hparams.write_text(json.dumps({**json.loads((FIXTURE / "hparams.json").read_text()), "embedding_size": None}))
    convert.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(tmp_path / "e"), config_file=str(hparams)))
    assert read_json(tmp_path / "e" / "discriminator" / "config.json")["embedding_size"] == 16


def test_a_model_size_whose_sizes_differ_is_said(tmp_path, caplog):
    """model_size 'small' with no overrides means 256 wide and 12 layers; the fixture is 32 and 2: the shapes
    win, and the difference is said."""
    hparams = tmp_path / "hp.json"
    hparams.write_text(json.dumps({"model_size": "small"}))
    convert.main(argument.convert_args(checkpoint=str(FIXTURE), out_dir=str(tmp_path / "e"), config_file=str(hparams)))
    assert "model_size small means hidden_size 256, the checkpoint's is 32" in caplog.text
    assert "model_size small means num_hidden_layers 12, the checkpoint's is 2" in caplog.text


def damaged_copy(tmp_path, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, folder)
    data = folder / "model.ckpt-3.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    if damage == "flip":  # one bit inside a model tensor (TensorFlow, too, checks a tensor as it reads it)
        entry = tf_checkpoint.TFCheckpoint(str(FIXTURE)).entries["electra/encoder/layer_1/output/dense/kernel"]
        raw[entry["offset"] + entry["size"] // 2] ^= 0x01
    else:
        raw = raw[:len(raw) // 2]
    data.write_bytes(bytes(raw))
    return folder


@pytest.mark.parametrize("damage, needle", [("flip", "fails its CRC32C check"), ("truncate", "truncated")])
def test_a_damaged_data_file_is_one_line(tmp_path, capsys, damage, needle):
    folder = damaged_copy(tmp_path, damage)
    code, err = run_in_process(capsys, convert, argument.convert_args, "--checkpoint", folder, "--out_dir",
                               tmp_path / "out")
    assert_one_line_error(code, err, "checkpoint:", needle)
    assert not (tmp_path / "out" / "discriminator").exists()


def test_not_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "x.index").write_bytes(b"not a table" * 10)
    code, err = run_in_process(capsys, convert, argument.convert_args, "--checkpoint", tmp_path / "x", "--out_dir",
                               tmp_path / "out")
    assert_one_line_error(code, err, "checkpoint:", "not a TensorFlow checkpoint")


def test_any_damage_to_the_index_is_one_line(tmp_path):
    """Every byte of the .index overwritten in turn (as a bad download or disk would): the reader gives
    the checkpoint back or a one-line error, never an exception of its own parser."""
    index = (FIXTURE / "model.ckpt-3.index").read_bytes()
    path = tmp_path / "model.ckpt-3.index"
    outcomes = {"read": 0, "refused": 0}
    # every 13th byte, and each byte of the footer (the block handles and the magic number a reader starts from)
    for position in sorted(set(range(0, len(index), 13)) | set(range(len(index) - 48, len(index)))):
        for value in (0x10, 0xFF):
            path.write_bytes(index[:position] + bytes([value]) + index[position + 1:])
            try:
                ckpt = tf_checkpoint.TFCheckpoint(str(tmp_path / "model.ckpt-3"))
                [ckpt.shape(name) for name in ckpt.names()]
                outcomes["read"] += 1
            except tf_checkpoint.SpanElectraError as e:
                assert "\n" not in str(e) and str(e).startswith("checkpoint:")
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["read"] > 0


def test_inputs_that_do_not_fit_the_checkpoint_are_one_line(tmp_path, capsys):
    """A vocab.txt longer than the embeddings (its last ids would index past them), hparams that are not an
    object, and a head count that does not divide the hidden size: one line each, nothing written."""
    import json
    bigger = tmp_path / "vocab.txt"
    bigger.write_text((FIXTURE / "vocab.txt").read_text() + "".join(f"extra{i}\n" for i in range(50)))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    three = tmp_path / "three.json"
    three.write_text(json.dumps({"model_hparam_overrides": {"num_attention_heads": 3}}))
    for flags, needle in ((["--vocab_file", bigger], "more than the checkpoint's 182 embedding rows"),
                          (["--config_file", listed], "is not a JSON object"),
                          (["--config_file", three], "num_attention_heads 3 does not divide the checkpoint's hidden size 32")):
        code, err = run_in_process(capsys, convert, argument.convert_args, "--checkpoint", FIXTURE, "--out_dir",
                                   tmp_path / "out", *flags)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / "out" / "discriminator").exists()


def test_a_relative_checkpoint_name_is_read_in_its_folder(tmp_path, monkeypatch):
    """The `checkpoint` file's relative model_checkpoint_path is relative to its folder (as TensorFlow reads
    it), even where the current folder holds a checkpoint of that name too."""
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-3"\n', encoding="utf-8")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "model.ckpt-3.index").write_bytes(b"another model")
    monkeypatch.chdir(elsewhere)
    assert tf_checkpoint.resolve_prefix(str(folder)) == str(folder / "model.ckpt-3")
    (folder / "checkpoint").write_text('model_checkpoint_path: "/their/machine/model.ckpt-3"\n', encoding="utf-8")
    assert tf_checkpoint.resolve_prefix(str(folder)) == str(folder / "model.ckpt-3")


def test_a_conversion_cut_short_leaves_no_earlier_generator_beside_the_new_discriminator(tmp_path, monkeypatch):
    """out_dir's discriminator/ is written before generator/: a conversion of another checkpoint killed between
    the two (or one holding no generator) left the earlier conversion's generator beside the new discriminator,
    and the explorer paired them."""
    out = tmp_path / "electra"
    args = dict(checkpoint=str(FIXTURE), out_dir=str(out), config_file=str(FIXTURE / "hparams.json"))
    convert.main(argument.convert_args(**args))
    assert (out / "generator" / "config.json").is_file() and (out / "conversion.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, "save_generator", killed)
    with pytest.raises(KeyboardInterrupt):
        convert.main(argument.convert_args(**args))
    assert (out / "discriminator" / "config.json").is_file()
    assert not (out / "generator").exists()
    assert read_json(out / "conversion.json") == {"checkpoint": str(FIXTURE / "model.ckpt-3"), "complete": False}
    monkeypatch.undo()
    convert.main(argument.convert_args(**args))  # the next conversion writes the pair whole
    assert (out / "generator" / "config.json").is_file() and read_json(out / "conversion.json")["complete"] is True
