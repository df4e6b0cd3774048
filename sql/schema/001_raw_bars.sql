-- 001_raw_bars: raw 1-minute bars exactly as a vendor or the demo generator gave them.
--
-- Grain: one row per (symbol, ts).
--   symbol  the series as imported: a continuous symbol ('NQ.v.0'), the demo series
--           ('NQ.demo'), a single contract ('ESZ13'), or the user's --symbol for files.
--   ts      bar START time in UTC (timestamp without zone, always UTC). A 1-minute bar
--           stamped 14:30 covers [14:30, 14:31) and is complete at 14:31.
-- Prices are raw and unadjusted: continuous series keep their roll jumps here;
-- bars.py builds the back-adjusted series from this table.
--
-- (symbol, ts) is unique, but enforced by ingest.py's anti-join upsert rather than a PRIMARY
-- KEY: on 5.3M demo rows the ART index made the write 1.6x slower and the file 60% larger
-- (measured: 24.7 s / 866 MB with it, 15.4 s / 542 MB without). tests/test_ingest.py checks
-- uniqueness after every kind of import.

create table raw_bars (
    symbol        varchar   not null,
    ts            timestamp not null,
    open          double    not null,
    high          double    not null,
    low           double    not null,
    close         double    not null,
    volume        bigint    not null,
    instrument_id bigint,               -- the vendor's id of the actual contract (changes at rolls)
    contract      varchar,              -- contract code when known, e.g. 'NQZ3'
    source        varchar   not null,   -- file path, 'demo:seed=0' or 'databento:<chunk>'
    ingested_at   timestamp not null default now()
);

-- Every input row that did not make it into raw_bars, with the reason. Nothing a user
-- gave is silently dropped. Re-importing the same source replaces its rejects.
create table rejected_bars (
    source      varchar   not null,
    row_number  bigint    not null,     -- 1-based data row in the file (header not counted)
    reason      varchar   not null,
    raw         varchar,                -- the row as JSON, as it was read
    rejected_at timestamp not null default now()
);

-- One row per import call: what it read and what it changed.
create table imports (
    source      varchar   not null,
    sha256      varchar,
    format      varchar   not null,
    symbol      varchar,
    rows_read   bigint    not null,
    new_rows    bigint    not null,
    unchanged   bigint    not null,
    changed     bigint    not null,
    duplicates  bigint    not null,
    rejected    bigint    not null,
    seconds     double    not null,
    imported_at timestamp not null default now()
);

-- The demo generator's ground truth, one row per generated bar, so later stages can run
-- known-answer tests (the model must learn sigma; adjustment must recover true returns).
create table demo_truth (
    symbol      varchar   not null,
    ts          timestamp not null,
    contract    varchar   not null,
    sigma       double    not null,     -- true conditional std of this bar's 1-minute log-return
    drift       double    not null,     -- true conditional mean of this bar's 1-minute log-return
    close_exact double    not null      -- the contract's close before rounding to the 0.25 tick
);

-- The demo generator's true rolls: at `ts` (the first bar of the new contract) the
-- series switches contracts; ratio = F_new / F_old at the previous bar's close, exactly.
create table demo_rolls (
    symbol        varchar   not null,
    ts            timestamp not null,
    from_contract varchar   not null,
    to_contract   varchar   not null,
    ratio         double    not null,
    primary key (symbol, ts)
);
