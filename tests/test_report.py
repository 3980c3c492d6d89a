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
    report = json.loads((copy_run / "eval" / "test-best.json").read_text())
    confusion = page.split("Confusion matrix", 1)[1]
    for label, counts in zip(report["classes"], report["confusion"]):
        assert f'<td class="text">{label}</td>' + "".join(f"<td>{n}</td>" for n in counts) in confusion
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
