"""The module structure: stage scripts use library modules, never each other, and no import cycles."""
import ast
from pathlib import Path

from conftest import REPO

# scripts a user runs; run_pipeline.py is the one that runs the others
STAGE_SCRIPTS = {"create_vocab_SE", "process", "mask_stats", "trainMLM_SpanElectra", "trainSpanElectra",
                 "finetune_SE", "explore_SE", "convert_tf_checkpoint", "run_pipeline"}
LIBRARIES = {"argument", "io_utils", "tokenization", "features", "masking", "modelling_span_electra",
             "cpu_dropout", "training_utils", "tf_checkpoint"}


def repo_imports():
    """{module: set of repo modules it imports anywhere in its file (inside functions too)}."""
    modules = {p.stem: p for p in Path(REPO).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
        graph[name] = found & set(modules) - {name}
    return graph


def test_every_top_level_module_is_a_stage_script_or_a_library():
    assert set(repo_imports()) == STAGE_SCRIPTS | LIBRARIES


def test_stage_scripts_import_only_libraries():
    graph = repo_imports()
    for script in STAGE_SCRIPTS - {"run_pipeline"}:
        assert not graph[script] & STAGE_SCRIPTS, (script, graph[script] & STAGE_SCRIPTS)
    for library in LIBRARIES:
        assert not graph[library] & STAGE_SCRIPTS, (library, graph[library] & STAGE_SCRIPTS)


def test_no_import_cycles():
    graph = repo_imports()
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(path + [node])
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = "done"
    for module in sorted(graph):
        visit(module, [])
