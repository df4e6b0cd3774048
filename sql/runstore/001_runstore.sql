-- The run store (track.RunStore): experiments, trials, metrics (long format) and gate flags.
-- `if not exists` because run stores made before migrations already hold these tables.
create table if not exists experiments (
    experiment  varchar primary key,
    kind        varchar not null,          -- 'run' | 'sweep'
    spec_path   varchar,
    spec_yaml   varchar not null,          -- the resolved spec (secrets excluded)
    status      varchar not null,          -- 'running' | 'finished' | 'interrupted' | 'failed'
    created_at  timestamp not null default now(),
    finished_at timestamp,
    wall_seconds double
);
create table if not exists trials (
    experiment  varchar not null,
    trial       varchar not null,          -- '<variant>-s<seed>' or the sweep trial's name
    variant     varchar not null,
    seed        integer not null,
    status      varchar not null,          -- 'running' | 'finished' | 'stopped' | 'retrying' | 'failed'
    params_json varchar not null,          -- dotted-key overrides of this trial (variant, search values)
    spec_yaml   varchar not null,
    dir         varchar not null,
    best_epoch  integer,
    epochs      integer,
    train_seconds double,
    stopped     varchar,
    gated       boolean,
    error       varchar,
    last_step   integer,                   -- last optimizer step logged to W&B (no duplicates on resume)
    updated_at  timestamp not null default now(),
    primary key (experiment, trial)
);
create table if not exists metrics (
    experiment varchar not null,
    trial      varchar not null,
    key        varchar not null,           -- 'test/crps_15m', 'val/picp80_60m', ...
    value      double,
    primary key (experiment, trial, key)
);
create table if not exists gate_flags (
    experiment varchar not null,
    trial      varchar not null,
    gate       varchar not null,
    reason     varchar not null
);
