"""Runs that never mix: a run resumes only itself, a used out_dir is never taken over silently, and
every failure is one line (exit 2) with nothing half-written."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import argument
import modelling_span_electra as mse
import trainMLM_SpanElectra
import trainSpanElectra
import training_utils as tu
from argument import SE_trainingConfig
from conftest import assert_one_line_error
from io_utils import SpanElectraError

TINY = dict(model_size="tiny", max_steps=4, log_every=2, eval_every=4, save_every=2, eval_batches=1,
            train_batch_size=8, num_hidden_layers=1, device="cpu")


def gen_config(feat, out, **kw):
    return argument.MLM_trainingConfig(features_dir=str(feat), out_dir=str(out), **{**TINY, **kw})


def cli(capsys, feat, out, *flags):
    """trainMLM_SpanElectra.py's command line, in this process: (exit code, stderr)."""
    argv = ["--features_dir", str(feat), "--out_dir", str(out), "--model_size", "tiny", "--num_hidden_layers", "1",
            "--max_steps", "4", "--save_every", "2", "--train_batch_size", "8", "--eval_batches", "1",
            "--device", "cpu", *flags]
    with pytest.raises(SystemExit) as stop:
        argument.run_main(trainMLM_SpanElectra.main, argument.MLM_trainingConfig, argv)
    return stop.value.code, capsys.readouterr().err


