"""SpanElectra.ipynb runs top to bottom (nbclient), with its step counts turned down."""
import json

import pytest

from conftest import REPO, notebook_code_cells

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")


def test_notebook_cells_compile_outside_a_kernel():
    """tests/test_gpu.py exec's the cells without IPython: each must compile once its magics are stripped, and
    the Colab set-up cell must do nothing off Colab and Kaggle."""
    cells = notebook_code_cells()
    for source in cells:
        compile(source, "SpanElectra.ipynb", "exec")
    namespace = {}
    exec(compile(cells[0], "SpanElectra.ipynb", "exec"), namespace)
    assert namespace["REPO_URL"] == ""


def test_notebook_runs_top_to_bottom(tmp_path):
    nb = nbformat.read(REPO / "SpanElectra.ipynb", as_version=4)
    knobs = next(c for c in nb.cells if c.cell_type == "code" and "GENERATOR_STEPS =" in c.source)
    knobs.source += (f"\nOUT = {str(tmp_path / 'nb')!r}\nGENERATOR_STEPS = 6\nDISCRIMINATOR_STEPS = 4\n"
                     "FINETUNE_EXAMPLES = 64\ntry:\n    import matplotlib\n    matplotlib.use('Agg')  # no window\n"
                     "except ImportError:\n    pass")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "P(replaced)" in outputs and "fills for" in outputs and "eval_accuracy" in outputs
    with open(tmp_path / "nb" / "ft" / "results.json", encoding="utf-8") as f:
        assert 0 <= json.load(f)["eval_accuracy"] <= 1
