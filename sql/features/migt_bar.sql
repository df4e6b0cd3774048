-- migt_bar: the bar itself: its candle, close level, log volume and one-bar log-return (migt24, docs/features.md §2).
--
-- purpose:   raw inputs of the MIGT-TVDT specification, made scale-free so that a roll added
--            later (which multiplies every earlier back-adjusted price by its ratio) changes
--            none of them (docs/features.md §13). The design's O, H, L, C levels become:
--              open, high, low = ln(O / C_{t-1}), ln(H / C_{t-1}), ln(L / C_{t-1}): the candle
--                                measured from the previous close (NULL on the first bar)
--              close           = ln(C / SMA_144(C)): the close's level relative to its 12-hour
--                                mean, what per-window RevIN made of the level (ln(C / C_{t-1})
--                                is already log_return); NULL until 144 closes exist
--            log_volume = ln(V + 1), log_return = ln(C_t / C_{t-1}).
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql) with the rolling mean declared below.
-- params:    none.
-- lookback:  144 bars (close: the 144-bar mean); the rest needs the previous close.
-- lookahead: none; windows end at the current row (this file has no windows).
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_bar_open, migt_bar_high, migt_bar_low, migt_bar_close, migt_bar_log_volume,
--            migt_bar_log_return
-- rolling mean_close_144 = mean(close, 144)

select
    bar_index,
    ln(open / prev_close) as migt_bar_open,
    ln(high / prev_close) as migt_bar_high,
    ln(low / prev_close) as migt_bar_low,
    case when bar_index >= 143 then ln(close / mean_close_144) end as migt_bar_close,
    ln(volume + 1) as migt_bar_log_volume,
    ln(close / prev_close) as migt_bar_log_return,
from feature_input
