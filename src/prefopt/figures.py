"""What every report shares: one self-contained HTML page, plots embedded as PNG (matplotlib
without a display), tables; and the figures a report draws, collected for experiment trackers."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import html
import io
from pathlib import Path

from prefopt.files import write_atomic

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.note{color:#666}"""


def write_page(target: Path, title: str, body: str) -> Path:
    """A self-contained HTML page (figures embedded) with the reports' style."""
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return write_atomic(target, page)


_DRAWN: contextvars.ContextVar[list | None] = contextvars.ContextVar("drawn", default=None)


@contextlib.contextmanager
def drawn_figures():
    """Every figure the reports draw meanwhile, as (name of its drawing function, matplotlib
    figure, PNG bytes): what a run sends its experiment trackers."""
    drawn: list = []
    token = _DRAWN.set(drawn)
    try:
        yield drawn
    finally:
        _DRAWN.reset(token)
        if drawn:  # pyplot keeps every figure until it is closed
            from matplotlib import pyplot

            for _, figure, _ in drawn:
                pyplot.close(figure)


def figure_html(draw, *, width: float = 10, height: float = 3.6, png: Path | None = None) -> str:
    """An <img> of what `draw(figure)` plots, as an embedded PNG (also written to `png`, if given)."""
    import matplotlib  # here: pyplot may be imported only after the display-less backend is chosen

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(width, height), dpi=110)
    draw(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    if (drawn := _DRAWN.get()) is not None:  # kept open for the trackers until they are done
        drawn.append((getattr(draw, "__name__", "figure").strip("<>"), figure, buffer.getvalue()))
    else:
        pyplot.close(figure)
    if png is not None:
        png.write_bytes(buffer.getvalue())
    return (
        f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    )


def table_html(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
