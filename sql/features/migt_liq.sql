-- migt_liq: liquidity of migt24 (docs/features.md §2).
--
-- purpose:   Amihud illiquidity |r_t| / (P_t V_t) and relative volume V_t / SMA_20(V).
--            P_t V_t is the bar's traded notional in points: P_t is raw_close, the unadjusted
--            price of the contract traded at t (the back-adjusted close would change whenever a
--            later roll is added; docs/features.md §13). Volume is never 0 here (a bar exists
--            only when it traded).
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none.
-- lookback:  20 bars (volume_ma_ratio); amihud_illiq needs the previous close.
-- lookahead: none; windows end at the current row.
-- sessions:  windows run across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_liq_amihud_illiq, migt_liq_volume_ma_ratio

select
    bar_index,
    abs(ln(close / prev_close)) / (raw_close * volume) as migt_liq_amihud_illiq,
    case when bar_index >= 19 then volume / avg(volume) over w20 end as migt_liq_volume_ma_ratio,
from feature_input
window
    w20 as (order by ts rows between 19 preceding and current row)
