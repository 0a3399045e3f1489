"""``Table``: the one shape every report object takes for display, and its HTML and Markdown.

A report (``QuantizationInfo``, ``ValidationReport``, ...) is turned into a ``Table`` by a
builder (``mono_quant.report.display``); this module knows nothing about reports, only how to
draw a title with summary chips, a list of notes (warnings first) and a grid of cells, each
cell optionally coloured by a ``tone``.

The HTML is self-contained: one ``<div>`` with its own ``<style>`` (scoped to ``.mq-report``),
no script, no external resource. Every text is escaped here, once, so a builder passes raw
strings (a layer may be called ``<script>``). Colours are light tints over the inherited text
colour, so the table reads on light and dark notebook themes alike; the tone's word is always
in the text too (colour is never the only signal).

>>> t = Table("Demo", [Cell("2 layers")], [], [Column("Layer"), Column("SQNR", "right")],
...           [[Cell("fc"), Cell("41.2 dB", tone="good")]])
>>> "<table" in t.to_html() and "| fc | 41.2 dB |" in t.to_markdown()
True
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

# Tone -> CSS class suffix. Accuracy levels (mono_quant.info.ACCURACY_LEVELS) and check
# statuses (validate) both map here.
TONES = ("good", "fair", "warning", "critical", "passed", "failed", "skipped", "muted", "info")
ALIGNS = ("left", "right")
NOTES_SHOWN = 4  # more notes than this: the first three, then the rest folded
# How a note's tone shows in Markdown, where there is no colour.
_MARK = {"good": "✓", "passed": "✓", "fair": "⚠", "warning": "⚠",
         "critical": "✗", "failed": "✗", "info": "ℹ"}

_CSS = """
.mq-report{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 font-size:13px;line-height:1.35;margin:4px 0;max-width:100%}
.mq-report .mq-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px;margin-bottom:6px}
.mq-report .mq-title{font-weight:600;font-size:14px;margin-right:4px}
.mq-report .mq-chip{border:1px solid rgba(127,127,127,.35);border-radius:10px;padding:1px 8px;
 white-space:nowrap}
.mq-report ul.mq-notes{margin:2px 0 8px 0;padding-left:0;list-style:none}
.mq-report ul.mq-notes li{margin:2px 0;padding:2px 8px;border-left:3px solid rgba(127,127,127,.5);
 border-radius:2px}
.mq-report .mq-scroll{max-height:520px;overflow:auto;border:1px solid rgba(127,127,127,.3);
 border-radius:4px}
.mq-report details.mq-more{margin:-6px 0 8px 0}
.mq-report details.mq-more summary{cursor:pointer;padding:2px 8px;color:rgba(127,127,127,1)}
.mq-report table.mq-table{border-collapse:collapse;width:auto;min-width:50%;margin:0;font-size:inherit}
.mq-report table.mq-table th{position:sticky;top:0;z-index:1;background:var(--jp-layout-color1,
 var(--vscode-editor-background,Canvas));text-align:left;font-weight:600;padding:4px 10px;
 border-bottom:2px solid rgba(127,127,127,.5);white-space:nowrap}
.mq-report table.mq-table td{padding:3px 10px;border-bottom:1px solid rgba(127,127,127,.2);
 vertical-align:top;text-align:left;white-space:nowrap}
