-- _targets: what a forward target crosses, as running event counters per bar.
--
-- purpose:   the definition of the target flags. A target at bar t is the forward log-return
--            ln(close[t+h] / close[t]) of the back-adjusted close h bars ahead; features.py
--            shifts the columns below by h (a pure index shift) and sets a flag bit when a
--            counter differs between t and t+h:
--              1 = crosses a session end / the maintenance break (session_no changes),
--              2 = crosses a weekend or holiday (a gap longer than $long_break_minutes),
--              4 = crosses a roll (roll_no changes).
--            The counters only look back; the look-ahead is the target itself, by design.
-- grain:     one row per (symbol, ts) of feature_input.
-- inputs:    feature_input (sql/features/_input.sql).
-- params:    $long_break_minutes (double): a gap between consecutive bars longer than this is a
--            weekend or holiday; the daily maintenance break is 60 minutes, a weekend ~49 hours,
--            and a holiday halt (e.g. Thanksgiving 13:00-18:00 ET) 5 hours, so 240 splits them.
-- lookback:  the whole series (running counts)
-- lookahead: none; windows end at the current row.
-- columns:   bar_index, log_close, session_no, long_break_no, roll_no

select
    bar_index,
    ln(close) as log_close,
    sum(is_session_start::int) over w_all as session_no,
    sum((coalesce(minutes_since_prev, 0) > $long_break_minutes::double)::int) over w_all as long_break_no,
    sum(roll_flag::int) over w_all as roll_no,
from feature_input
window
    w_all as (partition by symbol order by ts rows between unbounded preceding and current row)
