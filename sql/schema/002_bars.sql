-- 002_bars: continuous contracts (rolls), back-adjusted 1m/5m bars with session fields,
-- and the Databento download ledger. Built by nqexp/bars.py and nqexp/download.py.
--
-- Stamp convention: every `ts` is the bar START in UTC (naive timestamp). A 1-minute bar at
-- 14:30 covers [14:30, 14:31); a 5-minute bar at 14:30 aggregates the 1-minute bars with
-- ts in [14:30, 14:35) and is complete at 14:35.
--
-- Adjustment: ratio back-adjustment. At a roll at `ts` (first bar of the new contract) with
-- ratio R = P_new / P_old, every price before `ts` is multiplied by R (and by the R of every
-- later roll). adjusted = raw * adj_factor; adj_factor = 1.0 after the last roll. Raw prices
-- stay in raw_bars (and raw_close here); bars_* are rebuilt from raw_bars + rolls at any time.

-- One row per detected (or given) roll of a continuous series.
create table rolls (
    symbol             varchar   not null,  -- the continuous series ('NQ.v.0', 'NQ.demo', or a root like 'ES')
    ts                 timestamp not null,  -- first bar of the new contract (UTC, bar start)
    from_contract      varchar,
    to_contract        varchar,
    from_instrument_id bigint,
    to_instrument_id   bigint,
    ratio              double    not null,  -- R = P_new / P_old at the roll (see bars.py for how it is measured)
    method             varchar   not null,  -- 'instrument_id' | 'volume_crossover' | 'given'
    primary key (symbol, ts)
);

-- Back-adjusted 1-minute bars of one continuous series, with session fields.
create table bars_1m (
    symbol             varchar   not null,
    ts                 timestamp not null,  -- bar START, UTC
    open               double    not null,  -- ratio back-adjusted
    high               double    not null,
    low                double    not null,
    close              double    not null,
    volume             bigint    not null,
    raw_close          double    not null,  -- unadjusted close of the contract traded
    adj_factor         double    not null,  -- adjusted = raw * adj_factor (1.0 after the last roll)
    contract           varchar,
    instrument_id      bigint,
    session_date       date      not null,  -- Globex trading date: bars from 18:00 ET belong to the next day
    minute_of_day_et   smallint  not null,  -- bar start in America/New_York, 0..1439
    is_rth             boolean   not null,  -- 09:30 <= ET bar start < 16:00
    minutes_since_prev double,              -- stamp difference to the previous bar; NULL on the first bar
    is_session_start   boolean   not null,  -- first bar of a Globex session (after the maintenance break, a weekend or a holiday)
    gap_flag           boolean   not null,  -- minutes_since_prev > 15 inside a session
    roll_flag          boolean   not null,  -- first bar of a new contract
    outlier_flag       boolean   not null   -- |log-return| > 5 x rolling RMS of the previous 120 log-returns
);

-- Back-adjusted 5-minute bars: open=first, high=max, low=min, close=last, volume=sum of the
-- 1-minute bars in [ts, ts + 5 minutes), by ordered aggregates on ts.
create table bars_5m (
    symbol             varchar   not null,
    ts                 timestamp not null,  -- bar START, UTC (multiple of 5 minutes)
    open               double    not null,
    high               double    not null,
    low                double    not null,
    close              double    not null,
    volume             bigint    not null,
    raw_close          double    not null,
    adj_factor         double    not null,
    contract           varchar,
    instrument_id      bigint,
    session_date       date      not null,
    minute_of_day_et   smallint  not null,
    is_rth             boolean   not null,
    minutes_since_prev double,
    is_session_start   boolean   not null,
    gap_flag           boolean   not null,
    roll_flag          boolean   not null,  -- the bar holds the first 1-minute bar of a new contract
    outlier_flag       boolean   not null,
    n_bars             integer   not null   -- 1-minute bars aggregated (1..5)
);

-- Databento chunks: one row per requested [start, end) window. The chunk file on disk is the
-- truth; this ledger says which files were fully ingested, so a resumed download skips them.
create table download_chunks (
    dataset     varchar   not null,
    symbol      varchar   not null,
    schema      varchar   not null,
    stype_in    varchar   not null,
    chunk_start timestamp not null,         -- inclusive, UTC
    chunk_end   timestamp not null,         -- exclusive, UTC
    path        varchar   not null,
    sha256      varchar   not null,
    bytes       bigint    not null,
    records     bigint    not null,
    ingested_at timestamp not null default now(),
    primary key (dataset, symbol, schema, stype_in, chunk_start, chunk_end)
);
