-- bars_1m: back-adjusted 1-minute bars of one continuous series (the prices; sessions follow).
--
-- purpose:   adjust every raw 1-minute bar by its roll segment's factor and stamp it in ET.
--            bars.py then inserts bars/_sessions (session fields and flags) over this view
--            into bars_1m, in ts order.
-- grain:     one row per (symbol, ts); ts = bar START in UTC.
-- inputs:    _src_1m (raw spliced series), _segments, _et_years.
-- params:    none (a view cannot hold a $parameter; _sessions takes $symbol).
-- lookahead: none; each row reads only its own raw bar (the factors themselves come from
--            bars/segments).
-- columns:   ts, open, high, low, close, volume, raw_close, adj_factor, contract,
--            instrument_id, first_segment, last_segment, n_bars, ts_et (as bars/_sessions reads)
create or replace temp view _bars_priced as
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
    g.segment as first_segment,
    g.segment as last_segment,
    1 as n_bars,
    s.ts + case when s.ts >= y.dst_start and s.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
from _src_1m as s
join _segments as g
    on s.instrument_id is not distinct from g.instrument_id
    and s.contract is not distinct from g.contract
    and s.ts >= g.start_ts
    and s.ts < g.end_ts
join _et_years as y on y.year = year(s.ts)
