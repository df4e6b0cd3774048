-- Demo generator v2 (nqexp/demo.py): the latent state after each bar, so the causal Monte Carlo
-- oracle can simulate the true dynamics forward from any origin (docs/metrics.md, oracles).
alter table demo_truth add column k bigint;         -- the bar's index in the generated minute grid (absent minutes count)
alter table demo_truth add column h_slow double;    -- slow (daily) log-volatility component
alter table demo_truth add column h_fast double;    -- fast (intraday, EGARCH) log-volatility component before this bar's shock
alter table demo_truth add column eps double;       -- this bar's unit-variance shock e_t
alter table demo_truth add column mr double;        -- mean-reversion state m_t (shock sum, includes e_t)
