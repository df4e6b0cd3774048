-- source_per_contract: a continuous raw 1-minute series spliced from per-contract series.
--
-- purpose:   splice per-contract series (e.g. Lean's ESZ13, ESH14) into one continuous raw
--            series by the daily volume crossover.
-- grain:     one row per ts: the bar of the contract that is active in that Globex session.
-- inputs:    raw_bars (series whose name matches $pattern), _et_years.
-- params:    $pattern: regex with groups (month code)(year digits), e.g.
--            '^ES([FGHJKMNQUVXZ])([0-9]{1,2})$'.
-- lookahead: none; the active contract of a session comes from finished sessions only, and
--            every window ends before the current row.
-- rule:      the leader of a session is the contract with the most volume in it. The active
--            contract of session s is the latest-expiring leader of the sessions BEFORE s (so
--            the choice uses only finished sessions, like Databento's volume roll, and never
--            rolls back); the first session in the data uses its own leader.
create or replace temp table _src_1m as
with parsed as (
    select
        r.symbol as symbol,
        r.ts as ts,
        r.open as open,
        r.high as high,
        r.low as low,
        r.close as close,
        r.volume as volume,
        r.instrument_id as instrument_id,
        coalesce(r.contract, r.symbol) as contract,
        (r.ts + case when r.ts >= y.dst_start and r.ts < y.dst_end then y.dst_off else y.std_off end
            + interval 6 hour)::date as session_date,
        regexp_extract(r.symbol, $pattern, 1) as month_code,
        regexp_extract(r.symbol, $pattern, 2) as year_code,
    from raw_bars as r
    join _et_years as y on y.year = year(r.ts)
    where regexp_full_match(r.symbol, $pattern)
),
keyed as (
    select
        *,
        case
            when length(year_code) = 2 then 2000 + year_code::integer
            -- One-digit years (CME style 'NQZ5'): the nearest decade that is not long expired.
            when year(session_date) - year(session_date) % 10 + year_code::integer < year(session_date) - 1
                then year(session_date) - year(session_date) % 10 + year_code::integer + 10
            else year(session_date) - year(session_date) % 10 + year_code::integer
        end * 12 + strpos('FGHJKMNQUVXZ', month_code) as expiry_key,
    from parsed
),
daily as (
    select
        session_date,
        expiry_key,
        sum(volume) as volume,
    from keyed
    group by session_date, expiry_key
),
leaders as (
    select
        session_date,
        first(expiry_key order by volume desc, expiry_key asc) as leader_key,
    from daily
    group by session_date
),
active as (
    select
        session_date,
        coalesce(
            max(leader_key) over (order by session_date rows between unbounded preceding and 1 preceding),
            leader_key
        ) as active_key,
    from leaders
)
select
    k.ts as ts,
    k.open as open,
    k.high as high,
    k.low as low,
    k.close as close,
    k.volume as volume,
    k.instrument_id as instrument_id,
    k.contract as contract,
from keyed as k
join active as a on a.session_date = k.session_date and a.active_key = k.expiry_key
order by k.ts
