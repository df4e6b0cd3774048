-- rolls_price_jump: splice candidates of a continuous series that has no contract ids.
--
-- purpose:   a continuous file without instrument_id or contract codes still jumps by the
--            calendar spread ln(F_new / F_old) at each roll. In every roll window (the sessions
--            from about two weeks before a quarterly expiry to the expiry) this scores the jump
--            into each 1-minute bar as a robust z against the local, time-of-day-adjusted
--            1-minute sigma and keeps the strongest candidates; bars.py accepts one or warns
--            (docs/rolls_and_sessions.md §6).
-- grain:     one row per (window, candidate bar), the $top_k largest |z| of each window;
--            ts = the candidate bar (the first bar of the new contract if it is the splice).
-- inputs:    _src_1m, _et_years, _roll_windows (expiry, first_session, last_session,
--            scan_start, scan_end: the window's sessions and the UTC span scanned around them,
--            two sessions wider on each side; bars.py fills it).
-- params:    $top_k (candidates kept per window).
-- lookahead: by design: sigma at a bar is measured from the sessions on BOTH sides of it (two
--            before, two after), like every roll measurement; rolls only set the ratio
--            back-adjustment, which is itself a whole-history transform
--            (docs/rolls_and_sessions.md §3).
-- scale:     r = ln(close / previous close). The bucket is the 30-minute ET slot of the bar, or
--            'session open' for the first bar of a session (its return spans the break).
--            sigma = 1.4826 x median |r| of that bucket over the window's sessions within
--            +-2 of the bar's session (the median ignores the splice itself); when that median
--            is 0 (a quiet tick grid), 1.2533 x mean |r| instead.
--            ratio = open(bar) / close(previous bar), as bars/rolls_instrument measures it, and
--            z = ln(ratio) / sigma: a splice lies entirely between those two prints (they are of
--            different contracts), while the bar's own move, close / open, is one contract's
--            noise. Between one minute's last trade and the next one's first a real market
--            barely moves, so z stays small except at a splice.
create or replace temp table _jump_candidates as
with scanned as (
    select
        w.expiry as expiry,
        w.first_session as first_session,
        w.last_session as last_session,
        s.ts as ts,
        s.open as open,
        s.close as close,
        s.ts + case when s.ts >= y.dst_start and s.ts < y.dst_end then y.dst_off else y.std_off end as ts_et,
    from _src_1m as s
    join _roll_windows as w on s.ts >= w.scan_start and s.ts < w.scan_end
    join _et_years as y on y.year = year(s.ts)
),
stepped as (
    select
        *,
        (ts_et + interval 6 hour)::date as session_date,
        lag(close) over w as prev_close,
        lag((ts_et + interval 6 hour)::date) over w as prev_session_date,
    from scanned
    window w as (partition by expiry order by ts)
),
returns as (
    select
        *,
        ln(close / prev_close) as r,
        open / prev_close as ratio,
        case when prev_session_date <> session_date then -1
             else (hour(ts_et) * 60 + minute(ts_et)) // 30 end as bucket,
        dense_rank() over (partition by expiry order by session_date) as session_k,
    from stepped
    where prev_close is not null
),
scaled as (
    select
        *,
        median(abs(r)) over near as median_abs,
        avg(abs(r)) over near as mean_abs,
        count(*) over near as n_near,
    from returns
    window near as (partition by expiry, bucket order by session_k range between 2 preceding and 2 following)
),
scored as (
    select
        *,
        ln(ratio) / greatest(coalesce(nullif(1.4826 * median_abs, 0), 1.2533 * mean_abs), 1e-9) as z,
    from scaled
    where session_date between first_session and last_session
),
ranked as (
    select
        *,
        row_number() over (partition by expiry order by abs(z) desc, ts) as rank,
    from scored
)
select
    expiry,
    rank,
    ts,
    session_date,
    bucket = -1 as at_session_open,
    r,
    z,
    ratio,
    n_near,
from ranked
where rank <= $top_k
order by expiry, rank