def snapshot(folder):
    """Every file under folder with its size and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path))
    return out


@pytest.fixture(scope="module")
def finished_run(bpe_feat, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out))
    return out


def test_a_run_records_its_identity(finished_run):
    with open(finished_run / "run.json", encoding="utf-8") as f:
        run = json.load(f)
    assert len(run["run_id"]) == 32 and run["fixed"]["model_size"] == "tiny"
    assert run["fixed"]["script"] == "trainMLM" and run["fixed"]["num_hidden_layers"] == 1
    assert "max_steps" not in run["fixed"] and "out_dir" not in run["fixed"]  # those may change on resume
    state = torch.load(tu.list_checkpoints(str(finished_run))[-1], weights_only=True)
    assert state["run_id"] == run["run_id"]
    assert not (finished_run / ".lock").exists()  # released at the end


def test_fresh_run_into_a_used_out_dir_stops_and_writes_nothing(bpe_feat, finished_run, tmp_path, capsys):
    used = tmp_path / "used"
    shutil.copytree(finished_run, used)
    before = snapshot(used)
    code, err = cli(capsys, bpe_feat[0], used)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "holds another run" in err and "--resume_from latest" in err and "--overwrite_output_dir" in err
    assert snapshot(used) == before


def test_overwrite_output_dir_starts_over(bpe_feat, finished_run, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(finished_run, used)
    (used / "checkpoint-00000900.pt").write_bytes(b"an old run's checkpoint")
    old_id = json.loads((used / "run.json").read_text())["run_id"]
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], used, overwrite_output_dir=True))
    assert not (used / "checkpoint-00000900.pt").exists()
    assert json.loads((used / "run.json").read_text())["run_id"] != old_id
    rows = [json.loads(line) for line in open(used / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in rows if "loss" in r and r.get("split") != "valid"] == [2, 4]  # one run, not two


def test_resume_with_a_changed_fixed_setting_names_it_and_writes_nothing(bpe_feat, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    code, err = cli(capsys, bpe_feat[0], run, "--resume_from", "latest", "--num_hidden_layers", "2")
    assert code == 2 and "Traceback" not in err
    assert "num_hidden_layers: the run in" in err and "started with 1, now 2" in err
    assert snapshot(run) == before
    # settings that may change do: more steps continue the same run
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6, resume_from="latest", log_every=3))
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl", encoding="utf-8")]
    assert steps[-1] == 6


def test_mutable_settings_are_those_that_leave_the_trained_model_unchanged(tmp_path):
    """A resume may change only bookkeeping: a changed mask_ratio, learning_rate or other setting is refused."""
    # Why this set: max_steps only extends the run; log/eval/save/keep settings say how often and how much is
    # written or evaluated; resume_from/overwrite_output_dir/out_dir/features_dir/tokenizer_dir/generator_dir/init_from
    # say where files are (what they hold is pinned by digests in the identity); device/bf16/fp16/compile/num_workers change
    # speed, not the recipe. Any other field changes what is trained, so a resume that changes it makes two runs.
    assert tu.MUTABLE_SETTINGS == {
        "max_steps", "log_every", "eval_every", "save_every", "eval_batches", "eval_batch_size", "keep_checkpoints",
        "num_workers", "resume_from", "overwrite_output_dir", "out_dir", "device", "bf16", "fp16", "compile",
        "features_dir", "tokenizer_dir", "generator_dir", "init_from"}
    feats = SimpleNamespace(meta={"tokenizer_hash": "h", "num_sequences": {"train": 100}}, max_seq_len=128,
                            vocab_size=2000)
    first = argument.MLM_trainingConfig(features_dir="f", out_dir=str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps(
        {"run_id": "r1", "fixed": tu.run_identity(first, feats, "generator")}), encoding="utf-8")
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")

    def resume(**changes):
        config = dataclasses.replace(first, resume_from="latest", **changes)
        return tu.check_run(config, tu.run_identity(config, feats, "generator"))

    assert resume(max_steps=5000, log_every=1, eval_batches=3) == "r1"
    # features of the same text in another tokenizer: the tokenizer is named, not the number of rows it gave
    other = SimpleNamespace(meta={"tokenizer_hash": "h2", "num_sequences": {"train": 90}}, max_seq_len=128,
                            vocab_size=2000)
    with pytest.raises(SpanElectraError, match="^features_dir: the features' tokenizer changed since"):
        tu.check_run(dataclasses.replace(first, resume_from="latest"), tu.run_identity(first, other, "generator"))
    # a pre-trained model moved: the same weights (digest) resume; other weights, or none, are refused
    pretrained = dataclasses.replace(first, init_from=str(tmp_path / "pretrained"), out_dir=str(tmp_path / "p"))
    os.makedirs(pretrained.out_dir)
    (tmp_path / "p" / "run.json").write_text(json.dumps({"run_id": "r2", "fixed": tu.run_identity(
        pretrained, feats, "generator", {"init_generator_weights": "w1"})}), encoding="utf-8")
    (tmp_path / "p" / "metrics.jsonl").write_text("", encoding="utf-8")

    def resume_pretrained(weights, **changes):
        config = dataclasses.replace(pretrained, resume_from="latest", **changes)
        return tu.check_run(config, tu.run_identity(config, feats, "generator", weights))
    assert resume_pretrained({"init_generator_weights": "w1"}, init_from=str(tmp_path / "moved")) == "r2"
    with pytest.raises(SpanElectraError, match="^init_from: the generator weights changed since"):
        resume_pretrained({"init_generator_weights": "w2"})
    with pytest.raises(SpanElectraError, match="^init_from: the generator weights changed since"):
        resume_pretrained({}, init_from="")
    for field, value in (("mask_ratio", 0.3), ("learning_rate", 1e-3), ("masking", "token"), ("seed", 7)):
        with pytest.raises(SpanElectraError, match=f"^{field}: the run in .* was started with"):
            resume(**{field: value})


def test_two_stage_resume_refuses_another_generator_or_one_retrained_in_place(bpe_feat, finished_run, tmp_path,
                                                                            capsys):
    """A resume naming another generator folder says which folder the run started with; the same folder
    holding other weights says they changed."""
    gen_dir, run = tmp_path / "generator", tmp_path / "se"
    shutil.copytree(finished_run / "generator", gen_dir)
    flags = ["--mode", "two_stage", "--generator_dir", str(gen_dir), "--features_dir", str(bpe_feat[0]), "--out_dir",
             str(run), "--model_size", "tiny", "--num_hidden_layers", "1", "--max_steps", "2", "--save_every", "2",
             "--train_batch_size", "8", "--eval_batches", "1", "--device", "cpu"]
    argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig, flags)
    saved = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert saved["folders"] == {"features_dir": os.path.realpath(bpe_feat[0]),
                                "generator_dir": os.path.realpath(gen_dir)}
    generator = mse.load_generator(str(gen_dir))
    with torch.no_grad():
        next(generator.parameters()).add_(0.01)
    other = tmp_path / "other_generator"
    mse.save_generator(generator, str(other), str(finished_run / "generator"))  # another folder, another generator
    before = snapshot(run)
    at_other = flags[:]
    at_other[at_other.index("--generator_dir") + 1] = str(other)
    with pytest.raises(SystemExit) as stop:  # said as the other folder it is, not as weights that changed
        argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig, at_other + ["--resume_from", "latest"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "weights changed" not in err
    assert (f"generator_dir: the run in '{run}' was started with --generator_dir '{os.path.realpath(gen_dir)}', and "
            f"this command names '{os.path.realpath(other)}'") in err
    assert f"resume with --generator_dir '{os.path.realpath(gen_dir)}', or give a new --out_dir" in err
    assert snapshot(run) == before
    mse.save_generator(generator, str(gen_dir), str(finished_run / "generator"))  # same path, another generator
    with pytest.raises(SystemExit) as stop:
        argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig,
                          flags + ["--resume_from", "latest", "--max_steps", "4"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "generator_dir: the generator's weights changed since the run in" in err and "--overwrite_output_dir" in err
    assert snapshot(run) == before
    joint = [v if v != "two_stage" else "joint" for v in flags]  # the setting is named, not the digest it drops
    del joint[joint.index("--generator_dir"):joint.index("--generator_dir") + 2]  # joint trains its own
    with pytest.raises(SystemExit):
        argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig, joint + ["--resume_from", "latest"])
    assert "error: mode: the run in" in capsys.readouterr().err and snapshot(run) == before


def test_a_discriminator_into_its_generators_out_dir_never_deletes_the_generator(bpe_feat, finished_run, tmp_path,
                                                                                 capsys):
    """generator_dir = OUT/generator of a trainMLM run, out_dir = OUT: resuming names the other script's
    run, and --overwrite_output_dir refuses to delete the generator this run needs."""
    run = tmp_path / "gen_run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    flags = ["--mode", "two_stage", "--generator_dir", str(run / "generator"), "--features_dir", str(bpe_feat[0]),
             "--out_dir", str(run), "--model_size", "tiny", "--num_hidden_layers", "1", "--max_steps", "2",
             "--device", "cpu"]
    for extra, needle in ((["--resume_from", "latest"], "holds a trainMLM run, not a trainSpanElectra one"),
                          (["--overwrite_output_dir", "true"], "generator_dir: ")):
        with pytest.raises(SystemExit) as stop:
            argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig, flags + extra)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert stop.value.code == 2 and needle in last, last
    assert "--overwrite_output_dir deletes" in last and snapshot(run) == before


@pytest.mark.parametrize("target, what", [("features", "features (meta.json)"),
                                          ("generator", "a tokenizer (tokenizer.json)")])
def test_a_run_into_a_features_or_model_folder_is_refused(bpe_feat, finished_run, tmp_path, capsys, target, what):
    """--out_dir at the features folder or at a saved model (a run's own generator/): the run's checkpoints,
    metrics and models would mix with them; refused before anything is written, with --overwrite_output_dir too."""
    folder = tmp_path / target
    shutil.copytree(bpe_feat[0] if target == "features" else finished_run / "generator", folder)
    before = snapshot(folder)
    with pytest.raises(SystemExit) as stop:
        argument.run_main(trainMLM_SpanElectra.main, argument.MLM_trainingConfig, [
            "--features_dir", str(bpe_feat[0]), "--out_dir", str(folder), "--model_size", "tiny", "--max_steps", "2",
            "--overwrite_output_dir", "true", "--device", "cpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last == (f"error: out_dir: '{folder}' holds {what}, not a training run; give the "
                                             "run a folder of its own")
    assert snapshot(folder) == before


def test_resuming_checkpoints_whose_run_json_is_gone_says_so(bpe_feat, finished_run, tmp_path):
    """run.json deleted beside checkpoints that carry a run id: the settings cannot be compared, and the error
    says that (it used to send the user to the out_dir they had given), writing nothing."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "run.json").unlink()
    before = snapshot(run)
    with pytest.raises(SpanElectraError, match=r"^out_dir: '.*run' holds checkpoints but no readable run.json .* put "
                                               "run.json back, or start over with --overwrite_output_dir"):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, resume_from="latest", max_steps=12))
    assert snapshot(run) == before


