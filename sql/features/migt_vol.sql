-- migt_vol: volatility estimators of migt24 (docs/features.md §2).
--
-- purpose:   Garman-Klass range variance of the bar, realized volatility over 12/36/72 bars
--            (1, 3 and 6 hours of 5-minute bars) and the average true range in units of the
--            current close (scale-free: a later roll changes none of them, docs/features.md §13).
--              gk_volatility = 0.5 (ln H - ln L)^2 - (2 ln 2 - 1) (ln C - ln O)^2
--              rv_n          = sqrt(sum of r^2 over the last n bars), r = ln(C_t / C_{t-1})
--              atr_14        = SMA_14(TR) / C_t, TR = max(H - L, |H - C_{t-1}|, |L - C_{t-1}|)
--            The sums and the mean are `rolling` columns (features.py evaluates them exactly
--            over the last n rows, NaN until n inputs exist; r and TR start at bar 1).
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none (window lengths are fixed by the spec).
-- lookback:  72 bars (rv_72 needs 72 returns, i.e. 73 closes).
-- lookahead: none; windows end at the current row.
-- sessions:  windows run across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_vol_gk_volatility, migt_vol_rv_12, migt_vol_rv_36, migt_vol_rv_72,
--            migt_vol_atr_14
-- rolling sum_sq_return_12 = sum(pow(ln(close / prev_close), 2), 12)
-- rolling sum_sq_return_36 = sum(pow(ln(close / prev_close), 2), 36)
-- rolling sum_sq_return_72 = sum(pow(ln(close / prev_close), 2), 72)
-- rolling mean_true_range_14 = mean(case when prev_close is not null then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end, 14)

select
    bar_index,
    0.5 * pow(ln(high) - ln(low), 2) - (2 * ln(2) - 1) * pow(ln(close) - ln(open), 2) as migt_vol_gk_volatility,
    case when bar_index >= 12 then sqrt(sum_sq_return_12) end as migt_vol_rv_12,
    case when bar_index >= 36 then sqrt(sum_sq_return_36) end as migt_vol_rv_36,
    case when bar_index >= 72 then sqrt(sum_sq_return_72) end as migt_vol_rv_72,
    case when bar_index >= 14 then mean_true_range_14 / close end as migt_vol_atr_14,
from feature_input
