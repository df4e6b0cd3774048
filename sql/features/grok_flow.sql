-- grok_flow: flow group of grok24 (docs/features.md §3).
--
-- purpose:   money flow and time between bars.
--              mfi_norm = (MFI_14 - 50) / 50, MFI_14 = 100 P / (P + N), P and N the sums over
--                         the last 14 bars of the raw money flow TP V on bars whose typical
--                         price TP rose (P) or fell (N) from the previous bar (the previous
--                         bar's TP from its prev_* prices; the sums are `rolling` columns,
--                         evaluated exactly over the last 14 rows by features.py). A change
--                         within 1e-9 of the close is a tie (neither): equal typical prices stay
--                         equal when a later roll rescales both (docs/features.md §13).
--              time_gap = ln(1 + max(dt - 1, 0)), dt the minutes since the previous bar's start
--                         (0 for consecutive 1-minute bars; NULL on the first bar)
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none.
-- lookback:  14 bars (MFI needs 14 flows, i.e. 15 typical prices).
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_flow_mfi_norm, grok_flow_time_gap
-- rolling sum_positive_flow_14 = sum(case when (high + low + close) / 3 - (prev_high + prev_low + prev_close) / 3 > 1e-9 * close then (high + low + close) / 3 * volume when prev_close is not null then 0.0 end, 14)
-- rolling sum_negative_flow_14 = sum(case when (prev_high + prev_low + prev_close) / 3 - (high + low + close) / 3 > 1e-9 * close then (high + low + close) / 3 * volume when prev_close is not null then 0.0 end, 14)

select
    bar_index,
    case
        when bar_index >= 14
            then (100 * sum_positive_flow_14 / (sum_positive_flow_14 + sum_negative_flow_14) - 50) / 50
    end as grok_flow_mfi_norm,
    case
        when minutes_since_prev is not null then ln(1 + greatest(minutes_since_prev - 1, 0))
    end as grok_flow_time_gap,
from feature_input
