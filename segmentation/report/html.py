"""report.html: the Markdown the report writes, as one self-contained page (figures embedded,
tables sortable by a click on their header), for people who open results in a browser.

Only the Markdown the report itself writes is understood: headings (#, ##, ###), bullet lists,
pipe tables, images ![alt](file.png) next to the page, links [text](target), **bold**, *italic*,
`code` and backslash escapes (`md_escape`, which the report applies to user strings: arm names,
dataset names); everything else is a paragraph.  Text is HTML-escaped first, so nothing a user
named ever becomes markup.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_ESCAPABLE = "\\`*_[]<>|"
_ESCAPED = re.compile(r"\\([\\`*_\[\]<>|])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f2f2f2;cursor:pointer}tr:nth-child(even) td{background:#fafafa}img{max-width:100%}
code{background:#f4f4f4;padding:0 3px}"""
_SORT = """document.querySelectorAll('th').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th),
up=th.dataset.up!=='1';th.dataset.up=up?'1':'0';var rows=Array.prototype.slice.call(body.rows);
function key(r){var t=r.cells[i].textContent.replace('\\u2212','-').replace('< ','');var v=parseFloat(t);return isNaN(v)?t:v;}
rows.sort(function(a,b){var x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(up?1:-1);});
rows.forEach(function(r){body.appendChild(r);});});});"""


def md_escape(text: str) -> str:
    """``text`` with the Markdown characters that would format it (or end a table cell, or open
    raw HTML) backslash-escaped: a user string shown as written."""
    return "".join("\\" + ch if ch in _ESCAPABLE else ch for ch in str(text))


def _inline(text: str) -> str:
    """Escaped ``text`` with links, bold, italic and code turned into tags; backslash-escaped
    characters stay literal."""
    literals: list[str] = []

    def keep(match: re.Match) -> str:
        literals.append(html.escape(match.group(1), quote=False))
        return f"\x00{len(literals) - 1}\x00"
    text = html.escape(_ESCAPED.sub(keep, text), quote=False)
    text = _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: literals[int(m.group(1))], text)


def _cells(line: str) -> list[str]:
    """The cells of a pipe-table row; an escaped \\| stays inside its cell."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _image(alt: str, name: str, folder: Path) -> str:
    path = folder / name
    if not path.is_file():
        return f"<p>[missing figure {html.escape(name)}]</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def markdown_to_html(markdown: str, folder: Path, title: str = "stylepair report") -> str:
    """One HTML page from the report's ``markdown``; images are read from ``folder`` and embedded."""
    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            header, body = _cells(block[0]), [_cells(r) for r in block[2:]]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</tbody></table>")
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        image = _IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            out.append(_image(image.group(1), image.group(2), folder))
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(out) + f"\n<script>{_SORT}</script></body></html>\n")
