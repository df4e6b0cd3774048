-- bars/bars_1m: back-adjusted 1-minute bars of one continuous series, with session fields.
--
-- Grain:   one row per (symbol, ts); ts = bar START in UTC. Rows inserted in ts order.
-- Inputs:  _src_1m (raw spliced series), _roll_factors, _et_years.
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
        s.open * coalesce(f.factor_before, 1.0) as open,
        s.high * coalesce(f.factor_before, 1.0) as high,
        s.low * coalesce(f.factor_before, 1.0) as low,
        s.close * coalesce(f.factor_before, 1.0) as close,
        s.volume as volume,
        s.close as raw_close,
        coalesce(f.factor_before, 1.0) as adj_factor,
        s.contract as contract,
        s.instrument_id as instrument_id,
        coalesce(f.roll_no, 9223372036854775807) as segment,
        s.ts + case when s.ts >= y.dst_start and s.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
    from _src_1m as s
    asof left join _roll_factors as f on s.ts < f.ts
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
cumulative as (
    select
        *,
        sum(coalesce(log_return * log_return, 0.0)) over w as cum_r2,
        count(log_return) over w as cum_n,
    from stepped
    window w as (order by ts rows between unbounded preceding and current row)
),
scored as (
    select
        *,
        lag(cum_r2) over w - coalesce(lag(cum_r2, 121) over w, 0.0) as prev_r2,
        lag(cum_n) over w - coalesce(lag(cum_n, 121) over w, 0) as prev_n,
    from cumulative
    window w as (order by ts)
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
