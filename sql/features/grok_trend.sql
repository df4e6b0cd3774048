-- grok_trend: trend group of grok24 (docs/features.md §3).
--
-- purpose:   distance of the close from its anchored VWAP, the MACD histogram, and the
--            log distance from the 20/50/200-bar simple moving averages.
--              vwap_deviation = (C - VWAP) / C, VWAP of the typical price (H + L + C) / 3
--                               weighted by volume, reset at each RTH open: the first bar of
--                               a session_date with is_rth (09:30 ET), i.e. accumulated over
--                               the bars sharing rth_date (_input.sql). Before the first RTH
--                               open in the data it accumulates from the first bar. The sums
--                               are `running ... by rth_date` columns (features.py: one
--                               sequential sum per RTH day, exact in chunked builds).
--              macd_histogram = (MACD - EMA_9(MACD)) / C, MACD = EMA_12 - EMA_26 of close
--              sma_n_dev      = ln(C / SMA_n), NULL until n closes exist
--            EMAs: alpha = 2/(n+1), seeded with the first value (pandas ewm(span=n,
--            adjust=False)); features.py materializes them exactly (see `filter`).
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql) with the filters and rolling means
--            (evaluated exactly over the last n rows by features.py) declared below.
-- params:    none.
-- lookback:  200 bars (sma_200_dev); the MACD EMAs are settled well before that.
-- lookahead: none; windows end at the current row.
-- sessions:  only the VWAP resets (at the RTH open); everything else runs across sessions and
--            rolls on the back-adjusted continuous series.
-- columns:   grok_trend_vwap_deviation, grok_trend_macd_histogram, grok_trend_sma_20_dev,
--            grok_trend_sma_50_dev, grok_trend_sma_200_dev
-- filter ema_close_12 = ema(close, 12)
-- filter ema_close_26 = ema(close, 26)
-- filter ema_macd_9 = ema(ema_close_12 - ema_close_26, 9)
-- running sum_pv_rth = sum((high + low + close) / 3 * volume) by rth_date
-- running sum_v_rth = sum(volume) by rth_date
-- rolling mean_close_20 = mean(close, 20)
-- rolling mean_close_50 = mean(close, 50)
-- rolling mean_close_200 = mean(close, 200)

with typical as (
    select
        ts,
        bar_index,
        close,
        volume,
        rth_date,
        (high + low + close) / 3 as typical_price,
        ema_close_12 - ema_close_26 as macd,
        ema_macd_9,
        sum_pv_rth,
        sum_v_rth,
        mean_close_20,
        mean_close_50,
        mean_close_200,
    from feature_input
)

select
    bar_index,
    (close - sum_pv_rth / sum_v_rth) / close as grok_trend_vwap_deviation,
    (macd - ema_macd_9) / close as grok_trend_macd_histogram,
    case when bar_index >= 19 then ln(close / mean_close_20) end as grok_trend_sma_20_dev,
    case when bar_index >= 49 then ln(close / mean_close_50) end as grok_trend_sma_50_dev,
    case when bar_index >= 199 then ln(close / mean_close_200) end as grok_trend_sma_200_dev,
from typical
