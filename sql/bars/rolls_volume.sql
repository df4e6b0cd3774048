-- rolls_volume: rolls of a series spliced by volume crossover from per-contract series.
--
-- purpose:   where the spliced series changes contract, and the ratio R of each roll.
-- grain:     one row per roll; ts = first bar of the new contract in _src_1m.
-- inputs:    _src_1m (the spliced series), raw_bars (both contracts' own bars).
-- params:    none.
-- lookahead: none; R uses bars before the roll only.
-- ratio:     both contracts are visible, so R = close_new / close_old at the last minute before
--            the roll in which BOTH traded (the same instant, no splice move). If they never
--            traded in the same minute, it falls back to the splice ratio open_new / close_old.
create or replace temp table _rolls_new as
with keyed as (
    select
        ts,
        open,
        contract,
        instrument_id,
        lag(contract) over w as prev_contract,
        lag(instrument_id) over w as prev_instrument_id,
        lag(close) over w as prev_close,
    from _src_1m
    window w as (order by ts)
),
splices as (
    select *
    from keyed
    where prev_contract is not null and contract <> prev_contract
),
common as (
    select
        s.ts as roll_ts,
        arg_max(n.close / o.close, o.ts) as ratio,
    from splices as s
    join raw_bars as o on o.symbol = s.prev_contract and o.ts < s.ts
    join raw_bars as n on n.symbol = s.contract and n.ts = o.ts
    group by s.ts
)
select
    s.ts as ts,
    s.prev_contract as from_contract,
    s.contract as to_contract,
    s.prev_instrument_id as from_instrument_id,
    s.instrument_id as to_instrument_id,
    coalesce(c.ratio, s.open / s.prev_close) as ratio,
    'volume_crossover' as method,
    false as runs_overlap,
from splices as s
left join common as c on c.roll_ts = s.ts
order by s.ts
