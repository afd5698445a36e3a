"""report.html: self-contained (plotly.js inlined once), readable offline, every user text escaped."""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

from core.report.charts import VERDICT_COLOURS
from core.report.summary import DEMO_NOTICE, Summary
from core.report.terminal import headline_lines, summary_rows


def html_report(summary: Summary, table: pd.DataFrame, figures: dict[str, Any], table_note: str | None = None) -> str:
    """A self-contained HTML report (plotly.js inlined once): readable offline, user text escaped.
    ``table_note`` says what the per-sequence table leaves out, when it does."""
    esc = html.escape
    colour = VERDICT_COLOURS[summary.verdict]
    banner = f'<p class="demo">{esc(DEMO_NOTICE)}</p>' if summary.provenance.demo else ""
    rows = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in summary_rows(summary))
    charts = "".join(
        figure.to_html(full_html=False, include_plotlyjs=(index == 0), default_width="100%")
        for index, figure in enumerate(figures.values())
    )
    headline = "".join(f'<p class="line">{esc(line)}</p>' for line in headline_lines(summary)[2:])
    notes = [problem.message for problem in summary.notes]
    problems = "".join(f"<li>{esc(message)}</li>" for message in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ESM-2 attention divergence: {esc(summary.verdict)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #111; }}
.verdict {{ border-left: 12px solid {colour}; padding: 0.6em 1em; background: #f6f6f6; }}
.verdict h1 {{ color: {colour}; margin: 0; font-size: 2.6em; }}
.line {{ margin: 0.2em 0; }}
.demo {{ background: #fff3cd; border: 2px solid #b35900; padding: 0.8em; font-weight: bold; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.25em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }}
</style></head><body>
{banner}
<div class="verdict"><h1>{esc(summary.verdict)}</h1><p>{esc(summary.headline.recommendation())}</p>{headline}</div>
<h2>Summary</h2><table>{rows}</table>
{f'<h2>Input notes</h2><ul>{problems}</ul>' if problems else ''}
<h2>Charts</h2>{charts}
<h2>Per sequence</h2>{f'<p>{esc(table_note)}</p>' if table_note else ''}{table.to_html(index=False, escape=True, float_format=lambda v: f'{v:.8g}')}
<p><small>Created {esc(summary.created_at)} · {esc(json.dumps(summary.versions))}</small></p>
</body></html>
"""
