"""Rendering a list of blocks: to Markdown, and to self-contained HTML with the figures embedded."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from ._format import Block
from .glossary import link_first_uses


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: Sequence[Block]) -> str:
    out, fig_no = [], 0
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "h3":
            out.append(f"### {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "fig":
            fig_no += 1
            out.append(f"![Figure {fig_no}]({b[1]})\n\n*Figure {fig_no}.* {b[2]}\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "ul":
            out += [f"- {x}" for x in b[1]]
            out.append("")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```\n")
        elif kind == "glossary":
            out += [f"- **{term}**: {sentence}" for _, term, sentence in b[1]]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;line-height:1.5;color:#222}h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:1px solid #ddd}h3{font-size:1.05rem;margin-top:1.6rem}figure{margin:1.2rem 0}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92rem;color:#333;margin-top:.4rem}.scroll{overflow-x:auto;margin:.8rem 0}
table{border-collapse:collapse;font-size:.85rem}p,li,figcaption{overflow-wrap:anywhere}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}a.term{color:inherit;text-decoration:underline dotted}
dl.glossary dt{font-weight:600;margin-top:.6rem}dl.glossary dd{margin-left:1.2rem}"""


def _to_html(blocks: Sequence[Block], out: Path, title: str) -> str:
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        # a phone lays the page out at its own width, not a desktop's 980 px shrunk to fit
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    fig_no = 0
    linked: set[str] = set()  # glossary terms whose first use is linked already
    glossary = any(b[0] == "glossary" for b in blocks)

    def text(x) -> str:  # escaped, with the first use of each glossary term linked to its entry
        return link_first_uses(e(str(x)), linked) if glossary else e(str(x))

    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{text(b[1])}</p>")
        elif kind == "fig":
            fig_no += 1
            data = base64.b64encode((out / b[1]).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='Figure {fig_no}' src='data:image/png;base64,{data}'>"
                f"<figcaption><b>Figure {fig_no}.</b> {text(b[2])}</figcaption></figure>"
            )
        elif kind == "table":
            head, rows = b[1], b[2]
            # (headers linked too: the glossary lists a term a header alone uses, so the header links it)
            h = "".join(f"<th>{text(x)}</th>" for x in head) if any(head) else ""
            body = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>" for row in rows)
            # in a box of its own that scrolls sideways: a wide table on a phone does not widen the page
            parts.append(f"<div class='scroll'><table>{'<tr>' + h + '</tr>' if h else ''}{body}</table></div>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{text(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "glossary":
            parts.append(
                "<dl class='glossary'>"
                + "".join(f"<dt id='g-{slug}'>{e(term)}</dt><dd>{e(sentence)}</dd>" for slug, term, sentence in b[1])
                + "</dl>"
            )
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
