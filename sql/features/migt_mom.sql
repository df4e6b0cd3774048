-- migt_mom: momentum of migt24 (docs/features.md §2).
--
-- purpose:   Wilder RSI-14 and rates of change over 5/10/20 bars.
--              rsi_14 = 100 * G / (G + L), G and L the Wilder averages (alpha = 1/14, seeded
--                       with the first value, i.e. pandas ewm(alpha=1/14, adjust=False)) of the
--                       close-to-close gains and losses; NULL-free after the first bar, NaN
--                       only when G = L = 0.
--              roc_n  = (C_t - C_{t-n}) / C_{t-n}
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql) with the filters declared below.
-- params:    none.
-- lookback:  42 bars (3 x 14: the Wilder seed's weight falls below 1.3%); roc_20 needs 20.
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_mom_rsi_14, migt_mom_roc_5, migt_mom_roc_10, migt_mom_roc_20
-- filter wilder_gain_14 = wilder(case when prev_close is not null then greatest(close - prev_close, 0.0) end, 14)
-- filter wilder_loss_14 = wilder(case when prev_close is not null then greatest(prev_close - close, 0.0) end, 14)

select
    bar_index,
    100 * wilder_gain_14 / (wilder_gain_14 + wilder_loss_14) as migt_mom_rsi_14,
    (close - lag(close, 5) over w) / lag(close, 5) over w as migt_mom_roc_5,
    (close - lag(close, 10) over w) / lag(close, 10) over w as migt_mom_roc_10,
    (close - lag(close, 20) over w) / lag(close, 20) over w as migt_mom_roc_20,
from feature_input
window
    w as (order by ts rows between 20 preceding and current row)
