"""The README cannot drift from the scripts: every `python script.py ...` line in its shell blocks
parses with that script's config class, every config built in its Python blocks names real fields,
and the quick commands run for real, in README order, on the bundled sample."""
import ast
import dataclasses
import importlib.util
import os
import re
import shlex
import sys

import pytest

import argument
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ENTRY = re.compile(r"run_main\(main, (\w+)\)")

# Appended to the slow commands when they run for real: flags given later win, so the command is
# still parsed and run as written, only shorter.
SHORTER = {
    "run_pipeline.py": ["--generator_steps", "4", "--discriminator_steps", "4"],
    "trainMLM_SpanElectra.py": ["--max_steps", "3", "--eval_every", "3", "--save_every", "3", "--eval_batches", "1",
                                "--train_batch_size", "4", "--model_size", "tiny"],
    "trainSpanElectra.py": ["--max_steps", "3", "--eval_every", "3", "--save_every", "3", "--eval_batches", "1",
                            "--train_batch_size", "4", "--model_size", "tiny"],
    "finetune_SE.py": ["--num_train_epochs", "1", "--max_train_examples", "64", "--seeds", "1"],
}


def blocks(language):
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def shell_commands():
    """Each `python ...` command of the README's bash blocks, continuation lines joined."""
    commands = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "python" and argv[1] != "-m":
                commands.append(argv[1:])
    return commands


def load_script(script):
    """The module of a script path given relative to the repository."""
    name = os.path.splitext(script.replace("/", "."))[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def config_class(script):
    """The config class a script's command line parses into (the one it hands run_main)."""
    source = (REPO / script).read_text(encoding="utf-8")
    found = ENTRY.search(source)
    assert found, f"{script} does not parse its command line with argument.run_main"
    return getattr(load_script(script), found.group(1))


def test_readme_shows_commands():
    scripts = {argv[0] for argv in shell_commands()}
    assert {"run_pipeline.py", "create_vocab_SE.py", "process.py", "mask_stats.py", "trainMLM_SpanElectra.py",
            "trainSpanElectra.py", "finetune_SE.py", "explore_SE.py"} <= scripts
    assert "../shared" not in "\n".join(" ".join(argv) for argv in shell_commands()), \
        "README commands must run on a fresh clone; bigger data belongs in prose that says so"


@pytest.mark.parametrize("argv", shell_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_readme_command_parses(argv):
    script, args = argv[0], argv[1:]
    assert (REPO / script).is_file(), f"README runs {script}, which does not exist"
    assert not any(a.startswith("[") or a.endswith("]") for a in args), f"bracketed flags cannot be pasted: {argv}"
    config = argument.parse_config(config_class(script), args)
    for flag, value in zip(args, args[1:] + [None]):
        if flag.startswith("--") and value is not None and not value.startswith("--"):
            assert hasattr(config, flag[2:]), flag


def python_calls():
    """(class name, keyword names) of every config class built in the README's Python blocks."""
    names = {f.__name__ for f in vars(argument).values() if dataclasses.is_dataclass(f) and isinstance(f, type)}
    calls = []
    for body in blocks("python"):
        tree = ast.parse("\n".join(line for line in body.splitlines() if not line.lstrip().startswith(("!", "%"))))
        unpacked = dict_keywords(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
                calls.append((node.func.id, [name for k in node.keywords
                                             for name in ([k.arg] if k.arg else unpacked[k.value.id])]))
    return calls


def dict_keywords(tree):
    """{variable: keyword names of the dict(...) calls assigned to it} (a cell's **amp: bf16=True or fp16=True)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = [k.arg for call in ast.walk(node.value) if isinstance(call, ast.Call)
                                         and isinstance(call.func, ast.Name) and call.func.id == "dict"
                                         for k in call.keywords]
    return found


def test_readme_python_configs_name_real_fields():
    calls = python_calls()
    assert len(calls) >= 5
    for cls_name, keywords in calls:
        fields = {f.name for f in dataclasses.fields(getattr(argument, cls_name))}
        unknown = set(keywords) - fields
        assert not unknown, f"README builds {cls_name} with unknown fields {sorted(unknown)}"


def runnable_python_blocks():
    """The Python blocks meant to be pasted as they are (not the Colab cells, which need a corpus)."""
    return [b for b in blocks("python") if not b.startswith("# cell") and not b.lstrip().startswith("@dataclass")]


def test_readme_runs_on_the_bundled_sample(tmp_path, monkeypatch, capsys):
    """The README's commands, top to bottom, in a fresh folder holding only the repository's data/."""
    os.symlink(REPO / "data", tmp_path / "data")
    (tmp_path / "tests").mkdir()
    os.symlink(REPO / "tests" / "fixtures", tmp_path / "tests" / "fixtures")  # the converter's example checkpoint
    monkeypatch.chdir(tmp_path)
    pyvi = importlib.util.find_spec("pyvi") is not None
    ran, skipped_outputs = [], []
    for argv in shell_commands():
        script, args = argv[0], argv[1:]
        # without pyvi, skip the segmented commands and every later one that reads what they would write
        if not pyvi and ("pyvi" in args or any(arg.startswith(out) or out.startswith(arg + "/")
                                                for arg in args for out in skipped_outputs)):
            skipped_outputs += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--out_dir"]
            continue
        shorter = SHORTER.get(script, [])
        if "--init_from" in args:  # the size is the folder's: a typed --model_size that differs is refused
            at = shorter.index("--model_size")
            shorter = shorter[:at] + shorter[at + 2:]
        config = argument.parse_config(config_class(script), args + shorter)
        load_script(script).main(config)
        ran.append(script)
    assert ran.count("trainSpanElectra.py") >= 2 and "finetune_SE.py" in ran and "explore_SE.py" in ran
    out = capsys.readouterr().out
    assert "P(replaced)" in out and "fills for" in out
    for body in runnable_python_blocks():
        exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
    assert os.path.isfile("outputs/pipeline/two_stage/discriminator/config.json")