def test_resume_latest_ignores_another_runs_checkpoint(bpe_feat, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    foreign = torch.load(tu.list_checkpoints(str(run))[-1], weights_only=True)
    foreign["run_id"], foreign["step"] = "another-run", 9
    torch.save(foreign, run / "checkpoint-00000009.pt")
    code, err = cli(capsys, bpe_feat[0], run, "--resume_from", "latest", "--max_steps", "12")
    assert code == 2 and "belongs to another run" in err


def test_resumed_finished_run_adds_no_second_done_row(bpe_feat, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, resume_from="latest"))
    rows = [json.loads(line) for line in open(run / "metrics.jsonl", encoding="utf-8")]
    assert sum(r.get("event") == "done" for r in rows) == 1


def test_two_runs_at_once_the_second_stops(bpe_feat, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": other.pid}))
        code, err = cli(capsys, bpe_feat[0], out)
        assert code == 2 and f"in use by another training process (pid {other.pid})" in err
        assert not (out / "run.json").exists()
    finally:
        other.kill()
        other.wait()
    # the process is gone: its lock is stale and the next run takes it over
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], out))
    assert (out / "generator" / "config.json").exists() and not (out / ".lock").exists()


def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_tmp(bpe_feat, tmp_path, capsys, monkeypatch):
    def full_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 2048")
    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "full"
    code, err = cli(capsys, bpe_feat[0], out)
    assert code == 2 and "Traceback" not in err and "cannot write a checkpoint" in err
    assert "MB free there" in err  # torch's own words never say the disk is full
    assert not [p for p in os.listdir(out) if p.endswith(".tmp") or p.endswith(".pt")]


