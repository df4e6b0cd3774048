-- bars/bars_5m: back-adjusted 5-minute bars of one continuous series, with session fields.
--
-- Grain:   one row per (symbol, ts); ts = bar START in UTC, a multiple of 5 minutes. The bar
--          aggregates the 1-minute bars with ts in [ts, ts + 5 minutes): open = first open,
--          high = max, low = min, close = last close, volume = sum, by ORDERED aggregates on
--          ts (arg_min/arg_max; unordered first/last would not be guaranteed).
-- Inputs:  _src_1m, _roll_factors, _et_years. Params: $symbol.
-- Prices are adjusted per 1-minute bar before aggregating, so a bucket that straddles a roll
-- still combines consistent prices. Session fields as in bars_1m, computed on the 5m stamps
-- (sessions open on whole hours, so a 5m bucket never spans two sessions); the outlier RMS
-- uses the previous 120 five-minute log-returns.
insert into bars_5m
with adjusted as (
    select
        time_bucket(interval 5 minute, s.ts) as bucket,
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
    from _src_1m as s
    asof left join _roll_factors as f on s.ts < f.ts
),
buckets as (
    select
        bucket as ts,
        arg_min(open, ts) as open,
        max(high) as high,
        min(low) as low,
        arg_max(close, ts) as close,
        sum(volume)::bigint as volume,
        arg_max(raw_close, ts) as raw_close,
        arg_max(adj_factor, ts) as adj_factor,
        arg_max(contract, ts) as contract,
        arg_max(instrument_id, ts) as instrument_id,
        min(segment) as first_segment,
        max(segment) as last_segment,
        count(*)::integer as n_bars,
    from adjusted
    group by bucket
),
local as (
    select
        b.*,
        b.ts + case when b.ts >= y.dst_start and b.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
    from buckets as b
    join _et_years as y on y.year = year(b.ts)
),
stepped as (
    select
        *,
        (ts_et + interval 6 hour)::date as session_date,
        date_diff('second', lag(ts) over w, ts) / 60.0 as minutes_since_prev,
        lag((ts_et + interval 6 hour)::date) over w as prev_session_date,
        lag(last_segment) over w as prev_segment,
        ln(close / lag(close) over w) as log_return,
    from local
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
    coalesce(first_segment <> last_segment or prev_segment <> last_segment, false) as roll_flag,
    coalesce(prev_n >= 30 and abs(log_return) > 5.0 * sqrt(prev_r2 / prev_n), false) as outlier_flag,
    n_bars,
from scored
order by ts
