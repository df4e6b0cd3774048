"""Every evaluation plot writes a valid, non-empty PNG; matplotlib stays out of import time."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from nqexp.evaluation import evaluate as E
from nqexp.evaluation import plots as P
from tests.conftest import two_baselines

TAUS = np.array(E.DEFAULT_TAUS)
HM = (15, 30, 60, 120, 240)


def _png_size(path):
    """(width, height) from the IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG (starts {data[:8]!r})"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    ts = pd.date_range("2024-01-07 23:00", periods=3000, freq="5min").values  # naive UTC
    hour = np.asarray(pd.DatetimeIndex(ts).hour)
    sigma = (1 + 0.5 * np.cos(2 * np.pi * hour / 24))[:, None] * np.sqrt([3, 6, 12, 24, 48]) * 1e-3  # (N, H)
    y = sigma * rng.normal(size=sigma.shape)
    y[:40, 2] = np.nan  # dropped targets must not break a plot
    q = sigma[:, :, None] * norm.ppf(TAUS)  # (N, H, Q)
    bq = two_baselines(y, sigma, sigma, TAUS)
    table = E.evaluate_split_table("test", y, q, TAUS, HM, ts, bq, n_boot=20)
    return ts, y, q, table


def test_plot_all_writes_five_valid_pngs(tmp_path, split):
    ts, y, q, table = split
    paths = P.plot_all(tmp_path / "plots", "test", ts, y, q, TAUS, HM, table)
    assert set(paths) == {"reliability", "pit", "coverage_tod", "fan", "crps"}
    for name, path in paths.items():
        assert path.exists() and path.stat().st_size > 5000, f"{name}: {path} missing or tiny"
        w, h = _png_size(path)
        assert w > 300 and h > 300, f"{name}: {w}x{h}"


def test_each_plot_function_returns_the_path_it_wrote(tmp_path, split):
    ts, y, q, table = split
    assert P.reliability_diagram(tmp_path / "r.png", y, q, TAUS, HM) == tmp_path / "r.png"
    assert P.pit_histogram(tmp_path / "p.png", y, q, TAUS, HM) == tmp_path / "p.png"
    assert P.coverage_by_time_of_day(tmp_path / "c.png", ts, y, q, TAUS, HM) == tmp_path / "c.png"
    assert P.fan_chart(tmp_path / "f.png", ts, y, q, TAUS, HM, horizon=4, days=2) == tmp_path / "f.png"
    assert P.crps_by_horizon(tmp_path / "k.png", table, "test") == tmp_path / "k.png"
    for name in "rpcfk":
        _png_size(tmp_path / f"{name}.png")


def test_fan_chart_outside_the_data_and_unknown_split_are_value_errors(tmp_path, split):
    ts, y, q, table = split
    with pytest.raises(ValueError, match="no forecast origin"):
        P.fan_chart(tmp_path / "f.png", ts, y, q, TAUS, HM, start="2030-01-01")
    with pytest.raises(ValueError, match="no crps rows for split 'val'"):
        P.crps_by_horizon(tmp_path / "k.png", table, "val")


def test_importing_plots_does_not_import_matplotlib_or_touch_pyplot(tmp_path):
    code = (
        "import sys, numpy as np, nqexp.evaluation.plots as P\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module level'\n"
        "taus = np.array([0.1, 0.5, 0.9]); y = np.random.default_rng(0).normal(size=(200, 1))\n"
        "q = np.broadcast_to(np.array([-1.28, 0.0, 1.28]), (200, 1, 3))\n"
        f"P.reliability_diagram({str(tmp_path / 'r.png')!r}, y, q, taus, [15])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot global state used'\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_learning_curves_draw_a_point_head_on_its_own_axes_not_on_the_quantile_variants(tmp_path):
    """A point head's MSE loss and degenerate CRPS (~0.8) would flatten the quantile variants (~0.2) on one axis."""
    epochs = np.arange(1, 4)
    rows = [(variant, key, int(e), level + 0.01 * e)
            for variant, level in (("full", 0.21), ("no_gate", 0.22), ("point_mse", 0.83))
            for key in P.LEARNING_KEYS for e in epochs]
    curves = pd.DataFrame(rows, columns=["variant", "key", "epoch", "value"])
    heads = {"full": "quantile", "no_gate": "quantile", "point_mse": "point"}
    fig, axes = P.learning_curve_axes(curves, heads)
    assert set(axes) == {"quantile", "point"} and len(fig.axes) == 4
    for quantile_ax, point_ax in zip(axes["quantile"], axes["point"]):
        assert [line.get_label() for line in quantile_ax.get_lines()] == ["full", "no_gate"]
        assert [line.get_label() for line in point_ax.get_lines()] == ["point_mse"]
        assert quantile_ax.get_ylim()[1] < 0.5 < point_ax.get_ylim()[0]
    colors = [line.get_color() for ax in (axes["quantile"][0], axes["point"][0]) for line in ax.get_lines()]
    assert len(set(colors)) == 3
    # Without a point head there is one row, as before.
    fig, axes = P.learning_curve_axes(curves[curves["variant"] != "point_mse"], heads)
    assert set(axes) == {"quantile"} and len(fig.axes) == 2
    assert _png_size(P.learning_curves(tmp_path / "lc.png", curves, heads))[1] > 0
