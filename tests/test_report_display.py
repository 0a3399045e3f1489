"""Rich display of the report objects (mono_quant.report): HTML and Markdown tables, the
one-line repr, to_dict / to_dataframe; escaping, speed, and str() left as it was."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
import torch

from mono_quant import CalibrationStats, LayerInfo, QuantizationInfo, calibrate, dynamic_quantize, validate
from mono_quant.report import Cell, Column, Table, as_table, output_agreement
from mono_quant.validate import CheckResult, ValidationReport

from helpers import make_mlp

EVIL = "enc.<script>alert('x')</script>&amp;|*_$[1]"


def layer(name="fc", sqnr=40.0, **kw) -> LayerInfo:
    fields = dict(module_type="Linear", scheme="int8 per-channel symmetric", dtype="int8",
                  shape=(8, 4), bytes_before=144, bytes_after=72, sqnr_db=sqnr)
    fields.update(kw)
    return LayerInfo(name, **fields)


def sample_info() -> QuantizationInfo:
    info = QuantizationInfo()
    info.add(layer("good", 45.0))
    info.add(layer("fair", 25.0))
    info.add(layer("warned", 15.0))
    info.add(layer("bad", 5.0, details={"group_size": 128}))
    info.add(layer("exact", math.inf))
    info.add(layer("fb", 33.0, details={"fallback": "in_features (100) is not a multiple of group_size (128)"}))
    info.add(layer("small", None, scheme="", dtype="float32", bytes_after=144, status="skipped", reason="too small"))
    info.add(layer(EVIL, 12.0))
    return info


class Cells(HTMLParser):
    """The text of every <td>/<th> in document order, and every tag seen."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cells: list[list[str]] = []
        self.tags: list[str] = []
        self._in: str | None = None
        self._classes: dict[str, str] = {}
        self.cell_classes: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.cells.append([])
        if tag in ("td", "th"):
            self._in = tag
            self.cells[-1].append("")
            self.cell_classes.append(dict(attrs).get("class") or "")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.cells[-1][-1] += data


def test_info_html_is_a_coloured_table_of_every_layer():
    info = sample_info()
    html = info._repr_html_()
    parsed = Cells(html)
    assert parsed.cells[0] == ["Layer", "Type", "Scheme", "Size", "Ratio", "SQNR", "Status", "Reason"]
    rows = {row[0]: row for row in parsed.cells[1:]}
    assert list(rows) == [name for name in info.layers]  # model order, every layer
    assert rows["good"][1:7] == ["Linear", "int8 per-channel symmetric", "144 B → 72 B", "2.00x", "45.0 dB", "good"]
    assert rows["bad"][5:7] == ["5.0 dB", "critical"] and rows["exact"][5] == "inf dB"
    assert rows["small"][6:] == ["skipped", "too small"] and rows["small"][4:6] == ["-", "-"]
    assert rows["fb"][7].startswith("fallback: in_features (100)")
    sqnr_classes = {row[0]: cls for row, cls in zip(parsed.cells[1:], parsed.cell_classes[8 + 5::8])}
    assert sqnr_classes["good"] == "mq-right mq-good" and sqnr_classes["warned"] == "mq-right mq-warning"
    assert sqnr_classes["bad"] == "mq-right mq-critical" and sqnr_classes["fair"] == "mq-right mq-fair"
    # Totals and warnings come before the table, the critical warning first.
    head = html[:html.index("<table")]
    assert "7 of 8 layers quantized" in head and "1.1 KiB → 648 B (1.78x smaller)" in head
    notes = re.findall(r'<li class="mq-(\w+)">([^<]*)</li>', head)
    assert notes[0][0] == "critical" and notes[0][1].startswith("bad: SQNR 5.0 dB is critical")
    assert notes[-1] == ("info", "fallback fb: in_features (100) is not a multiple of group_size (128)")