def test_out_of_memory_names_the_batch_and_the_fix(bpe_feat, tmp_path, capsys, monkeypatch):
    from modelling_span_electra import SpanElectraGenerator

    def no_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError(  # torch 2.1 has no torch.OutOfMemoryError
            "CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(SpanElectraGenerator, "forward", no_memory)
    code, err = cli(capsys, bpe_feat[0], tmp_path / "oom")
    assert code == 2 and "Traceback" not in err
    assert "out of memory with 8 sequences per step" in err and "--train_batch_size 4" in err
    assert "--gradient_accumulation_steps 2" in err


# ---------------------------------------------------------------- folders published whole
def test_a_kill_while_saving_a_model_keeps_the_old_folder_whole(finished_run, tmp_path, monkeypatch):
    import modelling_span_electra as mse
    from transformers import ElectraForMaskedLM
    gen_dir = tmp_path / "generator"
    shutil.copytree(finished_run / "generator", gen_dir)
    before = snapshot(gen_dir)
    generator = mse.load_generator(str(gen_dir))

    def killed(self, directory, **kwargs):
        with open(os.path.join(directory, "config.json"), "w") as f:
            f.write("{}")
        raise KeyboardInterrupt  # the user's Ctrl-C, a time-out, ...
    monkeypatch.setattr(ElectraForMaskedLM, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        mse.save_generator(generator, str(gen_dir))
    assert snapshot(gen_dir) == before  # the old folder, untouched
    assert sorted(os.listdir(tmp_path)) == ["generator"]  # and no half-built one beside it
    monkeypatch.undo()
    mse.save_generator(generator, str(gen_dir))
    weights = gen_dir / "model.safetensors"
    assert weights.stat().st_mode & 0o644 == 0o644  # the usual permissions, not 0600
    assert mse.load_generator(str(gen_dir)).config.hidden_size == generator.config.hidden_size


@pytest.mark.parametrize("damage", ["empty", "truncated", "pickle"])
def test_a_damaged_weight_file_is_one_line(bpe_feat, finished_run, tmp_path, capsys, damage):
    gen_dir = tmp_path / "generator"
    shutil.copytree(finished_run / "generator", gen_dir)
    weights = gen_dir / "model.safetensors"
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
        torch.save({"model": torch.nn.Linear(2, 2)}, gen_dir / "pytorch_model.bin")  # a pickled module
    import trainSpanElectra
    with pytest.raises(SystemExit) as stop:
        argument.run_main(trainSpanElectra.main, argument.SE_trainingConfig, [
            "--features_dir", str(bpe_feat[0]), "--generator_dir", str(gen_dir), "--out_dir", str(tmp_path / "se"),
            "--max_steps", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "weights_only" not in err
    assert f"generator_dir: cannot load the model in '{gen_dir}'" in err
    assert {"empty": "is empty", "truncated": "not a readable safetensors", "pickle": "is a pickle"}[damage] in err


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_features_array_is_one_line(bpe_feat, tmp_path, capsys, damage):
    feat = tmp_path / "feat"
    shutil.copytree(bpe_feat[0], feat)
    if damage == "truncated":
        data = (feat / "train.bin").read_bytes()
        (feat / "train.bin").write_bytes(data[:len(data) // 2])
    else:
        (feat / "valid.bin").unlink()
    code, err = cli(capsys, feat, tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert ("holds" in err and "promises" in err) if damage == "truncated" else "valid.bin' is missing" in err


def test_a_file_name_with_glob_characters_is_read_as_a_name(tmp_path):
    from io_utils import find_text_files
    odd = tmp_path / "wiki[1].txt"
    odd.write_text("a line of text\n", encoding="utf-8")
    assert find_text_files(str(odd), "train_input") == [str(odd)]


def test_valid_input_and_valid_fraction_together_are_refused(bpe_tok):
    from io_utils import SpanElectraError
    with pytest.raises(SpanElectraError, match="valid_fraction: 0.1 with --valid_input"):
        argument.feature_args(tokenizer_dir=str(bpe_tok), valid_fraction=0.1).validate()


def test_a_full_disk_while_building_features_is_one_line(bpe_tok, tmp_path, monkeypatch):
    import process
    from io_utils import SpanElectraError

    def full(self, *args, **kwargs):
        raise OSError("Not enough free space to write 65536 bytes")  # numpy's tofile, without an errno
    monkeypatch.setattr(process.SequenceWriter, "add", full)
    with pytest.raises(SpanElectraError, match="out_dir: cannot write the features to .*Not enough free space"):
        process.main(argument.feature_args(tokenizer_dir=str(bpe_tok), out_dir=str(tmp_path / "feat")))
    assert os.listdir(tmp_path) == []  # no half-built folder left


def test_a_full_disk_while_saving_a_model_is_one_line(finished_run, tmp_path, monkeypatch):
    import modelling_span_electra as mse
    from io_utils import SpanElectraError
    from transformers import ElectraForMaskedLM
    generator = mse.load_generator(str(finished_run / "generator"))

    def full(self, directory, **kwargs):
        raise Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                        "\"No space left on device\" })")  # as safetensors raises it
    monkeypatch.setattr(ElectraForMaskedLM, "save_pretrained", full)
    with pytest.raises(SpanElectraError, match="out_dir: cannot write .*generator"):
        mse.save_generator(generator, str(tmp_path / "generator"))
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_a_killed_run_left_half_written_is_removed(bpe_feat, finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "checkpoint-00000006.pt.tmp").write_bytes(b"half")
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6, resume_from="latest"))
    assert not (run / "checkpoint-00000006.pt.tmp").exists() and (run / "checkpoint-00000006.pt").exists()


def interrupt_at(monkeypatch, step):
    """Ctrl-C during optimizer step `step` (counted from 1) of the next run; returns the real step."""
    real_step, calls = tu.optimizer_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(tu, "optimizer_step", killed)
    return real_step


@pytest.mark.parametrize("kill_at", [1, 3])
def test_ctrl_c_says_where_the_run_continues_from(bpe_feat, tmp_path, capsys, monkeypatch, kill_at):
    """Exit 130 and one line: the last checkpoint and the flag that continues from it (or that there is none)."""
    interrupt_at(monkeypatch, kill_at)
    code, err = cli(capsys, bpe_feat[0], tmp_path / "run")
    last = err.strip().splitlines()[-1]
    assert code == 130 and "Traceback" not in err
    if kill_at == 1:
        assert last.startswith("interrupted before the first checkpoint") and "--save_every 2" in last
    else:
        assert "checkpoint-00000002.pt" in last and "--resume_from latest" in last


@pytest.mark.parametrize("kill_at", [1, 3, 4])
def test_a_run_killed_at_any_step_resumes_to_the_same_losses(bpe_feat, finished_run, tmp_path, monkeypatch, kill_at):
    """Killed before its first checkpoint, between two, or at the last step: re-running the same
    command with --resume_from latest ends exactly as the uninterrupted run did."""
    run = tmp_path / "run"
    real_step = interrupt_at(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, resume_from="latest"))
    monkeypatch.setattr(tu, "optimizer_step", real_step)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, resume_from="latest"))

    def train_rows(folder):
        rows = [json.loads(line) for line in open(folder / "metrics.jsonl", encoding="utf-8")]
        return [(r["step"], r["loss"], r["mlm_accuracy"]) for r in rows if "loss" in r and r.get("split") != "valid"]
    expected = train_rows(finished_run)
    assert [r[0] for r in train_rows(run)] == [2, 4]
    for got, want in zip(train_rows(run), expected):
        assert got[1] == pytest.approx(want[1], rel=1e-5) and got[2] == pytest.approx(want[2], abs=1e-6)


def test_a_stopped_and_resumed_run_counts_its_seconds_before_the_stop(bpe_feat, tmp_path, monkeypatch):
    """run_seconds (each checkpoint's, and the closing row's) goes on over a resume: the steps before the
    stop are counted, and its steps after the last checkpoint, which are done again, are not."""
    run, real_step, calls = tmp_path / "run", tu.optimizer_step, []

    def slow_then_killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(5.0)  # work the stop loses: after checkpoint 2, never counted
            raise KeyboardInterrupt
        time.sleep(0.4)  # steps 1 and 2: counted
        return real_step(*args, **kwargs)
    monkeypatch.setattr(tu, "optimizer_step", slow_then_killed)
    with pytest.raises(KeyboardInterrupt):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run))
    saved = torch.load(run / "checkpoint-00000002.pt", weights_only=True)["run_seconds"]
    assert 0.8 <= saved < 5.0
    monkeypatch.setattr(tu, "optimizer_step", real_step)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, resume_from="latest"))
    done = [json.loads(line) for line in open(run / "metrics.jsonl", encoding="utf-8")][-1]
    final = torch.load(run / "checkpoint-00000004.pt", weights_only=True)["run_seconds"]
    assert done["event"] == "done" and saved < final <= done["run_seconds"] < saved + 5.0


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one_when_saves_fall_between_logs(bpe_feat, tmp_path,
                                                                                          monkeypatch):
    """save_every 3, log_every 2: a row is logged at each checkpoint too, so the row after a resume averages
    the same steps as in the run that was never stopped (else it would start at the checkpoint); and
    extending a finished run drops its closing row."""
    settings = dict(max_steps=6, save_every=3, log_every=2, eval_every=100)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "whole", **settings))
    real_step = interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "cut", **settings))
    monkeypatch.setattr(tu, "optimizer_step", real_step)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "cut", resume_from="latest", **settings))

    def train_rows(folder):
        rows = [json.loads(line) for line in open(folder / "metrics.jsonl", encoding="utf-8")]
        return [(r["step"], round(r["loss"], 5)) for r in rows if "loss" in r and r.get("split") != "valid"]
    assert [s for s, _ in train_rows(tmp_path / "whole")] == [2, 3, 4, 6]
    assert train_rows(tmp_path / "cut") == train_rows(tmp_path / "whole")
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "whole", resume_from="latest", **{**settings,
                                                                                                    "max_steps": 8}))
    events = [(r["step"], r.get("event")) for r in map(json.loads, open(tmp_path / "whole" / "metrics.jsonl"))
              if "event" in r]
    assert events == [(8, "done")]


