"""Every DVC plot of the workspace on one HTML page that needs no network (`make plots`).

    python -m pipeline.plots [--out dvc_plots/offline.html]

`dvc plots show` writes a page whose Vega scripts load from a CDN, so it is blank offline (laptops without a
connection, air-gapped clusters). Here DVC still does what it is good at: `dvc plots show --json` fills each plot's
Vega-Lite template with its data; vl-convert (a Vega renderer compiled into the Python wheel, no browser) draws each
spec as SVG, and the page holds the SVGs inline. Image plots are embedded as data URLs. Nothing on the page is
fetched.
"""
import base64
import html
import json
import mimetypes
import subprocess
from pathlib import Path

import vl_convert

from core.cli import ArgumentParser, UserError, user_errors

DEFAULT_OUT = Path("dvc_plots/offline.html")


def dvc_plots() -> dict:
    """`dvc plots show --json` of the current folder: {plot id: [entries]} (vega entries carry a filled spec)."""
    shown = json.loads(_dvc("plots", "show", "--json"))
    for error in shown.get("errors", []):
        raise UserError(f"plot {error.get('name', '?')}: {error.get('msg') or error.get('type', 'error')} "
                        f"({error.get('source', error.get('rev', ''))})")
    return shown.get("data", {})


def _dvc(*args: str) -> str:
    """stdout of a dvc command in the current folder, which must be in a DVC workspace."""
    for command in (["root"], list(args)):
        done = subprocess.run(["dvc", *command], capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"dvc {' '.join(command)} failed: {' '.join(done.stderr.split())[-500:]}")
    return done.stdout


def figure(name: str, entry: dict) -> str:
    """One plot entry as an HTML figure: an inline SVG, or an image as a data URL."""
    if entry["type"] == "vega":
        body = vl_convert.vegalite_to_svg(entry["content"])
    else:
        path = Path(entry["url"])
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode()
        body = f'<img alt="{html.escape(name)}" src="data:{kind};base64,{data}">'
    return f"<figure><figcaption>{html.escape(name)}</figcaption>{body}</figure>"


def page(plots: dict) -> str:
    figures = [figure(name, entry) for name, entries in plots.items() for entry in entries]
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>DVC plots</title>',
        "<style>body{font-family:sans-serif;margin:2em} figure{margin:0 0 2em} figcaption{font-weight:bold}</style>",
        "</head><body>", "<h1>DVC plots</h1>",
        *(figures or ["<p>No plot has data yet: run <code>dvc repro</code> first.</p>"]),
        "</body></html>", ""])


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.plots", description=__doc__.splitlines()[0])
        parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the page to write ({DEFAULT_OUT})")
        out = parser.parse_args(argv).out
        plots = dvc_plots()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(plots))
    print(f"{sum(map(len, plots.values()))} plots -> {out}")


if __name__ == "__main__":
    main()
