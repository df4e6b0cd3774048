-- grok_price: price group of grok24 (docs/features.md §3).
--
-- purpose:   the bar's shape and return.
--              log_return     = ln(C_t / C_{t-1})
--              hl_range       = (H - L) / C
--              close_location = (C - L) / (H - L), 0.5 when H = L
--              open_return    = ln(C / O)
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none.
-- lookback:  1 bar (log_return; NULL on the first bar).
-- lookahead: none; windows end at the current row (this file has no windows).
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_price_log_return, grok_price_hl_range, grok_price_close_location,
--            grok_price_open_return

select
    bar_index,
    ln(close / prev_close) as grok_price_log_return,
    (high - low) / close as grok_price_hl_range,
    case when high > low then (close - low) / (high - low) else 0.5 end as grok_price_close_location,
    ln(close / open) as grok_price_open_return,
from feature_input
