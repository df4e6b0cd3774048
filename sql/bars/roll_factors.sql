-- bars/roll_factors: the back-adjustment factor in force before each roll of one series.
--
-- Grain:   one row per roll. A bar with roll[k-1].ts <= ts < roll[k].ts is multiplied by
--          factor_before[k] = R_k * R_(k+1) * ... * R_n; bars after the last roll by 1.0.
-- Inputs:  rolls. Params: $symbol.
create or replace temp table _roll_factors as
select
    ts,
    row_number() over (order by ts) as roll_no,
    product(ratio) over (order by ts desc rows between unbounded preceding and current row) as factor_before,
from rolls
where symbol = $symbol
order by ts
