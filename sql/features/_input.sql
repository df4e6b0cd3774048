-- _input: the one relation every feature family reads (features.py registers it as `feature_input`).
--
-- purpose:   the set's bars for one continuous series in time order, with a dense bar index,
--            the previous bar's prices, and the event counters that define the target flags.
--            features.py then appends the recursive filters the family files declare (EMA,
--            Wilder) as columns.
-- targets:   a target at bar t is the forward log-return ln(close[t+h] / close[t]) of the
--            back-adjusted close h bars ahead. features.py takes it and its flag bits by a pure
--            index shift of the columns below; a bit is set when a counter differs between t
--            and t+h, i.e. when one of the bars t+1..t+h is such an event:
--              1 = crosses a session end / the maintenance break (session_no),
--              2 = crosses a weekend or holiday: a gap longer than $long_break_minutes
--                  (the daily break is 60 minutes, a weekend ~49 hours, a holiday halt such as
--                  Thanksgiving 13:00-18:00 ET 5 hours; 240 splits them) (long_break_no),
--              4 = crosses a roll (roll_no).
-- grain:     one row per (symbol, ts) of the set's bars table; ts is the bar START in UTC.
-- inputs:    bars_1m or bars_5m (the set's `bars:` key, passed as $bars_table): back-adjusted
--            continuous bars. Nothing here resets at sessions or rolls: the series runs on.
-- params:    $bars_table (varchar), $symbol (varchar), $until (timestamp or NULL: keep only bars
--            with ts <= $until; the leakage check truncates the series this way), $since
--            (timestamp or NULL: keep only bars with ts >= $since; features.py builds long series
--            in chunks this way, each with a look-back overlap), $long_break_minutes (double).
--            In a chunk, bar_index and the counters start at the chunk: features read bar_index
--            only in warm-up guards, which the overlap covers, and flags only compare counters.
-- lookback:  1 bar (the counters run over the whole series)
-- lookahead: none; windows end at the current row.
-- order:     rows come back in any order; features.py orders them by bar_index (an ORDER BY
--            here costs a second sort). feature_input holds one symbol, so every feature
--            window orders by ts without `partition by symbol` (partitioning on the constant
--            costs ~20% per window query).
-- columns:   ts, bar_index, open, high, low, close, volume, raw_close, prev_close, prev_high,
--            prev_low, session_date, minute_of_day_et, is_rth, minutes_since_prev,
--            is_session_start, roll_flag, is_long_break, session_no, long_break_no, roll_no,
--            rth_date
--            (rth_date: the session_date of the latest RTH bar at or before this one, i.e. the
--            RTH day a bar belongs to from its 09:30 ET open until the next one, as days since
--            1970-01-01 (a partition key); NULL before the first RTH bar.)
--            (raw_close: the unadjusted close of the contract traded at this bar, the price the
--            market quoted at ts; unlike the back-adjusted prices it never changes when a later
--            roll is added, so features that need a price in points use it (docs/features.md §13).)
--            The counters and rth_date are `running` columns: features.py evaluates them in
--            one pass over the ordered rows (a running window aggregate here costs ~0.2 s per
--            million rows each).
-- running session_no = sum(is_session_start::int)
-- running long_break_no = sum(is_long_break::int)
-- running roll_no = sum(roll_flag::int)
-- running rth_date = max(case when is_rth then date_diff('day', date '1970-01-01', session_date) end)

with bars as (
    select
        symbol,
        ts,
        open,
        high,
        low,
        close,
        volume::double as volume,
        raw_close,
        session_date,
        minute_of_day_et,
        is_rth,
        minutes_since_prev,
        is_session_start,
        roll_flag,
    from query_table($bars_table::varchar)
    where symbol = $symbol::varchar
        and ($until::timestamp is null or ts <= $until::timestamp)
        and ($since::timestamp is null or ts >= $since::timestamp)
)

select
    ts,
    (row_number() over w_all - 1)::bigint as bar_index,
    open,
    high,
    low,
    close,
    volume,
    raw_close,
    lag(close) over w_prev as prev_close,
    lag(high) over w_prev as prev_high,
    lag(low) over w_prev as prev_low,
    session_date,
    minute_of_day_et,
    is_rth,
    minutes_since_prev,
    is_session_start,
    roll_flag,
    coalesce(minutes_since_prev, 0) > $long_break_minutes::double as is_long_break,
from bars
window
    w_all as (order by ts rows between unbounded preceding and current row),
    w_prev as (order by ts rows between 1 preceding and current row)
