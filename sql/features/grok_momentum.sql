-- grok_momentum: momentum group of grok24 (docs/features.md §3).
--
-- purpose:   oscillators, each scaled to about [-1, 1].
--              rsi_norm = (RSI_14 - 50) / 50, RSI_14 = 100 G / (G + L) with Wilder averages of
--                         gains and losses
--              cci      = CCI_20 / 100, CCI_20 = (TP - SMA_20(TP)) / (0.015 MAD_20(TP)), TP the
--                         typical price, MAD the mean absolute deviation from the window's mean;
--                         NULL when the 20 typical prices are equal (MAD below 1e-9 of the mean)
--              plus_di, minus_di = DI+_14 / 100, DI-_14 / 100 (Wilder: W(+DM) / W(TR)); +DM is
--                         the up-move H_t - H_{t-1} when it beats the down-move L_{t-1} - L_t
--                         and 0, -DM the other way round; moves within 1e-9 of the close of each
--                         other (or of 0) are ties, so equal moves stay equal when a later roll
--                         rescales the prices (docs/features.md §13)
--              adx      = ADX_14 / 100, ADX = W(DX), DX = 100 |DI+ - DI-| / (DI+ + DI-)
--              roc_norm = C_t / C_{t-10} - 1
--            Wilder averages W have alpha = 1/14 and are seeded with the first value (pandas
--            ewm(alpha=1/14, adjust=False, ignore_na=True)); features.py materializes them
--            exactly (see `filter`). A NaN input (e.g. DX when DI+ = DI- = 0) is skipped.
-- grain:     one row per (symbol, ts) of feature_input (1-minute bars for grok24).
-- inputs:    feature_input (sql/features/_input.sql) with the filters and the rolling mean
--            (features.py evaluates it exactly over the last 20 rows) declared below.
-- params:    none.
-- lookback:  84 bars (ADX is a Wilder average of Wilder averages: 2 x 3 x 14).
-- lookahead: none; windows end at the current row.
-- sessions:  runs across sessions and rolls on the back-adjusted continuous series.
-- columns:   grok_momentum_rsi_norm, grok_momentum_cci, grok_momentum_plus_di,
--            grok_momentum_minus_di, grok_momentum_adx, grok_momentum_roc_norm
-- filter wilder_gain_14 = wilder(case when prev_close is not null then greatest(close - prev_close, 0.0) end, 14)
-- filter wilder_loss_14 = wilder(case when prev_close is not null then greatest(prev_close - close, 0.0) end, 14)
-- filter wilder_tr_14 = wilder(case when prev_close is not null then greatest(high - low, abs(high - prev_close), abs(low - prev_close)) end, 14)
-- filter wilder_plus_dm_14 = wilder(case when (high - prev_high) - (prev_low - low) > 1e-9 * close and high - prev_high > 1e-9 * close then high - prev_high when prev_high is not null then 0.0 end, 14)
-- filter wilder_minus_dm_14 = wilder(case when (prev_low - low) - (high - prev_high) > 1e-9 * close and prev_low - low > 1e-9 * close then prev_low - low when prev_low is not null then 0.0 end, 14)
-- filter wilder_dx_14 = wilder(100 * abs(wilder_plus_dm_14 - wilder_minus_dm_14) / (wilder_plus_dm_14 + wilder_minus_dm_14), 14)
-- rolling mean_typical_20 = mean((high + low + close) / 3, 20)

with typical as (
    select
        ts,
        bar_index,
        close,
        wilder_gain_14,
        wilder_loss_14,
        wilder_tr_14,
        wilder_plus_dm_14,
        wilder_minus_dm_14,
        wilder_dx_14,
        (high + low + close) / 3 as typical_price,
        mean_typical_20 as typical_sma_20,
    from feature_input
),

-- DuckDB has no mean-absolute-deviation window aggregate, and list() windows cost ~3 GB on
-- 5.4M rows, so the 20 terms |TP_{t-k} - SMA_20(TP)_t| are written out (1.2 s on 5.4M rows).
deviations as (
    select
        *,
        (
            abs(typical_price - typical_sma_20)
            + abs(lag(typical_price, 1) over w20 - typical_sma_20)
            + abs(lag(typical_price, 2) over w20 - typical_sma_20)
            + abs(lag(typical_price, 3) over w20 - typical_sma_20)
            + abs(lag(typical_price, 4) over w20 - typical_sma_20)
            + abs(lag(typical_price, 5) over w20 - typical_sma_20)
            + abs(lag(typical_price, 6) over w20 - typical_sma_20)
            + abs(lag(typical_price, 7) over w20 - typical_sma_20)
            + abs(lag(typical_price, 8) over w20 - typical_sma_20)
            + abs(lag(typical_price, 9) over w20 - typical_sma_20)
            + abs(lag(typical_price, 10) over w20 - typical_sma_20)
            + abs(lag(typical_price, 11) over w20 - typical_sma_20)
            + abs(lag(typical_price, 12) over w20 - typical_sma_20)
            + abs(lag(typical_price, 13) over w20 - typical_sma_20)
            + abs(lag(typical_price, 14) over w20 - typical_sma_20)
            + abs(lag(typical_price, 15) over w20 - typical_sma_20)
            + abs(lag(typical_price, 16) over w20 - typical_sma_20)
            + abs(lag(typical_price, 17) over w20 - typical_sma_20)
            + abs(lag(typical_price, 18) over w20 - typical_sma_20)
            + abs(lag(typical_price, 19) over w20 - typical_sma_20)
        ) / 20 as typical_mad_20,
        lag(close, 10) over w20 as close_10_ago,
    from typical
    window
        w20 as (order by ts rows between 19 preceding and current row)
)

select
    bar_index,
    (100 * wilder_gain_14 / (wilder_gain_14 + wilder_loss_14) - 50) / 50 as grok_momentum_rsi_norm,
    case
        when bar_index >= 19 and typical_mad_20 > 1e-9 * typical_sma_20
            then (typical_price - typical_sma_20) / (0.015 * typical_mad_20) / 100
    end as grok_momentum_cci,
    wilder_plus_dm_14 / wilder_tr_14 as grok_momentum_plus_di,
    wilder_minus_dm_14 / wilder_tr_14 as grok_momentum_minus_di,
    wilder_dx_14 / 100 as grok_momentum_adx,
    close / close_10_ago - 1 as grok_momentum_roc_norm,
from deviations