def test_an_out_dir_with_glob_characters_keeps_and_resumes_its_checkpoints(bpe_feat, tmp_path):
    run = tmp_path / "run[1]"
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6, keep_checkpoints=2))
    assert sorted(p.name for p in run.glob("checkpoint-*.pt")) == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=8, resume_from="latest"))
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl", encoding="utf-8")]
    assert 5 not in steps and steps[-1] == 8  # continued from step 6, not from scratch


# ---------------------------------------------------------------- a full disk at every kind of write
NO_SPACE = "No space left on device"


def run_script(capsys, script, config_cls, argv):
    """A script's command line in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as stop:
        argument.run_main(script.main, config_cls, argv)
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("write", ["tokenizer", "run.json", "metrics.jsonl", "results.json"])
def test_a_full_disk_at_every_kind_of_write_is_one_line(write, bpe_feat, finished_run, tmp_path, capsys, monkeypatch):
    """However the library reports it (an OSError with or without errno, tokenizers' and safetensors'
    plain Exceptions), a failed write ends in one line, exit 2, and no output that looks complete."""
    import errno

    import create_vocab_SE
    import finetune_SE
    import tokenizers

    out = tmp_path / "out"
    if write == "tokenizer":
        def full(*args, **kwargs):
            raise Exception(f"{NO_SPACE} (os error 28)")  # as tokenizers' Rust side raises it
        monkeypatch.setattr(tokenizers.Tokenizer, "save", full)
        code, err = run_script(capsys, create_vocab_SE, argument.tok_args,
                               ["--data_dir", "data/sample", "--out_dir", str(out), "--vocab_size", "500"])
        assert not (out / "tokenizer.json").exists()
    elif write in ("run.json", "metrics.jsonl"):
        def full(*args, **kwargs):
            if write == "run.json":
                raise OSError("Not enough free space to write 512 bytes")  # no errno, as numpy raises it
            raise OSError(errno.ENOSPC, NO_SPACE, str(out / "metrics.jsonl"))
        monkeypatch.setattr(*((tu, "atomic_write_json") if write == "run.json" else (tu.MetricsLog, "write")), full)
        code, err = cli(capsys, bpe_feat[0], out)
        assert not (out / "generator").exists()
    else:
        def full(*args, **kwargs):
            raise Exception(f"Error while serializing: IoError(Os {{ code: 28, message: \"{NO_SPACE}\" }})")
        monkeypatch.setattr(finetune_SE, "atomic_write_json", full)
        code, err = run_script(capsys, finetune_SE, argument.finetune_args,
                               ["--model_dir", str(finished_run / "generator"), "--task_dir", "data/glue/MRPC",
                                "--out_dir", str(out), "--max_train_examples", "64", "--num_train_epochs", "1",
                                "--max_seq_length", "32", "--device", "cpu", "--save_model", "false"])
        assert not (out / "results.json").exists()
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert ("No space left on device" in last or "Not enough free space" in last) and "free some space" in last
    assert "MB free there" in last and (write == "metrics.jsonl" or f"'{out}'" in last)  # where it was writing


# ---------------------------------------------------------------- a kill during every kind of save
@pytest.mark.parametrize("save", ["tokenizer", "features", "converted model"])
def test_a_kill_during_a_save_keeps_the_old_output_whole(save, bpe_tok, tmp_path, monkeypatch):
    """Ctrl-C (or a time-out) in the middle of writing: the previous output stays as it was, and no
    half-built folder is left beside it."""
    import convert_tf_checkpoint
    import process
    import tokenizers
    from conftest import ELECTRA_TF, build_features, train_vocab

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "out"
    if save == "tokenizer":
        def run():
            train_vocab(out, vocab_size=600)
        target = (tokenizers.Tokenizer, "save")
    elif save == "features":
        def run():
            build_features(bpe_tok, out, valid_input="")
        target = (process.SequenceWriter, "add")
    else:
        def run():
            convert_tf_checkpoint.main(argument.convert_args(checkpoint=str(ELECTRA_TF),
                                                             out_dir=str(out)))
        target = (convert_tf_checkpoint, "save_generator")
    run()
    before = snapshot(out)
    monkeypatch.setattr(*target, killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    after = snapshot(out)
    if save == "converted model":  # the discriminator was replaced, whole, before the kill; the earlier
        # conversion's generator and conversion.json are gone, so nothing pairs the two conversions' models
        assert set(after) == {k for k in before if k.startswith("discriminator")} | {"convert_tf_checkpoint_config.json",
                                                                                    "conversion.json"}
    else:
        assert after == before
    assert not [p for p in os.listdir(tmp_path) + os.listdir(out) if p.startswith(".") and "tmp" in p]


# ---------------------------------------------------------------- a damaged file of ours
@pytest.mark.parametrize("damaged", ["features meta.json", "features meta.json keys", "generator span_electra.json",
                                     "tokenizer se_tokenizer.json", "run.json"])
def test_a_damaged_json_file_of_ours_is_one_line(damaged, bpe_feat, finished_run, tmp_path, capsys):
    """A JSON file the project wrote, cut short by a crash or edited by hand: one line that names the
    file and the fix, exit 2, whichever script reads it."""
    feat, run = tmp_path / "feat", tmp_path / "run"
    shutil.copytree(bpe_feat[0], feat)
    shutil.copytree(finished_run, run)
    path, text = {"features meta.json": (feat / "meta.json", '{"max_seq_len": 6'),
                  "features meta.json keys": (feat / "meta.json", '{"max_seq_len": 64}'),
                  "generator span_electra.json": (run / "generator" / "span_electra.json", ""),
                  "tokenizer se_tokenizer.json": (feat / "tokenizer" / "se_tokenizer.json", "{"),
                  "run.json": (run / "run.json", '{"run_id": "abc"}')}[damaged]
    path.write_text(text)
    if damaged.startswith("generator"):
        code, err = run_script(capsys, trainSpanElectra, argument.SE_trainingConfig, [
            "--features_dir", str(feat), "--generator_dir", str(run / "generator"), "--out_dir", str(tmp_path / "se"),
            "--max_steps", "2", "--device", "cpu"])
    elif damaged.startswith("tokenizer"):
        import process
        code, err = run_script(capsys, process, argument.feature_args, [
            "--tokenizer_dir", str(feat / "tokenizer"), "--train_input", "data/sample/valid.tokens",
            "--out_dir", str(tmp_path / "f2")])
    else:
        code, err = cli(capsys, feat, run, "--resume_from", "latest", "--max_steps", "6")
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert str(path) in last and "is damaged" in last, last
    assert any(fix in last for fix in ("process.py", "save the model again", "create_vocab_SE.py", "--overwrite_output_dir"))


def test_a_metrics_line_cut_short_is_dropped_on_resume(bpe_feat, finished_run, tmp_path, caplog):
    """A crash in the middle of a metrics.jsonl write leaves half a line: resuming drops it (said once)
    and continues the log."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 5, "loss": 1.2')
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6, resume_from="latest"))
    rows = [json.loads(line) for line in open(run / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in rows if "loss" in r and "split" not in r] == [2, 4, 6]
    assert "a damaged line" in caplog.text


def test_resume_from_a_path_takes_only_this_runs_checkpoint(bpe_feat, finished_run, tmp_path, capsys):
    """An explicit checkpoint of another run (here: into a fresh out_dir) is refused as 'latest' is,
    naming the run it belongs to; the out_dir is left free for a fresh start of the same command."""
    checkpoint = tu.list_checkpoints(str(finished_run))[-1]
    code, err = cli(capsys, bpe_feat[0], tmp_path / "new", "--resume_from", checkpoint, "--max_steps", "6")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and "belongs to another run" in last and str(finished_run) in last
    # the refused start left only its run.json and config: a fresh run may take the folder
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], tmp_path / "new"))
    assert (tmp_path / "new" / "generator").is_dir()
    # its own checkpoint, given by path, resumes it
    run = tmp_path / "own"
    shutil.copytree(finished_run, run)
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6,
                                         resume_from=tu.list_checkpoints(str(run))[-1]))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_a_checkpoint_of_another_model_is_one_line(bpe_feat, finished_run, tmp_path, capsys):
    """A checkpoint from before run ids (no run_id) of a model of other sizes: one line, no traceback."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(tu.list_checkpoints(str(run))[-1], weights_only=True)
    del state["run_id"]
    torch.save(state, run / "checkpoint-00000004.pt")
    (run / "run.json").unlink()
    code, err = cli(capsys, bpe_feat[0], run, "--resume_from", "latest", "--max_steps", "6",
                    "--gen_hidden_size", "32")
    assert code == 2 and "Traceback" not in err
    assert "does not fit this model" in err.strip().splitlines()[-1]


class _Joint(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.position_delta = torch.nn.Parameter(torch.zeros(3))


def test_resuming_a_disentangled_checkpoint_without_position_delta_says_why(tmp_path, monkeypatch):
    model = _Joint()
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"model": {"w": torch.ones(2)}, "optimizer": optimizer.state_dict(), "step": 5}
    monkeypatch.setattr(tu, "load_checkpoint", lambda *a: state)
    config = SimpleNamespace(resume_from="latest", out_dir=str(tmp_path), run_id="abc")
    with pytest.raises(SpanElectraError, match="no position delta.*overwrite_output_dir"):
        tu.resume_training_state(config, model, optimizer, None)
    state["model"] = {"w": torch.ones(5), "position_delta": torch.zeros(3)}  # another mismatch: the reason named
    with pytest.raises(SpanElectraError, match=r"does not fit this model \(size mismatch for w"):
        tu.resume_training_state(config, model, optimizer, None)


def test_resume_refuses_other_features_and_another_process_count(bpe_feat, bpe_tok, finished_run, tmp_path, capsys):
    """Features of the same tokenizer and length but another corpus, or another number of processes,
    would make a resumed run two runs: each is one line naming what changed."""
    from conftest import SAMPLE, build_features
    other, _ = build_features(bpe_tok, tmp_path / "other", train_input=str(SAMPLE / "valid.tokens"), valid_input="",
                              max_seq_len=128)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    code, err = cli(capsys, other, run, "--resume_from", "latest", "--max_steps", "6")
    assert code == 2 and "features_dir: the run in" in err and "another corpus" in err
    assert snapshot(run) == before
    saved = json.loads((run / "run.json").read_text())
    saved["fixed"]["processes"] = 2
    (run / "run.json").write_text(json.dumps(saved))
    code, err = cli(capsys, bpe_feat[0], run, "--resume_from", "latest", "--max_steps", "6")
    assert code == 2 and "processes:" in err and "torchrun --nproc_per_node 2" in err
    # a run.json written before these keys existed resumes as it did
    for key in tu.LATER_KEYS:
        saved["fixed"].pop(key)
    (run / "run.json").write_text(json.dumps(saved))
    trainMLM_SpanElectra.main(gen_config(bpe_feat[0], run, max_steps=6, resume_from="latest"))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_resume_refuses_features_rebuilt_from_other_text_of_the_same_size(bpe_tok, tmp_path):
    """Features rebuilt in place from other text with the same tokenizer and the same number of training
    sequences passed every check; meta.json's content digest of the rows tells them apart."""
    from conftest import SAMPLE, build_features
    from io_utils import SpanElectraError
    lines = [line for line in (SAMPLE / "train.tokens").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.strip().startswith("=")]
    first, second = "\n".join(lines[:150]), "\n".join(lines[150:300])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"{first}\n\n{second}\n", encoding="utf-8")
    build = dict(train_input=str(corpus), valid_input="", max_seq_len=32, doc_boundary="blank_line")
    feat, meta = build_features(bpe_tok, tmp_path / "feat", **build)
    run = tmp_path / "run"
    trainMLM_SpanElectra.main(gen_config(feat, run, max_steps=2, save_every=2, train_batch_size=4))
    corpus.write_text(f"{second}\n\n{first}\n", encoding="utf-8")  # the same documents, in another order
    shutil.rmtree(feat)
    _, rebuilt = build_features(bpe_tok, tmp_path / "feat", **build)
    assert rebuilt["num_sequences"] == meta["num_sequences"] and rebuilt["tokenizer_hash"] == meta["tokenizer_hash"]
    assert rebuilt["content_digest"]["train"] != meta["content_digest"]["train"]
    with pytest.raises(SpanElectraError, match=r"^features_dir: the features' training sequences \(rebuilt from "
                                               r"other text\?\) changed since the run"):
        trainMLM_SpanElectra.main(gen_config(feat, run, max_steps=4, save_every=2, train_batch_size=4,
                                             resume_from="latest"))
    corpus.write_text(f"{first}\n\n{second}\n", encoding="utf-8")  # put back: the same rows, the same digest
    shutil.rmtree(feat)
    build_features(bpe_tok, tmp_path / "feat", **build)
    trainMLM_SpanElectra.main(gen_config(feat, run, max_steps=4, save_every=2, train_batch_size=4, resume_from="latest"))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