.mq-report .mq-wrap{display:inline-block;white-space:normal;min-width:14em;max-width:36em}
.mq-report table.mq-table tbody tr:nth-child(even) td{background-color:rgba(127,127,127,.06)}
.mq-report table.mq-table tbody tr:hover td{background-color:rgba(127,127,127,.14)}
.mq-report .mq-right{text-align:right !important;font-variant-numeric:tabular-nums;white-space:nowrap}
.mq-report .mq-empty{color:rgba(127,127,127,1);font-style:italic;padding:4px 10px}
.mq-report .mq-good,.mq-report .mq-passed{background-color:rgba(46,160,67,.22) !important}
.mq-report .mq-fair{background-color:rgba(190,190,40,.25) !important}
.mq-report .mq-warning{background-color:rgba(240,140,0,.28) !important}
.mq-report .mq-critical,.mq-report .mq-failed{background-color:rgba(220,40,40,.30) !important}
.mq-report .mq-skipped,.mq-report .mq-muted{color:rgba(127,127,127,1)}
.mq-report .mq-info{background-color:rgba(60,120,220,.14) !important}
.mq-report li.mq-good,.mq-report li.mq-passed{border-left-color:rgb(46,160,67)}
.mq-report li.mq-warning,.mq-report li.mq-fair{border-left-color:rgb(240,140,0)}
.mq-report li.mq-critical,.mq-report li.mq-failed{border-left-color:rgb(220,40,40)}
.mq-report li.mq-info{border-left-color:rgb(60,120,220)}
""".strip()


@dataclass(frozen=True)
class Cell:
    """One piece of text with an optional ``tone`` (a colour, see ``TONES``) and ``hint``
    (shown on hover in HTML). ``sort`` is a machine-readable value for the cell (a number
    of bytes, a dB value) written as ``data-sort``, so a page script or a reader of the HTML
    can order rows without parsing "1.5 KiB".

    >>> Cell("41.2 dB", tone="good", sort=41.2).tone
    'good'
    """

    text: str
    tone: str | None = None
    hint: str | None = None
    sort: float | int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            object.__setattr__(self, "text", str(self.text))
        if self.tone is not None and self.tone not in TONES:
            raise ValueError(f"tone must be one of {', '.join(TONES)} or None; got {self.tone!r}")


@dataclass(frozen=True)
class Column:
    """A column heading and how its cells align ("left" for text, "right" for numbers)."""

    label: str
    align: str = "left"

    def __post_init__(self) -> None:
        if self.align not in ALIGNS:
            raise ValueError(f"align must be 'left' or 'right'; got {self.align!r}")


@dataclass
class Table:
    """A report drawn as: ``title`` and summary ``chips``, ``notes`` (tone, text) as a list,
    then ``columns`` x ``rows`` of cells (``empty`` is shown when there are no rows).

    >>> Table("Report", [], [("warning", "1 layer below 20 dB")], [Column("Layer")], []).to_markdown()
    '**Report**\\n\\n- ⚠ 1 layer below 20 dB\\n\\n_no rows_'
    """

    title: str
    chips: list[Cell] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    empty: str = "no rows"

    def to_html(self) -> str:
        """The table as one self-contained ``<div>`` (its own ``<style>``, no script)."""
        out = [f'<div class="mq-report"><style>{_CSS}</style>', '<div class="mq-head">',
               f'<span class="mq-title">{_esc(self.title)}</span>']
        out += [f'<span class="mq-chip{_tone_class(c.tone)}"{_hint(c.hint)}>{_esc(c.text)}</span>' for c in self.chips]
        out.append("</div>")
        if self.notes:
            # A long list of notes folds (a native <details>, no script) so the table stays in view.
            shown, folded = (self.notes, []) if len(self.notes) <= NOTES_SHOWN else (
                self.notes[:NOTES_SHOWN - 1], self.notes[NOTES_SHOWN - 1:])
            out.append('<ul class="mq-notes">')
            out += [f'<li class="mq-{tone}">{_esc(text)}</li>' for tone, text in shown]
            out.append("</ul>")
            if folded:
                out.append(f'<details class="mq-more"><summary>{len(folded)} more notes</summary><ul class="mq-notes">')
                out += [f'<li class="mq-{tone}">{_esc(text)}</li>' for tone, text in folded]
                out.append("</ul></details>")
        if self.rows:
            right = [c.align == "right" for c in self.columns]
            out.append('<div class="mq-scroll"><table class="mq-table"><thead><tr>')
            out += [f'<th{_align(r)}>{_esc(c.label)}</th>' for c, r in zip(self.columns, right)]
            out.append("</tr></thead><tbody>")
            # The last column (reasons, messages) wraps; the others keep one line each.
            last = len(self.columns) - 1
            out += ["<tr>" + "".join(_td(cell, r, i == last) for i, (cell, r) in enumerate(zip(row, right))) + "</tr>"
                    for row in self.rows]
            out.append("</tbody></table></div>")
        elif self.columns:
            out.append(f'<div class="mq-empty">{_esc(self.empty)}</div>')
        out.append("</div>")
        return "".join(out)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (every text escaped, no raw HTML)."""
        head = " · ".join([f"**{_md(self.title)}**"] + [_md(c.text) for c in self.chips])
        parts = [head]
        if self.notes:
            parts.append("\n".join(f"- {_MARK.get(tone, '•')} {_md(text)}" for tone, text in self.notes))
        if self.rows:
            lines = ["| " + " | ".join(_md(c.label) for c in self.columns) + " |",
                     "|" + "|".join("---:" if c.align == "right" else "---" for c in self.columns) + "|"]
            lines += ["| " + " | ".join(_md(cell.text) for cell in row) + " |" for row in self.rows]
            parts.append("\n".join(lines))
        elif self.columns:
            parts.append(f"_{_md(self.empty)}_")
        return "\n\n".join(parts)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _tone_class(tone: str | None) -> str:
    return f" mq-{tone}" if tone else ""


def _hint(hint: str | None) -> str:
    return f' title="{_esc(hint)}"' if hint else ""


def _align(right: bool) -> str:
    return ' class="mq-right"' if right else ""


def _td(cell: Cell, right: bool, wrap: bool = False) -> str:
    classes = ("mq-right" if right else "") + _tone_class(cell.tone)
    attrs = f' class="{classes.strip()}"' if classes else ""
    if cell.sort is not None:
        attrs += f' data-sort="{_esc(str(cell.sort))}"'
    text = _esc(cell.text)
    if wrap and text and not right:  # a block: notebook stylesheets may squeeze a cell, not a block inside it
        text = f'<span class="mq-wrap">{text}</span>'
    return f"<td{attrs}{_hint(cell.hint)}>{text}</td>"


# Markdown: HTML-escape first (a notebook renders raw HTML inside Markdown), then put a
# backslash before every character with a meaning inside a line (emphasis, code, links, table
# pipes, strike-through, and "$" which Jupyter reads as LaTeX), and keep each cell on one line.
# Line-start markers (#, -, 1.) need nothing: every line we write starts with our own text.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")


def _md(text: str) -> str:
    flat = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))
