-- bars/bars_5m: back-adjusted 5-minute bars of one continuous series, with session fields.
--
-- Grain:   one row per (symbol, ts); ts = bar START in UTC, a multiple of 5 minutes. The bar
--          aggregates the 1-minute bars with ts in [ts, ts + 5 minutes): open = first open,
--          high = max, low = min, close = last close, volume = sum, by ORDERED aggregates on
--          ts (arg_min/arg_max; unordered first/last would not be guaranteed).
-- Inputs:  _src_1m, _segments, _et_years. Params: $symbol.
-- Prices are adjusted per 1-minute bar before aggregating, so a bucket that straddles a roll
-- still combines consistent prices. Session fields as in bars_1m, computed on the 5m stamps
-- (sessions open on whole hours, so a 5m bucket never spans two sessions); the outlier RMS
-- uses the previous 120 five-minute log-returns.
insert into bars_5m
with adjusted as (
    select
        time_bucket(interval 5 minute, s.ts) as bucket,
        s.ts as ts,
        s.open as raw_open,
        s.high * g.factor as high,
        s.low * g.factor as low,
        s.close as raw_close,
        s.volume as volume,
        g.segment as segment,
    from _src_1m as s
    join _segments as g
        on s.instrument_id is not distinct from g.instrument_id
        and s.contract is not distinct from g.contract
        and s.ts >= g.start_ts
        and s.ts < g.end_ts
),
raw_buckets as (
    -- Segments only grow with ts, so min/max(segment) are the first and last bar's segments.
    select
        bucket as ts,
        arg_min(raw_open, ts) as raw_open,
        max(high) as high,
        min(low) as low,
        arg_max(raw_close, ts) as raw_close,
        sum(volume)::bigint as volume,
        min(segment) as first_segment,
        max(segment) as last_segment,
        count(*)::integer as n_bars,
    from adjusted
    group by bucket
),
buckets as (
    -- open/close = the first/last 1-minute bar's adjusted price (the same product as in bars_1m).
    select
        b.ts as ts,
        b.raw_open * gf.factor as open,
        b.high as high,
        b.low as low,
        b.raw_close * gl.factor as close,
        b.volume as volume,
        b.raw_close as raw_close,
        gl.factor as adj_factor,
        gl.contract as contract,
        gl.instrument_id as instrument_id,
        b.first_segment as first_segment,
        b.last_segment as last_segment,
        b.n_bars as n_bars,
    from raw_buckets as b
    join _segments as gf on gf.segment = b.first_segment
    join _segments as gl on gl.segment = b.last_segment
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
order by ts
