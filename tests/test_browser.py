"""The HTML report as a browser draws it: headless Chromium (Debian's ``chromium``; ``make test``
installs it when run as root) loads a page holding the report tables and a small script of
ours that reads back what is rendered: the visible text, the title, the cells' colours."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
import torch

from mono_quant import LayerInfo, calibrate, dynamic_quantize, validate

from helpers import make_mlp

BROWSER = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (apt-get install "
                                                        "chromium; `make test` installs it when run as root)")

EVIL = "enc.<script>document.title='pwned'</script>&amp;"

# Ours, after the reports: what a person sees, as JSON in <pre id="dump">.
READBACK = """<script>
const bg = cls => { const td = document.querySelector('td.' + cls); return td ? getComputedStyle(td).backgroundColor : null; };
const pre = document.createElement('pre'); pre.id = 'dump';
pre.textContent = JSON.stringify({title: document.title, text: document.body.innerText,
  colours: {good: bg('mq-good'), warning: bg('mq-warning'), critical: bg('mq-critical'), failed: bg('mq-failed')},
  width: document.querySelector('.mq-report').getBoundingClientRect().width});
document.body.appendChild(pre);
</script>"""


def render(tmp_path, body: str) -> dict:
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>report</title></head><body>{body}"
                    f"{READBACK}</body></html>")
    profile = tmp_path / "profile"  # our own profile: runs at the same time do not share a lock
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--window-size=1200,900", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="dump">(.*?)</pre>', done.stdout, re.S)
    assert found, f"Chromium rendered nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def rgb(css: str) -> tuple[float, ...]:
    return tuple(float(v) for v in re.findall(r"[\d.]+", css)[:3])


def test_report_renders_as_coloured_tables(tmp_path):
    model = make_mlp()
    qmodel, info = dynamic_quantize(model)
    info.add(LayerInfo(EVIL, "Linear", "int4 g128", "uint8", (8, 4), 144, 40, 5.0))
    for i in range(6):
        info.add(LayerInfo(f"w{i}", "Linear", "int4 g128", "uint8", (8, 4), 144, 40, 12.0 + i))
    report = validate(model, qmodel, torch.randn(2, 64), min_sqnr_db=300.0)
    stats = calibrate(model, torch.randn(16, 64), num_samples=8, progress=False)
    seen = render(tmp_path, info._repr_html_() + report._repr_html_() + stats._repr_html_())
    text = seen["text"]
    assert seen["title"] == "report"  # the layer called <script>... stayed text
    lines = text.splitlines()
    assert "Layer\tType\tScheme\tSize\tRatio\tSQNR\tStatus\tReason" in lines
    assert f"{EVIL}\tLinear\tint4 g128\t144 B → 40 B\t3.60x\t5.0 dB\tcritical\t" in lines
    assert "0\tLinear\tint8 per-channel symmetric\t32.5 KiB → 9.5 KiB\t3.42x" in text
    assert "9 of 10 layers quantized" in text and "critical: 1" in text
    # The first three notes show, the rest fold under "N more notes" (closed: not drawn).
    assert f"{EVIL}: SQNR 5.0 dB is critical" in text and "w0: SQNR 12.0 dB is warning" in text
    assert "5 more notes" in text and "w5: SQNR 17.0 dB" not in text
    assert "sqnr\tfailed\t" in text and "FAILED" in text and "Check\tStatus\tMessage" in lines
    assert "Layer\tType\tRange (min, max)\tSeen (min, max)\tCalls\tClipped" in lines
    red, green = rgb(seen["colours"]["critical"]), rgb(seen["colours"]["good"])
    assert red[0] > red[1] + 40 and green[1] > green[0] + 40, seen["colours"]
    assert rgb(seen["colours"]["failed"]) == red and seen["colours"]["warning"] not in (None, seen["colours"]["good"])
    assert 300 < seen["width"] <= 1200


def test_layer_info_renders(tmp_path):
    _, info = dynamic_quantize(make_mlp(), "int4", group_size=32)
    seen = render(tmp_path, info.layers["0"]._repr_html_())
    lines = seen["text"].splitlines()
    assert lines[:2] == ["LayerInfo", "0"]  # the title, then the layer name chip
    assert "scheme\tint4 g32 asymmetric mse" in lines and "shape\t128x64" in lines
    assert any(line.startswith("SQNR\t") and line.endswith(" dB") for line in lines)
