-- 005_rolls_detection: rolls found from prices in continuous series without contract ids
-- (nqexp/bars.py, sql/bars/rolls_price_jump.sql; docs/rolls_and_sessions.md §6).
--
-- rolls.method gains 'price_jump' (a splice found from the prices alone) and 'given' (a roll
-- supplied with `nqexp data bars --rolls FILE`), next to 'instrument_id' and 'volume_crossover'.

-- price_jump: the robust z of the splice (its log-jump over the local, time-of-day-adjusted
-- 1-minute sigma), i.e. the detector's confidence. NULL for the other methods.
alter table rolls add column z double;
-- price_jump and given: the quarterly expiry whose roll window holds the roll. NULL otherwise.
alter table rolls add column expiry date;

-- What the last bars build of a series could not decide about its rolls: a roll window without a
-- clear splice, or a long continuous series without any roll. Replaced by every build.
create table roll_warnings (
    symbol   varchar   not null,
    expiry   date,                  -- the roll window's expiry; NULL for a warning about the whole series
    message  varchar   not null,    -- one line, as `nqexp data bars` and `nqexp data rolls` print it
    built_at timestamp not null default now()
);
