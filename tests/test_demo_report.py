"""The demo's statistics and table, the training-subset option, and the HTML report (also in a real browser).

Nothing here trains: run folders are written by hand (a resolved ``config.yaml`` and a ``metrics.csv``).
The browser test needs Chromium (Debian package ``chromium``) and playwright (the ``dev`` extra); it is
skipped without them, except under ``CI=true`` where a missing browser fails it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from rld.cli import main
from rld.config import resolve, to_yaml
from rld.data.build import build_data, first_per_class
from rld.data.types import ArraySplit
from rld.errors import UserError
from rld.experiments.demo import Comparison, exceeds_spread, results_markdown, summarize
from rld.experiments.report import build_report, hardware_text

# ----------------------------------------------------------------------------- training subset


def test_first_per_class_keeps_the_first_images_of_each_class_in_order():
    y = np.array([2, 0, 1, 0, 2, 0, 1, 2, 2])
    split = ArraySplit(x=np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1), y=y)
    kept = first_per_class(split, 2)
    assert kept.y.tolist() == [2, 0, 1, 0, 2, 1]
    assert kept.x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 6]
    with pytest.raises(
        UserError, match=r"data.train_per_class=3 exceeds the smallest class of the training split \(1 image\)"
    ):
        first_per_class(ArraySplit(x=np.zeros((3, 1, 1, 1), np.uint8), y=np.array([0, 1, 1])), 3)


def test_train_per_class_subsets_only_the_training_split_and_image_size_scales_the_digits():
    data = build_data("digits", None, batch_size=512, device="cpu", seed=0, train_per_class=10, image_size=16)
    batches = list(data.train)
    targets = np.concatenate([b.targets.numpy() for b in batches])
    assert np.bincount(targets).tolist() == [10] * 10
    assert tuple(batches[0].images.shape) == (100, 3, 16, 16)
    assert sum(len(b.targets) for b in data.test) == 450
    with pytest.raises(UserError, match=r"^data.image_size does not apply to cifar100 \(its images are 32x32\)$"):
        build_data("cifar100", "x.npz", batch_size=8, device="cpu", seed=0, image_size=16)
    with pytest.raises(UserError, match=r"image size must be an integer >= 8 \(they are 8x8 originals\), got 4"):
        build_data("digits", None, batch_size=8, device="cpu", seed=0, image_size=4)
    with pytest.raises(UserError, match=r"data.train_per_class must be > 0, got 0"):
        resolve("demo/few/vanilla", ["data.train_per_class=0"])
    assert (
        resolve("demo/few/kd").data.train_per_class == 10 and resolve("demo/few/teacher").data.train_per_class is None
    )


# ----------------------------------------------------------------------------- the demo's numbers


ROWS = [
    *({"method": "vanilla", "last_top1": v, "train_time": 1.0} for v in (60.0, 62.0, 64.0)),
    *({"method": "kd", "last_top1": v, "train_time": 2.0} for v in (70.0, 71.0, 72.0)),
    *({"method": "rld", "last_top1": v, "train_time": 2.5} for v in (61.0, 64.0, 67.0)),
]


def test_summary_is_mean_and_sample_std_and_compares_with_the_spread():
    methods, comparisons = summarize(ROWS, ("vanilla", "kd", "rld"))
    assert [(m.method, m.mean, m.std, m.train_time) for m in methods] == [
        ("vanilla", 62.0, 2.0, 3.0),
        ("kd", 71.0, 1.0, 6.0),
        ("rld", 64.0, 3.0, 7.5),
    ]
    assert [(c.method, c.difference, c.spread, c.clear) for c in comparisons] == [
        ("kd", 9.0, 3.0, True),
        ("rld", 2.0, 5.0, False),
    ]
    assert comparisons[0].sentence() == "KD is better than vanilla (+9.00 points; seed-to-seed spread 3.00)"
    assert (
        comparisons[1].sentence() == "RLD is not distinguishable from vanilla (+2.00 points; seed-to-seed spread 5.00)"
    )
    worse = Comparison("dkd", "vanilla", -4.0, 1.5)
    assert worse.sentence() == "DKD is worse than vanilla (−4.00 points; seed-to-seed spread 1.50)"
    assert exceeds_spread(-4.0, 1.5) and not exceeds_spread(1.5, 1.5)


def test_demo_table_states_what_the_numbers_show():
    methods, comparisons = summarize(ROWS, ("vanilla", "kd", "rld"))
    text = results_markdown({"last_top1": 97.5}, methods, comparisons)
    assert "teacher (all 1,347 training images): 97.50." in text
    assert "| vanilla | 62.00 ± 2.00 | 60.00, 62.00, 64.00 |  |" in text
    assert "| kd | 71.00 ± 1.00 | 70.00, 71.00, 72.00 | +9.00 (exceeds the spread 3.00) |" in text
    assert "| rld | 64.00 ± 3.00 | 61.00, 64.00, 67.00 | +2.00 (within the spread 5.00) |" in text


# ----------------------------------------------------------------------------- the report

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000001010100186dd5a30000000049454e44ae426082"
)


def _fake_run(path: Path, preset: str, tops: list[float], env: dict | None = None) -> None:
    path.mkdir(parents=True)
    cfg = resolve(preset, [f"train.epochs={len(tops)}"])
    (path / "config.yaml").write_text(to_yaml(cfg))
    lines = ["epoch,train_loss,train_top1,test_loss,test_top1,test_top5,lr,epoch_time,train_time,steps"]
    lines += [f"{e},{2.0 / e:.3f},{t},{1.0 / e:.3f},{t},99.0,0.05,1.5,1.0,4" for e, t in enumerate(tops, 1)]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    if env is not None:
        (path / "environment.json").write_text(json.dumps(env))


@pytest.fixture
def demo_like(tmp_path) -> Path:
    root = tmp_path / "demo"
    env = {"processor": "x86_64", "cores": 2, "torch": "2.14.1"}
    _fake_run(root / "teacher", "demo/few/teacher", [50.0, 90.0], env)
    for method in ("vanilla", "kd"):
        for seed in (0, 1):
            _fake_run(root / method / f"seed{seed}", f"demo/few/{method}", [30.0 + seed, 60.0 + seed], env)
    methods, comparisons = summarize(ROWS, ("vanilla", "kd", "rld"))
    (root / "table-demo.md").write_text(results_markdown({"last_top1": 90.0}, methods, comparisons))
    (root / "figure.png").write_bytes(PNG_1x1)
    return root


def test_report_shows_tables_runs_hardware_curves_per_group_figures_and_configs(demo_like):
    page = build_report(demo_like, title="rld demo")
    ids = re.findall(r'<h2 id="(\w+)">', page)
    assert ids == ["tables", "runs", "curves", "figures", "configs"]
    assert "<td>kd</td><td class=num>71.00 ± 1.00</td>" in page  # the demo's table, rendered
    assert page.count("<td>x86_64, 2 cores; torch 2.14.1</td>") == 5  # every run's hardware
    assert page.count("<td>3.0 s</td>") == 5 and "<p>Sum of the runs' times: 15.0 s (runs trained in lockstep" in page
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert captions == ["kd", "teacher", "vanilla", "figure.png"]  # one curves figure per group, then the PNGs
    assert page.count("<details><summary><code>") == 5 and "train_per_class: 10" in page
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing from the network


def test_hardware_is_read_from_environment_json(tmp_path):
    assert hardware_text(tmp_path) == "not recorded"
    (tmp_path / "environment.json").write_text(json.dumps({"gpu": "NVIDIA H200", "processor": "x86_64", "cores": 16}))
    assert hardware_text(tmp_path) == "NVIDIA H200; x86_64, 16 cores"
    (tmp_path / "environment.json").write_text("{not json")
    assert hardware_text(tmp_path) == "not recorded"


def test_demo_rejects_bad_seeds_with_one_line(capsys):
    assert main(["demo", "--seeds", "0,x"]) == 2
    assert (
        capsys.readouterr().err.strip() == "rld: error: --seeds takes comma-separated integers, e.g. 0,1,2; got '0,x'"
    )


# ----------------------------------------------------------------------------- in a real browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_report_opens_in_headless_chromium_without_errors_and_every_image_loads(demo_like, tmp_path):
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    binary = _chromium()
    if binary is None:
        if ci:
            pytest.fail("CI is set but no chromium binary is installed (.ci/run installs the Debian package chromium)")
        pytest.skip("no chromium binary (install the Debian package chromium)")
    if ci:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_path = tmp_path / "report.html"
    assert main(["report", str(demo_like), "--out", str(page_path), "--title", "rld demo"]) == 0
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request",
            lambda r: problems.append(f"request {r.url}") if not r.url.startswith(("file:", "data:")) else None,
        )
        page.goto(page_path.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert len(images) == 4 and all(done and w > 0 for done, w in images)
    assert width <= 1366  # no horizontal scrolling on a laptop screen
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RLD_SCREENSHOT"):
        shutil.copy(shot, os.environ["RLD_SCREENSHOT"])


# ----------------------------------------------------------------------------- the demo, end to end (one epoch)


def test_demo_prints_mean_and_std_per_method_and_the_report_path(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seeds", "0,1", "train.epochs=1", "train.lr_milestones=[]"]) == 0
    text = capsys.readouterr().out
    for method in ("vanilla", "kd", "dkd", "rld"):
        values = [
            float((out / method / f"seed{s}" / "metrics.csv").read_text().splitlines()[1].split(",")[4]) for s in (0, 1)
        ]
        mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
        assert re.search(rf"^{method} +{mean:.2f} ± +{std:.2f} %  {values[0]:.2f} {values[1]:.2f}$", text, re.M), method
    assert "resnet8 students that see 10 labelled images per class; 2 seeds per method" in text
    assert re.search(r"^wall time: \d+ s$", text, re.M)
    assert text.endswith(f"report: {(out / 'report.html').resolve()}\n")
    table = (out / "table-demo.md").read_text()
    assert table.count(" ± ") == 1 + 4 and "Last-epoch test top-1 (%), mean ± sample std over 2 seeds" in table
    page = (out / "report.html").read_text()
    assert page.count("<details><summary><code>") == 9  # the teacher and 4 methods x 2 seeds
    assert json.loads((out / "kd" / "seed1" / "environment.json").read_text())["torch"]
