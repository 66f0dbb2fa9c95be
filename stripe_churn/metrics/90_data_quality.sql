-- Data quality (design.md 3): one row per problem found while deriving history and MRR, never silently
-- dropped. kind: what went wrong; object_type/object_id: the Stripe object it concerns; related_id: the
-- other side (an event, an invoice, a price); moment: when it applies; detail: one readable line.

CREATE OR REPLACE TABLE derived_data_quality AS
-- an invoice line billed inside event coverage disagrees with the state the events give (events win); so does one
-- billed before coverage where 30 took the item's state from an event stored before a gap in them
WITH covered AS (
    -- (per account: where coverage starts, and the first event stored from before a gap)
    SELECT c.account_id, c.coverage_start, c.has_events, e.since
    FROM derived_coverage c
    LEFT JOIN (SELECT account_id, min(moment) AS since FROM derived_early_sub_events GROUP BY account_id) e
      USING (account_id)
),
-- the lines compared: the invoices', and the pending proration items (30's derived_pending_lines, the lines they will
-- become: the item's id stands for the line and the invoice), whose charge disagrees with the events as a billed one does
-- (not materialized: each reader filters the lines its own way, and a copy of every line costs a third of the step)
billed AS NOT MATERIALIZED (
    SELECT account_id, line_id, invoice_id, subscription_id, subscription_item_id, price_id, quantity, period_start,
           proration, is_credit, 'invoice ' AS bill_kind
    FROM derived_invoice_lines
    UNION ALL
    SELECT account_id, invoice_id, invoice_id, subscription_id, subscription_item_id, price_id, quantity,
           period_start, true, is_credit, 'pending invoice item '
    FROM derived_pending_lines
),
agreed AS (
    -- the proration debit lines compared below that a history row of their item within 5 minutes agrees with
    SELECT l.account_id, l.line_id
    FROM billed l
    JOIN covered c USING (account_id)
    JOIN derived_item_history g
      ON g.account_id = l.account_id AND g.subscription_item_id = l.subscription_item_id
     AND g.price_id = l.price_id AND g.quantity IS NOT DISTINCT FROM l.quantity
    WHERE l.proration AND NOT l.is_credit AND l.period_start >= coalesce(c.since, c.coverage_start)
      AND g.valid_from <= l.period_start + INTERVAL 5 MINUTE
      AND (g.valid_to IS NULL OR g.valid_to > l.period_start - INTERVAL 5 MINUTE)
),
inside AS (
    -- lines whose period starts inside coverage, against the history at that moment; a proration's debit line
    -- starts at the change it bills (Stripe's proration date, which may lie a little before the event): it
    -- disagrees only when no history row of the item within 5 minutes of that moment bills its price and
    -- quantity (and is compared with the history 5 minutes after it). Before coverage, from the first event
    -- stored from before a gap: only against a history row such an event gave (a line that made the history
    -- is no disagreement).
    SELECT l.account_id, l.invoice_id, l.subscription_id, l.subscription_item_id, l.price_id, l.quantity,
           l.period_start AS moment, h.price_id AS h_price, h.quantity AS h_quantity, h.subscription_item_id AS h_item,
           false AS absent, false AS by_snapshot, l.bill_kind || l.invoice_id AS bill, false AS at_start
    FROM (SELECT *, period_start + CASE WHEN proration THEN INTERVAL 5 MINUTE ELSE INTERVAL 0 MINUTE END AS at
          FROM billed) l
    JOIN covered c USING (account_id)
    JOIN derived_price_terms p ON p.account_id = l.account_id AND p.price_id = l.price_id
    LEFT JOIN derived_item_history h
      ON h.account_id = l.account_id AND h.subscription_item_id = l.subscription_item_id
     AND h.valid_from <= l.at AND (h.valid_to IS NULL OR l.at < h.valid_to)
    WHERE l.period_start >= coalesce(c.since, c.coverage_start) AND NOT l.is_credit
      AND CASE WHEN l.period_start >= c.coverage_start THEN c.has_events
               ELSE coalesce(h.source = 'event' AND h.valid_from < c.coverage_start, false) END
      AND p.usage_type = 'licensed' AND l.subscription_item_id IS NOT NULL
      AND NOT (l.proration AND (l.account_id, l.line_id) IN (SELECT (account_id, line_id) FROM agreed))
),
-- at coverage start: the state the invoices give just before it against the one the events give
-- (each state's JSON is parsed once, for its status and its item list)
event_start_states AS (
    SELECT account_id, subscription_id, json_extract_string(v[1], '$') AS status, CAST(v[2] AS JSON[]) AS its,
           -- (a list cut short says nothing about the items it leaves out)
           coalesce(TRY_CAST(json_extract_string(v[3], '$') AS BOOLEAN), false) AS cut_short
    FROM (SELECT account_id, subscription_id,
                 json_extract(coalesce(before_state, after_state), ['$.status', '$.items.data', '$.items.has_more'])
                     AS v
          FROM derived_sub_events WHERE seq = 1)
),
-- (a subscription without events starts from its snapshot, whose items are the anchor's in derived_obs_items)
start_states AS (
    SELECT account_id, subscription_id, status, cut_short FROM event_start_states
    UNION ALL
    SELECT account_id, subscription_id, status, false FROM derived_subs s
    WHERE NOT EXISTS (SELECT 1 FROM derived_sub_events e
                      WHERE e.account_id = s.account_id AND e.subscription_id = s.subscription_id)
),
start_items AS (
    -- (one parse per item: its id, the price's id or the price when it is an id, the quantity)
    SELECT account_id, subscription_id, v[1] AS subscription_item_id, coalesce(v[2], v[3]) AS price_id,
           TRY_CAST(v[4] AS BIGINT) AS quantity
    FROM (SELECT x.account_id, x.subscription_id,
                 json_extract_string(u.it, ['$.id', '$.price.id', '$.price', '$.quantity']) AS v
          FROM event_start_states x, unnest(x.its) AS u(it))
    UNION ALL
    SELECT account_id, subscription_id, subscription_item_id, price_id, quantity
    FROM derived_obs_items WHERE source = 'snapshot' AND ord = 0
),
invoice_at_start AS (
    -- the newest step per item before coverage (the latest moment, then the highest prio at that moment) in one
    -- grouped pass, instead of a window (which would sort every step with all its columns) or an arg_max over
    -- the (moment, prio) pair (a struct compared per row): both in one HUGEINT key (prio, a whole number below
    -- 1e16, in the low digits); its columns by row id. (At 1M customers: 5.6 s against 8.7-10.1 s for the
    -- latest moment first and the highest prio at it in a second pass.)
    WITH kept AS (
        SELECT s.account_id, s.subscription_item_id, any_value(c.coverage_start) AS coverage_start,
               arg_max(s.rowid, CAST(epoch_us(s.moment) AS HUGEINT) * 10000000000000000 + CAST(s.prio AS HUGEINT))
                   AS rid
        FROM derived_invoice_item_steps s
        JOIN derived_coverage c USING (account_id)
        -- (a store without events compares the invoices with the latest sync: coverage starts there)
        WHERE s.moment < c.coverage_start
        GROUP BY s.account_id, s.subscription_item_id
    )
    SELECT k.account_id, k.subscription_item_id, k.coverage_start, s.subscription_id, s.source_invoice_id,
           s.price_id, s.quantity, s.present, s.source
    FROM kept k
    JOIN derived_invoice_item_steps s ON s.rowid = k.rid
),
at_start AS (
    SELECT i.account_id, i.source_invoice_id AS invoice_id, i.subscription_id, i.subscription_item_id, i.price_id,
           i.quantity,
           i.coverage_start AS moment, si.price_id AS h_price, si.quantity AS h_quantity,
           si.subscription_item_id AS h_item,
           -- (the invoices removed the item before coverage: a disagreement when the events list it there)
           NOT i.present AS absent,
           -- (a subscription without events starts from the latest sync's state)
           NOT EXISTS (SELECT 1 FROM derived_sub_events e
                       WHERE e.account_id = i.account_id AND e.subscription_id = i.subscription_id) AS by_snapshot,
           -- (how the details name the source: an invoice, or a proration item not invoiced yet)
           CASE WHEN i.source = 'invoice_item' THEN 'pending invoice item ' ELSE 'invoice ' END
               || i.source_invoice_id AS bill, true AS at_start
    FROM invoice_at_start i
    LEFT JOIN derived_price_terms p ON p.account_id = i.account_id AND p.price_id = i.price_id
    LEFT JOIN start_items si ON si.account_id = i.account_id AND si.subscription_item_id = i.subscription_item_id
    WHERE CASE WHEN i.present THEN p.usage_type = 'licensed' ELSE si.subscription_item_id IS NOT NULL END
      AND EXISTS (SELECT 1 FROM start_states st
                  WHERE st.account_id = i.account_id AND st.subscription_id = i.subscription_id
                    -- (NULL: a deletion as the first event, whose status before it is not known)
                    AND coalesce(st.status NOT IN ('canceled', 'incomplete_expired'), true)
                    AND (si.subscription_item_id IS NOT NULL OR NOT st.cut_short))
),
compared AS (
    SELECT * FROM inside UNION ALL SELECT * FROM at_start
),
differing AS MATERIALIZED (
    -- (read twice below: computed once) (a line inside coverage of a subscription without events of its own is
    -- compared with the latest sync's state, which stands for it from where the events begin)
    SELECT * REPLACE (by_snapshot OR (NOT at_start
                                      AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                                                      WHERE e.account_id = c.account_id
                                                        AND e.subscription_id = c.subscription_id)
                                      AND NOT EXISTS (SELECT 1 FROM derived_early_sub_events e
                                                      WHERE e.account_id = c.account_id
                                                        AND e.subscription_id = c.subscription_id)) AS by_snapshot)
    FROM compared c
    WHERE absent OR h_item IS NULL OR h_price IS DISTINCT FROM price_id OR h_quantity IS DISTINCT FROM quantity
),
-- An item the invoices before coverage still bill and its first state leaves out, which the history ends before
-- coverage: 30 ended it at the `created` of the item added in its place (`replaced_before_covered`, a switch
-- without prorations). Its end, and the items whose history begins then. (Only these few items' rows are read.)
replaced AS (
    WITH ended AS (
        SELECT e.* FROM (SELECT h.account_id, h.subscription_id, h.subscription_item_id, max(h.valid_to) AS ended_at
                         FROM derived_item_history h
                         SEMI JOIN (SELECT account_id, subscription_item_id FROM differing
                                    WHERE at_start AND h_item IS NULL AND NOT absent) d
                             ON d.account_id = h.account_id AND d.subscription_item_id = h.subscription_item_id
                         GROUP BY ALL
                         HAVING count(*) = count(h.valid_to)) e
        JOIN derived_coverage c ON c.account_id = e.account_id AND e.ended_at < c.coverage_start
    ),
    began AS (
        -- (each item's first moment, of those subscriptions alone)
        SELECT h.account_id, h.subscription_id, h.subscription_item_id, min(h.valid_from) AS began
        FROM derived_item_history h
        SEMI JOIN ended e ON e.account_id = h.account_id AND e.subscription_id = h.subscription_id
        GROUP BY ALL
    )
    SELECT e.account_id, e.subscription_item_id, e.ended_at,
           string_agg(DISTINCT n.subscription_item_id, ', ' ORDER BY n.subscription_item_id) AS added,
           -- (an event stored from before a gap in the events that shows the switch then)
           (SELECT min(x.event_id) FROM derived_early_sub_events x
            WHERE x.account_id = e.account_id AND x.subscription_id = e.subscription_id AND x.moment = e.ended_at)
               AS added_by
    FROM ended e
    JOIN began n
      ON n.account_id = e.account_id AND n.subscription_id = e.subscription_id AND n.began = e.ended_at
     AND n.subscription_item_id <> e.subscription_item_id
    GROUP BY ALL
),
mismatched AS (
    -- an open subscription_update invoice that the events contradict bills an update that waits for its payment
    -- (payment_behavior=pending_if_incomplete): it applies once paid, or expires and Stripe voids the invoice
    SELECT m.* REPLACE (coalesce(r.ended_at, m.moment) AS moment), r.added, r.added_by,
           NOT m.by_snapshot AND NOT m.absent AND i.status = 'open'
               AND i.billing_reason = 'subscription_update' AS pending
    FROM differing m
    LEFT JOIN replaced r
      ON m.at_start AND m.h_item IS NULL AND NOT m.absent
     AND r.account_id = m.account_id AND r.subscription_item_id = m.subscription_item_id
    LEFT JOIN invoices i ON i.account_id = m.account_id AND i.id = m.invoice_id
)
SELECT account_id,
       CASE WHEN by_snapshot THEN 'invoice_snapshot_mismatch' WHEN pending THEN 'pending_update'
            ELSE 'invoice_event_mismatch' END AS kind,
       'subscription_item' AS object_type, subscription_item_id AS object_id, invoice_id AS related_id, moment,
       CASE WHEN pending
            THEN format('invoice {} (open) bills {} × {} on item {} for an update that waits for its payment '
                        '(payment_behavior=pending_if_incomplete: it applies once paid, and Stripe voids the invoice '
                        'when the update expires, 23 hours at the most); the events give {} and were used',
                        invoice_id, quantity, price_id, subscription_item_id,
                        CASE WHEN h_item IS NULL THEN 'no such item' ELSE format('{} × {}', h_quantity, h_price) END)
            -- (a replaced item: what the history did with it)
            WHEN added IS NOT NULL
            THEN format('{} bills item {} ({} × {}) but {} no such item; the history ends it at {}, {} {} {} '
                        'added in its place {}',
                        bill, subscription_item_id, quantity, price_id,
                        CASE WHEN by_snapshot THEN 'the latest sync shows' ELSE 'the events show' END,
                        strftime(moment AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M UTC'),
                        CASE WHEN added_by IS NULL THEN 'the created of' ELSE 'when event ' || added_by || ' shows' END,
                        CASE WHEN contains(added, ', ') THEN 'items' ELSE 'item' END, added,
                        CASE WHEN added_by IS NULL THEN '(no stored event or credit shows when it changed)'
                             ELSE '(stored from before a gap in the events; no credit shows it)' END)
            WHEN by_snapshot
            THEN format('{}; the sync''s state was used from {} on (no stored event shows when it changed)',
                        CASE WHEN absent
                             THEN format('{} removes item {} but the latest sync lists it ({} × {})',
                                         bill, subscription_item_id, h_quantity, h_price)
                             WHEN h_item IS NULL
                             THEN format('{} bills item {} ({} × {}) but the latest sync shows no such item',
                                         bill, subscription_item_id, quantity, price_id)
                             ELSE format('{} bills {} × {}, the latest sync gives {} × {}',
                                         bill, quantity, price_id, h_quantity, h_price) END, moment)
            WHEN absent
            THEN format('{} removes item {} but the events list it ({} × {}) when they begin; the events '
                        'were used', bill, subscription_item_id, h_quantity, h_price)
            WHEN h_item IS NULL
            THEN format('{} bills item {} ({} × {}) but the events show no such item then',
                        bill, subscription_item_id, quantity, price_id)
            ELSE format('{} bills {} × {}, the events give {} × {}; the events were used',
                        bill, quantity, price_id, h_quantity, h_price) END AS detail
-- (a price or quantity missing on either side is said so: format() of a NULL gives no detail at all)
FROM (SELECT * REPLACE (coalesce(price_id, '(no price)') AS price_id, coalesce(h_price, '(no price)') AS h_price,
                        coalesce(CAST(quantity AS VARCHAR), '(no quantity)') AS quantity,
                        coalesce(CAST(h_quantity AS VARCHAR), '(no quantity)') AS h_quantity)
      FROM mismatched)
UNION ALL
-- a proration inside event coverage that credits an item's unused time with no new line for it (a removal, read
-- from invoices alone: 30's removal steps, the absent ones of a positive prio) while the events keep the item
-- 5 minutes after the credit's start
SELECT c.account_id, 'invoice_event_mismatch', 'subscription_item', c.subscription_item_id, c.source_invoice_id,
       c.moment,
       format('invoice {} credits item {} from {} with no new line for it (a removal), but the events keep it '
              '({} × {}); the events were used', c.source_invoice_id, c.subscription_item_id,
              strftime(c.moment AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M UTC'), h.quantity, h.price_id)
FROM derived_invoice_item_steps c
JOIN derived_coverage v USING (account_id)
JOIN derived_item_history h
  ON h.account_id = c.account_id AND h.subscription_item_id = c.subscription_item_id
 AND h.valid_from <= c.moment + INTERVAL 5 MINUTE
 AND (h.valid_to IS NULL OR c.moment + INTERVAL 5 MINUTE < h.valid_to)
LEFT JOIN derived_subs s ON s.account_id = c.account_id AND s.subscription_id = c.subscription_id
WHERE v.has_events AND c.moment >= v.coverage_start AND NOT c.present AND c.prio > 0
  -- (a subscription ended then credits every item: no removal to compare)
  AND (s.ended_at IS NULL OR s.ended_at > c.moment + INTERVAL 5 MINUTE)
UNION ALL
-- a renewal or first invoice inside event coverage that bills no line for a licensed item the events keep when
-- its period starts (Stripe bills every item of the subscription there, at zero too; of a subscription whose
-- items renew on different intervals, the items of the intervals the invoice renews)
SELECT h.account_id, 'invoice_event_mismatch', 'subscription_item', h.subscription_item_id, r.invoice_id,
       r.period_start,
       format('invoice {} renews subscription {} from {} without item {}, which the events keep then ({} × {}); '
              'the events were used', r.invoice_id, r.subscription_id,
              strftime(r.period_start AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M UTC'), h.subscription_item_id,
              h.quantity, h.price_id)
FROM (
    -- (only invoices made inside coverage, a few weeks of them: the period start of their licensed lines, as
    -- metered ones bill the period before, and every item they bill)
    SELECT l.account_id, l.invoice_id, any_value(l.subscription_id) AS subscription_id,
           min(l.period_start) FILTER (WHERE NOT l.proration AND NOT l.is_credit AND p.usage_type = 'licensed'
                                       AND l.subscription_item_id IS NOT NULL) AS period_start,
           list(l.subscription_item_id) AS items,
           list(DISTINCT {'i': p.billing_interval, 'n': p.interval_count})
               FILTER (WHERE NOT l.proration AND NOT l.is_credit AND p.usage_type = 'licensed') AS terms
    FROM derived_invoice_lines l
    JOIN derived_coverage v ON v.account_id = l.account_id
    LEFT JOIN derived_price_terms p ON p.account_id = l.account_id AND p.price_id = l.price_id
    WHERE v.has_events AND l.invoice_created >= v.coverage_start
    GROUP BY l.account_id, l.invoice_id
) r
JOIN derived_coverage v ON v.account_id = r.account_id
JOIN derived_item_history h
  ON h.account_id = r.account_id AND h.subscription_id = r.subscription_id
 AND h.valid_from <= r.period_start AND (h.valid_to IS NULL OR r.period_start < h.valid_to)
JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
WHERE r.period_start >= v.coverage_start AND p.usage_type = 'licensed'
  AND NOT list_contains(r.items, h.subscription_item_id)
  AND list_contains(r.terms, {'i': p.billing_interval, 'n': p.interval_count})
UNION ALL
-- a subscription that ended with no stored event (before the events begin, as a rule) whose latest sync lists a
-- licensed item otherwise than the invoices billed it when it ended (a change made without prorations, then the
-- end): no source dates the change, so the invoices' state was in force up to the end (the churn takes it). (The
-- history row in force then, from the invoice that began it: fewer rows to read than the invoice steps.)
SELECT n.account_id, 'invoice_snapshot_mismatch', 'subscription_item', n.subscription_item_id,
       n.source_invoice_id, n.ended_at,
       format('{} {} bills {} × {} on item {} when subscription {} ended ({}), the latest sync lists {} × {}; no '
              'stored event dates the change, so the invoices'' state was used up to the end',
              CASE WHEN n.source = 'invoice_item' THEN 'pending invoice item' ELSE 'invoice' END,
              n.source_invoice_id, n.quantity, n.price_id, n.subscription_item_id, n.subscription_id,
              strftime(n.ended_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M UTC'), o.quantity, o.price_id)
FROM (
    SELECT s.account_id, s.subscription_id, s.ended_at, h.subscription_item_id, h.price_id, h.quantity, h.source,
           h.source_invoice_id
    FROM derived_subs s
    JOIN derived_item_history h
      ON h.account_id = s.account_id AND h.subscription_id = s.subscription_id
     AND h.valid_from < s.ended_at AND (h.valid_to IS NULL OR h.valid_to >= s.ended_at)
    WHERE s.in_snapshot AND s.ended_at IS NOT NULL AND h.source IN ('invoice', 'invoice_item')
      AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                      WHERE e.account_id = s.account_id AND e.subscription_id = s.subscription_id)
) n
JOIN derived_obs_items o
  ON o.account_id = n.account_id AND o.subscription_id = n.subscription_id
 AND o.subscription_item_id = n.subscription_item_id AND o.source = 'snapshot' AND o.ord = 0
-- (the price's terms as a filter, not a join: joined, DuckDB paired the few ended subscriptions' rows with every
-- price of the account before it matched them to the listed items, 5-6 s of a 200k-customer store's 8 s here)
WHERE o.price_id IN (SELECT p.price_id FROM derived_price_terms p
                     WHERE p.account_id = o.account_id AND p.usage_type = 'licensed')
  AND (n.price_id IS DISTINCT FROM o.price_id OR n.quantity IS DISTINCT FROM o.quantity)
UNION ALL
-- a snapshot newer than the last event differs from it: a change the events missed
SELECT account_id, 'snapshot_event_mismatch', 'subscription', subscription_id, NULL, moment,
       'the latest snapshot differs from the last event of this subscription; the change is dated at the snapshot '
       || '(an end or cancellation the snapshot shows, at its own ended_at or canceled_at)'
FROM derived_sub_obs
WHERE source = 'snapshot' AND ord = 1000000
UNION ALL
-- an update whose state just before it (its previous_attributes merged onto its data.object, by the rules of step
-- 20) is not the state the subscription's event before it left, in an earlier second: an event between them is
-- missing from the store, and the change it made is dated at this update (status, collection pause, and the items'
-- prices and quantities; a list cut short is not compared)
SELECT account_id, 'missing_events', 'subscription', subscription_id, event_id, moment,
       format('event {} says the subscription''s {} just before it differ from what event {} left at {}: an event '
              || 'between them is not stored, and the change it made is dated at event {}', event_id,
              concat_ws(', ', CASE WHEN status_differs THEN 'status' END,
                        CASE WHEN pause_differs THEN 'collection pause' END,
                        CASE WHEN items_differ THEN 'items' END),
              prev_event_id, strftime(prev_moment AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S UTC'), event_id)
FROM (
    -- (the items' keys hashed once per event: the window carries numbers, not lists)
    SELECT c.account_id, c.subscription_id, c.event_id, c.moment, c.prev_event_id, c.prev_moment,
           coalesce(CASE WHEN x.t[2] IS NULL THEN c.after_status ELSE x.prev_status END
                    IS DISTINCT FROM c.prev_status, false) AS status_differs,
           coalesce(CASE WHEN x.t[3] IS NULL THEN c.pause ELSE x.t[3] = 'OBJECT' END IS DISTINCT FROM c.prev_pause,
                    false) AS pause_differs,
           -- (the items before: the items after unless previous_attributes list them; neither list cut short)
           coalesce(CASE WHEN x.t[4] IS NULL THEN c.items_h
                         WHEN x.t[4] = 'OBJECT' AND x.t[5] IS NOT NULL
                              AND NOT coalesce(CASE WHEN x.t[6] IS NULL THEN c.after_has_more
                                                    ELSE TRY_CAST(x.prev_has_more AS BOOLEAN) END, false)
                         THEN hash(items_key(x.prev_items)) END <> c.prev_items_h, false) AS items_differ
    FROM (SELECT account_id, subscription_id, event_id, event_type, moment, rid, after_status, after_has_more, pause,
                 items_h, lag(event_id) OVER w AS prev_event_id, lag(moment) OVER w AS prev_moment,
                 lag(after_status) OVER w AS prev_status, lag(pause) OVER w AS prev_pause,
                 lag(items_h) OVER w AS prev_items_h
          FROM (SELECT account_id, subscription_id, event_id, event_type, moment, rid, seq, after_status,
                       after_has_more, coalesce(after_pause_collection, false) AS pause,
                       CASE WHEN NOT coalesce(after_has_more, false) THEN hash(items_key(after_items)) END AS items_h
                FROM derived_sub_events)
          WINDOW w AS (PARTITION BY account_id, subscription_id ORDER BY seq)) c
    JOIN (SELECT rowid AS rid, sub_state.types AS t, sub_state.prev_status, sub_state.prev_has_more,
                 sub_state.prev_items
          FROM events WHERE type = 'customer.subscription.updated' AND sub_state.types[1] = 'OBJECT') x USING (rid)
    WHERE c.event_type = 'customer.subscription.updated' AND c.prev_moment < c.moment
)
WHERE status_differs OR pause_differs OR items_differ
UNION ALL
-- the events stored before a gap in them leave a subscription in another status or collection pause than the
-- events after it begin with, and nothing between dates the change (the last step before coverage is such an event's):
-- it was made in the gap, and is dated where coverage begins
SELECT b.account_id, 'missing_events', 'subscription', b.subscription_id, b.event_id, a.moment,
       format('event {} (stored before a gap in the events) left the subscription {}{}, and the events after the gap '
              || 'begin with it {}{}: the change was made in the gap, and is dated where they begin', b.event_id,
              b.status, CASE WHEN b.pause THEN ' with collection paused' ELSE '' END, a.status,
              CASE WHEN a.pause THEN ' with collection paused' ELSE '' END)
FROM (SELECT st.account_id, st.subscription_id, arg_max(st.status, (st.moment, st.ord)) AS status,
             arg_max(coalesce(st.pause_collection, false), (st.moment, st.ord)) AS pause,
             arg_max(st.source_event_id, (st.moment, st.ord)) AS event_id,
             arg_max(st.ord, (st.moment, st.ord)) AS ord
      FROM derived_sub_status_steps st
      JOIN derived_coverage c USING (account_id)
      -- (only the subscriptions with such an event)
      SEMI JOIN (SELECT DISTINCT account_id, subscription_id FROM derived_sub_status_steps WHERE ord = 5) e
          ON e.account_id = st.account_id AND e.subscription_id = st.subscription_id
      WHERE st.moment < c.coverage_start
      GROUP BY ALL) b
JOIN (SELECT e.account_id, e.subscription_id, c.coverage_start AS moment, e.before_status AS status,
             coalesce(e.before_pause_collection, false) AS pause
      FROM derived_sub_events e
      JOIN derived_coverage c USING (account_id)
      -- (the state the first event after the gap says it had just before it)
      WHERE e.seq = 1 AND e.has_before) a
  USING (account_id, subscription_id)
WHERE b.ord = 5 AND (b.status IS DISTINCT FROM a.status OR b.pause IS DISTINCT FROM a.pause)
UNION ALL
-- a subscription that began inside event coverage without any event, or began before it and ended inside it
-- without any event (its end is dated at ended_at)
SELECT s.account_id, 'missing_events', 'subscription', s.subscription_id, NULL,
       CASE WHEN s.start_date > c.coverage_start THEN s.start_date ELSE s.ended_at END,
       CASE WHEN s.start_date > c.coverage_start
            THEN 'the subscription started inside the event window but no customer.subscription.* event was stored'
            ELSE 'the subscription ended inside the event window but no customer.subscription.* event was stored; '
                 || 'its end is dated at its ended_at' END
FROM derived_subs s
JOIN derived_coverage c USING (account_id)
WHERE c.has_events
  AND (s.start_date > c.coverage_start OR (s.ended_at > c.coverage_start AND NOT s.start_date > c.coverage_start))
  AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                  WHERE e.account_id = s.account_id AND e.subscription_id = s.subscription_id)
UNION ALL
-- a price used by an item that the store has no usable row for
SELECT DISTINCT h.account_id, 'missing_price', 'price', h.price_id, h.subscription_item_id, NULL::TIMESTAMPTZ,
       CASE WHEN p.price_id IS NULL THEN 'price not found anywhere; the item counts zero MRR'
            ELSE 'price not in the prices table; terms taken from the object embedded in the item' END
FROM derived_item_history h
LEFT JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
WHERE p.price_id IS NULL OR p.found_in = 'subscription_items'
UNION ALL
-- a product an item's price names that the store does not hold (deleted before the first sync): its metadata
-- family and unit label are unknown, so its family and unit come from the settings' maps, else its id and price
-- (one row per item, as missing_price: the rows follow the items a recompute of the changed customers derives)
SELECT DISTINCT h.account_id, 'missing_product', 'product', p.product_id, h.subscription_item_id, NULL::TIMESTAMPTZ,
       format('product not in the products table (price {} names it); the item counts as family {} and as {}: '
              || 'map the product under [rules.families] and [rules.units] to count it otherwise', p.price_id,
              p.family, p.unit_kind)
FROM derived_item_history h
JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
WHERE p.product_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM derived_products d WHERE d.account_id = p.account_id AND d.product_id = p.product_id)
UNION ALL
-- a subscription invoice of a subscription the store does not hold: nothing can be derived from its lines (a
-- subscription is never deleted in Stripe, so a sync that missed it is the cause); one row per invoice
SELECT DISTINCT l.account_id, 'missing_subscription', 'invoice', l.invoice_id, l.subscription_id, l.invoice_created,
       format('invoice {} bills subscription {}, which the store does not hold: its lines count no MRR '
              || '(`stripe-churn sync --full` lists every subscription again)', l.invoice_id, l.subscription_id)
-- (an anti join: as a NOT EXISTS, DuckDB ran it as a mark join of every line, 5.0-7.3 s at 1M customers against
-- 1.9-2.3 s for the query alone)
FROM derived_invoice_lines l
ANTI JOIN subscriptions s ON s.account_id = l.account_id AND s.id = l.subscription_id
WHERE l.subscription_id IS NOT NULL
UNION ALL
-- an item of a negative quantity (Stripe sends none): no MRR can take it, and it counts zero while so
SELECT DISTINCT account_id, 'negative_quantity', 'subscription_item', subscription_item_id, price_id, valid_from,
       format('item {} has quantity {} from {}; no MRR takes a negative quantity, so it counts zero while so',
              subscription_item_id, quantity, strftime(valid_from AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M UTC'))
FROM derived_item_history
WHERE quantity < 0
UNION ALL
SELECT account_id, 'missing_price_terms', 'price', price_id, NULL, NULL::TIMESTAMPTZ,
       format('price has billing_scheme {} but no {}; its items count zero MRR', billing_scheme,
              CASE WHEN billing_scheme = 'tiered' THEN 'tiers (sync prices with expand[]=data.tiers)'
                   ELSE 'unit_amount' END)
FROM derived_price_terms t
WHERE price_type = 'recurring'
  -- (its own tiers, in its own currency: its options' tiers price only the items billed in theirs)
  AND ((billing_scheme = 'tiered'
        AND NOT EXISTS (SELECT 1 FROM derived_price_tiers v
                        WHERE v.account_id = t.account_id AND v.price_id = t.price_id
                          AND v.currency IS NOT DISTINCT FROM t.currency))
       OR (billing_scheme = 'per_unit' AND unit_amount IS NULL))
UNION ALL
-- a recurring price billed at an interval the rules of design.md 4 do not normalise (a newer API version's, or
-- malformed: no interval, another word, an interval_count under 1): its items count zero MRR
SELECT account_id, 'unknown_interval', 'price', price_id, NULL, NULL::TIMESTAMPTZ,
       format('price bills every {} {}, not an interval the MRR rules know (day, week, month or year, every 1 or '
              || 'more); its items count zero MRR', coalesce(CAST(interval_count_given AS VARCHAR), '(not a whole number)'),
              coalesce(billing_interval, '(no interval)'))
FROM derived_price_terms
WHERE price_type = 'recurring'
  AND (billing_interval IS NULL OR billing_interval NOT IN ('day', 'week', 'month', 'year') OR interval_count IS NULL)
UNION ALL
-- a discount an item names by its id alone, not stored: the item's MRR leaves it out (a store synced before the
-- items' discounts were expanded; the cheap test on the text first, since items are many)
SELECT i.account_id, 'missing_discount', 'subscription_item', i.id, i.discount_id, ts_of(i.created),
       format('discount {} of this item is not stored (it came as an id); the item''s MRR leaves it out: '
              || '`stripe-churn sync --full` fetches it', i.discount_id)
FROM (
    SELECT account_id, id, json_extract_string(raw, '$.created') AS created,
           unnest(json_extract_string(raw, '$.discounts[*]')) AS discount_id
    FROM subscription_items
    WHERE NOT coalesce(deleted, false) AND regexp_matches(raw, '"discounts"\s*:\s*\[\s*"')
) i
ANTI JOIN discounts d ON d.account_id = i.account_id AND d.id = i.discount_id
WHERE NOT starts_with(i.discount_id, '{')
UNION ALL
SELECT account_id, 'missing_coupon', 'discount', discount_id, coupon_id, valid_from,
       format('coupon {} of this discount is not stored, so MRR leaves the discount out: `stripe-churn sync --full` '
              || 'fetches a coupon Stripe still has (one deleted before the 30 days of events Stripe keeps can be '
              || 'fetched from nowhere)', coupon_id)
FROM derived_discount_spans
WHERE coupon_missing AND scope <> 'invoice'  -- (a discount of one bill is no MRR's)
UNION ALL
-- a discount removed before the stored events begin: its end is an estimate (that matters only while its
-- subscription still runs)
SELECT d.account_id, 'discount_end_estimated', 'discount', d.discount_id, d.coupon_id, d.valid_to,
       -- (a discount on one item is billed on that item's invoice lines, not among the invoice's discounts; its
       -- subscription's events may be stored, their item lists saying nothing of it: cut short before the item)
       CASE WHEN d.end_dated_by = 'invoice' AND d.scope = 'item'
            THEN format('the discount was removed from item {} and no stored event shows when; its end is dated at '
                        || 'the first invoice whose line for the item no longer lists it', d.subscription_item_id)
            WHEN d.end_dated_by = 'invoice'
            THEN 'the discount was removed with no stored event; its end is dated at its owner''s first invoice '
                 || 'without it'
            WHEN d.scope = 'item'
            THEN format('the discount was removed from item {} and no stored event or invoice line of the item '
                        || 'shows when (none bills the item without it after the last that lists it); its end is '
                        || 'dated at the sync that found it gone', d.subscription_item_id)
            ELSE 'the discount was removed with no stored event and no invoice shows when; its end is dated at '
                 || 'the sync that found it gone' END
FROM derived_discount_spans d
LEFT JOIN derived_subs s ON s.account_id = d.account_id AND s.subscription_id = d.subscription_id
WHERE d.end_dated_by IS NOT NULL AND d.applies_to_mrr AND (s.ended_at IS NULL OR d.valid_to < s.ended_at)
UNION ALL
-- an item of a tax-inclusive licensed price that no invoice line tells the tax share of (not its own, not its
-- customer's): its MRR keeps the tax (40)
SELECT i.account_id, 'tax_inclusive_price', 'subscription_item', i.subscription_item_id, i.price_id,
       min(i.valid_from),
       format('price {} is tax-inclusive and no invoice of customer {} shows its tax; the item''s MRR includes '
              'the tax', i.price_id, any_value(i.customer_id))
FROM derived_item_mrr i
JOIN derived_price_terms p USING (account_id, price_id)
-- (an item billed through a currency option is in the option's currency, with its tax behaviour)
LEFT JOIN derived_price_options o ON o.account_id = i.account_id AND o.price_id = i.price_id
                                 AND o.currency = i.currency
WHERE coalesce(o.tax_behavior, p.tax_behavior) = 'inclusive' AND p.usage_type = 'licensed'
  AND p.price_type = 'recurring' AND i.net_share IS NULL
GROUP BY i.account_id, i.subscription_item_id, i.price_id
UNION ALL
-- a subscription billed in another currency than its item's: Stripe bills such a price at its currency_options
-- amount, and the price has none in that currency (none stored, or a tiered one stored without its tiers); the
-- item is valued at the price's own amount
SELECT i.account_id, 'currency_mismatch', 'subscription_item', i.subscription_item_id, i.price_id,
       min(i.valid_from),
       format('subscription {} is billed in {} but its price {} is in {} and has no {} in {} among its '
              'currency_options; the item is valued at the price''s {} amount', i.subscription_id,
              any_value(s.currency), i.price_id, any_value(i.currency),
              CASE WHEN any_value(t.billing_scheme) = 'tiered' THEN 'tiers' ELSE 'unit amount' END,
              any_value(s.currency), any_value(i.currency))
FROM derived_item_mrr i
JOIN derived_subs s USING (account_id, subscription_id)
LEFT JOIN derived_price_terms t ON t.account_id = i.account_id AND t.price_id = i.price_id
WHERE s.currency IS NOT NULL AND i.currency IS NOT NULL AND s.currency <> i.currency
GROUP BY i.account_id, i.subscription_id, i.subscription_item_id, i.price_id
UNION ALL
-- an amount off in another currency than the subscription it applies to, without an amount in the
-- subscription's currency among the coupon's currency_options: counted only on items priced in its currency
SELECT DISTINCT d.account_id, 'currency_mismatch', 'discount', d.discount_id, d.coupon_id, d.valid_from,
       format('coupon {} takes {} {} off a subscription billed in {}; it is counted only on items priced in {}',
              d.coupon_id,
              -- (the amount in major units, as every amount a user reads: Stripe's amount_off is in minor ones)
              CASE minor_digits(lower(d.amount_off_currency))
                   WHEN 0 THEN CAST(d.amount_off AS VARCHAR)
                   WHEN 3 THEN CAST(CAST(d.amount_off AS DECIMAL(18, 0)) * 0.001 AS VARCHAR)
                   ELSE CAST(CAST(d.amount_off AS DECIMAL(18, 0)) * 0.01 AS VARCHAR) END,
              d.amount_off_currency, s.currency, d.amount_off_currency)
FROM derived_discount_spans d
JOIN derived_subs s ON s.account_id = d.account_id
                   AND (s.subscription_id = d.subscription_id
                        OR (d.scope = 'customer' AND s.customer_id = d.customer_id))
WHERE d.applies_to_mrr AND d.amount_off IS NOT NULL AND d.amount_off_currency IS NOT NULL
  AND s.currency IS NOT NULL AND d.amount_off_currency <> s.currency
  AND NOT list_contains(list_transform(coalesce(d.amount_off_options, []), lambda o: o.currency), lower(s.currency))
UNION ALL
-- a subscription status the rules of design.md 4 do not name (a newer API version's): it counts zero MRR
-- (the first such step: the earliest moment, then the first in the subscription's event order at it)
SELECT account_id, 'unknown_status', 'subscription', subscription_id, arg_min(source_event_id, (moment, ord)),
       min(moment),
       format('status {} is not one the MRR rules know; the subscription counts zero MRR while in it',
              arg_min(status, (moment, ord)))
FROM derived_sub_status_steps
WHERE status IS NOT NULL AND status NOT IN ('active', 'past_due', 'trialing', 'incomplete', 'incomplete_expired',
                                            'paused', 'unpaid', 'canceled')
GROUP BY account_id, subscription_id
UNION ALL
-- objects kept only as raw JSON because they cannot be used
SELECT account_id, 'unusable_object', 'subscription', id, NULL, created,
       'subscription without a customer; kept as raw only'
FROM subscriptions
WHERE NOT coalesce(deleted, false) AND customer_id IS NULL
UNION ALL
SELECT l.account_id, 'unusable_object', 'invoice_line', l.line_id, l.invoice_id, l.invoice_created,
       'subscription invoice line without a subscription item or price; kept as raw only'
FROM derived_invoice_lines l
-- (a one-time invoice item billed with the subscription names neither, as it should: its parent says so)
JOIN (SELECT rowid AS rid, raw FROM invoice_lines) r USING (rid)
WHERE (l.subscription_item_id IS NULL OR l.price_id IS NULL) AND NOT l.proration
  AND json_extract_string(r.raw, '$.parent.type') IS DISTINCT FROM 'invoice_item_details'
UNION ALL
-- an event of a billing type whose object is not the one its type names (a newer or unknown object type)
SELECT account_id, 'unusable_object', 'event', id, object_id, created,
       format('{} event whose data.object is not a {} (got {}); kept as raw only', type, want,
              coalesce(got, 'nothing'))
FROM (SELECT account_id, id, object_id, created, type,
             object_type AS got,  -- (data.object.object, extracted at load time)
             CASE WHEN type LIKE 'customer.subscription.%' THEN 'subscription'
                  WHEN type LIKE 'customer.discount.%' THEN 'discount'
                  WHEN type IN ('customer.created', 'customer.updated', 'customer.deleted') THEN 'customer'
                  WHEN type LIKE 'invoice.%' THEN 'invoice'
                  WHEN type LIKE 'credit_note.%' THEN 'credit_note'
                  WHEN type LIKE 'price.%' THEN 'price'
                  WHEN type LIKE 'plan.%' THEN 'plan'
                  WHEN type LIKE 'product.%' THEN 'product'
                  WHEN type LIKE 'coupon.%' THEN 'coupon' END AS want
      FROM events) e
WHERE want IS NOT NULL AND coalesce(got, '') <> want
UNION ALL
SELECT account_id, 'fx_missing', 'currency', currency, NULL, to_timestamp(CAST(first_date - DATE '1970-01-01' AS BIGINT) * 86400),
       format('no exchange rate for {} from {} to {} ({} customers)', currency, first_date, last_date, customers)
FROM derived_fx_missing;

CREATE OR REPLACE VIEW data_quality AS
SELECT account_id, kind, object_type, object_id, related_id, moment, detail FROM derived_data_quality;
