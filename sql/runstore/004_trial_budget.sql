-- A trial's training budget as spent: optimizer steps taken and the step of the best checkpoint.
-- With `stopped` (why it stopped: max_steps, max_epochs, early_stopping, nonfinite, or time_budget,
-- which marks it truncated) the report can say when a comparison's trials trained unequally.
alter table trials add column if not exists steps integer;
alter table trials add column if not exists best_step integer;
