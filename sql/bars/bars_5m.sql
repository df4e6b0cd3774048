-- bars_5m: back-adjusted 5-minute bars of one continuous series (the prices; sessions follow).
--
-- purpose:   aggregate the adjusted 1-minute bars into 5-minute bars and stamp them in ET.
--            bars.py then inserts bars/_sessions (session fields and flags) over this view
--            into bars_5m, in ts order; the outlier RMS there uses the previous 120
--            five-minute log-returns.
-- grain:     one row per (symbol, ts); ts = bar START in UTC, a multiple of 5 minutes. The bar
--            aggregates the 1-minute bars with ts in [ts, ts + 5 minutes): open = first open,
--            high = max, low = min, close = last close, volume = sum, by ORDERED aggregates on
--            ts (arg_min/arg_max; unordered first/last would not be guaranteed).
-- inputs:    _src_1m, _segments, _et_years.
-- params:    none (a view cannot hold a $parameter; _sessions takes $symbol).
-- lookahead: none; a bar reads only the 1-minute bars inside it.
-- adjust:    prices are adjusted per 1-minute bar before aggregating, so a bucket that
--            straddles a roll still combines consistent prices.
-- columns:   ts, open, high, low, close, volume, raw_close, adj_factor, contract,
--            instrument_id, first_segment, last_segment, n_bars, ts_et (as bars/_sessions reads)
create or replace temp view _bars_priced as
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
)
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
    b.ts + case when b.ts >= y.dst_start and b.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
from raw_buckets as b
join _segments as gf on gf.segment = b.first_segment
join _segments as gl on gl.segment = b.last_segment
join _et_years as y on y.year = year(b.ts)
