-- Per-epoch training history of each trial (train loss, val CRPS per horizon, lr, ...), long
-- format, written by the driver from each epoch's Tune report (RunStore.write_epoch). A resumed
-- trial that reports an epoch again replaces its values: one row per (trial, epoch, key).
create table if not exists epochs (
    experiment varchar not null,
    trial      varchar not null,
    epoch      integer not null,
    key        varchar not null,           -- 'train/loss_epoch', 'val/crps', 'val/crps_15m', 'train/lr', ...
    value      double,
    primary key (experiment, trial, epoch, key)
);
