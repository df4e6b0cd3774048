-- migt_bar: the bar itself: OHLC levels, log volume and the one-bar log-return (migt24, docs/features.md §2).
--
-- purpose:   raw inputs of the MIGT-TVDT specification. Levels are back-adjusted prices, so
--            they carry the adj_factor of later rolls; RevIN normalises them per window.
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none.
-- lookback:  1 bar (log_return needs the previous close; NULL on the first bar).
-- lookahead: none; windows end at the current row (this file has no windows).
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_bar_open, migt_bar_high, migt_bar_low, migt_bar_close, migt_bar_log_volume,
--            migt_bar_log_return

select
    bar_index,
    open as migt_bar_open,
    high as migt_bar_high,
    low as migt_bar_low,
    close as migt_bar_close,
    ln(volume + 1) as migt_bar_log_volume,
    ln(close / prev_close) as migt_bar_log_return,
from feature_input
