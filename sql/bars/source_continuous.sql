-- source_continuous: the raw 1-minute series of one continuous symbol (NQ.v.0, NQ.demo, NQ).
--
-- purpose:   the input of the rolls and bars files, as a view, not a copy: copying 5M rows
--            would cost ~1 s.
-- grain:     one row per ts (raw_bars is unique on (symbol, ts)).
-- inputs:    raw_bars, _series (one row: the symbol; bars.py fills it).
-- params:    none (a view cannot hold a $parameter; _series carries the symbol).
-- lookahead: none; a plain filter.
create or replace temp view _src_1m as
select
    ts,
    open,
    high,
    low,
    close,
    volume,
    instrument_id,
    contract,
from raw_bars
where symbol = (select symbol from _series)
