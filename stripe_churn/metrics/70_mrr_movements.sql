-- mrr_movements (design.md 5 and 7): one row per labelled component of a transition, rounded to 4 decimals
-- so that the rows of a transition add up exactly to the customer's change (the rounding remainder goes to
-- the largest component; of equal ones, the first by item id, then plan, quantity, discount part), with churn
-- type, feedback (and in derived_mrr_movements the comment) and the Stripe ids that caused each row.
-- Inputs: derived_transitions, derived_movement_parts, derived_transition_items, derived_item_mrr,
-- derived_sub_events, derived_subs, derived_sub_pauses, subscriptions, invoices, invoice_lines (which item each
-- bills), invoice_items (the pending ones).

CREATE OR REPLACE TABLE derived_mrr_movements AS
WITH
totals AS (
    -- (with the transition's columns the rows read later, so that no wide row is joined to it again)
    SELECT t.tid, any_value(t.mrr_delta) AS mrr_delta, any_value(t.t_end) AS t_end,
           any_value(t.mrr_before) AS mrr_before, any_value(t.mrr_after) AS mrr_after, any_value(t.kind) AS kind,
           coalesce(sum(round(p.amount_rep, 4)), 0) AS rounded_sum, coalesce(sum(p.amount_rep), 0) AS exact_sum,
           count(p.t_start) AS n_parts
    FROM derived_transitions t
    LEFT JOIN derived_movement_parts p USING (tid)
    GROUP BY t.tid
),
-- parts by size within their transition; only transitions of several parts need ranking (a narrow window
-- over their row ids: the parts' other columns are not sorted)
ranked AS (
    SELECT p.rowid AS rid,
           row_number() OVER (PARTITION BY p.tid
                              ORDER BY abs(p.amount_rep) DESC, p.subscription_item_id,
                                       CASE p.part WHEN 'p' THEN 0 WHEN 'q' THEN 1 WHEN 'd' THEN 2 ELSE 3 END,
                                       p.movement) AS size_rank
    FROM derived_movement_parts p
    WHERE p.tid IN (SELECT tid FROM totals WHERE n_parts > 1)
),
parts AS (
    SELECT p.*, round(p.amount_rep, 4) AS rounded, coalesce(r.size_rank, 1) AS size_rank
    FROM derived_movement_parts p
    LEFT JOIN ranked r ON r.rid = p.rowid
),
-- a change whose items show no cause (should not happen) still gets a row, so that the bridge adds up
fallback AS (
    SELECT t.tid, x.account_id, x.customer_id, x.t_start, 'unexplained' AS comp, 'unexplained' AS part,
           CAST(t.mrr_delta AS DECIMAL(38, 10)) AS amount_rep, CAST(NULL AS DECIMAL(38, 10)) AS amount_original,
           CAST(NULL AS VARCHAR) AS currency, CAST(NULL AS VARCHAR) AS subscription_id,
           CAST(NULL AS VARCHAR) AS subscription_item_id, CAST(NULL AS VARCHAR) AS product_id,
           CAST(NULL AS VARCHAR) AS price_id, CAST(NULL AS VARCHAR) AS event_id,
           CAST(NULL AS VARCHAR) AS invoice_id, CAST(NULL AS TIMESTAMPTZ) AS row_from,
           CASE WHEN t.mrr_delta > 0 THEN 'upgrade' ELSE 'downgrade' END AS movement,
           round(t.mrr_delta, 4) AS rounded, 1 AS size_rank
    FROM totals t
    JOIN derived_transitions x USING (tid)
    WHERE t.n_parts = 0
),
adjusted AS (
    SELECT p.*,
           CAST(p.rounded + CASE WHEN p.size_rank = 1 THEN t.mrr_delta - t.rounded_sum ELSE 0 END
                AS DECIMAL(18, 4)) AS mrr_delta_part,
           t.mrr_delta - t.exact_sum AS unexplained,
           t.t_end, t.mrr_before, t.mrr_after, t.kind
    FROM (SELECT * FROM parts UNION ALL BY NAME SELECT * FROM fallback) p
    JOIN totals t USING (tid)
),
-- where an item row has no source of its own: a row of the same subscription that started inside the window,
-- else the subscription's last event (first invoice that bills one of its items, `sub_invoices`) inside the window
-- (with the leeway of `stamp_leeway`); a row of no subscription (`unexplained`)
-- takes a row of the customer's (`any_sources`, below). (Another subscription's change is not this row's cause: a
-- subscription ended before the events, beside another's prorated change in its window, names no invoice rather than
-- the other's.)
window_sources AS (
    SELECT x.tid, b.subscription_id,
           min(b.source_event_id) FILTER (WHERE b.source_event_id IS NOT NULL) AS event_id,
           min(b.source_invoice_id) FILTER (WHERE b.source_invoice_id IS NOT NULL) AS invoice_id
    FROM derived_transition_items x
    JOIN derived_item_mrr b ON b.rowid = x.b_rid
    WHERE x.b_started
    GROUP BY x.tid, b.subscription_id
),
-- the subscription events in their order: those inside coverage and those stored from before it (which date item
-- changes in 30); read by two lookups below, each scanning them (not materialized)
stored_sub_events AS NOT MATERIALIZED (
    SELECT account_id, subscription_id, moment, event_id, seq FROM derived_sub_events
    UNION ALL
    SELECT account_id, subscription_id, moment, event_id, seq FROM derived_early_sub_events
),
sub_events AS (
    SELECT t.tid, e.subscription_id,
           -- (the latest in the subscription's event order: two events in one second pick the same one every run)
           arg_max(e.event_id, (e.moment, e.seq)) AS event_id
    FROM (SELECT e.account_id, e.subscription_id, e.moment, e.event_id, e.seq, s.customer_id
          FROM stored_sub_events e
          JOIN subscriptions s ON s.account_id = e.account_id AND s.id = e.subscription_id) e
    JOIN derived_transitions t ON t.account_id = e.account_id AND t.customer_id = e.customer_id
                              AND e.moment >= t.t_start AND e.moment <= t.t_end
    GROUP BY ALL
),
-- Stripe stamps each object by its own clock: a change's invoice, or the customer.discount.* event of a discount,
-- may be stamped a second or a few before or after the moment that dates the change (its subscription event, the
-- discount's `start` or `end`), and is still that change's. So the window's invoices and discount events are looked
-- for up to 10 seconds before its first change and after its last (not a renewal's invoice made 30 seconds before a
-- change, which bills the state before it), and at most half the movement window, so that two windows further apart
-- than it never share one.
stamp_leeway AS (
    SELECT least(INTERVAL 10 SECOND, to_microseconds(CAST(movement_window_minutes AS BIGINT) * 30000000)) AS leeway
    FROM derived_settings
),
-- a discount put on or taken off by its own event (customer.discount.created, .deleted: a promotion code, a
-- customer's coupon) inside the window: the source of the window's discount rows of its subscription (of every
-- subscription, for a customer's discount: `subscription_id` NULL; the latest such event), when the window's
-- discount events there are about one discount (of two, which event made which row is not known here)
window_discount_events AS (
    SELECT t.tid, e.subscription_id, e.object_id, e.id, e.created
    FROM (SELECT e.account_id, e.id, e.object_id, e.created, d.customer_id, d.subscription_id
          FROM events e
          JOIN discounts d ON d.account_id = e.account_id AND d.id = e.object_id
          WHERE e.object_type = 'discount' AND e.type LIKE 'customer.discount.%' AND NOT coalesce(e.deleted, false)
         ) e
    CROSS JOIN stamp_leeway cfg
    JOIN derived_transitions t ON t.account_id = e.account_id AND t.customer_id = e.customer_id
                              AND e.created >= t.t_start - cfg.leeway AND e.created <= t.t_end + cfg.leeway
),
-- the invoices (and proration items) of the window's subscriptions, for the transitions with a row that has no
-- invoice of its own (read by both branches below: its join computed once; on the 1M benchmark store 70 took
-- 16.5-19.2 s so, against 18.6-23.2 s inlined and 15.7-21.4 s before the proration items billed later were read);
-- with the leeway of their stamps (`stamp_leeway`: a signup's first invoice, an update's proration invoice)
window_found AS MATERIALIZED (
    SELECT t.tid, i.account_id, i.subscription_id, i.id, i.created, i.pending_item, i.item_id, i.pending
    FROM derived_transitions t
    CROSS JOIN stamp_leeway cfg
    JOIN (SELECT account_id, id, customer_id, subscription_id, created, false AS pending_item,
                 CAST(NULL AS VARCHAR) AS item_id, false AS pending
          FROM invoices
          WHERE subscription_id IS NOT NULL AND NOT coalesce(deleted, false)
            -- (a voided invoice bills nothing that happened: Stripe voids that of an update that never applied)
            AND status IS DISTINCT FROM 'void'
          UNION ALL
          -- (a change whose prorations waited for a later invoice: the invoice item that bills them)
          SELECT account_id, id, customer_id, subscription_id, date, true, subscription_item_id,
                 coalesce(pending, false) FROM invoice_items
          WHERE coalesce(proration, false) AND subscription_id IS NOT NULL AND NOT coalesce(deleted, false)) i
      ON i.account_id = t.account_id AND i.customer_id = t.customer_id
     AND i.created >= t.t_start - cfg.leeway AND i.created <= t.t_end + cfg.leeway
    WHERE t.tid IN (SELECT tid FROM adjusted
                    WHERE mrr_delta_part <> 0 AND CASE WHEN row_from >= t_start THEN invoice_id END IS NULL)
),
-- a proration item stands for itself while pending (README), and once billed for the invoice whose line bills it
-- (the stored item says only that it is no longer pending; an item billed by an invoice not stored names nothing)
window_invoices AS (
    SELECT tid, account_id, subscription_id, id, created, pending_item, item_id FROM window_found
    WHERE NOT pending_item OR pending
    UNION ALL
    SELECT DISTINCT w.tid, w.account_id, w.subscription_id, l.invoice_id, w.created, w.pending_item, w.item_id
    FROM window_found w
    JOIN invoice_lines l ON l.account_id = w.account_id AND l.invoice_item_id = w.id
    JOIN invoices v ON v.account_id = l.account_id AND v.id = l.invoice_id
    WHERE w.pending_item AND NOT w.pending AND NOT coalesce(l.deleted, false) AND NOT coalesce(v.deleted, false)
      AND v.status IS DISTINCT FROM 'void'
),
-- those that bill an item of the subscription (a line or a pending item naming one), by item: the first that bills the
-- row's own item is its invoice, so that of two changes of one subscription in a window each row names the invoice
-- of its own
window_item_invoices AS (
    SELECT DISTINCT w.tid, w.subscription_id, l.subscription_item_id AS item_id, w.id, w.created
    FROM window_invoices w
    JOIN invoice_lines l ON l.account_id = w.account_id AND l.invoice_id = w.id
    WHERE NOT w.pending_item AND l.subscription_item_id IS NOT NULL AND NOT coalesce(l.deleted, false)
    UNION ALL
    SELECT tid, subscription_id, item_id, id, created FROM window_invoices
    WHERE pending_item AND item_id IS NOT NULL
),
-- and the first of them of the subscription (an invoice that bills none of its items, such as a one-off setup fee
-- invoiced by hand with `subscription` set, is no change's: a seat change that billed nothing named it)
sub_invoices AS (
    SELECT tid, subscription_id, arg_min(id, (created, id)) AS invoice_id
    FROM window_item_invoices
    GROUP BY ALL
),
item_invoices AS (
    SELECT tid, subscription_id, item_id, arg_min(id, (created, id)) AS invoice_id
    FROM window_item_invoices
    GROUP BY ALL
),
-- a removed item's row: the event of its subscription at the moment the item's row in A ended (its removal),
-- not a later change of another item of the subscription in the window
removed_events AS (
    SELECT p.tid, p.subscription_item_id, arg_max(e.event_id, (e.moment, e.seq)) AS event_id
    FROM derived_movement_parts p
    JOIN derived_transition_items x ON x.tid = p.tid AND x.subscription_item_id = p.subscription_item_id
    JOIN derived_item_mrr a ON a.rowid = x.a_rid
    JOIN stored_sub_events e
      ON e.account_id = a.account_id AND e.subscription_id = a.subscription_id AND e.moment = a.valid_to
    WHERE p.comp = 'removed'
    GROUP BY ALL
),
-- the subscription's cancellation_details (its latest state) belong to its last cancellation row, when the
-- subscription did not come back after it: an earlier churn (unpaid, or past_due or paused under their
-- settings) that the customer undid had no reason or feedback then
last_cancels AS (
    SELECT account_id, subscription_id, max(t_start) AS t_start
    FROM adjusted WHERE movement = 'cancellation' AND mrr_delta_part <> 0 AND subscription_id IS NOT NULL
    GROUP BY ALL
),
sub_facts AS (
    SELECT l.account_id, l.subscription_id, l.t_start, d.cancellation_reason, d.cancellation_feedback,
           d.cancellation_comment
    FROM last_cancels l
    JOIN derived_subs d USING (account_id, subscription_id)
    WHERE NOT EXISTS (SELECT 1 FROM adjusted a
                      WHERE a.account_id = l.account_id AND a.subscription_id = l.subscription_id
                        AND a.t_start > l.t_start AND a.mrr_delta_part > 0)
),
-- a cancellation requested and taken back (40, churn_recognition = 'canceled'): the reason, feedback and comment of
-- the request, on the cancellation row of the window it was made in (of two in one window, the later request), and
-- the event that took it back, the source of the comeback's row and, when no event of the window names the request,
-- of the cancellation's (looked up for those rows alone: the table is empty under the default recognition)
withdrawn AS (
    SELECT a.tid, a.subscription_id, a.movement,
           arg_max({'reason': w.cancellation_reason, 'feedback': w.cancellation_feedback,
                    'comment': w.cancellation_comment, 'event_id': w.event_id},
                   CASE WHEN a.movement = 'cancellation' THEN w.requested_at ELSE w.withdrawn_at END) AS w
    FROM (SELECT DISTINCT tid, account_id, subscription_id, movement, t_start, t_end FROM adjusted
          WHERE movement IN ('cancellation', 'reactivation') AND mrr_delta_part <> 0) a
    JOIN derived_withdrawn_cancels w
      ON w.account_id = a.account_id AND w.subscription_id = a.subscription_id
     AND CASE WHEN a.movement = 'cancellation' THEN w.requested_at ELSE w.withdrawn_at END
         BETWEEN a.t_start AND a.t_end
    GROUP BY ALL
),
-- cancellations whose subscription failed to pay: it is unpaid (or past_due, when that counts zero) when the
-- customer's MRR drops, or paused, its latest pause by then made after a failed payment (looked up for the
-- cancellation parts alone, by key: those parts are made first, with their transition's end, so that the item rows
-- are joined by subscription; left to the optimizer, which can misjudge the tables a recompute's transaction has just
-- written, the transitions were joined to the item rows by account first, 23M rows for the 600k transitions of a
-- 5,000-customer store with daily exchange rates)
cancel_parts AS MATERIALIZED (
    SELECT DISTINCT p.tid, p.subscription_id, t.account_id, t.t_end
    FROM derived_movement_parts p
    JOIN derived_transitions t USING (tid)
    WHERE p.movement = 'cancellation'
),
unpaid AS (
    SELECT DISTINCT t.tid, t.subscription_id
    FROM cancel_parts t
    JOIN derived_item_mrr u ON u.account_id = t.account_id AND u.subscription_id = t.subscription_id
                           AND u.valid_from <= t.t_end AND (u.valid_to IS NULL OR u.valid_to > t.t_end)
    CROSS JOIN derived_settings st
    -- (past_due only when it counts zero: with churn_recognition = 'canceled' a past_due subscription that counts
    -- churns at the customer's own request, still past_due then, and that is voluntary)
    WHERE (u.status = 'unpaid' OR (u.status = 'past_due' AND NOT st.past_due_counts)
           OR (u.status = 'paused'
               AND (SELECT arg_max(z.pause_type, z.paused_at) FROM derived_sub_pauses z
                    WHERE z.account_id = t.account_id AND z.subscription_id = t.subscription_id
                      AND z.paused_at <= t.t_end) IN ('first_payment_failure', 'final_payment_failure')))
),
-- an item that changed more than once in the window (two seats, then a discount 20 minutes later): its B row
-- names the last change; a plan part names the last change of its price, a quantity part that of its quantity, a
-- discount part that of its discounts (looked up for those parts alone, whose B row started after the window's
-- start), and each part the invoice that bills its item from that change on (`changed_at`)
-- (the parts that look: made first, so that their item's rows are joined by item; left to the optimizer, the item rows
-- were joined to the A rows by account first, a product that took 99 s for a customer of 4,400 subscriptions)
part_rows AS MATERIALIZED (
    SELECT p.tid, p.subscription_item_id, p.part, p.t_start, p.row_from, a.account_id, a.valid_from AS a_from
    FROM adjusted p
    JOIN derived_transition_items x ON x.tid = p.tid AND x.subscription_item_id = p.subscription_item_id
    JOIN derived_item_mrr a ON a.rowid = x.a_rid
    WHERE p.comp = 'same' AND p.part IN ('p', 'q', 'd') AND p.row_from > p.t_start
      AND p.mrr_delta_part <> 0
),
part_events AS (
    SELECT tid, subscription_item_id, part, arg_max(event_id, valid_from) FILTER (WHERE changed) AS event_id,
           max(valid_from) FILTER (WHERE changed) AS changed_at
    FROM (
        SELECT q.tid, q.subscription_item_id, q.part, r.valid_from, r.source_event_id AS event_id,
               r.valid_from >= q.t_start AND r.source_event_id IS NOT NULL
                   AND CASE q.part WHEN 'd' THEN r.discount_ids IS DISTINCT FROM lag(r.discount_ids) OVER w
                                   WHEN 'p' THEN r.price_id IS DISTINCT FROM lag(r.price_id) OVER w
                                   ELSE r.quantity IS DISTINCT FROM lag(r.quantity) OVER w END AS changed
        FROM part_rows q
        JOIN derived_item_mrr r ON r.account_id = q.account_id AND r.subscription_item_id = q.subscription_item_id
                               AND r.valid_from >= q.a_from AND r.valid_from <= q.row_from
        WINDOW w AS (PARTITION BY q.tid, q.subscription_item_id, q.part ORDER BY r.valid_from)
    )
    GROUP BY ALL
),
sourced AS (
    SELECT a.*,
           CASE WHEN a.row_from >= a.t_start THEN coalesce(pe.event_id, a.event_id) END AS own_event_id,
           CASE WHEN a.row_from >= a.t_start THEN a.invoice_id END AS own_invoice_id,
           coalesce(pe.changed_at, CASE WHEN a.row_from >= a.t_start THEN a.row_from END) AS changed_at
    FROM adjusted a
    LEFT JOIN part_events pe ON pe.tid = a.tid AND pe.subscription_item_id = a.subscription_item_id
                            AND pe.part = a.part AND a.comp = 'same'
    WHERE a.mrr_delta_part <> 0
),
-- (a row reads its subscription's window sources only when it has no invoice of its own: looked up for those rows'
-- transitions alone. Joined to every row, the optimizer, which took the rows for a few, built its hash table of
-- them, every column of the 3.9M rows of the 1M-customer benchmark; with `any_sources` below, in place of a second
-- grouping set of every transition: the step 17.2-18.5 s before, 13.5-15.3 s after, the same rows)
needed_sources AS (
    SELECT w.* FROM window_sources w
    SEMI JOIN (SELECT DISTINCT tid, subscription_id FROM sourced WHERE own_invoice_id IS NULL) n
           ON n.tid = w.tid AND n.subscription_id = w.subscription_id
),
-- (the sources of any subscription of the window, for the transitions of a row of no subscription alone)
any_sources AS (
    SELECT tid, min(event_id) AS event_id, min(invoice_id) AS invoice_id
    FROM window_sources
    WHERE tid IN (SELECT tid FROM sourced WHERE subscription_id IS NULL)
    GROUP BY tid
),
-- (of a row that knows when its own change was made: the first of its item's invoices made then or after, so that
-- of a seat change and a price change 20 minutes later each part names the invoice of its own; a minute's leeway,
-- as the invoice of a change may be stamped a second before its event)
changed_invoices AS (
    SELECT r.tid, r.subscription_id, r.subscription_item_id, r.changed_at, arg_min(w.id, (w.created, w.id)) AS invoice_id
    FROM (SELECT DISTINCT tid, subscription_id, subscription_item_id, changed_at FROM sourced
          WHERE own_invoice_id IS NULL AND changed_at IS NOT NULL) r
    JOIN window_item_invoices w
      ON w.tid = r.tid AND w.subscription_id = r.subscription_id AND w.item_id = r.subscription_item_id
     AND w.created >= r.changed_at - INTERVAL 1 MINUTE
    GROUP BY ALL
),
discount_events AS (
    SELECT r.tid, r.subscription_id,
           CASE WHEN count(DISTINCT e.object_id) = 1 THEN arg_max(e.id, (e.created, e.id)) END AS event_id
    FROM (SELECT DISTINCT tid, subscription_id FROM sourced WHERE movement = 'discount') r
    JOIN window_discount_events e
      ON e.tid = r.tid AND (e.subscription_id = r.subscription_id OR e.subscription_id IS NULL)
    GROUP BY ALL
)
SELECT
    s.account_id,
    s.customer_id,
    s.subscription_id,
    s.subscription_item_id,
    s.product_id,
    s.price_id,
    s.t_start AS occurred_at,
    s.movement,
    CASE
        WHEN s.movement = 'new' THEN 'new'
        WHEN s.movement = 'reactivation' THEN 'reactivation'
        WHEN s.movement = 'cancellation' THEN 'churn'
        WHEN s.movement = 'fx' THEN 'fx'
        WHEN s.mrr_delta_part > 0 THEN 'expansion'
        ELSE 'contraction'
    END AS category,
    s.mrr_before,
    s.mrr_after,
    s.mrr_delta_part AS mrr_delta,
    s.currency,
    money4(round(s.amount_original, 4), 'the change of customer ' || s.customer_id || '''s MRR in '
           || s.currency || ' at ' || s.t_start) AS amount_delta_original,
    CASE WHEN s.movement = 'cancellation' THEN
        CASE WHEN CASE WHEN f.subscription_id IS NULL THEN wd.w.reason ELSE f.cancellation_reason END
                  = 'payment_failed' OR u.tid IS NOT NULL
             THEN 'involuntary' ELSE 'voluntary' END
    END AS churn_type,
    CASE WHEN s.movement = 'cancellation' THEN
        CASE WHEN f.subscription_id IS NULL THEN wd.w.feedback ELSE f.cancellation_feedback END
    END AS cancellation_feedback,
    -- (an exchange rate's move is no Stripe object: an fx row names none, as the rows of a month of rates alone)
    CASE WHEN s.movement <> 'fx' THEN
        coalesce(s.own_event_id, CASE WHEN s.movement = 'discount' THEN de.event_id END, re.event_id,
                 CASE WHEN s.movement = 'reactivation' THEN wd.w.event_id END,
                 -- (a row whose own source is an invoice, as metered usage is, takes no other change's event)
                 CASE WHEN s.own_invoice_id IS NULL
                      THEN coalesce(ws.event_id, se.event_id, wc.event_id, wd.w.event_id) END) END
        AS source_event_id,
    CASE WHEN s.movement <> 'fx' THEN
        coalesce(s.own_invoice_id, ci.invoice_id, ii.invoice_id, ws.invoice_id, si.invoice_id, wc.invoice_id) END
        AS source_invoice_id,
    -- internal columns (not in the mrr_movements view)
    -- (design.md 5: a cancellation row carries the subscription's cancellation comment too; design.md 7's
    -- mrr_movements lists no column for it, so it is read here)
    CASE WHEN s.movement = 'cancellation' THEN
        CASE WHEN f.subscription_id IS NULL THEN wd.w.comment ELSE f.cancellation_comment END
    END AS cancellation_comment,
    s.t_end,
    s.kind AS transition_kind,
    s.part,
    s.unexplained,
    -- (the change in its currency before the rounding to 4 decimals: the cohorts value it at another rate, 88)
    s.amount_original AS amount_exact
FROM sourced s
LEFT JOIN needed_sources ws
    ON ws.tid = s.tid
   AND ws.subscription_id = s.subscription_id
LEFT JOIN any_sources wc
    ON wc.tid = s.tid
   AND s.subscription_id IS NULL
LEFT JOIN sub_events se
    ON se.tid = s.tid
   AND se.subscription_id = s.subscription_id
LEFT JOIN sub_invoices si
    ON si.tid = s.tid
   AND si.subscription_id = s.subscription_id
LEFT JOIN changed_invoices ci
    ON ci.tid = s.tid
   AND ci.subscription_id = s.subscription_id
   AND ci.subscription_item_id = s.subscription_item_id
   AND ci.changed_at = s.changed_at
LEFT JOIN item_invoices ii
    ON ii.tid = s.tid
   AND ii.subscription_id = s.subscription_id
   AND ii.item_id = s.subscription_item_id
LEFT JOIN removed_events re
    ON re.tid = s.tid
   AND re.subscription_item_id = s.subscription_item_id
   AND s.comp = 'removed'
LEFT JOIN discount_events de
    ON de.tid = s.tid
   AND de.subscription_id IS NOT DISTINCT FROM s.subscription_id
LEFT JOIN sub_facts f ON f.account_id = s.account_id AND f.subscription_id = s.subscription_id AND f.t_start = s.t_start
LEFT JOIN unpaid u ON u.tid = s.tid AND u.subscription_id = s.subscription_id
LEFT JOIN withdrawn wd ON wd.tid = s.tid AND wd.subscription_id = s.subscription_id AND wd.movement = s.movement;

CREATE OR REPLACE VIEW mrr_movements AS
SELECT account_id, customer_id, subscription_id, subscription_item_id, product_id, price_id, occurred_at,
       movement, category, mrr_before, mrr_after, mrr_delta, currency, amount_delta_original, churn_type,
       cancellation_feedback, source_event_id, source_invoice_id
FROM derived_mrr_movements;
