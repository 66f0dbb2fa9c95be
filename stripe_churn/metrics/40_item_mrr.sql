-- MRR per subscription item over time (design.md 4): one row per item and interval of constant
-- contribution. This table is the interface to the classifier (see the column list in NOTES.md).

-- Metered usage: the amount of the item's last invoiced full period (tax excluded), effective from that
-- invoice's creation. A period is full when it spans the price's whole interval, in calendar terms (31 January
-- to 28 February is a month, and so is 28 February to 31 March of an item anchored on the 31st); the first
-- partial period and the final one at cancellation are not (3 January to 1 February is not).
-- Usage billed early by a billing threshold (an invoice with billing_reason subscription_threshold, made when
-- the usage reaches the subscription's amount_gte or an item's usage_gte) belongs to the period whose own
-- invoice bills the rest: each threshold line is added to the item's first usage line invoiced at or after it,
-- when it lies within that line's interval (with reset_billing_cycle_anchor the threshold ends the period, and
-- the next period's line spans a whole interval after it). Their earliest start is the period's start.
-- A voided renewal or threshold invoice (pause_collection's void behavior) still bills the usage it lists.
CREATE OR REPLACE TEMP TABLE derived_metered_steps AS
WITH usage_lines AS (
    SELECT l.account_id, l.subscription_id, l.subscription_item_id, l.invoice_created, l.invoice_id, l.line_id,
           l.period_start, l.period_end, l.amount_excl_tax_p,
           -- the price's interval (added to a date, a month or year ends on the same day of the month, or the
           -- month's last day when it has no such day)
           CASE p.billing_interval WHEN 'month' THEN to_months(p.interval_count)
                                   WHEN 'year' THEN to_years(p.interval_count)
                                   WHEN 'week' THEN to_days(7 * p.interval_count)
                                   WHEN 'day' THEN to_days(p.interval_count) END AS span
    FROM derived_invoice_lines l
    JOIN derived_price_terms p ON p.account_id = l.account_id AND p.price_id = l.price_id
    WHERE p.usage_type = 'metered' AND NOT l.proration AND l.subscription_item_id IS NOT NULL
),
threshold_lines AS (
    SELECT l.account_id, l.subscription_item_id, i.created AS invoice_created, l.period_start,
           line_excl_tax_p(l.amount, l.tax_inclusive, line_net_den(l.amount, l.pretax_credits, l.tax_inclusive))
               AS amount_p
    FROM invoices i
    JOIN invoice_lines l ON l.account_id = i.account_id AND l.invoice_id = i.id
    WHERE i.billing_reason = 'subscription_threshold' AND NOT coalesce(i.deleted, false)
      AND NOT coalesce(l.deleted, false)
      AND NOT coalesce(l.parent_proration, false) AND l.subscription_item_id IS NOT NULL
),
early AS (
    SELECT u.account_id, u.subscription_item_id, u.line_id, min(t.period_start) AS period_start,
           sum(t.amount_p) AS amount_p
    FROM threshold_lines t
    ASOF JOIN usage_lines u
      ON u.account_id = t.account_id AND u.subscription_item_id = t.subscription_item_id
     AND u.invoice_created >= t.invoice_created
    -- (within the interval that ends with the line's period, a day's slack)
    WHERE t.period_start >= u.period_end - u.span - INTERVAL 1 DAY
    GROUP BY ALL
),
periods AS (
    SELECT u.*, least(u.period_start, e.period_start) AS billed_from,
           u.amount_excl_tax_p + coalesce(e.amount_p, 0) AS amount_p
    FROM usage_lines u
    LEFT JOIN early e USING (account_id, subscription_item_id, line_id)
)
SELECT account_id, subscription_id, subscription_item_id, invoice_created AS moment, amount_p, invoice_id
FROM periods
WHERE period_end >= billed_from + span
QUALIFY row_number() OVER (PARTITION BY account_id, subscription_item_id, invoice_created
                           ORDER BY (period_end, line_id) DESC) = 1;  -- (one key: an arg_max; never NULL)

-- Status steps, one per moment (the latest source wins a tie).
CREATE OR REPLACE TEMP TABLE derived_status_points AS
SELECT account_id, subscription_id, moment, status, pause_collection, source_event_id
FROM derived_sub_status_steps
QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id, moment ORDER BY ord DESC) = 1;

