-- Where an experiment's results came from: a JSON object (git commit and dirty flag, package
-- versions, bars fingerprint), written by the driver with RunStore.start_experiment.
alter table experiments add column if not exists provenance varchar;
