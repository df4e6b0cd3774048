-- rolls_instrument_windowed: rolls of a continuous series, bar by bar (the fallback).
--
-- purpose:   when a contract reappears after a roll back (bars/rolls_instrument sees its runs
--            overlap), the rolls are where instrument_id (or the contract code when there is
--            no id) changes between consecutive bars.
-- grain:     one row per roll; ts = first bar of the new contract.
-- inputs:    _src_1m.
-- params:    none.
-- lookahead: none; lag() only.
-- ratio:     only one contract is visible at each instant, so R is measured across the splice:
--            R = open(first bar of the new contract) / close(last bar of the old contract),
--            with the error described in bars/rolls_instrument.
create or replace temp table _rolls_new as
with keyed as (
    select
        ts,
        open,
        close,
        instrument_id,
        contract,
        coalesce(instrument_id::varchar, contract) as contract_key,
        lag(coalesce(instrument_id::varchar, contract)) over w as prev_key,
        lag(instrument_id) over w as prev_instrument_id,
        lag(contract) over w as prev_contract,
        lag(close) over w as prev_close,
    from _src_1m
    window w as (order by ts)
)
select
    ts,
    prev_contract as from_contract,
    contract as to_contract,
    prev_instrument_id as from_instrument_id,
    instrument_id as to_instrument_id,
    open / prev_close as ratio,
    'instrument_id' as method,
    false as runs_overlap,
from keyed
where contract_key is not null and prev_key is not null and contract_key <> prev_key
order by ts