-- Cancellations taken back (design.md 4 "Churn timing", churn_recognition = 'canceled' only): a request to cancel
-- (Stripe's canceled_at, set with cancel_at_period_end or a cancel_at) counts as churn when it is made, so one the
-- customer takes back before it takes effect is a churn and a comeback, not a churn that vanishes from months
-- already reported. Stripe clears canceled_at then; the evidence is a stored customer.subscription.updated event
-- whose previous_attributes hold the request's canceled_at and whose data.object no longer does (or holds another,
-- a later request): the subscription counts zero from the request to that event. Its reason, feedback and comment
-- are those of the state before the event (previous_attributes merged onto data.object). A request and its undoing
-- that no stored event shows (both before the events, or between two syncs) leave nothing. A request in force in the
-- last state stored before a gap in the events (its data.object's canceled_at, not ended, and no stored event took it
-- back) that the state where the events start again no longer holds (the subscription's first event after the gap,
-- its state before it: of the next stretch of stored events where it has one, when there are several gaps, else
-- within coverage, else the snapshot; cleared, or another, later request, and not ended) was taken back in the gap,
-- its event lost: the subscription counts zero from the request to where the events start again (the first stored
-- after that gap; for the last gap, where coverage starts, where 20 lets the state after the gap take over, as a
-- snapshot's does), or to the later request, or to the request's cancel_at (the subscription did not end then), when
-- that came first. The gaps are the sync's cursors (`events:gap:<t>`, each kept for good; `events:unbroken`, the
-- last); a subscription with no event between two gaps is taken to have kept its state across both (the comeback
-- where the events start after the later one). Ended where the events start again (its deletion the first event
-- after the gap, or ended inside it): the state just before the end is not known (a deletion carries no
-- previous_attributes, and an immediate cancel moves canceled_at), so the request counts as standing to the end
-- (derived_sub_churn), unless its cancel_at passed before the end without ending the subscription: taken back by
-- then. A request made and taken back inside a gap leaves nothing. The JSON is read only under that setting, of the
-- updated events and of those two events per request alone.
-- (Kept per customer: 70 reads it for the customers whose movements alone are derived again.)
CREATE OR REPLACE TABLE derived_withdrawn_cancels AS
WITH updated AS (
    -- (the setting joined, and the JSON read under it, so that the filters on the JSON below are not pushed
    -- under the setting's test into the scan of the events: under 'ended' they read 588k events' JSON at 1M, 4.5 s)
    SELECT e.account_id, e.object_id AS subscription_id, e.id AS event_id, e.created AS withdrawn_at,
           CASE WHEN st.churn_recognition = 'canceled'
                THEN json_extract(e.raw, ['$.data.previous_attributes.canceled_at', '$.data.object.canceled_at',
                                          '$.data.object.ended_at', '$.data.previous_attributes.cancellation_details',
                                          '$.data.object.cancellation_details']) END AS v
    FROM events e
    JOIN derived_settings st ON st.churn_recognition = 'canceled'
    WHERE e.type = 'customer.subscription.updated' AND e.object_type = 'subscription'
      AND NOT coalesce(e.deleted, false) AND e.raw IS NOT NULL
),
requests AS (
    SELECT account_id, subscription_id, event_id, withdrawn_at,
           ts_of(json_extract_string(v[1], '$')) AS requested_at,
           ts_of(json_extract_string(v[2], '$')) AS canceled_after,
           CASE WHEN v[4] IS NULL THEN v[5] ELSE json_merge_patch(coalesce(v[5], '{}'), v[4]) END AS details
    FROM updated
    WHERE json_type(v[1]) IN ('UBIGINT', 'BIGINT') AND ts_of(json_extract_string(v[3], '$')) IS NULL
),
-- where the stored events start again after each gap in them: the sync keeps every gap as a cursor
-- 'events:gap:<where the stored events ended>' and the last one also as 'events:unbroken' (`created`: where the
-- events Stripe still kept begin), under the setting alone
gap_starts AS (
    SELECT DISTINCT k.account_id, to_timestamp(k.created) AS kept_from
    FROM sync_cursors k
    JOIN derived_settings st ON st.churn_recognition = 'canceled'
    WHERE (k.stream = 'events:unbroken' OR starts_with(k.stream, 'events:gap:')) AND k.created IS NOT NULL
),
-- each subscription's events stored before coverage starts (typed columns), by the stretch of unbroken events they
-- lie in (the latest gap's start at or before them; NULL before the first gap), numbered from either end of it (of
-- several in one second, in 20's order)
early AS (
    SELECT e.account_id, e.object_id AS subscription_id, e.rowid AS rid, g.kept_from AS stretch,
           row_number() OVER (PARTITION BY e.account_id, e.object_id, g.kept_from
                              ORDER BY e.created DESC, o.pos DESC NULLS LAST, e.id DESC) AS from_last,
           row_number() OVER (PARTITION BY e.account_id, e.object_id, g.kept_from
                              ORDER BY e.created, o.pos NULLS FIRST, e.id) AS from_first
    FROM events e
    JOIN derived_coverage c USING (account_id)
    JOIN derived_settings st ON st.churn_recognition = 'canceled'
    LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
    ASOF LEFT JOIN gap_starts g ON g.account_id = e.account_id AND e.created >= g.kept_from
    WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false)
      AND e.created < c.coverage_start
),
stretches AS (
    SELECT account_id, subscription_id, stretch,
           any_value(rid) FILTER (WHERE from_last = 1) AS last_rid,
           any_value(rid) FILTER (WHERE from_first = 1) AS first_rid
    FROM early WHERE from_last = 1 OR from_first = 1
    GROUP BY ALL
),
-- each subscription's last event of each stretch before coverage, and its first event of the next stretch where it
-- has one (NULL: none before coverage; the state after the gap is then the one where coverage starts)
last_early AS (
    SELECT s.account_id, s.subscription_id, s.last_rid AS rid, c.coverage_start,
           lead(s.first_rid) OVER w AS next_rid, lead(s.stretch) OVER w AS next_stretch
    FROM stretches s
    JOIN derived_coverage c USING (account_id)
    WINDOW w AS (PARTITION BY s.account_id, s.subscription_id ORDER BY s.stretch NULLS FIRST)
),
-- the request in force in that state (its JSON read by row id, of that event alone, and under the setting: as above,
-- so that the filters on it are not pushed into the scan of the events)
gap_requests AS (
    SELECT account_id, subscription_id, rid, coverage_start, next_rid, next_stretch,
           ts_of(json_extract_string(v[1], '$')) AS requested_at, v[3] AS details,
           ts_of(json_extract_string(v[4], '$')) AS cancel_at
    FROM (SELECT l.*,
                 CASE WHEN st.churn_recognition = 'canceled'
                      THEN json_extract(e.raw, ['$.data.object.canceled_at', '$.data.object.ended_at',
                                                '$.data.object.cancellation_details', '$.data.object.cancel_at'])
                 END AS v
          FROM last_early l
          JOIN events e ON e.rowid = l.rid
          JOIN derived_settings st ON st.churn_recognition = 'canceled') g
    WHERE json_type(v[1]) IN ('UBIGINT', 'BIGINT') AND ts_of(json_extract_string(v[2], '$')) IS NULL
      -- (not one a stored event took back: of events in one second, the order above does not look at canceled_at,
      -- and a request and its undoing in one second may come in either)
      AND NOT EXISTS (SELECT 1 FROM requests r
                      WHERE r.account_id = g.account_id AND r.subscription_id = g.subscription_id
                        AND r.requested_at = ts_of(json_extract_string(g.v[1], '$'))
                        AND r.canceled_after IS DISTINCT FROM r.requested_at)
),
-- where the events start again after a gap before coverage: the first event stored there (any object's), for the
-- stretches those requests are followed by alone
resumes AS (
    SELECT g.account_id, g.kept_from, e.created AS resumed_at
    FROM (SELECT DISTINCT account_id, next_stretch AS kept_from FROM gap_requests WHERE next_rid IS NOT NULL) g
    ASOF JOIN events e ON e.account_id = g.account_id AND e.created >= g.kept_from
),
-- the state where the events start again after the gap: the subscription's first event after it (of the next
-- stretch, else within coverage), where they start again (the stretch's first event, else coverage's start)
gap_next AS (
    SELECT g.rid AS request_rid, g.next_rid AS rid, r.resumed_at
    FROM gap_requests g
    JOIN resumes r ON r.account_id = g.account_id AND r.kept_from = g.next_stretch
    WHERE g.next_rid IS NOT NULL
    UNION ALL
    SELECT g.rid, f.rid, g.coverage_start
    FROM gap_requests g
    JOIN derived_sub_events f USING (account_id, subscription_id)
    WHERE g.next_rid IS NULL AND f.seq = 1
),
-- its state before the event: previous_attributes over data.object (a deletion carries none: the state it ended,
-- whose canceled_at may be an immediate cancel's, says nothing of the one before it); read for those requests alone
-- (an event without its JSON, in an incremental scope, held no cancellation: its canceled_at and ended_at are NULL)
gap_after AS (
    SELECT request_rid, resumed_at,
           ts_of(json_extract_string(coalesce(v[1], v[2]), '$')) AS canceled_at,
           ts_of(json_extract_string(coalesce(v[3], v[4]), '$')) AS ended_at
    FROM (SELECT n.*,
                 CASE WHEN st.churn_recognition = 'canceled'
                      THEN json_extract(e.raw, ['$.data.previous_attributes.canceled_at', '$.data.object.canceled_at',
                                                '$.data.previous_attributes.ended_at', '$.data.object.ended_at'])
                 END AS v
          FROM gap_next n
          JOIN events e ON e.rowid = n.rid
          JOIN derived_settings st ON st.churn_recognition = 'canceled')
),
gap_taken_back AS (
    -- (a request still in force at its cancel_at would have ended the subscription there: it was taken back by
    -- then at the latest, and the invoices before coverage bill the subscription on)
    SELECT account_id, subscription_id, requested_at,
           least(CASE WHEN ended_after IS NULL AND canceled_after > requested_at THEN canceled_after END, resumed_at,
                 CASE WHEN cancel_at > requested_at THEN cancel_at END) AS withdrawn_at,
           CAST(NULL AS VARCHAR) AS event_id, details
    FROM (SELECT g.*, coalesce(a.resumed_at, g.coverage_start) AS resumed_at,
                 CASE WHEN a.request_rid IS NULL THEN s.canceled_at ELSE a.canceled_at END AS canceled_after,
                 CASE WHEN a.request_rid IS NULL THEN s.ended_at ELSE a.ended_at END AS ended_after
          FROM gap_requests g
          JOIN derived_subs s USING (account_id, subscription_id)
          LEFT JOIN gap_after a ON a.request_rid = g.rid)
    -- (cleared, or another, later request; ended there, by its deletion after the gap or before: whether the request
    -- stood up to the end is not known, and derived_sub_churn counts the churn at it, unless its cancel_at passed
    -- before the end without ending the subscription)
    WHERE CASE WHEN ended_after IS NULL THEN canceled_after IS NULL OR canceled_after > requested_at
               ELSE cancel_at > requested_at AND cancel_at < ended_after END
),
taken_back AS (
    SELECT account_id, subscription_id, requested_at, withdrawn_at, event_id, details
    FROM requests WHERE canceled_after IS DISTINCT FROM requested_at
    UNION ALL
    SELECT * FROM gap_taken_back
)
SELECT r.account_id, s.customer_id, r.subscription_id, r.requested_at, r.withdrawn_at, r.event_id,
       json_extract_string(details, '$.reason') AS cancellation_reason,
       json_extract_string(details, '$.feedback') AS cancellation_feedback,
       json_extract_string(details, '$.comment') AS cancellation_comment,
       CASE WHEN json_extract_string(details, '$.reason') = 'payment_failed' THEN 'involuntary'
            ELSE 'voluntary' END AS churn_type
FROM taken_back r
JOIN derived_subs s USING (account_id, subscription_id)
WHERE r.requested_at < r.withdrawn_at
-- (one row per moment taken back: the event latest in id of two in one second)
QUALIFY row_number() OVER (PARTITION BY r.account_id, r.subscription_id, r.withdrawn_at
                           ORDER BY r.event_id DESC NULLS LAST) = 1;

-- Whether moment `m` lies in one of the spans `w` (a list of {'f': from, 't': to}) a request taken back counts zero.
CREATE OR REPLACE MACRO in_withdrawn(w, m) AS
    coalesce(list_bool_or(list_transform(w, lambda s: s.f <= m AND m < s.t)), false);

-- Moment of churn per subscription (design.md 4 "Churn timing"): ended_at, or canceled_at with
-- churn_recognition = 'canceled'; an unpaid subscription churns when it turns unpaid.
-- Under 'canceled', a request to cancel (at the period's end or at a cancel_at) still in force when the subscription
-- was then canceled at once: Stripe's canceled_at is the later cancel's, yet the churn counts at the request, when
-- it was made (its month keeps it). The evidence: the subscription's last stored event within coverage that does not
-- end it (the deletion aside; of one second, the last in 20's order) holds a canceled_at earlier than the final one
-- and no ended_at (no event in between cleared it: a request taken back is 'derived_withdrawn_cancels''s; nor did
-- another update of that second, which 20's order, blind to canceled_at, may put first: read with it). With no
-- such event within coverage (a gap in the events, then the deletion or nothing), the last stored before coverage:
-- nothing stored took its request back, so it counts as standing when the subscription was canceled at once, unless
-- its cancel_at passed before the end without ending the subscription (then it no longer stood, and
-- derived_withdrawn_cancels takes it back). The JSON is read under that setting alone, of that one event per ended
-- subscription (and the updates of its second), by row id after the join that picks it (the setting joined above
-- the read, as in derived_withdrawn_cancels). The churn keeps the subscription's final details (its reason, feedback
-- and comment), as the one cancellation row of the subscription does (70's `sub_facts`).
CREATE OR REPLACE TABLE derived_sub_churn AS
WITH ended AS (
    SELECT s.account_id, s.subscription_id, s.canceled_at AS final_canceled_at, s.ended_at AS final_ended_at
    FROM derived_subs s
    JOIN derived_settings st ON st.churn_recognition = 'canceled'
    WHERE s.ended_at IS NOT NULL AND s.canceled_at IS NOT NULL
),
-- (none within coverage: the last stored before it, of several in one second the last in 20's order)
early_kept AS (
    SELECT e.account_id, e.object_id AS subscription_id, e.rowid AS rid,
           row_number() OVER (PARTITION BY e.account_id, e.object_id
                              ORDER BY e.created DESC, o.pos DESC NULLS LAST, e.id DESC) AS n,
           list(CASE WHEN e.type = 'customer.subscription.updated' THEN e.rowid END)
               OVER (PARTITION BY e.account_id, e.object_id, e.created) AS second
    FROM ended s
    JOIN derived_coverage c USING (account_id)
    JOIN events e ON e.account_id = s.account_id AND e.object_id = s.subscription_id
    LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
    WHERE e.type LIKE 'customer.subscription.%' AND e.type <> 'customer.subscription.deleted'
      AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false) AND e.created < c.coverage_start
      AND NOT EXISTS (SELECT 1 FROM derived_sub_events f
                      WHERE f.account_id = s.account_id AND f.subscription_id = s.subscription_id
                        AND f.event_type <> 'customer.subscription.deleted')
),
-- the event picked, and the subscription's updates in its second (`second`: 20's order of one second does not look
-- at canceled_at, ids decide, so one of them may have taken back the request the picked one holds)
last_kept AS (
    SELECT f.account_id, f.subscription_id, f.rid, false AS early,
           list(CASE WHEN f.event_type = 'customer.subscription.updated' THEN f.rid END)
               OVER (PARTITION BY f.account_id, f.subscription_id, f.moment) AS second
    FROM ended s
    JOIN derived_sub_events f USING (account_id, subscription_id)
    WHERE f.event_type <> 'customer.subscription.deleted'
    QUALIFY row_number() OVER (PARTITION BY f.account_id, f.subscription_id ORDER BY f.moment DESC, f.seq DESC) = 1
    UNION ALL
    SELECT account_id, subscription_id, rid, true, second FROM early_kept WHERE n = 1
),
-- their JSON, by row id (the setting joined above the read, as in derived_withdrawn_cancels)
kept_read AS (
    SELECT k.account_id, k.subscription_id, k.early, k.x = k.rid AS picked,
           CASE WHEN st.churn_recognition = 'canceled'
                THEN json_extract(e.raw, ['$.data.object.canceled_at', '$.data.object.ended_at',
                                          '$.data.object.cancel_at', '$.data.previous_attributes.canceled_at']) END AS v
    FROM (SELECT l.*, unnest(list_prepend(l.rid, list_filter(l.second, lambda r: r IS NOT NULL AND r <> l.rid))) AS x
          FROM last_kept l) k
    JOIN events e ON e.rowid = k.x
    JOIN derived_settings st ON st.churn_recognition = 'canceled'
),
kept_state AS (
    SELECT account_id, subscription_id, early,
           any_value(v) FILTER (WHERE picked) AS v,
           -- (the requests those other updates took back: canceled_at before them, and no longer it after)
           list(ts_of(json_extract_string(v[4], '$')))
               FILTER (WHERE NOT picked AND json_type(v[4]) IN ('UBIGINT', 'BIGINT')
                       AND ts_of(json_extract_string(v[1], '$')) IS DISTINCT FROM ts_of(json_extract_string(v[4], '$')))
               AS undone
    FROM kept_read
    GROUP BY ALL
),
held AS (
    SELECT account_id, subscription_id, ts_of(json_extract_string(v[1], '$')) AS requested_at
    FROM (SELECT l.*, s.final_canceled_at, s.final_ended_at
          FROM kept_state l
          JOIN ended s USING (account_id, subscription_id)) g
    WHERE json_type(v[1]) IN ('UBIGINT', 'BIGINT') AND ts_of(json_extract_string(v[2], '$')) IS NULL
      AND ts_of(json_extract_string(v[1], '$')) < final_canceled_at
      -- (across a gap: not when its cancel_at passed before the end without ending the subscription, a request that
      -- no longer stood then, which derived_withdrawn_cancels takes back)
      AND NOT (early AND coalesce(ts_of(json_extract_string(v[3], '$')) > ts_of(json_extract_string(v[1], '$'))
                                  AND ts_of(json_extract_string(v[3], '$')) < final_ended_at, false))
      -- (nor one an update of the same second took back)
      AND NOT coalesce(list_contains(undone, ts_of(json_extract_string(v[1], '$'))), false)
),
last_ok AS (
    SELECT account_id, subscription_id, max(moment) AS ok_at
    FROM derived_status_points WHERE status IN ('active', 'past_due', 'trialing') GROUP BY ALL
),
-- the final unpaid spell (one the customer paid their way out of is no churn)
unpaid AS (
    SELECT sp.account_id, sp.subscription_id, min(sp.moment) AS unpaid_at
    FROM derived_status_points sp
    LEFT JOIN last_ok o USING (account_id, subscription_id)
    WHERE sp.status = 'unpaid' AND (o.ok_at IS NULL OR sp.moment > o.ok_at)
    GROUP BY ALL
)
SELECT s.account_id, s.subscription_id, s.customer_id,
       least(u.unpaid_at,
             CASE WHEN st.churn_recognition = 'canceled' THEN coalesce(h.requested_at, s.canceled_at, s.ended_at)
                  ELSE s.ended_at END) AS churn_at,
       -- from here on the subscription counts zero whatever its status says
       CASE WHEN st.churn_recognition = 'canceled' THEN coalesce(h.requested_at, s.canceled_at, s.ended_at)
            ELSE s.ended_at END AS zero_from,
       CASE WHEN s.cancellation_reason = 'payment_failed' OR u.unpaid_at IS NOT NULL THEN 'involuntary'
            ELSE 'voluntary' END AS churn_type,
       s.cancellation_reason, s.cancellation_feedback, s.cancellation_comment
FROM derived_subs s
CROSS JOIN derived_settings st
LEFT JOIN unpaid u USING (account_id, subscription_id)
LEFT JOIN held h USING (account_id, subscription_id);

-- Integer keys for the subscriptions and items that have a history (the per-point tables, windows and
-- as-of joins below carry these instead of the id strings, and the descriptive columns are joined back
-- only for the intervals kept). An item's key follows its id's order within an account (the shared
-- amount_off is allocated in item id order); a NULL id has no key, so it matches nothing, as before.
-- (with the currency the subscription is billed in: a price's currency option there prices its items)
CREATE OR REPLACE TEMP TABLE derived_mrr_sub_keys AS
SELECT g.account_id, g.subscription_id, g.customer_id, lower(s.currency) AS currency,
       CAST(row_number() OVER () AS INTEGER) AS sk, c.zero_from, w.withdrawn
FROM (SELECT account_id, subscription_id, any_value(customer_id) AS customer_id
      FROM derived_item_history
      WHERE subscription_id IS NOT NULL
      GROUP BY account_id, subscription_id) g
LEFT JOIN derived_subs s USING (account_id, subscription_id)
LEFT JOIN derived_sub_churn c USING (account_id, subscription_id)
-- (the spans a request taken back counts zero: NULL for nearly every subscription)
LEFT JOIN (SELECT account_id, subscription_id, list({'f': requested_at, 't': withdrawn_at}) AS withdrawn
           FROM derived_withdrawn_cancels GROUP BY ALL) w USING (account_id, subscription_id);

CREATE OR REPLACE TEMP TABLE derived_mrr_item_keys AS
SELECT account_id, subscription_item_id, CAST(row_number() OVER (ORDER BY account_id, subscription_item_id) AS INTEGER) AS ik
FROM (SELECT DISTINCT account_id, subscription_item_id FROM derived_item_history WHERE subscription_item_id IS NOT NULL);

-- Each history row's keys (`hid`: its rowid; `ik` NULL for a NULL item id), with what the item points look
-- up by it (so that they need not join the history rows again: at 1M customers that join and the one to
-- derived_sub_churn took 7.5 s of CPU).
CREATE OR REPLACE TEMP TABLE derived_mrr_hist_keys AS
SELECT h.rowid AS hid, sk.sk, ik.ik, h.valid_from, h.valid_to, sk.currency AS sub_currency,
       h.account_id, h.subscription_item_id, h.price_id, h.quantity, sk.zero_from, sk.withdrawn
FROM derived_item_history h
JOIN derived_mrr_sub_keys sk ON sk.account_id = h.account_id AND sk.subscription_id = h.subscription_id
LEFT JOIN derived_mrr_item_keys ik ON ik.account_id = h.account_id AND ik.subscription_item_id = h.subscription_item_id;

-- Every moment at which anything an item's MRR depends on may change: per subscription (`ik` NULL: every item
-- of it may change then) or per item (`ik`: only that item may; the subscription's other items get no point
-- there). A status, churn or discount moment is the whole subscription's; the bounds of an item's history
-- rows and its usage steps are its own, unless the subscription shares an amount_off among its items in
-- proportion to their MRR (any item's change changes every share), or the moment is the whole subscription's
-- anyway. (An item's point at another item's moment would equal its point before and be dropped.)
CREATE OR REPLACE TEMP TABLE derived_sub_breaks AS
WITH sub_items AS (
    SELECT DISTINCT account_id, subscription_id, customer_id FROM derived_item_history
),
-- a discount's start and end, on its subscription, or on every subscription of its customer (two equality
-- joins: an OR in the join condition would compare every subscription with every discount)
sub_discounts AS (
    SELECT si.account_id, si.subscription_id, d.valid_from, d.valid_to, d.amount_off, d.scope
    FROM sub_items si
    JOIN derived_discount_spans d
      ON d.account_id = si.account_id AND d.applies_to_mrr AND d.subscription_id = si.subscription_id
    UNION ALL
    SELECT si.account_id, si.subscription_id, d.valid_from, d.valid_to, d.amount_off, d.scope
    FROM sub_items si
    JOIN derived_discount_spans d
      ON d.account_id = si.account_id AND d.applies_to_mrr AND d.scope = 'customer'
     AND d.customer_id = si.customer_id
),
sharing AS (
    SELECT DISTINCT account_id, subscription_id FROM sub_discounts
    WHERE amount_off IS NOT NULL AND scope <> 'item'
),
whole AS (
    -- a status point that changes neither status nor pause_collection changes no item's MRR (its point would
    -- equal the one before and be dropped; the as-of status lookup below still sees every status point)
    SELECT account_id, subscription_id, moment
    FROM (SELECT account_id, subscription_id, moment, {'s': status, 'p': pause_collection} AS v,
                 lag({'s': status, 'p': pause_collection}) OVER (PARTITION BY account_id, subscription_id
                                                                ORDER BY moment) AS before
          FROM derived_status_points)
    WHERE before IS NULL OR before IS DISTINCT FROM v
    UNION SELECT account_id, subscription_id, zero_from FROM derived_sub_churn WHERE zero_from IS NOT NULL
    UNION SELECT account_id, subscription_id, requested_at FROM derived_withdrawn_cancels
    UNION SELECT account_id, subscription_id, withdrawn_at FROM derived_withdrawn_cancels
    UNION
    SELECT d.account_id, d.subscription_id, b.moment
    FROM sub_discounts d, unnest([d.valid_from, d.valid_to]) AS b(moment)
    WHERE b.moment IS NOT NULL
),
sub_first AS (
    SELECT sk, min(valid_from) AS first_at FROM derived_mrr_hist_keys GROUP BY sk
),
whole_keyed AS (
    SELECT k.sk, w.moment
    FROM whole w JOIN derived_mrr_sub_keys k USING (account_id, subscription_id)
),
sharing_keyed AS (
    SELECT k.sk FROM sharing s JOIN derived_mrr_sub_keys k USING (account_id, subscription_id)
),
own AS (
    SELECT sk, ik, valid_from AS moment FROM derived_mrr_hist_keys
    UNION ALL SELECT sk, ik, valid_to FROM derived_mrr_hist_keys WHERE valid_to IS NOT NULL
    UNION ALL
    SELECT sk.sk, ik.ik, m.moment
    FROM derived_metered_steps m
    JOIN derived_mrr_sub_keys sk ON sk.account_id = m.account_id AND sk.subscription_id = m.subscription_id
    LEFT JOIN derived_mrr_item_keys ik
           ON ik.account_id = m.account_id AND ik.subscription_item_id = m.subscription_item_id
),
keyed AS MATERIALIZED (
    SELECT DISTINCT p.sk, p.moment, p.ik
    FROM (SELECT sk, moment, CAST(NULL AS INTEGER) AS ik FROM whole_keyed
          UNION ALL
          -- (an item without a key, such as a NULL id, makes its moments the whole subscription's)
          SELECT o.sk, o.moment, CASE WHEN o.sk NOT IN (SELECT sk FROM sharing_keyed) THEN o.ik END
          FROM own o) p
    JOIN sub_first f USING (sk)
    WHERE p.moment >= f.first_at
)
SELECT sk, moment, ik FROM keyed WHERE ik IS NULL
UNION ALL
SELECT sk, moment, ik FROM keyed k
WHERE ik IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM keyed w WHERE w.ik IS NULL AND w.sk = k.sk AND w.moment = k.moment);

-- Undiscounted amount per billing period of each licensed (price, quantity) pair in use.
CREATE OR REPLACE TEMP TABLE derived_price_qty_amounts AS
SELECT account_id, price_id, quantity, price_amount_p(account_id, price_id, quantity) AS amount_p
FROM (SELECT DISTINCT h.account_id, h.price_id, h.quantity
      FROM derived_item_history h
      JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
      WHERE p.usage_type = 'licensed' AND h.quantity IS NOT NULL);

-- Tax-inclusive licensed prices (design.md 4: tax excluded; a currency option's own tax behaviour for an item
-- billed through it): the share of the price that is not tax, from the
-- item's latest invoice line for that price (net_num / net_den of 30; a line without inclusive tax is a share of
-- 1), else from its latest line of another tax-inclusive price, else from its customer's; with none of these, the
-- same from the proration lines that charged them (an item switched onto an inclusive price shows its tax first on
-- the update's proration, until its renewal bills it whole: their amounts are no MRR, their tax share tells the
-- rate all the same); NULL when no invoice tells (the tax stays in, and 90 says so). One share per item and price:
-- a changed tax rate restates the item's history at the latest rate rather than showing as a movement. (Lines
-- that bill nothing, such as a trial's, tell nothing.)
CREATE OR REPLACE TEMP TABLE derived_item_tax_shares AS
WITH licensed AS (
    SELECT account_id, price_id, tax_behavior FROM derived_price_terms
    WHERE usage_type = 'licensed' AND price_type = 'recurring'
),
-- (a price inclusive of tax, or with an amount in another currency that is: the lines below tell each item's
-- share from its own invoices, a line without inclusive tax a share of 1)
inclusive AS (
    SELECT account_id, price_id FROM licensed WHERE tax_behavior = 'inclusive'
    UNION
    SELECT o.account_id, o.price_id FROM derived_price_options o SEMI JOIN licensed USING (account_id, price_id)
    WHERE o.tax_behavior = 'inclusive'
),
-- the history rows of items billed inclusive of tax: at the price's own amount, or at its currency option in
-- the subscription's currency (only the rows of the prices above are looked at: most accounts have none)
inclusive_items AS (
    SELECT DISTINCT h.account_id, h.customer_id, h.subscription_item_id, h.price_id
    FROM derived_item_history h
    SEMI JOIN inclusive USING (account_id, price_id)
    JOIN licensed p USING (account_id, price_id)
    JOIN derived_mrr_hist_keys hk ON hk.hid = h.rowid
    LEFT JOIN derived_price_options o
           ON o.account_id = h.account_id AND o.price_id = h.price_id AND o.currency = hk.sub_currency
    WHERE coalesce(o.tax_behavior, p.tax_behavior) = 'inclusive'
),
lines AS (
    SELECT l.account_id, s.customer_id, l.subscription_item_id, l.price_id,
           (l.invoice_created, l.period_start, l.line_id) AS latest,
           {'num': coalesce(l.net_num, 1), 'den': coalesce(l.net_den, 1)} AS share, l.proration
    FROM derived_invoice_lines l
    SEMI JOIN inclusive i USING (account_id, price_id)
    LEFT JOIN derived_subs s ON s.account_id = l.account_id AND s.subscription_id = l.subscription_id
    WHERE NOT l.is_credit AND l.amount_excl_tax_p > 0
),
by_price AS (
    SELECT account_id, subscription_item_id, price_id, arg_max(share, latest) FILTER (WHERE NOT proration) AS share,
           arg_max(share, latest) FILTER (WHERE proration) AS pro_share
    FROM lines GROUP BY ALL
),
by_item AS (
    SELECT account_id, subscription_item_id, arg_max(share, latest) FILTER (WHERE NOT proration) AS share,
           arg_max(share, latest) FILTER (WHERE proration) AS pro_share
    FROM lines GROUP BY ALL
),
by_customer AS (
    SELECT account_id, customer_id, arg_max(share, latest) FILTER (WHERE NOT proration) AS share,
           arg_max(share, latest) FILTER (WHERE proration) AS pro_share
    FROM lines GROUP BY ALL
)
SELECT h.account_id, h.subscription_item_id, h.price_id,
       coalesce(p.share, i.share, c.share, p.pro_share, i.pro_share, c.pro_share).num AS net_num,
       coalesce(p.share, i.share, c.share, p.pro_share, i.pro_share, c.pro_share).den AS net_den
FROM inclusive_items h
LEFT JOIN by_price p USING (account_id, subscription_item_id, price_id)
LEFT JOIN by_item i USING (account_id, subscription_item_id)
LEFT JOIN by_customer c USING (account_id, customer_id);

-- The same for the (price, quantity) pairs billed through a price's currency option (the subscription's
-- currency is not the price's, and the price has an amount in it: a unit amount, or tiers of its own).
CREATE OR REPLACE TEMP TABLE derived_option_qty_amounts AS
SELECT account_id, price_id, currency, quantity, option_amount_p(account_id, price_id, currency, quantity) AS amount_p
FROM (SELECT DISTINCT h.account_id, h.price_id, hk.sub_currency AS currency, h.quantity
      FROM derived_item_history h
      JOIN derived_mrr_hist_keys hk ON hk.hid = h.rowid
      SEMI JOIN derived_price_options o
           ON o.account_id = h.account_id AND o.price_id = h.price_id AND o.currency = hk.sub_currency
      WHERE h.quantity IS NOT NULL);

-- Each item's state at each break of its subscription: one narrow row per item and break (the history
-- row it falls in by `hid`, its rowid; `pq` numbers its (price, quantity) pair, NULL when both are NULL, so
-- that points compare pairs as integers).
CREATE OR REPLACE TEMP TABLE derived_item_points AS
WITH pairs AS (
    SELECT price_id, quantity, CAST(row_number() OVER () AS INTEGER) AS pq
    FROM (SELECT DISTINCT price_id, quantity FROM derived_item_history
          WHERE price_id IS NOT NULL OR quantity IS NOT NULL)
),
hist AS MATERIALIZED (
    -- (materialised: the lookups below run once per history row, not once per point)
    -- (an item billed through its price's currency option is in that currency, at that amount: the option's unit
    -- amount, or its own tiers for a tiered price; a metered item's amount is its usage line's, billed in the
    -- subscription's currency whatever options the price has: one listed without its tiers is not in
    -- derived_price_options)
    SELECT h.hid, h.sk, h.ik, h.valid_from, h.valid_to, pr.pq,
           p.usage_type,
           CASE WHEN p.usage_type = 'metered' THEN coalesce(h.sub_currency, p.currency)
                ELSE coalesce(o.currency, p.currency) END AS currency,
           CASE WHEN p.usage_type = 'metered' THEN norm_num(p.billing_interval, coalesce(h.sub_currency, p.currency))
                ELSE coalesce(o.norm_num, p.norm_num) END AS norm_num,
           CASE WHEN p.usage_type = 'metered'
                THEN norm_den(p.billing_interval, p.interval_count, coalesce(h.sub_currency, p.currency))
                ELSE coalesce(o.norm_den, p.norm_den) END AS norm_den, p.price_type,
           CASE WHEN o.price_id IS NULL THEN a.amount_p ELSE oa.amount_p END AS licensed_amount_p,
           h.zero_from, h.withdrawn, x.net_num, x.net_den
    FROM derived_mrr_hist_keys h
    LEFT JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
    LEFT JOIN derived_price_qty_amounts a
           ON a.account_id = h.account_id AND a.price_id = h.price_id AND a.quantity = h.quantity
    LEFT JOIN pairs pr ON pr.price_id IS NOT DISTINCT FROM h.price_id AND pr.quantity IS NOT DISTINCT FROM h.quantity
    LEFT JOIN derived_item_tax_shares x
           ON x.account_id = h.account_id AND x.subscription_item_id = h.subscription_item_id
          AND x.price_id = h.price_id
    LEFT JOIN derived_price_options o
           ON o.account_id = h.account_id AND o.price_id = h.price_id AND o.currency = h.sub_currency
    LEFT JOIN derived_option_qty_amounts oa
           ON oa.account_id = h.account_id AND oa.price_id = h.price_id AND oa.currency = h.sub_currency
          AND oa.quantity = h.quantity
),
sub_status AS (
    SELECT b.sk, b.ik AS break_ik, b.moment, sp.status, sp.pause_collection, sp.moment AS status_at,
           sp.source_event_id AS status_event_id
    FROM derived_sub_breaks b
    ASOF LEFT JOIN (SELECT k.sk, s.moment, s.status, s.pause_collection, s.source_event_id
                    FROM derived_status_points s
                    JOIN derived_mrr_sub_keys k USING (account_id, subscription_id)) sp
      ON sp.sk = b.sk AND sp.moment <= b.moment
),
with_status AS (
    SELECT h.*, b.moment, b.status, b.pause_collection, b.status_at, b.status_event_id
    FROM sub_status b
    JOIN hist h ON h.sk = b.sk AND h.valid_from <= b.moment AND (h.valid_to IS NULL OR b.moment < h.valid_to)
               AND (b.break_ik IS NULL OR b.break_ik = h.ik)
),
-- (only items with usage invoices have a usage step to find)
metered AS (
    SELECT k.ik, m.moment, m.amount_p, m.invoice_id
    FROM derived_metered_steps m
    JOIN derived_mrr_item_keys k USING (account_id, subscription_item_id)
),
usage AS (
    SELECT x.ik, x.moment, m.amount_p AS metered_amount_p, m.moment AS metered_at, m.invoice_id AS metered_invoice_id
    FROM (SELECT ik, moment FROM with_status SEMI JOIN (SELECT DISTINCT ik FROM metered) USING (ik)) x
    ASOF LEFT JOIN metered m ON m.ik = x.ik AND m.moment <= x.moment
)
SELECT
    u.hid, u.sk, u.ik, u.moment, u.valid_to AS row_to, u.pq, u.currency, u.norm_num, u.norm_den, u.net_num,
    u.net_den, u.status, u.pause_collection, u.status_at, u.status_event_id, m.metered_at, m.metered_invoice_id,
    CASE
        WHEN u.usage_type = 'metered' THEN CASE WHEN st.include_metered THEN coalesce(m.metered_amount_p, 0) ELSE 0 END
        ELSE coalesce(u.licensed_amount_p, 0)
    END AS amount_p,
    (u.status = 'active' OR (u.status = 'past_due' AND st.past_due_counts))
      AND NOT (coalesce(u.pause_collection, false) AND NOT st.pause_collection_keeps_mrr)
      AND (u.zero_from IS NULL OR u.moment < u.zero_from) AND NOT in_withdrawn(u.withdrawn, u.moment)
      AND coalesce(u.price_type, 'recurring') = 'recurring' AS counts,
    -- (on a trial: whether the item would count were the subscription paying, as it will be once the trial
    -- converts; with its collection paused, under pause_collection_keeps_mrr = false: whether it would count once
    -- collection resumes; NULL otherwise)
    CASE WHEN u.status = 'trialing'
         THEN NOT (coalesce(u.pause_collection, false) AND NOT st.pause_collection_keeps_mrr)
              AND (u.zero_from IS NULL OR u.moment < u.zero_from) AND NOT in_withdrawn(u.withdrawn, u.moment)
              AND coalesce(u.price_type, 'recurring') = 'recurring'
         WHEN coalesce(u.pause_collection, false) AND NOT st.pause_collection_keeps_mrr
         THEN (u.status = 'active' OR (u.status = 'past_due' AND st.past_due_counts))
              AND (u.zero_from IS NULL OR u.moment < u.zero_from) AND NOT in_withdrawn(u.withdrawn, u.moment)
              AND coalesce(u.price_type, 'recurring') = 'recurring' END AS counts_once_paid
