-- _input: the one relation every feature family reads (features.py registers it as `feature_input`).
--
-- purpose:   the set's bars for one continuous series in time order, with a dense bar index and
--            the previous bar's prices, plus the session fields the targets need. features.py
--            then appends the recursive filters the family files declare (EMA, Wilder) as columns.
-- grain:     one row per (symbol, ts) of the set's bars table; ts is the bar START in UTC.
-- inputs:    bars_1m or bars_5m (the set's `bars:` key, passed as $bars_table): back-adjusted
--            continuous bars. Nothing here resets at sessions or rolls: the series runs on.
-- params:    $bars_table (varchar), $symbol (varchar), $until (timestamp or NULL: keep only bars
--            with ts <= $until; the leakage check truncates the series this way).
-- lookback:  1 bar
-- lookahead: none; windows end at the current row.
-- columns:   symbol, ts, bar_index, open, high, low, close, volume, prev_close, prev_high,
--            prev_low, session_date, minute_of_day_et, is_rth, minutes_since_prev,
--            is_session_start, roll_flag

with bars as (
    select
        symbol,
        ts,
        open,
        high,
        low,
        close,
        volume::double as volume,
        session_date,
        minute_of_day_et,
        is_rth,
        minutes_since_prev,
        is_session_start,
        roll_flag,
    from query_table($bars_table::varchar)
    where symbol = $symbol::varchar
        and ($until::timestamp is null or ts <= $until::timestamp)
)

select
    symbol,
    ts,
    (row_number() over w_all - 1)::bigint as bar_index,
    open,
    high,
    low,
    close,
    volume,
    lag(close) over w_prev as prev_close,
    lag(high) over w_prev as prev_high,
    lag(low) over w_prev as prev_low,
    session_date,
    minute_of_day_et,
    is_rth,
    minutes_since_prev,
    is_session_start,
    roll_flag,
from bars
window
    w_all as (partition by symbol order by ts rows between unbounded preceding and current row),
    w_prev as (partition by symbol order by ts rows between 1 preceding and current row)
order by ts
