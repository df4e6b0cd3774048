-- Seed ensembles (docs/experiments.md §16): a row `<variant>-ensemble[-f<k>]` is not trained; it
-- averages the quantiles of its member trials, listed here as a JSON array of trial names. Null for
-- a trained trial. Its steps, epochs and best step stay null: its budget is its members'.
alter table trials add column if not exists members varchar;
