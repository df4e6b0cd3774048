-- The rolling-origin fold of a trial (splits.folds): variants x seeds x folds are the unit of work,
-- and the report pools every fold's test samples. 0 for runs with one fold and for older stores.
alter table trials add column if not exists fold integer default 0;
