-- migt_trend: EMA trend features of migt24 (docs/features.md §2).
--
-- purpose:   MACD line and the slope and relative deviation of the 9/21/50-bar EMAs of close,
--            in units of the current close, so a roll added later (which scales every earlier
--            back-adjusted price) changes none of them (docs/features.md §13).
--              macd        = (EMA_12 - EMA_26) / C (the signal line was dropped: 0.955 collinear)
--              ema_slope_n = (EMA_n(t) - EMA_n(t-1)) / C_t, computed as alpha/(1-alpha) (C_t - EMA_n(t)) / C_t:
--                            the same number (EMA_t - EMA_{t-1} = alpha (C_t - EMA_{t-1}) and
--                            EMA_{t-1} = (EMA_t - alpha C_t)/(1-alpha)) without a lag window, which
--                            would cost this file a sort; NULL on the first bar
--              ema_dev_n   = (C - EMA_n) / EMA_n
--            EMA_n has alpha = 2/(n+1) and is seeded with the first close (pandas
--            ewm(span=n, adjust=False)); features.py materializes it exactly (see `filter`).
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql) with the filters declared below.
-- params:    none.
-- lookback:  150 bars (3 x span 50: the EMA seed's weight is below 0.3% by then).
-- lookahead: none; windows end at the current row (this file has no windows).
-- sessions:  the EMAs run across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_trend_macd, migt_trend_ema_slope_9, migt_trend_ema_slope_21,
--            migt_trend_ema_slope_50, migt_trend_ema_dev_9, migt_trend_ema_dev_21,
--            migt_trend_ema_dev_50
-- filter ema_close_9 = ema(close, 9)
-- filter ema_close_12 = ema(close, 12)
-- filter ema_close_21 = ema(close, 21)
-- filter ema_close_26 = ema(close, 26)
-- filter ema_close_50 = ema(close, 50)

select
    bar_index,
    (ema_close_12 - ema_close_26) / close as migt_trend_macd,
    case when bar_index >= 1 then (close - ema_close_9) * 2 / (9 - 1) / close end as migt_trend_ema_slope_9,
    case when bar_index >= 1 then (close - ema_close_21) * 2 / (21 - 1) / close end as migt_trend_ema_slope_21,
    case when bar_index >= 1 then (close - ema_close_50) * 2 / (50 - 1) / close end as migt_trend_ema_slope_50,
    (close - ema_close_9) / ema_close_9 as migt_trend_ema_dev_9,
    (close - ema_close_21) / ema_close_21 as migt_trend_ema_dev_21,
    (close - ema_close_50) / ema_close_50 as migt_trend_ema_dev_50,
from feature_input
