"""A stacked bar chart of files per hour by outcome, drawn as SVG on the server (the
pages run no script of their own for it)."""

from __future__ import annotations

from markupsafe import Markup, escape

from pipelines.status import HourCount

COLOURS = {"done": "#1b7a3a", "rejected": "#c0392b", "quarantined": "#8e44ad"}
WIDTH, HEIGHT, PAD = 720, 200, 28


def hourly_chart(hours: list[HourCount]) -> Markup:
    peak = max((sum(h.counts.values()) for h in hours), default=0) or 1
    bar = (WIDTH - 2 * PAD) / max(len(hours), 1)
    parts = [f'<svg id="hourly-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} '
             f'{HEIGHT + 40}" role="img" aria-label="Files per hour by outcome">',
             f'<text x="{PAD}" y="14" font-size="12">peak {peak} files/hour</text>']
    for n, hour in enumerate(hours):
        x = PAD + n * bar
        y = float(HEIGHT)
        for status, colour in COLOURS.items():
            count = hour.counts.get(status, 0)
            if not count:
                continue
            height = (HEIGHT - PAD) * count / peak
            y -= height
            parts.append(f'<rect class="bar {status}" x="{x + 1:.1f}" y="{y:.1f}" '
                         f'width="{bar - 2:.1f}" height="{height:.1f}" fill="{colour}">'
                         f'<title>{escape(hour.start.strftime("%H:00"))}: {count} {status}'
                         '</title></rect>')
        if n % 3 == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT + 16}" font-size="11">'
                         f'{hour.start.strftime("%H:00")}</text>')
    legend_x = PAD
    for status, colour in COLOURS.items():
        parts.append(f'<rect x="{legend_x}" y="{HEIGHT + 24}" width="10" height="10" '
                     f'fill="{colour}"></rect><text x="{legend_x + 14}" y="{HEIGHT + 33}" '
                     f'font-size="11">{status}</text>')
        legend_x += 110
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value above is a number or escaped