FROM with_status u
CROSS JOIN derived_settings st
LEFT JOIN usage m ON m.ik = u.ik AND m.moment = u.moment;

-- Discounts in force at each point: percent factors multiply; amount_off (minor units per billing period)
-- is normalised like the price, item-level on the item, subscription- or customer-level shared across the
-- subscription's items in proportion to their MRR, and capped so that MRR never goes below zero. A
-- customer-level discount counts only on a subscription without a discount of its own in force at that point:
-- Stripe bills a subscription's own discount instead of the customer's ("a discount applied to a subscription
-- overrides a discount applied on a customer-wide basis").
CREATE OR REPLACE TEMP TABLE derived_item_point_discounts AS
WITH spans AS (
    SELECT * FROM derived_discount_spans WHERE applies_to_mrr
),
-- each discount reaches the points of its scope by one equality join on a key: an item's, or the
-- subscription's (a customer-level one is on each subscription of its customer)
on_item AS (
    SELECT k.ik, d.* FROM spans d
    JOIN derived_mrr_item_keys k USING (account_id, subscription_item_id)
    WHERE d.scope = 'item'
),
on_sub AS (
    SELECT k.sk, d.* FROM spans d
    JOIN derived_mrr_sub_keys k USING (account_id, subscription_id)
    WHERE d.scope = 'subscription'
    UNION ALL
    SELECT k.sk, d.* FROM spans d
    JOIN derived_mrr_sub_keys k USING (account_id, customer_id)
    WHERE d.scope = 'customer'
),
matched_all AS (
    SELECT *,
           -- (the subscription has a discount of its own in force here, whatever products it is restricted to:
           -- a customer-level one does not count)
           bool_or(scope = 'subscription' AND valid_from <= moment AND (valid_to IS NULL OR moment < valid_to))
               OVER (PARTITION BY ik, moment) AS own_discount
    FROM (
        SELECT ip.ik, ip.hid, ip.moment, ip.currency, d.* EXCLUDE (ik)
        FROM derived_item_points ip
        JOIN on_item d ON d.ik = ip.ik
        UNION ALL
        SELECT ip.ik, ip.hid, ip.moment, ip.currency, d.* EXCLUDE (sk)
        FROM derived_item_points ip
        JOIN on_sub d ON d.sk = ip.sk
    )
),
-- a coupon restricted to some products (applies_to) takes its part off the items of those products only
matched AS (
    SELECT * FROM matched_all WHERE applies_to_products IS NULL
    UNION ALL
    SELECT m.* FROM matched_all m
    JOIN derived_mrr_hist_keys h ON h.hid = m.hid
    JOIN derived_price_terms p ON p.account_id = h.account_id AND p.price_id = h.price_id
    WHERE m.applies_to_products IS NOT NULL AND list_contains(m.applies_to_products, p.product_id)
)
SELECT d.ik, d.moment,
       list_reduce(list(CAST(1 - d.percent_off / 100 AS DECIMAL(38, 18))) FILTER (WHERE d.percent_off IS NOT NULL),
                   lambda x, y: CAST(x * y AS DECIMAL(38, 18))) AS pct_factor,
       coalesce(sum(d.off) FILTER (WHERE d.off IS NOT NULL AND d.scope = 'item'), 0) AS item_amount_off,
       coalesce(sum(d.off) FILTER (WHERE d.off IS NOT NULL AND d.scope <> 'item'), 0) AS sub_amount_off,
       -- (the items a restricted amount off is shared among: those of its products; NULL: every item)
       array_to_string(any_value(d.applies_to_products) FILTER (WHERE d.off IS NOT NULL AND d.scope <> 'item'),
                       ' ') AS share_key,
       list(d.discount_id ORDER BY d.discount_id) AS discount_ids
FROM (
    -- an amount off in the item's currency: the coupon's own, else its currency option in that currency
    SELECT *,
           CASE WHEN amount_off IS NULL THEN NULL
                WHEN amount_off_currency IS NULL OR amount_off_currency = currency THEN amount_off
                ELSE list_filter(amount_off_options, lambda o: o.currency = currency)[1].amount_off END AS off
    FROM matched
    WHERE valid_from <= moment AND (valid_to IS NULL OR moment < valid_to)
) d
WHERE (d.amount_off IS NULL OR d.off IS NOT NULL)
  AND NOT (d.scope = 'customer' AND d.own_discount)
GROUP BY d.ik, d.moment;

CREATE OR REPLACE TEMP TABLE derived_item_point_mrr AS
WITH base AS (
    SELECT ip.*,
           -- 1e-10 major units, truncated
           ip.amount_p * ip.norm_num // (CAST(ip.norm_den AS HUGEINT) * 10000) AS undiscounted_e10,
           coalesce(dd.pct_factor, 1) AS pct_factor,
           coalesce(dd.item_amount_off, 0) AS item_amount_off,
           coalesce(dd.sub_amount_off, 0) AS sub_amount_off,
           coalesce(dd.share_key, '') AS share_key,
           dd.discount_ids
    FROM derived_item_points ip
    LEFT JOIN derived_item_point_discounts dd ON dd.ik = ip.ik AND dd.moment = ip.moment
),
after_item AS (
    SELECT *,
           CASE WHEN pct_factor = 1 AND item_amount_off = 0 THEN greatest(undiscounted_e10, 0)  -- (same, quicker)
                ELSE greatest(
                    CAST(CAST(dec10(undiscounted_e10) * pct_factor AS DECIMAL(38, 10)) * 10000000000 AS HUGEINT)
                    - CAST(item_amount_off AS HUGEINT) * 100000000 * norm_num // norm_den,
                    0) END AS after_item_e10,
           CASE WHEN sub_amount_off = 0 THEN CAST(0 AS HUGEINT)
                ELSE CAST(sub_amount_off AS HUGEINT) * 100000000 * norm_num // norm_den END AS sub_off_e10
    FROM base
),
-- the subscriptions (at a point) that share a subscription- or customer-level amount_off among their items
-- (those of its products only, for a restricted coupon: `share_key`)
sharing AS (
    SELECT DISTINCT sk, moment, share_key FROM after_item WHERE sub_off_e10 <> 0
),
shared AS (
    -- cumulative allocation (by item id) so that the items' shares add up to the discount exactly
    SELECT a.*,
           sum(a.after_item_e10) OVER (PARTITION BY a.sk, a.moment, a.share_key) AS sub_total_e10,
           sum(a.after_item_e10) OVER (PARTITION BY a.sk, a.moment, a.share_key ORDER BY a.ik
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum_e10
    FROM after_item a
    SEMI JOIN sharing USING (sk, moment, share_key)
    UNION ALL
    SELECT a.*, CAST(NULL AS HUGEINT) AS sub_total_e10, CAST(NULL AS HUGEINT) AS cum_e10
    FROM after_item a
    ANTI JOIN sharing USING (sk, moment, share_key)
)
SELECT hid, ik, moment, row_to, pq, currency, status, pause_collection, status_at, status_event_id, metered_at,
       metered_invoice_id, counts, discount_ids, pct_factor, net_num, net_den,
       CASE WHEN NOT counts THEN CAST(0 AS HUGEINT) ELSE discounted_e10 END AS mrr_e10,
       CASE WHEN counts THEN undiscounted_e10 * coalesce(net_num, 1) // coalesce(net_den, 1)
            ELSE CAST(0 AS HUGEINT) END AS counted_undiscounted_e10,
       -- on a trial, the MRR the item would have at this point were the subscription paying (its discounts as
       -- they stand here): what the trial converts to (85 puts it at stake when the cancellation comes after the
       -- trial's end); with its collection paused (when that counts zero), what it counts once collection resumes
       -- (85: when it resumes before the cancellation); NULL otherwise
       CASE WHEN counts_once_paid THEN discounted_e10 WHEN counts_once_paid IS NOT NULL THEN CAST(0 AS HUGEINT)
       END AS paid_e10,
       -- the item's share of a subscription's or customer's amount off shared among its items, exactly: numerator
       -- (1e-20) over denominator (1e-10), in 1e-10 of the item's currency (mrr_e10 holds it cut); on a counting item
       -- of no tax taken out whose share leaves it some MRR, NULL otherwise. 64 values a change made of that share
       -- alone from it, so that an exact half in the reporting currency (13.50 EUR x 12.5 / 87.5 at 1.3349 =
       -- 2.57445) rounds as it should instead of as the cut value does.
       CASE WHEN shared_exact THEN sub_off_e10 * after_item_e10 END AS shared_off_num,
       CASE WHEN shared_exact THEN sub_total_e10 END AS shared_off_den
FROM (
    SELECT *,
           -- (where shared_off_num and shared_off_den are kept: the share is some of the item's MRR, no tax is taken
           -- out, and the product fits a HUGEINT)
           counts AND sub_off_e10 > 0 AND sub_off_e10 < sub_total_e10 AND net_den IS NULL AND after_item_e10 > 0
               AND sub_off_e10 < 1000000000000000000 AND after_item_e10 < 1000000000000000000 AS shared_exact,
           -- (a tax-inclusive price's share without tax is taken last, from the discounted amount: a coupon
           -- takes its amount off the price as charged, tax included)
           CASE WHEN NOT counts AND NOT coalesce(counts_once_paid, false) THEN CAST(0 AS HUGEINT)
                WHEN sub_off_e10 = 0 THEN after_item_e10
                WHEN sub_off_e10 >= sub_total_e10 THEN CAST(0 AS HUGEINT)
                ELSE after_item_e10 - (sub_off_e10 * cum_e10 // sub_total_e10
                                       - sub_off_e10 * (cum_e10 - after_item_e10) // sub_total_e10)
           END * coalesce(net_num, 1) // coalesce(net_den, 1) AS discounted_e10
    FROM shared
);

-- Collapse consecutive points of equal contribution into intervals. The windows run on the item key and
-- the compared values, and the kept points are joined back by (item key, moment), then to their history row
-- and price for the descriptive columns. (A point without an item id is left out, as it always was.)
-- A point after a gap in the item's history (its previous point's history row ended before it: the item
-- was absent in between) starts a row even at an equal contribution, and the row before it ends at the gap.
-- `value_from`: where the item's value, all but its status, last changed. A row that counts (its point's `counts`)
-- and follows a counting row of the same price, quantity, discounts, MRR and currency without a gap, as at a
-- renewal whose payment failed (active to past_due, both counting), begins no change of the item and keeps that
-- row's `value_from`; any other row's is its own start. 62 dates the item's parts at it, whose rate values them.
-- (Worked out in the window over the kept points, on the integer item key: over the rows' id strings in 62, or
-- over the finished rows with every column, it cost several seconds more at 1M.)
CREATE OR REPLACE TABLE derived_item_mrr AS
WITH marked AS (
    SELECT ik, moment, v, cv, lag(row_to) OVER w AS prev_to,
           -- (an item's first point is kept unless every value is NULL)
           CASE WHEN lag(v) OVER w IS NULL THEN any_value
                ELSE lag(v) OVER w IS DISTINCT FROM v OR lag(row_to) OVER w < moment END AS changed
    -- (a counted item of no amount keeps its percent factor and its discounts, which a later amount is
    -- discounted by: a discount starting or ending while it has none starts a row)
    FROM (SELECT ik, moment, row_to,
                 {'pq': pq, 's': status, 'm': mrr_e10, 'u': counted_undiscounted_e10,
                  'f': CASE WHEN counted_undiscounted_e10 = 0 AND counts THEN pct_factor END,
                  'x': CASE WHEN counted_undiscounted_e10 = 0 AND counts THEN discount_ids END} AS v,
                 -- (what else `value_from` compares)
                 {'k': counts, 'd': discount_ids, 'c': currency} AS cv,
                 pq IS NOT NULL OR status IS NOT NULL OR mrr_e10 IS NOT NULL
                     OR counted_undiscounted_e10 IS NOT NULL AS any_value
          FROM derived_item_point_mrr WHERE ik IS NOT NULL)
    WINDOW w AS (PARTITION BY ik ORDER BY moment)
),
kept_starts AS (
    SELECT ik, moment,
           -- (the next kept point, or the gap before it)
           least(lead(moment) OVER k, lead(prev_to) OVER k) AS next_at,
           -- (NULL where the item's value goes on: this point and the kept one before it count, no gap between)
           CASE WHEN cv.k AND lag(cv.k) OVER k AND NOT coalesce(prev_to < moment, false)
                     AND lag(v.pq) OVER k IS NOT DISTINCT FROM v.pq AND lag(v.m) OVER k = v.m
                     AND lag(v.u) OVER k IS NOT DISTINCT FROM v.u AND lag(cv.d) OVER k IS NOT DISTINCT FROM cv.d
                     AND lag(cv.c) OVER k IS NOT DISTINCT FROM cv.c
                THEN NULL ELSE moment END AS value_start
    FROM marked WHERE changed
    WINDOW k AS (PARTITION BY ik ORDER BY moment)
),
kept_keys AS (
    SELECT ik, moment, next_at,
           max(value_start) OVER (PARTITION BY ik ORDER BY moment ROWS UNBOUNDED PRECEDING) AS value_from
    FROM kept_starts
),
kept_points AS MATERIALIZED (
    -- (materialised: the history rows are looked up for the kept points only)
    SELECT p.*, kk.next_at, kk.value_from
    FROM derived_item_point_mrr p
    JOIN kept_keys kk ON kk.ik = p.ik AND kk.moment = p.moment
),
kept AS (
    SELECT h.account_id, h.customer_id, h.subscription_id, h.subscription_item_id, h.price_id, h.quantity,
           h.valid_from, h.valid_to, h.source_event_id, h.source_invoice_id, p.*
    FROM kept_points p
    JOIN derived_item_history h ON h.rowid = p.hid
)
SELECT
    k.account_id,
    k.customer_id,
    k.subscription_id,
    k.subscription_item_id,
    t.product_id,
    k.price_id,
    t.family,
    t.unit_kind,
    t.usage_type,
    CAST(k.quantity AS BIGINT) AS quantity,
    k.moment AS valid_from,
    CASE WHEN k.next_at IS NOT NULL THEN k.next_at ELSE k.valid_to END AS valid_to,
    k.status,
    k.currency,
    dec10(k.mrr_e10) AS mrr_original,
    dec10(k.counted_undiscounted_e10) AS mrr_undiscounted,
    -- (of a counted item of no amount under discounts, their percent factor: the split of 64 values a change
    -- of its amount at it, as for any discounted item; of one of no amount and no discount, 1: a metered item
    -- before its first usage, or a seat item of quantity 0, whose amount and discount both change in one window
    -- has a usage or quantity part at no discount and a discount part, README "Metric definitions"; so it is set
    -- exactly on the rows that count, and 60 reads its change as a change of the item)
    CASE WHEN k.counted_undiscounted_e10 <> 0
         THEN CAST(CAST(k.mrr_e10 AS DECIMAL(38, 0)) / CAST(k.counted_undiscounted_e10 AS DECIMAL(38, 0))
                   AS DECIMAL(38, 10))
         WHEN k.counts AND k.discount_ids IS NOT NULL THEN CAST(k.pct_factor AS DECIMAL(38, 10))
         WHEN k.counts THEN CAST(1 AS DECIMAL(38, 10))
    END AS discount_factor,
    k.discount_ids,
    -- the share of a tax-inclusive licensed price that is not tax (NULL: no tax taken out)
    CAST(CAST(k.net_num AS DECIMAL(38, 0)) / CAST(k.net_den AS DECIMAL(38, 0)) AS DECIMAL(38, 18)) AS net_share,
    k.pause_collection,
    -- (or inside a request taken back: churned there too, so that 62 sees its items gone and back)
    CASE WHEN c.churn_at IS NOT NULL AND k.moment >= c.churn_at AND NOT k.counts THEN c.churn_type
         WHEN k.moment < w.withdrawn_at AND NOT k.counts THEN w.churn_type END AS churn_type,
    CASE WHEN c.churn_at IS NOT NULL AND k.moment >= c.churn_at AND NOT k.counts THEN c.cancellation_reason
         WHEN k.moment < w.withdrawn_at AND NOT k.counts THEN w.cancellation_reason END AS cancellation_reason,
    CASE WHEN c.churn_at IS NOT NULL AND k.moment >= c.churn_at AND NOT k.counts THEN c.cancellation_feedback
         WHEN k.moment < w.withdrawn_at AND NOT k.counts THEN w.cancellation_feedback END AS cancellation_feedback,
    CASE WHEN c.churn_at IS NOT NULL AND k.moment >= c.churn_at AND NOT k.counts THEN c.cancellation_comment
         WHEN k.moment < w.withdrawn_at AND NOT k.counts THEN w.cancellation_comment END AS cancellation_comment,
    CASE WHEN k.status_at = k.moment AND k.status_event_id IS NOT NULL THEN k.status_event_id
         WHEN k.valid_from = k.moment THEN k.source_event_id END AS source_event_id,
    CASE WHEN k.metered_at = k.moment THEN k.metered_invoice_id
         WHEN k.valid_from = k.moment THEN k.source_invoice_id END AS source_invoice_id,
    k.value_from,
    k.shared_off_num,
    k.shared_off_den
FROM kept k
LEFT JOIN derived_price_terms t ON t.account_id = k.account_id AND t.price_id = k.price_id
LEFT JOIN derived_sub_churn c ON c.account_id = k.account_id AND c.subscription_id = k.subscription_id
-- (the request taken back that a row lies in: the latest request at or before it, if taken back after it. Each
-- span is cut at the next request, so that at most one matches, that latest; a hash join on the subscription, as
-- an ASOF join sorted all 6M rows at 1M for a table nearly always empty: 7 s)
LEFT JOIN (SELECT *, least(withdrawn_at, lead(requested_at) OVER (PARTITION BY account_id, subscription_id
                                                                   ORDER BY requested_at, withdrawn_at)) AS span_to
           FROM derived_withdrawn_cancels) w
       ON w.account_id = k.account_id AND w.subscription_id = k.subscription_id
      AND w.requested_at <= k.moment AND k.moment < w.span_to;

-- What the items of a subscription still on its trial will bring in once it converts: at each of their trialing
-- points, the MRR the item would have there were the subscription paying, its discounts as they stand at that
-- point (a coupon that has ended by then no longer counts; a point at each discount's start and end). The
-- trialing rows of derived_item_mrr count zero (design.md 4); scheduled_churn (85) reads this for a trial set to
-- cancel after it ends, whose cancellation takes the MRR the trial converts to. (Only the subscriptions trialing
-- now and not ended: no earlier trial is ever read.) Likewise for a subscription whose collection is paused now,
-- when a paused collection counts zero (pause_collection_keeps_mrr = false): what it counts once collection
-- resumes, which 85 puts at stake when it resumes (pause_collection.resumes_at) before the cancellation.
CREATE OR REPLACE TABLE derived_trial_item_mrr AS
SELECT h.account_id, h.customer_id, h.subscription_id, h.subscription_item_id, p.moment, p.currency,
       dec10(p.paid_e10) AS mrr_original
FROM derived_item_point_mrr p
JOIN derived_item_history h ON h.rowid = p.hid
SEMI JOIN derived_subs s
     ON s.account_id = h.account_id AND s.subscription_id = h.subscription_id
    AND (s.status = 'trialing' OR s.pause_collection) AND s.ended_at IS NULL
WHERE p.paid_e10 IS NOT NULL AND p.ik IS NOT NULL;
