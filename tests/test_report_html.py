"""HTML report: valid markup, self-contained (no URLs), one SVG per plot, untrusted names escaped."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from golden.records import XSS, compare_record, regression_pair, sweep_record, synthetic_record

import gradflow as gf
from gradflow.report import plots
from gradflow.report.html import render_html
from gradflow.verdicts import Band

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
URL = re.compile(r"^\s*(https?:)?//|url\((?!#)|^\s*(file|data|javascript):", re.I)  # url(#id) is in-page


class StrictParser(HTMLParser):
    """Checks tag balance and collects every attribute; raises on the first mismatch."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]

    def handle_endtag(self, tag):
        assert tag not in VOID, f"end tag for void element {tag}"
        assert self.stack, f"</{tag}> without an open tag"
        top = self.stack.pop()
        assert top == tag, f"</{tag}> closes <{top}>"

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> StrictParser:
    assert html.startswith("<!DOCTYPE html>")
    parser = StrictParser()
    parser.feed(html)
    parser.close()
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


def xss_record() -> gf.RunRecord:
    record = compare_record()
    data = copy.deepcopy(record.data)
    for row in data["retention"]:
        if row["module"] == "blocks.0.adapter":
            row["module"] = XSS
    data["subject"]["config"]["note"] = "</dd><script>alert(2)</script>"
    return gf.RunRecord(data)


@pytest.fixture(scope="module")
def pages():
    old, new = regression_pair()
    return {
        "compare": render_html(xss_record(), Band(0.8)),
        "sweep": render_html(sweep_record(), Band(0.8, 1.3)),
        "regression": render_html(new, Band(0.8), baseline=old),
    }


@pytest.mark.parametrize("name", ["compare", "sweep", "regression"])
def test_valid_self_contained_html(pages, name):
    html = pages[name]
    parser = parse(html)
    for tag, key, value in parser.attributes:
        if key.startswith("xmlns"):
            continue  # namespace names, never fetched
        assert not URL.search(value), f"external reference in <{tag} {key}={value!r}>"
        if key in ("href", "xlink:href", "src"):
            assert value.startswith("#"), f"<{tag} {key}={value!r}> points outside the page"
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert "https://" not in html
    assert not {"script", "link", "img", "iframe", "object"} & set(parser.tags)
    assert "@import" not in html and not re.search(r"url\((?!#)", html)


@pytest.mark.parametrize("name, n_svg", [("compare", 5), ("sweep", 6), ("regression", 5)])
def test_one_svg_per_plot(pages, name, n_svg):
    html = pages[name]
    # compare: norms x2 targets, profile x2 targets, per-batch scatter; sweep adds the sweep curve
    assert html.count("<svg") == n_svg == html.count("</svg>") == html.count("<figure>")


def test_untrusted_names_are_escaped(pages):
    html = pages["compare"]
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/dd&gt;&lt;script&gt;alert(2)" in html
    # the name also reached the SVG tick labels, escaped by matplotlib
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in svg for svg in svgs)
    assert all("<!--" not in svg and "<!DOCTYPE" not in svg for svg in svgs)


def test_matplotlib_svg_escapes_text_and_has_no_prolog():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title(plots.label("<b>&x $1$ --> </svg>"))
    svg = plots.figure_svg(fig)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<b>" not in svg and "</svg>" not in svg[:-6] and "&lt;b&gt;&amp;x $1$" in svg


def test_module_names_with_dollars_are_not_mathtext():
    record = compare_record()
    record.rows[1]["module"] = "odd$name$_{x}"
    html = render_html(record)
    assert "odd$name$_{x}" in html


def test_many_modules_are_capped_in_bar_chart_with_a_note():
    record = synthetic_record(120)
    html = render_html(record, modules=False)
    parse(html)
    assert f"showing the {plots.MAX_BAR_MODULES} of 120 modules with the lowest retention" in html
    assert "120 module rows hidden" in html


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(tmp_path, pages):
    path = tmp_path / "report.html"
    path.write_text(pages["regression"], encoding="utf-8")
    png = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
        dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=180)
        shot = subprocess.run([*flags, f"--screenshot={png}", "--window-size=1280,2000", path.as_uri()],
                              capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Regression against the baseline" in dom.stdout and dom.stdout.count("<svg") == 5
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
