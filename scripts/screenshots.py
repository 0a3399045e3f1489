"""Take the README's screenshots with headless Chromium (Debian's ``chromium`` package):

    python scripts/screenshots.py            # writes docs/img/report.png and docs/img/playground.png

1. ``report.png``: the HTML table of ``dynamic_quantize(MiniLM, "int4")`` (what ``info`` shows as
   the last line of a notebook cell), rendered by Chromium.
2. ``playground.png``: ``mono-quant playground --headless`` served on a local port, opened in
   Chromium over the DevTools protocol; the shot is taken once every cell has drawn (the
   output-agreement table and the per-layer plots are on the page).

Needs the ``playground`` extra, the C extension built (``make build``) and ``websockets``
(installed with marimo). Runs offline on the bundled model. Images are saved as 256-colour
PNGs to stay small.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("headless Chromium is needed: apt-get install chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class DevTools:
    """A headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, width: int, height: int) -> None:
        import warnings

        from websockets.sync.client import connect

        warnings.filterwarnings("ignore", category=DeprecationWarning, module="websockets")
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="mq-chromium-")
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/json/version", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {expression!r}")
            time.sleep(0.5)

    def screenshot(self, width: int, height: int | None = None):
        """The page as a PIL image, ``height`` pixels tall (default: all of it)."""
        from io import BytesIO

        from PIL import Image

        if height is None:
            # marimo scrolls an inner container, not the document: take the tallest element
            height = int(self.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(1.0)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        return Image.open(BytesIO(b64decode(data))).convert("RGB")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def save_small_png(image, path: Path) -> None:
    from PIL import Image

    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} ({image.width}x{image.height}, {path.stat().st_size // 1024} KiB)")


def report_shot() -> None:
    import mono_quant
    from mono_quant.demo import load_minilm

    model, _ = load_minilm()
    _, info = mono_quant.dynamic_quantize(model, "int4", group_size=64, modules_to_not_convert=["pooler"])
    page = Path(tempfile.mkdtemp(prefix="mq-report-")) / "report.html"
    page.write_text("<!doctype html><meta charset='utf-8'><body style='margin:12px'>" + info._repr_html_())
    browser = DevTools(1300, 800)
    try:
        browser.call("Page.navigate", url=page.as_uri())
        browser.wait_for("document.readyState === 'complete'", 30)
        save_small_png(browser.screenshot(1300, 700), OUT / "report.png")
    finally:
        browser.close()


def playground_shot() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mono_quant", "playground", "--headless", "--port", str(port),
                               "--dtype", "int4"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    browser = None
    try:
        wait_http(f"http://127.0.0.1:{port}/", 60)
        browser = DevTools(1400, 900)
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        # Every cell has run when the plots are drawn: the sqnr and sizes figures, and the
        # first per-layer tab (marimo draws tabs inside shadow roots: count through them).
        browser.wait_for("document.body.innerText.includes('OutputAgreement') && (function count(root) {"
                         " let n = root.querySelectorAll('img').length;"
                         " for (const e of root.querySelectorAll('*')) if (e.shadowRoot) n += count(e.shadowRoot);"
                         " return n; })(document) >= 3", 300)
        time.sleep(3)
        page = browser.screenshot(1400)
        # Two pictures: the controls and the report; then the output agreement and the plots.
        split = int(browser.evaluate("document.querySelectorAll('.mq-report')[1].getBoundingClientRect().top")) - 16
        save_small_png(page.crop((0, 0, page.width, min(split, 1500))), OUT / "playground.png")
        save_small_png(page.crop((0, split, page.width, page.height)), OUT / "playground-plots.png")
    finally:
        if browser is not None:
            browser.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    report_shot()
    playground_shot()
