-- _sessions: session fields and flags of one series' adjusted bars; bars_1m and bars_5m share it.
--
-- purpose:   the part of bars_1m and bars_5m that does not depend on the bar length: the
--            Globex session, the gap and outlier flags and the roll flag. bars.py runs the
--            frequency's file first (it creates the temp view _bars_priced), then inserts this
--            select into bars_1m or bars_5m, keeping the target table's columns.
-- grain:     one row per row of _bars_priced, i.e. per (symbol, ts) of the target table.
-- inputs:    _bars_priced: ts (bar START, UTC), open, high, low, close (adjusted), volume,
--            raw_close, adj_factor, contract, instrument_id, first_segment / last_segment (roll
--            segments of the first and last 1-minute bar in the bar; equal for 1-minute bars),
--            n_bars (1-minute bars in the bar), ts_et (ts in America/New_York wall-clock time).
-- params:    $symbol (the name the bars are stored under).
-- lookahead: none; every window ends at the current row or before it.
-- fields:    session_date = ET date of (ts_et + 6 h), so the 18:00 ET open belongs to the next
--            trading day; is_session_start = first bar of a session date (after the daily
--            maintenance break, a weekend or a holiday); gap_flag = more than 15 minutes since
--            the previous bar inside a session (15 minutes or less is tolerated);
--            roll_flag = the bar holds the first 1-minute bar of a new segment (a roll inside
--            the bar, or since the previous bar); outlier_flag = |log-return| > 5 x the RMS of
--            the previous 120 log-returns of this table (needs at least 30 of them). Sessions
--            open on whole hours, so a 5-minute bar never spans two sessions.
--            (docs/rolls_and_sessions.md)
with stepped as (
    select
        *,
        (ts_et + interval 6 hour)::date as session_date,
        date_diff('second', lag(ts) over w, ts) / 60.0 as minutes_since_prev,
        lag((ts_et + interval 6 hour)::date) over w as prev_session_date,
        lag(last_segment) over w as prev_segment,
        ln(close / lag(close) over w) as log_return,
    from _bars_priced
    window w as (order by ts)
),
scored as (
    select
        *,
        sum(log_return * log_return) over w as prev_r2,
        count(log_return) over w as prev_n,
    from stepped
    window w as (order by ts rows between 120 preceding and 1 preceding)
)
select
    $symbol as symbol,
    ts,
    open,
    high,
    low,
    close,
    volume,
    raw_close,
    adj_factor,
    contract,
    instrument_id,
    session_date,
    (hour(ts_et) * 60 + minute(ts_et))::smallint as minute_of_day_et,
    (hour(ts_et) * 60 + minute(ts_et)) between 570 and 959 as is_rth,
    minutes_since_prev,
    prev_session_date is distinct from session_date as is_session_start,
    coalesce(prev_session_date = session_date and minutes_since_prev > 15, false) as gap_flag,
    coalesce(first_segment <> last_segment or prev_segment <> last_segment, false) as roll_flag,
    coalesce(prev_n >= 30 and abs(log_return) > 5.0 * sqrt(prev_r2 / prev_n), false) as outlier_flag,
    n_bars,
from scored
