-- rolls_instrument: rolls of a continuous series (fast path).
--
-- purpose:   the rolls of a continuous series, where instrument_id (or the contract code when
--            there is no id) changes. One hash aggregate per contract instead of a window over
--            every bar; bars.py checks that the contracts' runs do not overlap (a series that
--            rolls back to an earlier contract uses bars/rolls_instrument_windowed instead).
-- grain:     one row per roll; ts = first bar of the new contract.
-- inputs:    _src_1m.
-- params:    none.
-- lookahead: none; a roll is measured from the bars on both sides of it, and it changes no
--            price before bars/segments applies it.
-- ratio:     only one contract is visible at each instant, so R is measured across the splice:
--            R = open(first bar of the new contract) / close(last bar of the old contract).
--            Its error is the tick rounding of both prints (<= 0.125 / price each) plus any
--            real move between those two prints (normally none: adjacent prints, or prints
--            separated only by the maintenance break).
create or replace temp table _rolls_new as
with runs as (
    select
        instrument_id,
        contract,
        min(ts) as first_ts,
        max(ts) as last_ts,
        arg_min(open, ts) as first_open,
        arg_max(close, ts) as last_close,
    from _src_1m
    where instrument_id is not null or contract is not null
    group by instrument_id, contract
),
ordered as (
    select
        *,
        lag(instrument_id) over w as prev_instrument_id,
        lag(contract) over w as prev_contract,
        lag(last_ts) over w as prev_last_ts,
        lag(last_close) over w as prev_last_close,
    from runs
    window w as (order by first_ts)
)
select
    first_ts as ts,
    prev_contract as from_contract,
    contract as to_contract,
    prev_instrument_id as from_instrument_id,
    instrument_id as to_instrument_id,
    first_open / prev_last_close as ratio,
    'instrument_id' as method,
    prev_last_ts >= first_ts as runs_overlap,
from ordered
where prev_last_ts is not null
order by ts
