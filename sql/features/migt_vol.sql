-- migt_vol: volatility estimators of migt24 (docs/features.md §2).
--
-- purpose:   Garman-Klass range variance of the bar, realized volatility over 12/36/72 bars
--            (1, 3 and 6 hours of 5-minute bars) and the average true range.
--              gk_volatility = 0.5 (ln H - ln L)^2 - (2 ln 2 - 1) (ln C - ln O)^2
--              rv_n          = sqrt(sum of r^2 over the last n bars), r = ln(C_t / C_{t-1})
--              atr_14        = SMA_14(TR), TR = max(H - L, |H - C_{t-1}|, |L - C_{t-1}|)
--            A window value is NULL until it holds n inputs (r and TR start at bar 1);
--            inputs have no interior NULLs, so the guard is on bar_index (a count() guard
--            would double the window work).
-- grain:     one row per (symbol, ts) of feature_input (5-minute bars for migt24).
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    none (window lengths are fixed by the spec).
-- lookback:  72 bars (rv_72 needs 72 returns, i.e. 73 closes).
-- lookahead: none; windows end at the current row.
-- sessions:  windows run across sessions and rolls on the back-adjusted continuous series.
-- columns:   migt_vol_gk_volatility, migt_vol_rv_12, migt_vol_rv_36, migt_vol_rv_72,
--            migt_vol_atr_14

with bar_terms as (
    select
        ts,
        bar_index,
        0.5 * pow(ln(high) - ln(low), 2) - (2 * ln(2) - 1) * pow(ln(close) - ln(open), 2) as gk_volatility,
        pow(ln(close / prev_close), 2) as squared_return,
        case
            when prev_close is not null
                then greatest(high - low, abs(high - prev_close), abs(low - prev_close))
        end as true_range,
    from feature_input
)

select
    bar_index,
    gk_volatility as migt_vol_gk_volatility,
    case when bar_index >= 12 then sqrt(sum(squared_return) over w12) end as migt_vol_rv_12,
    case when bar_index >= 36 then sqrt(sum(squared_return) over w36) end as migt_vol_rv_36,
    case when bar_index >= 72 then sqrt(sum(squared_return) over w72) end as migt_vol_rv_72,
    case when bar_index >= 14 then avg(true_range) over w14 end as migt_vol_atr_14,
from bar_terms
window
    w12 as (order by ts rows between 11 preceding and current row),
    w14 as (order by ts rows between 13 preceding and current row),
    w36 as (order by ts rows between 35 preceding and current row),
    w72 as (order by ts rows between 71 preceding and current row)
