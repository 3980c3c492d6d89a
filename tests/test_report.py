"""rnnctl report: one self-contained HTML page of a run or a sweep, escaped, and rendered by a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import TINY, assert_one_line_error

EVIL = "<script>alert('x')</script>"


def external(page: str) -> list[str]:
    """What the page would fetch or point at on the network."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I) + re.findall(r"@import|url\(", page)


def test_a_run_report_stands_alone_and_holds_the_results(cli, copy_run):
    result = cli("report", copy_run.name)
    assert result.exit_code == 0, result.output
    path = copy_run / "report.html"
    assert result.stdout.strip() == str(path)
    assert f"using run {copy_run.name}" in result.stderr
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not external(page) and "<script" not in page.lower()  # no network, nothing that runs
    assert copy_run.name in page
    rows = [json.loads(line) for line in (copy_run / "metrics.jsonl").read_text().splitlines()]
    assert f"<td>{rows[-1]['val_acc']:.4g}</td>" in page  # the metrics table
    assert page.count("data:image/png;base64,iVBORw0KGgo") == len(list((copy_run / "plots").glob("*.png")))
    test, plots = page.split("<h2>Test report", 1)[1].split("<h2>Plots</h2>", 1)
    assert "Confusion matrix" in test and "<figcaption>confusion</figcaption>" in test  # shown once, as the figure
    assert "confusion" not in plots and "Confusion" not in plots
    captions = re.findall(r"<figcaption>(\w+)</figcaption>", plots)
    assert captions == ["loss", "accuracy", "step_loss", "grad_norm"], captions  # the curves first, loss leading
    assert '<td class="text">model.hidden_size</td><td class="text">128</td><td class="text">16</td>' in page
    assert "torch" in page and "git commit" in page and "rnnctl train" in page  # the environment


def test_markup_in_a_run_is_shown_as_text(cli, copy_run):
    config = yaml.safe_load((copy_run / "config.yaml").read_text())
    config["name"] = EVIL
    config["data"]["path"] = f"/data/{EVIL}.csv"
    (copy_run / "config.yaml").write_text(yaml.safe_dump(config))
    info = json.loads((copy_run / "run.json").read_text())
    info.update(name=EVIL, command=f"rnnctl train x.yaml --set name={EVIL}")
    (copy_run / "run.json").write_text(json.dumps(info))
    result = cli("report", copy_run, "--out", copy_run.parent / "evil.html")
    assert result.exit_code == 0, result.output
    page = (copy_run.parent / "evil.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "alert('x')</script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert f"/data/{EVIL}.csv".replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;") in page


def test_nothing_by_that_name_is_one_line(cli, copy_run):
    result = cli("report", "no-such-thing")
    assert_one_line_error(result, "'no-such-thing'", "run", "sweep", "study")


@pytest.mark.slow
def test_a_sweep_report_ranks_its_groups_and_links_its_members(cli, names_files, isolated, tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {**raw["data"], "path": str(names_files.train), "test_path": str(names_files.test)}
    raw["train"]["epochs"] = 1
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = cli("sweep", config, "--grid", "model.hidden_size=4,8", "--jobs", "1")
    assert result.exit_code == 0, result.output
    (folder,) = (isolated / "sweeps").iterdir()
    result = cli("report", folder.name)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(folder / "report.html")
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert not external(page) and "data:image/png;base64," in page  # summary.png, embedded
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(g["group"] for g in summary["groups"]) == ["model.hidden_size=4", "model.hidden_size=8"]
    for group in summary["groups"]:
        assert f'<td class="text">{group["group"]}</td><td>{group["n"]}</td><td>{group["mean"]:.4g}</td>' in page
    best = page.split("<h2>Best</h2>", 1)[1]
    assert summary["groups"][0]["group"] in best.split("<h2>", 1)[0]
    for member in (folder / "runs").iterdir():
        assert f'{member.resolve().as_uri()}">{member.name}</a>' in page  # a local link per member


def chromium() -> str | None:
    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if (p := shutil.which(n))), None
    )


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium binary (.ci/run installs Debian's chromium)")
def test_the_page_renders_in_a_headless_browser(cli, copy_run, tmp_path):
    assert cli("report", copy_run.name).exit_code == 0
    page = (copy_run / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [chromium(), *flags, f"--screenshot={shot}", "--window-size=1000,1400", page],
        capture_output=True,
        timeout=60,
    )
    assert shot.is_file(), run.stderr.decode(errors="replace")[-2000:]
    try:
        from PIL import Image
    except ImportError:  # no pillow: the DOM chromium built must hold the page's text
        dom = subprocess.run([chromium(), *flags, "--dump-dom", page], capture_output=True, timeout=60, text=True)
        assert copy_run.name in dom.stdout and "Confusion matrix" in dom.stdout
        return
    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 20  # text, tables and plots: not one blank colour


OVERFLOW_PROBE = """<script>
const wide = [...document.querySelectorAll(".scroll")].filter(e => e.scrollWidth > e.clientWidth + 1).length;
const page = document.documentElement;
document.title = [page.scrollWidth, page.clientWidth, wide].join(" ");
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium binary (.ci/run installs Debian's chromium)")
def test_a_run_report_needs_no_horizontal_scrolling_at_1280_pixels(cli, isolated, tmp_path):
    """The packaged names (18 classes: a wide confusion matrix) in a 1280-pixel window: neither the page nor
    any of its tables scrolls sideways. The probe script goes into a copy; the page itself has none."""
    assert cli("train", "smoke/names_tiny", "-q").exit_code == 0
    assert cli("report", "latest").exit_code == 0
    (run,) = [p for p in isolated.iterdir() if p.name.endswith("names_tiny")]
    probe = tmp_path / "probe.html"
    probe.write_text((run / "report.html").read_text(encoding="utf-8").replace("</body>", OVERFLOW_PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run(
        [chromium(), *flags, "--window-size=1280,900", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r"<title>(\d+) (\d+) (\d+)</title>", dom.stdout)
    assert found, dom.stderr[-2000:]
    scroll_width, client_width, wide_tables = map(int, found.groups())
    assert scroll_width <= client_width and wide_tables == 0, found.group(0)


# -- the figures the report shows ------------------------------------------------------------------


def figures_drawn(monkeypatch) -> list:
    """The matplotlib figures plots.py saves from now on (the files are still written)."""
    from rnnctl import plots

    drawn, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append((fig, path)) or save(fig, path))
    return drawn


def test_the_confusion_figure_names_its_run_and_its_counts_are_readable(copy_run, monkeypatch):
    from rnnctl import plots
    from rnnctl.runs import RunFolder

    drawn = figures_drawn(monkeypatch)
    plots.write_all(RunFolder(copy_run))
    (fig,) = [fig for fig, path in drawn if path.stem == "confusion"]
    ax = fig.axes[0]
    assert ax.get_title().startswith(f"{copy_run.name} (names): test confusion")
    counts = [t for t in ax.texts if t.get_text().isdigit()]
    assert counts and min(t.get_fontsize() for t in counts) >= 9  # was 6: unreadable at 18 classes


def test_compare_ticks_whole_epochs(cli, copy_run, isolated, monkeypatch):
    import shutil

    other = shutil.copytree(copy_run, isolated / copy_run.name.replace("names_tiny", "names_tiny-2"))
    drawn = figures_drawn(monkeypatch)
    assert cli("compare", copy_run.name, other.name).exit_code == 0
    ((fig, _),) = drawn
    by_epoch = fig.axes[0]
    ticks = [t for t in by_epoch.get_xticks() if by_epoch.get_xlim()[0] <= t <= by_epoch.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 3 epochs: no tick at 1.5
