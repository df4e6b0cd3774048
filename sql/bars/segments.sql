-- segments: the contract segments between rolls of one series and their back-adjustment factor.
--
-- purpose:   bars find their segment with a hash join on the contract (plus the time range,
--            which separates two runs of the same contract), which is much cheaper than an
--            ASOF join per bar.
-- grain:     one row per segment: segment 0 before the first roll, segment k after roll k.
--            factor(k) = R_(k+1) * ... * R_n (product of the ratios of all LATER rolls);
--            factor(n) = 1.0 after the last roll. Bars in [start_ts, end_ts) of that contract.
-- inputs:    rolls, _src_1m (only when there are no rolls).
-- params:    $symbol.
-- lookahead: by design: a segment's factor is the product of the LATER rolls' ratios (lead and
--            a descending window), which is what ratio back-adjustment means; a roll appended
--            later re-adjusts all history (docs/rolls_and_sessions.md).
create or replace temp table _segments as
with r as (
    select
        ts,
        from_contract,
        to_contract,
        from_instrument_id,
        to_instrument_id,
        row_number() over (order by ts) as k,
        product(ratio) over (order by ts desc rows between unbounded preceding and current row) as factor_before,
        lead(ts) over (order by ts) as next_ts,
    from rolls
    where symbol = $symbol
),
with_next as (
    select
        *,
        lead(factor_before) over (order by ts) as factor_after,
    from r
)
select
    0 as segment,
    from_instrument_id as instrument_id,
    from_contract as contract,
    '-infinity'::timestamp as start_ts,
    ts as end_ts,
    factor_before as factor,
from with_next
where k = 1
union all
select
    k as segment,
    to_instrument_id as instrument_id,
    to_contract as contract,
    ts as start_ts,
    coalesce(next_ts, 'infinity'::timestamp) as end_ts,
    coalesce(factor_after, 1.0) as factor,
from with_next
union all
select distinct
    0 as segment,
    instrument_id,
    contract,
    '-infinity'::timestamp as start_ts,
    'infinity'::timestamp as end_ts,
    1.0 as factor,
from _src_1m
where not exists (select 1 from r)
