-- grok_volatility: volatility group of grok24 (docs/features.md §3).
--
-- purpose:   range- and return-based volatility, scaled to be comparable across price levels.
--              atr_norm     = ATR_14 / C, ATR_14 = Wilder average of the true range
--              bb_pct_b     = (C - lower) / (upper - lower), Bollinger(20, 2 sigma) bands
--                             mid +- 2 sd with sd the population sd of the last 20 closes
--              bb_bandwidth = (upper - lower) / mid
--              realized_vol = sample sd of the last 20 log-returns x sqrt(252 x 390)
--            %B is NULL when the 20 closes are all equal (sd below 1e-9 of the mean: 0 up to
--            round-off, which a later roll's rescaling could otherwise turn into a value).
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql) with the filter and the rolling
--            columns (means and two-pass sds, exact over the last n rows, by features.py)
--            declared below.
-- params:    none.
-- lookback:  42 bars (3 x 14 for the Wilder ATR); the 20-bar windows need 20 (21 closes for
--            realized_vol).
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_volatility_atr_norm, grok_volatility_bb_pct_b, grok_volatility_bb_bandwidth,
--            grok_volatility_realized_vol
-- filter wilder_tr_14 = wilder(case when prev_close is not null then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end, 14)
-- rolling mean_close_20 = mean(close, 20)
-- rolling std_pop_close_20 = std_pop(close, 20)
-- rolling std_samp_log_return_20 = std_samp(ln(close / prev_close), 20)

select
    bar_index,
    wilder_tr_14 / close as grok_volatility_atr_norm,
    case
        when bar_index >= 19 and std_pop_close_20 > 1e-9 * mean_close_20
            then (close - (mean_close_20 - 2 * std_pop_close_20)) / (4 * std_pop_close_20)
    end as grok_volatility_bb_pct_b,
    case when bar_index >= 19 then 4 * std_pop_close_20 / mean_close_20 end as grok_volatility_bb_bandwidth,
    case
        when bar_index >= 20 then std_samp_log_return_20 * sqrt(252 * 390)
    end as grok_volatility_realized_vol,
from feature_input
