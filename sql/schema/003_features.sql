-- 003_features: bookkeeping for materialized feature tables (nqexp/features.py).
--
-- Each (feature set, symbol) has one current feature table named
--   features_<set>_<symbol slug>_<sql hash>
-- where the hash covers the set definition and the text of every SQL file it runs (plus the
-- filter engine's version). A table is rebuilt only when that hash or the bars' fingerprint
-- changes; the superseded table is dropped.

create table feature_builds (
    set_name         varchar   not null,
    symbol           varchar   not null,
    table_name       varchar   not null,
    sql_hash         varchar   not null,   -- sha256 (hex) of the set's definition and SQL text
    bars_fingerprint varchar   not null,   -- row count, first/last ts and an order-free hash of the bars
    bars_table       varchar   not null,
    n_rows           bigint    not null,
    n_features       integer   not null,
    warmup_bars      integer   not null,
    seconds          double    not null,
    built_at         timestamp not null default now(),
    primary key (set_name, symbol)
);