def test_html_is_self_contained_and_escapes_every_name():
    info = sample_info()
    for report in (info, info.layers[EVIL]):
        html = report._repr_html_()
        assert "<script" not in html and "alert('x')" not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;amp;|*_$[1]" in html
        assert not re.search(r"(src|href)\s*=|@import|url\(|https?:", html)  # nothing fetched
        parsed = Cells(html)
        assert set(parsed.tags) <= {"div", "style", "span", "ul", "li", "table", "thead", "tbody", "tr", "th", "td",
                                    "details", "summary"}
    assert [row[0] for row in Cells(info._repr_html_()).cells if row and row[0] == EVIL] == [EVIL]


def test_markdown_escapes_and_keeps_one_line_per_row():
    info = sample_info()
    md = info._repr_markdown_()
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(info.layers)
    evil_row = next(line for line in table if "script" in line)
    assert evil_row.startswith(r"| enc.&lt;script&gt;alert('x')&lt;/script&gt;&amp;amp;\|\*\_\$\[1\] | Linear |")
    assert evil_row.count(" | ") == 7  # the name's "|" does not add a column
    assert "<" not in md and "- ✗ bad: SQNR 5.0 dB is critical" in md


def test_repr_is_one_line_and_str_is_unchanged():
    info = sample_info()
    text = repr(info)
    assert "\n" not in text and text == (
        "QuantizationInfo(7 of 8 layers quantized, 1.1 KiB -> 648 B (1.78x), lowest SQNR 5.0 dB at 'bad', "
        "3 warnings)")
    assert repr(info.layers["good"]) == ("LayerInfo('good', Linear, int8 per-channel symmetric, 144 B -> 72 B, "
                                         "SQNR 45.0 dB (good))")
    assert repr(info.layers["small"]) == "LayerInfo('small', Linear, skipped: too small, 144 B -> 144 B)"
    assert str(info).splitlines()[0].split() == ["Layer", "Type", "Scheme", "Size", "SQNR", "Status"]
    assert "Total: 1.1 KiB -> 648 B (1.78x), 7 of 8 layers quantized" in str(info)
    assert info == sample_info()  # equality still compares the fields


def test_to_dict_is_json_and_complete():
    model = make_mlp()
    _, info = dynamic_quantize(model, "int4", group_size=32)
    info.add(layer("exact", math.inf))
    data = info.to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN / Infinity literals
    assert json.loads(text) == data
    assert [entry["name"] for entry in data["layers"]] == list(info.layers)
    first = data["layers"][0]
    assert first["shape"] == [128, 64] and first["sqnr_db"] == pytest.approx(info.layers["0"].sqnr_db)
    assert data["layers"][-1]["sqnr_db"] == "inf"
    assert data["summary"]["bytes_before"] == info.total_bytes_before and data["config"]["group_size"] == 32
    assert data["validation"]["passed"] is True and set(data["validation"]["checks"]) == {"sqnr", "size", "load", "range"}
    assert info.layers["0"].to_dict() == first


def test_to_dataframe_rows_keep_numbers():
    pd = pytest.importorskip("pandas")
    info = sample_info()
    frame = info.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and list(frame["name"]) == list(info.layers)
    assert frame.loc[frame["name"] == "exact", "sqnr_db"].item() == math.inf
    assert math.isnan(frame.loc[frame["name"] == "small", "sqnr_db"].item())
    assert frame.sort_values("sqnr_db")["name"].iloc[0] == "bad"


def test_to_dataframe_without_pandas_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mono_quant\[notebook\]'"):
        sample_info().to_dataframe()


