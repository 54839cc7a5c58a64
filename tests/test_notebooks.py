"""Every notebook in ``notebooks/`` runs from top to bottom without an error.

Notebooks write their own synthetic data into temporary directories and start
their own (local, bounded) bridge servers, so they run anywhere.  Their executed
copies in ``notebooks/executed/`` (written by ``python -m notebooks.execute``)
show readers of the repository the results: they hold the notebooks' code as it
is, their outputs, and no path or host name of the machine that ran them.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
EXECUTED = Path(__file__).parent.parent / "notebooks" / "executed"


def _execute_module():
    """``notebooks/execute.py`` (the notebooks folder is no installed package)."""
    spec = importlib.util.spec_from_file_location("notebooks_execute", EXECUTED.parent / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"offline_demo.ipynb", "online_demo.ipynb", "pipeline_demo.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit notebooks with outputs cleared"
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()   # raises CellExecutionError naming the failing cell
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    stderr = [out["text"] for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("name") == "stderr"]
    assert not any("IProgress" in text for text in stderr), stderr  # tqdm's widget warning


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executed_copy_is_current_and_names_no_place_on_a_machine(path):
    copy_path = EXECUTED / path.name
    assert copy_path.is_file(), f"no executed copy: run python -m notebooks.execute {path.stem}"
    nb, copy = nbformat.read(path, as_version=4), nbformat.read(copy_path, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.source for cell in copy.cells if cell.cell_type == "code"] == code, \
        f"{copy_path.name} is older than its notebook: run python -m notebooks.execute {path.stem}"
    outputs = [out for cell in copy.cells if cell.cell_type == "code" for out in cell.outputs]
    assert outputs and not [out for out in outputs if out.output_type == "error"]
    execute = _execute_module()
    text = nbformat.writes(execute._without_images(copy))
    assert execute.machine_strings(text) == []
    assert tempfile.gettempdir() not in text and str(Path.home()) not in text


def test_machine_paths_are_found_and_replaced():
    execute = _execute_module()
    assert execute.machine_strings("in /home/someone/r0001/RAW-R0001-DA01-S00000.h5") == [
        "/home/someone/r0001/RAW-R0001-DA01-S00000.h5"]
    assert execute.machine_strings("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf tcp://127.0.0.1:4545 <tmp>/r0001") == []
    assert execute.sanitise("/scratch/t/tmpx_1/r0001 /scratch/t", {"/scratch/t": "<tmp>"}) == "<tmp>/r0001 <tmp>"
