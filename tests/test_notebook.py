"""What a Jupyter user sees: a notebook run headless by nbclient on a real IPython kernel; each
report object as a cell's last line is an HTML table (one output, with the expected rows), a
plot is one PNG image, a DataFrame a table."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    # 0: a model with a layer name that needs escaping
    "import collections, torch, mono_quant, mono_quant.plot as mqplot\n"
    "torch.manual_seed(0)\n"
    "model = torch.nn.Sequential(collections.OrderedDict([('fc1', torch.nn.Linear(64, 128)), ('act', torch.nn.ReLU()),\n"
    "    ('<b>fc2&', torch.nn.Linear(128, 96)), ('head', torch.nn.Linear(96, 8))]))",
    # 1: the report, as a new user would look at it
    "qmodel, info = mono_quant.dynamic_quantize(model, 'int4', group_size=32)\ninfo",
    "info.layers['fc1']",
    "mono_quant.validate(model, qmodel, torch.randn(2, 64))",
    "mono_quant.calibrate(model, torch.randn(16, 64), num_samples=8, progress=False)",
    "info.to_dataframe()",
    "mqplot.sqnr(info)",
    "mqplot.weight_histogram(model, qmodel, 'fc1')",
    "print(info)",
    # 9: with pyplot imported (the inline backend on), a figure still shows once
    "import matplotlib.pyplot as plt\nmqplot.sizes(info)",
]


def run_notebook(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = nbclient.NotebookClient(nb, timeout=180, startup_timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # left for a person to open when a test fails
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("notebook")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)  # the kernel imports this tree
    os.environ.setdefault("MPLBACKEND", "agg")
    try:
        return run_notebook(tmp_path)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def outputs(nb, index: int) -> list[dict]:
    return [o for o in nb.cells[index].outputs if o["output_type"] in ("execute_result", "display_data", "stream")]


def html_of(nb, index: int) -> str:
    found = outputs(nb, index)
    assert len(found) == 1, f"cell {index} showed {len(found)} outputs: {found}"
    data = found[0]["data"]
    assert "text/html" in data and "text/markdown" in data, sorted(data)
    return data["text/html"]


def cell_texts(html: str, tag: str = "td") -> list[str]:
    """The text of each cell (markup inside a cell, such as the wrapping span, left out)."""
    return [re.sub(r"<[^>]*>", "", cell) for cell in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", html, re.S)]


def test_report_objects_show_as_html_tables(executed):
    html = html_of(executed, 1)
    assert html.startswith('<div class="mq-report">')
    cells = cell_texts(html)
    for name in ("fc1", "&lt;b&gt;fc2&amp;", "head"):
        assert name in cells, (name, cells[:20])
    assert "<b>fc2" not in html  # escaped, never markup
    assert "int4 g32 asymmetric mse" in cells and "3 of 3 layers quantized" in html
    assert re.search(r'<td class="mq-right mq-(good|fair|warning|critical)"[^>]*>\d+\.\d dB</td>', html)
    assert executed.cells[1].outputs[0]["data"]["text/plain"].startswith("QuantizationInfo(3 of 3 layers quantized")
    layer_cells = cell_texts(html_of(executed, 2))
    assert layer_cells[:2] == ["type", "Linear"] and "int4 g32 asymmetric mse" in layer_cells
    assert cell_texts(html_of(executed, 3))[::3] == ["sqnr", "size", "load", "range"]
    assert cell_texts(html_of(executed, 4))[0] == "fc1"


def test_dataframe_and_plots(executed):
    frame = outputs(executed, 5)
    assert len(frame) == 1 and "<table" in frame[0]["data"]["text/html"] and "sqnr_db" in frame[0]["data"]["text/html"]
    for index in (6, 7):
        shown = outputs(executed, index)
        assert len(shown) == 1, f"the figure of cell {index} showed {len(shown)} times"
        png = base64.b64decode(shown[0]["data"]["image/png"])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_print_is_the_plain_table(executed):
    text = "".join(o.get("text", "") for o in outputs(executed, 8))
    assert text.splitlines()[0].split() == ["Layer", "Type", "Scheme", "Size", "SQNR", "Status"]
