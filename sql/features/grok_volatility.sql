-- grok_volatility: volatility group of grok24 (docs/features.md §3).
--
-- purpose:   range- and return-based volatility, scaled to be comparable across price levels.
--              atr_norm     = ATR_14 / C, ATR_14 = Wilder average of the true range
--              bb_pct_b     = (C - lower) / (upper - lower), Bollinger(20, 2 sigma) bands
--                             mid +- 2 sd with sd the population sd of the last 20 closes
--              bb_bandwidth = (upper - lower) / mid
--              realized_vol = sample sd of the last 20 log-returns x sqrt(252 x 390)
--            %B is NULL when the 20 closes are all equal (sd = 0).
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql) with the filter declared below.
-- params:    none.
-- lookback:  42 bars (3 x 14 for the Wilder ATR); the 20-bar windows need 20 (21 closes for
--            realized_vol).
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_volatility_atr_norm, grok_volatility_bb_pct_b, grok_volatility_bb_bandwidth,
--            grok_volatility_realized_vol
-- filter wilder_tr_14 = wilder(case when prev_close is not null then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end, 14)

with bands as (
    select
        ts,
        bar_index,
        close,
        wilder_tr_14,
        ln(close / prev_close) as log_return,
        avg(close) over w20 as mid,
        stddev_pop(close) over w20 as sd,
    from feature_input
    window
        w20 as (order by ts rows between 19 preceding and current row)
)

select
    bar_index,
    wilder_tr_14 / close as grok_volatility_atr_norm,
    case when bar_index >= 19 and sd > 0 then (close - (mid - 2 * sd)) / (4 * sd) end as grok_volatility_bb_pct_b,
    case when bar_index >= 19 then 4 * sd / mid end as grok_volatility_bb_bandwidth,
    case
        when bar_index >= 20 then stddev_samp(log_return) over w20 * sqrt(252 * 390)
    end as grok_volatility_realized_vol,
from bands
window
    w20 as (order by ts rows between 19 preceding and current row)
