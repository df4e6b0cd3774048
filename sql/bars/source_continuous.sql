-- bars/source_continuous: the raw 1-minute series of one continuous symbol (NQ.v.0, NQ.demo, NQ).
--
-- Grain:   one row per ts (raw_bars is unique on (symbol, ts)).
-- Inputs:  raw_bars.
-- Params:  $symbol.
create or replace temp table _src_1m as
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
where symbol = $symbol
