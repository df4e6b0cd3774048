"""report.py: summaries and paired comparisons from the run store alone, and the W&B Report object offline."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from nqexp import metrics as M
from nqexp.evaluation import backtest, evaluate, report
from nqexp.experiment.track import RunStore

TAUS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
HORIZONS = (15, 60)


def gaussian_quantiles(sigma: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return sigma[..., None] * norm.ppf(np.array(TAUS))[None, None, :]  # (N, H, Q)


@pytest.fixture
def store(tmp_path):
    """Two variants x two seeds on the same test samples: `good` knows the true sigma, `wide` doubles it."""
    rng = np.random.default_rng(0)
    n = 2000
    ts = np.datetime64("2025-01-06T14:30", "us") + np.arange(n) * np.timedelta64(5, "m")
    sigma = np.exp(rng.normal(0, 0.5, size=(n, 1))) * np.array([[1e-3, 2e-3]])   # (N, H)
    y = sigma * rng.standard_normal((n, 2))
    close = 2.0e4 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))  # (N,) origin prices for the backtest
    signal = (0.3 * y + 0.3 * sigma * rng.standard_normal((n, 2)))[..., None]  # (N, H, 1) median shift
    st = RunStore(tmp_path / "runs")
    spec = {"name": "abl", "variants": {"good": {}, "wide": {"model.init_width": 2.0}}, "track": {"wandb_project": "p"}}
    st.start_experiment("abl", "run", None, yaml.safe_dump(spec))
    for variant, mult in (("good", 1.0), ("wide", 2.0)):
        for seed in (0, 1):
            name = f"{variant}-s{seed}"
            d = st.trial_dir("abl", name)
            d.mkdir(parents=True)
            q = gaussian_quantiles(sigma * mult)
            clim = np.broadcast_to(np.quantile(y, TAUS, axis=0).T[None], q.shape).copy()
            base = {"climatology": clim, "volscaled": gaussian_quantiles(sigma)}  # the latter knows the true sigma
            evaluate.save_predictions(d / "predictions.parquet",
                                      {"test": evaluate.SplitPredictions(ts=ts, y=y, q=q, baselines=base)},
                                      TAUS, HORIZONS)
            table = evaluate.evaluate_split_table("test", y, q, TAUS, HORIZONS, ts, base, n_boot=50)
            metrics = {f"test/{k}": v for k, v in evaluate.flatten_metrics(table).items()}
            # The backtest score_trial runs: its metrics and equity curves (docs/metrics.md §10).
            # The Gaussian medians are exactly 0 (no trade): shift them by a partly informative signal.
            bt = backtest.backtest(ts, close, y, q + signal, TAUS, HORIZONS)
            metrics.update({f"test/{k}": v for k, v in backtest.backtest_metrics(bt).items()})
            backtest.equity_frame(bt).to_parquet(d / "backtest_equity.parquet")
            st.upsert_trial("abl", name, variant=variant, seed=seed, status="finished", params_json="{}",
                            spec_yaml="", dir=str(d))
            st.write_metrics("abl", name, metrics, flags=[("collapse", "made up")] if variant == "wide" and seed else [])
            for epoch in (1, 2, 3):     # the driver's per-epoch history: loss and val CRPS fall
                st.write_epoch("abl", name, epoch, {"train/loss_epoch": mult / epoch, "val/crps": mult * (1 + 1 / epoch),
                                                    "val/crps_15m": 1.0, "train/lr": 1e-3})
    return st


def test_summary_has_mean_and_std_over_seeds_per_variant_and_horizon(store):
    data = report.load(store, "abl")
    assert data.reference == "good"
    table = report.summary_table(data)
    assert set(table["variant"]) == {"good", "wide"}
    assert set(table["horizon"]) == {"all", "15m", "60m"}
    assert (table["seeds"] == 2).all()
    # Both seeds hold identical predictions here, so the std is exactly 0.
    assert table.loc[(table.variant == "good") & (table.horizon == "15m"), "crps"].item().endswith("± 0.0000")


def test_paired_differences_find_the_worse_variant_with_a_ci_above_zero(store):
    paired = report.paired_differences(report.load(store, "abl"), n_boot=200)
    assert list(paired["variant"]) == ["wide", "wide"]
    assert (paired["ci_lo"] > 0).all() and (paired["mean_diff"] > 0).all()
    assert (paired["verdict"] == "worse").all()
    assert (paired["n"] == 2000).all() and (paired["seeds"] == 2).all()


def test_every_variant_is_compared_with_every_baseline_and_the_best_one_is_named(store):
    data = report.load(store, "abl")
    summary = report.summary_table(data)
    assert (summary["best_baseline"] == "volscaled").all()  # the true-sigma forecast beats climatology
    good_15 = summary[(summary.variant == "good") & (summary.horizon == "15m")].iloc[0]
    assert good_15["crpss_best"].startswith("0.0000")  # identical to the best baseline: skill exactly 0
    diffs = report.baseline_differences(data, n_boot=200).set_index(["variant", "baseline", "horizon"])
    assert diffs.loc[("good", "climatology", "15m"), "verdict"] == "model better"
    assert diffs.loc[("wide", "volscaled", "15m"), "verdict"] == "model worse"
    assert diffs.loc[("good", "volscaled", "60m"), "rel_pct"] == 0.0


def test_markdown_report_holds_tables_gates_and_is_written_to_the_store(store):
    path = report.build_report(store, "abl", n_boot=100)
    text = path.read_text()
    assert path.name == "report.md" and "Paired CRPS differences vs `good`" in text
    assert "made up" in text and "| wide |" in text


def test_report_holds_the_backtest_table_equity_and_learning_curve_figures(store):
    data = report.load(store, "abl")
    assert set(data.epochs["epoch"]) == {1, 2, 3} and len(data.epochs) == 4 * 3 * 4
    bt = report.backtest_table(data)
    assert list(bt[["variant", "horizon"]].itertuples(index=False, name=None)) == [
        ("good", "15m"), ("good", "60m"), ("wide", "15m"), ("wide", "60m")]
    assert (bt["seeds"] == 2).all()
    # Both seeds hold identical predictions, so the backtest is identical too: std exactly 0.
    assert bt["sharpe"].str.endswith("± 0.0000").all() and bt["trades"].str.endswith("± 0.0000").all()
    # Sign and width ranking are the same for `wide` (x2 sigma): the same trades, the same Sharpe.
    assert (bt.loc[bt.variant == "good", "sharpe"].to_numpy() == bt.loc[bt.variant == "wide", "sharpe"].to_numpy()).all()
    path = report.build_report(store, "abl", n_boot=50)
    text = path.read_text()
    assert "## Backtest of the test split" in text
    assert ("| variant | horizon | sharpe | benchmark_sharpe | excess_sharpe | long_share | sharpe_daily | max_dd |"
            in text)
    figs = path.parent / "report_figures"
    for name in ("learning_curves.png", "backtest_equity.png"):
        assert (figs / name).stat().st_size > 5000
        assert f"](report_figures/{name})" in text


def test_a_report_without_backtest_or_epochs_omits_those_parts(store):
    data = report.load(store, "abl")
    data.metrics = data.metrics[~data.metrics["key"].str.contains("backtest")]
    assert report.backtest_table(data).empty
    data.epochs = data.epochs.iloc[:0]
    assert report.learning_curve_figure(data, store.root / "lc.png") is None


def test_wandb_report_object_is_built_offline(store):
    pytest.importorskip("wandb_workspaces")
    obj = report.wandb_report(report.load(store, "abl"), project="p", entity="e")
    assert obj.title == "nqexp: abl"
    kinds = [type(b).__name__ for b in obj.blocks]
    assert kinds[0] == "H1" and "PanelGrid" in kinds
    text = " ".join(getattr(b, "text", "") or "" for b in obj.blocks)
    assert "Paired CRPS differences" in text and "wide" in text


def test_unknown_experiment_is_a_clear_error(store):
    from nqexp.errors import DataError

    with pytest.raises(DataError, match="no experiment 'nope'"):
        report.load(store, "nope")


def test_publishing_without_a_key_is_refused_without_touching_the_network(store, monkeypatch):
    from nqexp.errors import CredentialsError

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(CredentialsError, match="WANDB_API_KEY"):
        report.publish_wandb_report(store, "abl", project="p", entity=None)


def test_html_renders_markdown_code_tables_and_inlines_figures(tmp_path):
    png = tmp_path / "fig.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    text = "# Experiment `abl`\n\nvs `good`, **bold**\n\n| a | b |\n|---|---|\n| 1 | x |\n\n![fig one](fig.png)\n"
    html = report._to_html(text, tmp_path)
    assert "<h1>Experiment <code>abl</code></h1>" in html and "`" not in html
    assert "<strong>bold</strong>" in html and "<th>a</th>" in html and "<td>x</td>" in html
    assert '<img src="data:image/png;base64,iVBORw0KGgpmYWtl" alt="fig one"' in html


def test_html_report_has_no_literal_backticks(store):
    path = report.build_report(store, "abl", fmt="html", n_boot=50)
    html = path.read_text()
    assert path.name == "report.html" and "<code>good</code>" in html and "`" not in html


def test_verdicts_follow_p_values_adjusted_over_every_comparison(store):
    """Both tables form one family: each p is adjusted over all rows (BH by default, or Holm), the
    verdicts follow the adjusted p, and the report names the method and the count."""
    data = report.load(store, "abl")
    paired, vs = report.comparisons(data, n_boot=200)
    n = len(paired) + len(vs)
    assert paired.attrs["adjustment"]["comparisons"] == vs.attrs["adjustment"]["comparisons"] == n
    for frame in (paired, vs):
        assert (frame["p_adj"] >= frame["p"] - 1e-12).all()
        clear = frame["verdict"] != "no clear difference"
        assert (frame.loc[clear, "p_adj"] < report.ALPHA).all() and (frame.loc[~clear, "p_adj"] >= report.ALPHA).all()
    np.testing.assert_allclose(np.concatenate([paired["p_adj"], vs["p_adj"]]),
                               M.benjamini_hochberg(np.concatenate([paired["p"], vs["p"]])))
    holm_paired, holm_vs = report.comparisons(data, n_boot=200, method="holm")
    assert (holm_vs["p_adj"] >= vs["p_adj"] - 1e-12).all()        # Holm is never more lenient than BH
    text = report.build_report(store, "abl", n_boot=100).read_text()
    assert f"adjusted for the {n} comparisons of this report together" in text and "Benjamini–Hochberg" in text


def test_a_raw_hit_among_many_nulls_is_no_clear_difference_after_adjustment():
    """20 comparisons where one raw p is 0.01: BH and Holm both make it 'no clear difference'."""
    p = np.array([0.01] + [0.5] * 19)
    assert (M.benjamini_hochberg(p)[0] >= report.ALPHA) and (M.holm(p)[0] >= report.ALPHA)
    assert report._verdict(-1.0, M.benjamini_hochberg(p)[0], ("better", "worse")) == "no clear difference"
    assert report._verdict(-1.0, 0.01, ("better", "worse")) == "better"


@pytest.fixture
def fold_store(tmp_path):
    """`ref` vs `alt`, two seeds, two rolling-origin folds with their own test samples. `alt` is worse
    than `ref` in fold 0 (too wide) and better in fold 1 (`ref` too wide there): the effect flips."""
    rng = np.random.default_rng(1)
    st = RunStore(tmp_path / "runs")
    spec = {"name": "f", "variants": {"ref": {}, "alt": {}}, "track": {"wandb_project": "p"}}
    st.start_experiment("f", "run", None, yaml.safe_dump(spec))
    for fold, n in ((0, 900), (1, 1100)):
        ts = np.datetime64("2025-01-06T14:30", "us") + (fold * 30 * 288 + np.arange(n)) * np.timedelta64(5, "m")
        sigma = np.exp(rng.normal(0, 0.3, size=(n, 1))) * np.array([[1e-3, 2e-3]])
        y = sigma * rng.standard_normal((n, 2))
        mults = {"ref": 1.0, "alt": 1.6} if fold == 0 else {"ref": 1.6, "alt": 1.0}
        for variant, mult in mults.items():
            for seed in (0, 1):
                name = f"{variant}-s{seed}-f{fold}"
                d = st.trial_dir("f", name)
                d.mkdir(parents=True)
                q = gaussian_quantiles(sigma * mult)
                base = {"volscaled": gaussian_quantiles(sigma)}
                evaluate.save_predictions(d / "predictions.parquet",
                                          {"test": evaluate.SplitPredictions(ts=ts, y=y, q=q, baselines=base)},
                                          TAUS, HORIZONS)
                table = evaluate.evaluate_split_table("test", y, q, TAUS, HORIZONS, ts, base, n_boot=20)
                st.upsert_trial("f", name, variant=variant, seed=seed, fold=fold, status="finished",
                                params_json="{}", spec_yaml="", dir=str(d))
                st.write_metrics("f", name, {f"test/{k}": v for k, v in evaluate.flatten_metrics(table).items()})
    return st


def test_differences_pool_every_fold_and_say_where_the_sign_holds(fold_store):
    data = report.load(fold_store, "f")
    paired, vs = report.comparisons(data, n_boot=200)
    assert (paired["folds"] == 2).all() and (paired["n"] == 2000).all()       # both folds' samples, pooled
    assert (paired["same_sign_folds"] == "1/2").all()                          # the effect flips between folds
    assert (vs["folds"] == 2).all() and set(vs["same_sign_folds"]) <= {"1/2", "2/2"}
    folds = report.fold_table(data)
    assert list(folds.columns) == ["variant", "fold 0", "fold 1", "mean over folds"]
    crps = folds.set_index("variant")
    assert crps.loc["alt", "fold 0"] > crps.loc["ref", "fold 0"] and crps.loc["alt", "fold 1"] < crps.loc["ref", "fold 1"]
    text = report.build_report(fold_store, "f", n_boot=50).read_text()
    assert "## Test CRPS per rolling-origin fold" in text and "same_sign_folds" in text
    summary = report.summary_table(data)
    assert (summary["seeds"] == 2).all() and (summary["folds"] == 2).all()   # 4 trials: 2 seeds x 2 folds


def test_one_fold_reports_have_no_fold_table(store):
    assert report.fold_table(report.load(store, "abl")).empty


def _with_trial_plots(store):
    for trial in ("good-s0", "wide-s0"):
        plots = store.trial_dir("abl", trial) / "plots"
        plots.mkdir(parents=True)
        (plots / "test_reliability.png").write_bytes(b"\x89PNG fake " + trial.encode())


def test_a_copied_store_reports_from_its_own_trials(store, tmp_path):
    import shutil

    _with_trial_plots(store)
    shutil.copytree(store.root, tmp_path / "copy")
    shutil.rmtree(store.root)                                   # moved, not just copied
    path = report.build_report(RunStore(tmp_path / "copy"), "abl", n_boot=20)
    text = path.read_text()
    assert path == tmp_path / "copy" / "abl" / "report.md"
    assert "](trials/good-s0/plots/test_reliability.png)" in text
    assert "| wide | climatology | 15m |" in text                  # the predictions were found where they are now


def test_a_report_elsewhere_copies_the_trial_figures_beside_it(store, tmp_path):
    _with_trial_plots(store)
    out = tmp_path / "reports" / "abl.html"
    path = report.build_report(store, "abl", fmt="html", n_boot=20, out=out)
    assert path == out and (tmp_path / "reports" / "abl_figures" / "learning_curves.png").exists()
    assert (tmp_path / "reports" / "abl_figures" / "good_test_reliability.png").read_bytes().endswith(b"good-s0")
    assert "data:image/png;base64," in out.read_text() and not (store.experiment_dir("abl") / "report.html").exists()
    md = report.build_report(store, "abl", n_boot=20, out=tmp_path / "reports" / "abl.md").read_text()
    assert "](abl_figures/wide_test_reliability.png)" in md and str(store.root) not in md


def test_a_report_that_cannot_be_written_is_one_line(store, tmp_path):
    from nqexp.errors import DataError

    (tmp_path / "plain").write_text("x")
    with pytest.raises(DataError) as info:
        report.build_report(store, "abl", n_boot=20, out=tmp_path / "plain" / "r.md")
    assert str(info.value).startswith(f"cannot write the report {tmp_path / 'plain' / 'r.md'}: ")
    with pytest.raises(DataError, match="is a folder; give the report's file name"):
        report.build_report(store, "abl", n_boot=20, out=tmp_path)