def _started_run(out, digest):
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 5}\n')
    fixed = {"script": "trainSpanElectra", "tokenizer_hash": "t", "train_sequences": 10,
             "train_sequences_digest": digest}
    (out / "run.json").write_text(json.dumps({"run_id": "abc", "fixed": fixed}))
    return SE_trainingConfig(features_dir="f", out_dir=str(out), resume_from="latest"), fixed


def test_a_run_started_on_features_without_a_digest_resumes_on_the_same_text_rebuilt(tmp_path):
    """A run started on features process.py built before content_digest recorded train_sequences_digest None;
    the same text rebuilt now has a digest: nothing says the rows differ, and such runs resumed before digests
    were compared, so it must not be refused as 'rebuilt from other text'."""
    config, fixed = _started_run(tmp_path / "a", None)
    assert tu.check_run(config, dict(fixed, train_sequences_digest="0123")) == "abc"
    config, fixed = _started_run(tmp_path / "b", "0123")  # a digest on both sides still decides
    assert tu.check_run(config, fixed) == "abc"
    with pytest.raises(SpanElectraError, match="training sequences .rebuilt from other text"):
        tu.check_run(config, dict(fixed, train_sequences_digest="4567"))


def test_sigterm_stops_a_run_as_ctrl_c_does(bpe_feat, tmp_path):
    """`timeout` and schedulers send SIGTERM to every process of a run, the batch worker's too: exit
    143, the checkpoint to continue from, the lock released, no torch 'worker killed' traceback."""
    import signal
    import time
    out = tmp_path / "run"
    args = ["--features_dir", bpe_feat[0], "--out_dir", out, "--model_size", "tiny", "--num_hidden_layers", "1",
            "--max_steps", "100000", "--save_every", "2", "--train_batch_size", "8", "--device", "cpu",
            "--num_workers", "1"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(argument.ROOT) + "/trainMLM_SpanElectra.py", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 120
    while not tu.list_checkpoints(str(out)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as `timeout` and SLURM do
    err = proc.communicate(timeout=60)[1]
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert last.startswith("interrupted: checkpoint-") and "--resume_from latest" in last
    assert not (out / ".lock").exists()


def test_a_stopped_torchrun_peer_is_one_line(finished_run, monkeypatch, capsys):
    """Under torchrun, a process whose peer was killed (or ran out of memory) fails in gloo's or NCCL's
    collective: one line that names the lost peer and the checkpoint to resume from, not gloo's traceback."""
    config = argument.MLM_trainingConfig(out_dir=str(finished_run))

    def main(_):
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:31141: "
                           "Connection reset by peer. This is typically caused by a remote worker hanging")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(argument, "parse_config", lambda cls, argv: config)
    with pytest.raises(SystemExit) as stop:
        argument.run_main(main, argument.MLM_trainingConfig, [])
    line = assert_one_line_error(stop.value.code, capsys.readouterr().err, "another process of this run stopped",
                                 "Connection reset by peer", "--resume_from latest")
    assert os.path.basename(tu.list_checkpoints(str(finished_run))[-1]) in line
    # this process's own NCCL failure (a bad setting) is not blamed on another process
    assert argument.lost_process_message(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, invalid usage"), config) is None
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone, the same error is a bug to trace
    with pytest.raises(RuntimeError):
        argument.run_main(main, argument.MLM_trainingConfig, [])