def test_validation_and_calibration_reports():
    model = make_mlp()
    qmodel, _ = dynamic_quantize(model)
    report = validate(model, qmodel, torch.randn(2, 64), min_sqnr_db=500.0)
    rows = Cells(report._repr_html_()).cells
    assert rows[0] == ["Check", "Status", "Message"]
    assert [r[:2] for r in rows[1:]] == [["sqnr", "failed"], ["size", "passed"], ["load", "passed"], ["range", "passed"]]
    assert 'class="mq-failed"' in report._repr_html_() and "FAILED" in report._repr_html_()
    assert repr(report).startswith("ValidationReport(FAILED: sqnr;")
    assert json.loads(json.dumps(report.to_dict()))["checks"]["sqnr"]["status"] == "failed"
    stats = calibrate(model, torch.randn(40, 64), num_samples=32, progress=False)
    assert isinstance(stats, CalibrationStats)
    rows = Cells(stats._repr_html_()).cells
    assert [r[0] for r in rows[1:]] == list(stats.layers) and rows[1][4] == "1"
    assert repr(stats) == "CalibrationStats(observer 'minmax', 2 layers, 32 samples in 1 batches)"
    data = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert [entry["name"] for entry in data["layers"]] == list(stats.layers)


def test_empty_reports_render():
    assert "no layers were considered" in QuantizationInfo()._repr_html_()
    assert repr(QuantizationInfo()) == "QuantizationInfo(0 of 0 layers quantized, 0 B -> 0 B (1.00x))"
    empty = ValidationReport()
    assert "no checks ran" in empty._repr_html_() and repr(empty) == "ValidationReport(passed: no check ran)"
    skipped = ValidationReport({"sqnr": CheckResult("sqnr", "skipped", "no quantized layers")})
    assert repr(skipped) == "ValidationReport(passed: no check ran; skipped: sqnr)"


def test_html_for_1000_layers_is_fast():
    info = QuantizationInfo()
    for i in range(1000):
        info.add(layer(f"blocks.{i}.<mlp>&fc", float(i % 45)))
    start = time.perf_counter()
    html = info._repr_html_()
    md = info._repr_markdown_()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"HTML + Markdown of 1,000 layers took {elapsed:.2f} s"
    assert html.count("<tr>") == 1001 and md.count("\n|") == 1002  # Markdown: header, rule, rows
    assert '<details class="mq-more"><summary>' in html  # hundreds of warnings fold under the first three


def test_table_refuses_unknown_tones_and_aligns():
    with pytest.raises(ValueError, match="tone must be one of"):
        Cell("x", tone="red")
    with pytest.raises(ValueError, match="align must be 'left' or 'right'"):
        Column("x", align="center")
    with pytest.raises(TypeError, match="no as_table builder for int"):
        as_table(3)
    table = Table("T", [Cell("<b>")], [("info", "a & b")], [Column("c")], [[Cell("1", sort=1.5)]])
    assert '<span class="mq-chip">&lt;b&gt;</span>' in table.to_html() and 'data-sort="1.5"' in table.to_html()


def test_output_agreement_report():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = torch.tensor([[1.0, 0.0], [0.1, 1.0], [-1.0, -1.0]])
    agreement = output_agreement(ref, out, ["a", "b<", "c"])
    assert agreement.cosines[0] == 1.0 and agreement.cosines[2] == pytest.approx(-1.0)
    assert agreement.min == pytest.approx(-1.0)
    rows = Cells(agreement._repr_html_()).cells
    assert rows[2][0] == "b<" and rows[1][1] == "1.00000"
    assert "mq-critical" in agreement._repr_html_() and repr(agreement).startswith("OutputAgreement(output: 3 samples")
    with pytest.raises(ValueError, match="same shape"):
        output_agreement(ref, out[:2])
    with pytest.raises(ValueError, match="labels must name each of the 3 rows"):
        output_agreement(ref, out, ["a"])


def test_core_imports_no_optional_package():
    code = ("import sys, torch, mono_quant\n"
            "q, info = mono_quant.dynamic_quantize(torch.nn.Linear(64, 64))\n"
            "info._repr_html_(); info._repr_markdown_(); repr(info); info.to_dict()\n"
            "import mono_quant.playground\n"
            "bad = [m for m in ('matplotlib', 'pandas', 'marimo', 'IPython') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
