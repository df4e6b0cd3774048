-- bars/bars_1m: back-adjusted 1-minute bars of one continuous series, with session fields.
--
-- Grain:   one row per (symbol, ts); ts = bar START in UTC. Rows inserted in ts order.
-- Inputs:  _src_1m (raw spliced series), _segments, _et_years.
-- Params:  $symbol (the name the bars are stored under).
-- Fields:  session_date = ET date of (ts_et + 6 h), so the 18:00 ET open belongs to the next
--          trading day; is_session_start = first bar of a session date (after the daily
--          maintenance break, a weekend or a holiday); gap_flag = more than 15 minutes since
--          the previous bar inside a session (15 minutes or less is tolerated);
--          outlier_flag = |log-return| > 5 x the RMS of the previous 120 log-returns (needs
--          at least 30 of them). Every window ends at the current row (no lookahead).
insert into bars_1m
with adjusted as (
    select
        s.ts as ts,
        s.open * g.factor as open,
        s.high * g.factor as high,
        s.low * g.factor as low,
        s.close * g.factor as close,
        s.volume as volume,
        s.close as raw_close,
        g.factor as adj_factor,
        s.contract as contract,
        s.instrument_id as instrument_id,
        g.segment as segment,
        s.ts + case when s.ts >= y.dst_start and s.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
    from _src_1m as s
    join _segments as g
        on s.instrument_id is not distinct from g.instrument_id
        and s.contract is not distinct from g.contract
        and s.ts >= g.start_ts
        and s.ts < g.end_ts
    join _et_years as y on y.year = year(s.ts)
),
stepped as (
    select
        *,
        (ts_et + interval 6 hour)::date as session_date,
        date_diff('second', lag(ts) over w, ts) / 60.0 as minutes_since_prev,
        lag((ts_et + interval 6 hour)::date) over w as prev_session_date,
        lag(segment) over w as prev_segment,
        ln(close / lag(close) over w) as log_return,
    from adjusted
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
    coalesce(prev_segment <> segment, false) as roll_flag,
    coalesce(prev_n >= 30 and abs(log_return) > 5.0 * sqrt(prev_r2 / prev_n), false) as outlier_flag,
from scored
order by ts
