-- grok_volume: volume group of grok24 (docs/features.md §3).
--
-- purpose:   log volume, its first difference, and log dollar volume.
--              log_volume      = ln(1 + V)
--              log_volume_diff = ln(1 + V_t) - ln(1 + V_{t-1})
--              dollar_volume   = ln(1 + P V), P = raw_close: the unadjusted price of the contract
--                                traded at t, so P V is the notional really traded (in points).
--                                The back-adjusted close would change whenever a later roll is
--                                added (docs/features.md §13).
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none.
-- lookback:  1 bar (log_volume_diff; NULL on the first bar).
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_volume_log_volume, grok_volume_log_volume_diff, grok_volume_dollar_volume

select
    bar_index,
    ln(1 + volume) as grok_volume_log_volume,
    ln(1 + volume) - ln(1 + lag(volume) over w) as grok_volume_log_volume_diff,
    ln(1 + raw_close * volume) as grok_volume_dollar_volume,
from feature_input
window
    w as (order by ts rows between 1 preceding and current row)
