"""`make plots` writes a page that shows every DVC plot with the network off; DVC's own page is the control (its
scripts come from a CDN, so the same browser without network draws nothing)."""
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.plots import main
from tests.browser import drawn_share, need_chromium, offline
from tests.conftest import REPO, assert_user_error

pytestmark = pytest.mark.expensive  # a DVC workspace and a headless browser

DVC = Path(sys.executable).parent / "dvc"
PLOTS_YAML = """\
plots:
  - loss.csv:
      x: step
      y: loss
  - R@1 base vs trained:
      template: bar_horizontal
      x: score
      y:
        bars.csv: task
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A git + DVC workspace with a line plot and a bar plot, both pages written."""
    need_chromium()
    root = tmp_path_factory.mktemp("plots")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=root, check=True)
    (root / "loss.csv").write_text("step,loss\n0,3.0\n1,2.5\n2,2.1\n3,1.9\n")
    (root / "bars.csv").write_text("task,score\nlong,0.44\nshort,0.20\n")
    (root / "dvc.yaml").write_text(PLOTS_YAML)
    env = {"PATH": f"{DVC.parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(root)}
    done = subprocess.run([sys.executable, "-m", "pipeline.plots"], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "2 plots -> dvc_plots/offline.html" in done.stdout, done.stderr
    subprocess.run([DVC, "plots", "show", "-q"], cwd=root, env=env, check=True)
    return root


def drawn_charts(page: Path) -> int:
    return offline("--dump-dom", page.as_uri()).stdout.count('class="mark-group role-frame root"')


def test_the_offline_page_shows_every_plot_with_the_network_off(workspace, tmp_path):
    page = workspace / "dvc_plots/offline.html"
    assert "<script" not in page.read_text()
    assert drawn_charts(page) == 2
    drawn = drawn_share(page, tmp_path / "page.png")
    assert drawn > 0.02, f"only {drawn:.1%} of the page is drawn on"


def test_control_dvc_s_own_page_draws_nothing_with_the_network_off(workspace):
    assert drawn_charts(workspace / "dvc_plots/index.html") == 0


def test_outside_a_dvc_workspace_it_is_a_one_line_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{DVC.parent}:/usr/bin:/bin")
    assert_user_error(capsys, lambda: main([]), "dvc root failed", "not inside of a DVC repository")
