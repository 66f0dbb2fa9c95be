-- Customer transitions (design.md 5): the moments a customer's items or MRR change, netted into one
-- transition A -> B per `movement_window`, dated at the first change of the window, with the customer MRR
-- before (A) and after (B) from derived_customer_mrr.
-- Inputs: derived_item_mrr, derived_customer_mrr, derived_settings, derived_coverage. The tables of this step and of 62 and 64
-- are intermediate (TEMP: never written to the file); mrr_movements and the bridge keep what they need.

-- Change points: where an item appears, disappears or changes price, quantity, contribution or status (`item`),
-- and where the customer's MRR changes without an item's change (an exchange rate's move). Splits that change
-- nothing are skipped, so they never anchor a window.
CREATE OR REPLACE TEMP TABLE derived_change_points AS
WITH item_rows AS (
    SELECT
        account_id, customer_id, valid_from, valid_to,
        lag(valid_to) OVER w AS prev_to,
        lead(valid_from) OVER w AS next_from,
        (lag(price_id) OVER w IS DISTINCT FROM price_id
         OR lag(quantity) OVER w IS DISTINCT FROM quantity
         OR lag(mrr_original) OVER w IS DISTINCT FROM mrr_original
         -- (an item that stops counting at an MRR already 0, as under a 100% discount, still changes)
         OR lag(mrr_undiscounted) OVER w IS DISTINCT FROM mrr_undiscounted
         -- (a discount begun or ended on a counted item of no amount, as a metered item before its first usage:
         -- the item's discount changed, so it begins a window that the usage billed within it joins, as a seat
         -- added under a 100% discount does; 40's discount_factor is set exactly on counted rows)
         OR lag(discount_factor) OVER w <> discount_factor
         -- (a payment failing or recovering, active <-> past_due, changes no MRR by itself: when past_due does
         -- not count the MRR above changes; it must not anchor a window that a later change joins)
         OR (lag(status) OVER w IS DISTINCT FROM status
             AND NOT (lag(status) OVER w IN ('active', 'past_due') AND status IN ('active', 'past_due')))) AS changed,
        -- (a subscription waiting for its first payment, incomplete and then perhaps incomplete_expired, counts
        -- zero: its creation moves no MRR by itself and must not anchor a window, so that the first payment, up to
        -- 23 hours later, is where its MRR starts and its `new` is dated)
        status IN ('incomplete', 'incomplete_expired')
            AND (lag(valid_to) OVER w IS DISTINCT FROM valid_from
                 OR lag(status) OVER w IN ('incomplete', 'incomplete_expired')) AS incomplete_start,
        status IN ('incomplete', 'incomplete_expired') AS incomplete
    FROM derived_item_mrr
    WINDOW w AS (PARTITION BY account_id, subscription_item_id ORDER BY valid_from)
)
SELECT p.account_id, p.customer_id, p.t, bool_or(p.item) AS item
FROM (
    SELECT account_id, customer_id, valid_from AS t, true AS item
    FROM item_rows WHERE (changed OR prev_to IS DISTINCT FROM valid_from) AND NOT incomplete_start
    UNION ALL
    SELECT account_id, customer_id, valid_to, true
    FROM item_rows WHERE valid_to IS NOT NULL AND next_from IS DISTINCT FROM valid_to AND NOT incomplete
    UNION ALL
    -- every customer level starts with a change (50 keeps a level only where the MRR changes, and each
    -- level's valid_to is the next one's valid_from), so its starts are the customer's change points; but a first
    -- level of zero (the customer's first subscription counts nothing yet) changes no MRR, and an item that
    -- appears there is a point above when it is one
    SELECT account_id, customer_id, valid_from, false
    FROM derived_customer_mrr
    QUALIFY mrr <> 0 OR lag(valid_from) OVER (PARTITION BY account_id, customer_id ORDER BY valid_from) IS NOT NULL
) p
LEFT JOIN derived_coverage cov USING (account_id)
-- a change dated after the latest sync (a coupon that ends next month) has not happened yet: it joins no window
-- begun before it (a window's later changes would show now what the sync cannot know yet), and begins none; once a
-- sync is past it, it is a change point as any other (the incremental path derives those customers again: their
-- item rows begin or end between the two syncs)
WHERE p.t IS NOT NULL AND (cov.snapshot_at IS NULL OR p.t <= cov.snapshot_at)
GROUP BY ALL;

-- Windows: an item's change within `movement_window` of the window's first change joins it (anchored, not
-- chained). Changes closer than the window to their predecessor form a run; a run no longer than the window is one
-- window, and only the rare longer runs are split greedily by a recursive walk. An exchange rate's move is no
-- change of the customer's (design.md 4: its own `fx` line): it neither begins a window nor joins one, and is a
-- transition of its own, unless it falls between a window's first and last change (it is then inside A -> B,
-- where 64 gives it its `fx` part). So a cancellation 20 minutes after the rate moved at 00:00 is `fx` at 00:00,
-- then the whole MRR at the new rate as `cancellation`.
CREATE OR REPLACE TEMP TABLE derived_transition_windows AS
WITH RECURSIVE
cfg AS (
    -- (in microseconds: the gaps are compared as integers, not as normalised intervals)
    SELECT CAST(movement_window_minutes AS BIGINT) * 60000000 AS win_us FROM derived_settings
),
runs AS (
    SELECT p.account_id, p.customer_id, p.t,
           sum(CASE WHEN epoch_us(p.t) - epoch_us(prev_t) <= cfg.win_us THEN 0 ELSE 1 END)
               OVER (PARTITION BY p.account_id, p.customer_id ORDER BY p.t ROWS UNBOUNDED PRECEDING) AS run
    FROM (SELECT *, lag(t) OVER (PARTITION BY account_id, customer_id ORDER BY t) AS prev_t
          FROM derived_change_points WHERE item) p, cfg
),
run_spans AS (
    SELECT account_id, customer_id, run, min(t) AS run_start, max(t) AS run_end
    FROM runs GROUP BY ALL
),
long_points AS (
    SELECT r.account_id, r.customer_id, r.run, r.t
    FROM runs r JOIN run_spans s USING (account_id, customer_id, run), cfg
    WHERE epoch_us(s.run_end) - epoch_us(s.run_start) > cfg.win_us
),
anchors(account_id, customer_id, run, anchor) AS (
    SELECT account_id, customer_id, run, min(t) FROM long_points GROUP BY ALL
    UNION ALL
    SELECT a.account_id, a.customer_id, a.run,
           (SELECT min(l.t) FROM long_points l, cfg
            WHERE l.account_id = a.account_id AND l.customer_id = a.customer_id AND l.run = a.run
              AND epoch_us(l.t) - epoch_us(a.anchor) > cfg.win_us)
    FROM anchors a
    WHERE a.anchor IS NOT NULL
),
long_windows AS (
    SELECT l.account_id, l.customer_id, max(a.anchor) AS t_start, l.t
    FROM long_points l
    JOIN anchors a ON a.account_id = l.account_id AND a.customer_id = l.customer_id AND a.run = l.run
                  AND a.anchor <= l.t
    GROUP BY l.account_id, l.customer_id, l.run, l.t
),
item_windows AS (
    SELECT account_id, customer_id, run_start AS t_start, run_end AS t_end
    FROM run_spans, cfg
    WHERE epoch_us(run_end) - epoch_us(run_start) <= cfg.win_us
    UNION ALL
    SELECT account_id, customer_id, t_start, max(t) AS t_end
    FROM long_windows
    GROUP BY ALL
),
rate_moves AS (
    -- (each rate's move beside the customer's windows in time order: the latest window begun before it ends at or
    -- after it when the move is inside that window; windows do not overlap)
    SELECT account_id, customer_id, t_start, t_end, is_window,
           max(t_end) FILTER (WHERE is_window) OVER (PARTITION BY account_id, customer_id ORDER BY t_start
                                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS ends_before
    FROM (SELECT account_id, customer_id, t_start, t_end, true AS is_window
          FROM item_windows w
          -- (only the customers whose rate moved)
          SEMI JOIN (SELECT DISTINCT account_id, customer_id FROM derived_change_points WHERE NOT item) r
                 USING (account_id, customer_id)
          UNION ALL
          SELECT account_id, customer_id, t, t, false FROM derived_change_points WHERE NOT item)
)
SELECT account_id, customer_id, t_start, t_end FROM item_windows
UNION ALL
SELECT account_id, customer_id, t_start, t_end
FROM rate_moves
WHERE NOT is_window AND (ends_before IS NULL OR ends_before < t_start);

-- Transitions that change the customer's MRR, with M(A) (just before t_start) and M(B) (at t_end): the customer's
-- levels (which do not overlap) that meet the window, read in one join (a correlated subquery for each of M(A) and
-- M(B) joined the customer's windows to its levels twice).
-- `had_mrr_before`: the customer had MRR at some point before (new vs reactivation).
CREATE OR REPLACE TEMP TABLE derived_transitions AS
WITH w AS (
    SELECT w.account_id, w.customer_id, w.t_start, w.t_end,
           coalesce(max(CASE WHEN c.valid_from < w.t_start AND (c.valid_to IS NULL OR c.valid_to >= w.t_start)
                             THEN c.mrr END), 0) AS mrr_before,
           coalesce(max(CASE WHEN c.valid_from <= w.t_end AND (c.valid_to IS NULL OR c.valid_to > w.t_end)
                             THEN c.mrr END), 0) AS mrr_after
    FROM derived_transition_windows w
    LEFT JOIN derived_coverage cov USING (account_id)
    LEFT JOIN derived_customer_mrr c
        ON c.account_id = w.account_id AND c.customer_id = w.customer_id
       AND c.valid_from <= w.t_end AND (c.valid_to IS NULL OR c.valid_to >= w.t_start)
    -- a change dated after the latest sync (a coupon that ends next month) has not happened yet
    WHERE cov.snapshot_at IS NULL OR w.t_start <= cov.snapshot_at
    GROUP BY w.account_id, w.customer_id, w.t_start, w.t_end
)
SELECT row_number() OVER () AS tid,  -- a compact key for the joins of the later steps
       account_id, customer_id, t_start, t_end,
       CAST(mrr_before AS DECIMAL(18, 4)) AS mrr_before,
       CAST(mrr_after AS DECIMAL(18, 4)) AS mrr_after,
       CAST(mrr_after - mrr_before AS DECIMAL(18, 4)) AS mrr_delta,
       coalesce(bool_or(mrr_after > 0) OVER (PARTITION BY account_id, customer_id ORDER BY t_start
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), false)
           OR mrr_before > 0 AS had_mrr_before,
       CASE
           WHEN mrr_before = 0 AND mrr_after > 0 THEN 'gain'
           WHEN mrr_before > 0 AND mrr_after = 0 THEN 'loss'
           ELSE 'change'
       END AS kind
FROM w
WHERE mrr_after <> mrr_before;
