-- Subscription states over time (design.md 3): full-state observations from events within the window
-- and from the snapshot, and the status steps of every subscription (reconstructed before the window from
-- the snapshot's dates, taken from the observations inside it).

-- Where event coverage starts per account: the oldest stored event. From there on every change has an
-- event, so events are the source; before it, invoices and the snapshot's dates are. An account without
-- events is covered only from its latest snapshot on.
CREATE OR REPLACE TABLE derived_coverage AS
WITH accounts AS (
    -- the latest sync, in Stripe's clock when the sync recorded it (the server's Date of its last listing):
    -- a sandbox or a test clock may run behind this machine's clock
    SELECT s.account_id, least(max(s.last_seen_at), any_value(to_timestamp(c.created))) AS snapshot_at
    FROM subscriptions s
    LEFT JOIN sync_cursors c ON c.account_id = s.account_id AND c.stream = 'events:complete'
    GROUP BY s.account_id
),
ev AS (
    SELECT account_id, min(created) AS first_event_at, max(created) AS last_event_at
    FROM events GROUP BY account_id
)
SELECT a.account_id,
       coalesce(ev.first_event_at, a.snapshot_at) AS coverage_start,
       a.snapshot_at,
       ev.first_event_at IS NOT NULL AS has_events
FROM accounts a
LEFT JOIN ev USING (account_id);

-- Subscription events, with the state just after (`data.object`) and just before (`previous_attributes`
-- merged onto it; only *.updated events carry them). The whole state before is needed only at a
-- subscription's first event (merging is costly); every event keeps the discounts it had before.
-- The fields of the state after that later steps test on every event (status, pause_collection, whether
-- the item list was cut short) come out of the same parse as typed columns.
CREATE OR REPLACE TEMP TABLE derived_sub_events AS
SELECT account_id, event_id, event_type, moment, subscription_id, after_state,
       CASE WHEN seq = 1 AND json_type(prev) = 'OBJECT' THEN json_merge_patch(after_state, prev) END AS before_state,
       CASE WHEN json_type(prev) = 'OBJECT'
            THEN CASE WHEN json_exists(prev, '$.discounts') THEN json_extract(prev, '$.discounts')
                      ELSE after_discounts END END AS before_discounts,
       seq, after_status, after_pause_collection, after_has_more
FROM (
    SELECT
        e.account_id,
        e.id AS event_id,
        e.type AS event_type,
        e.created AS moment,
        e.object_id AS subscription_id,
        e.v[1] AS after_state,
        e.v[2] AS prev,
        e.v[6] AS after_discounts,
        json_extract_string(e.v[3], '$') AS after_status,
        json_type(e.v[4]) = 'OBJECT' AS after_pause_collection,
        TRY_CAST(json_extract_string(e.v[5], '$') AS BOOLEAN) AS after_has_more,
        e.seq
    -- (the order is numbered on the typed columns alone, then the JSON is parsed once per event)
    FROM (SELECT *, json_extract(raw, ['$.data.object', '$.data.previous_attributes', '$.data.object.status',
                                       '$.data.object.pause_collection', '$.data.object.items.has_more',
                                       '$.data.object.discounts']) AS v
          FROM (SELECT *, row_number() OVER (PARTITION BY account_id, object_id ORDER BY created, id) AS seq
                FROM (SELECT account_id, id, type, created, object_id, rowid AS rid
                      FROM events
                      WHERE type LIKE 'customer.subscription.%' AND object_type = 'subscription'
                        AND NOT coalesce(deleted, false))) n
          JOIN (SELECT rowid AS rid, raw FROM events) r USING (rid)) e
);

-- Every subscription known, with the fields of its latest known state (the snapshot, or the last event
-- for one the store has no usable row for).
CREATE OR REPLACE TABLE derived_subs AS
WITH snap AS (
    -- the snapshot, from the typed columns the store extracts at load time
    SELECT account_id, id AS subscription_id, customer_id, lower(currency) AS currency, status, start_date,
           created AS created_at, trial_start, trial_end, canceled_at, ended_at, cancel_at,
           coalesce(cancel_at_period_end, false) AS cancel_at_period_end, cancellation_reason,
           cancellation_feedback, cancellation_comment, paused_at, coalesce(pause_collection, false) AS pause_collection,
           -- seen at the sync, in Stripe's clock (see derived_coverage)
           least(last_seen_at, (SELECT c.snapshot_at FROM derived_coverage c
                                WHERE c.account_id = subscriptions.account_id)) AS seen_at,
           true AS in_snapshot,
           -- the snapshot's JSON stays in `subscriptions`: read it from there for the few rows that need it
           CAST(NULL AS JSON) AS state
    FROM subscriptions
    WHERE NOT coalesce(deleted, false) AND customer_id IS NOT NULL
),
from_events AS (
    -- a subscription the store has no usable row for: its last event's state
    SELECT l.account_id, l.subscription_id,
           coalesce(json_extract_string(v[1], '$.id'), json_extract_string(v[1], '$')) AS customer_id,
           lower(json_extract_string(v[2], '$')) AS currency,
           json_extract_string(v[3], '$') AS status,
           ts_of(json_extract_string(v[4], '$')) AS start_date,
           ts_of(json_extract_string(v[5], '$')) AS created_at,
           ts_of(json_extract_string(v[6], '$')) AS trial_start,
           ts_of(json_extract_string(v[7], '$')) AS trial_end,
           ts_of(json_extract_string(v[8], '$')) AS canceled_at,
           ts_of(json_extract_string(v[9], '$')) AS ended_at,
           ts_of(json_extract_string(v[10], '$')) AS cancel_at,
           coalesce(TRY_CAST(json_extract_string(v[11], '$') AS BOOLEAN), false) AS cancel_at_period_end,
           json_extract_string(v[12], '$.reason') AS cancellation_reason,
           json_extract_string(v[12], '$.feedback') AS cancellation_feedback,
           json_extract_string(v[12], '$.comment') AS cancellation_comment,
           ts_of(json_extract_string(v[13], '$')) AS paused_at,
           coalesce(json_type(v[14]) = 'OBJECT', false) AS pause_collection,
           l.seen_at, false AS in_snapshot, l.state
    FROM (SELECT account_id, subscription_id, after_state AS state, moment AS seen_at,
                 json_extract(after_state, ['$.customer', '$.currency', '$.status', '$.start_date', '$.created',
                                            '$.trial_start', '$.trial_end', '$.canceled_at', '$.ended_at',
                                            '$.cancel_at', '$.cancel_at_period_end', '$.cancellation_details',
                                            '$.status_details.paused.transitioned_at',
                                            '$.pause_collection']) AS v
          FROM derived_sub_events e
          WHERE NOT EXISTS (SELECT 1 FROM snap s
                            WHERE s.account_id = e.account_id AND s.subscription_id = e.subscription_id)
          QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id ORDER BY moment DESC, seq DESC) = 1) l
)
SELECT * FROM snap
UNION ALL
SELECT * FROM from_events;

-- What of a subscription state matters for MRR: its items' ids, prices and quantities (sorted); each item's
-- JSON is parsed once, for the list of its paths.
CREATE OR REPLACE MACRO items_key(state) AS list_sort(list_transform(
    list_transform(CAST(coalesce(json_extract(state, '$.items.data[*]'), []) AS JSON[]),
                   lambda x: json_extract_string(x, ['$.id', '$.price.id', '$.price', '$.quantity'])),
    lambda v: concat_ws('|', v[1], coalesce(v[2], v[3]), v[4])));

-- Full-state observations inside event coverage: the state at coverage start (the first event's "before",
-- or the snapshot for a subscription without events), every event's "after", and a snapshot newer than the
-- last event that differs from it (a change the events missed).
CREATE OR REPLACE TEMP TABLE derived_sub_obs AS
WITH firsts AS (
    SELECT * FROM derived_sub_events WHERE seq = 1
),
anchor_from_events AS (
    SELECT f.account_id, f.subscription_id, greatest(c.coverage_start, s.start_date) AS moment,
           'event' AS source, f.event_id, f.before_state AS state, 0 AS ord,
           json_extract_string(f.v[1], '$') AS status, json_type(f.v[2]) = 'OBJECT' AS pause_collection,
           TRY_CAST(json_extract_string(f.v[3], '$') AS BOOLEAN) AS has_more
    FROM (SELECT *, json_extract(before_state, ['$.status', '$.pause_collection', '$.items.has_more']) AS v
          FROM firsts) f
    JOIN derived_coverage c USING (account_id)
    LEFT JOIN derived_subs s USING (account_id, subscription_id)
    WHERE f.before_state IS NOT NULL AND greatest(c.coverage_start, s.start_date) < f.moment
),
anchor_from_snapshot AS (
    -- (status and pause_collection from the typed columns; its items are read from subscription_items in 30)
    SELECT s.account_id, s.subscription_id, greatest(c.coverage_start, s.start_date) AS moment,
           'snapshot' AS source, NULL AS event_id, CAST(NULL AS JSON) AS state, 0 AS ord, s.status,
           s.pause_collection, CAST(NULL AS BOOLEAN) AS has_more
    FROM derived_subs s
    JOIN derived_coverage c USING (account_id)
    WHERE s.in_snapshot
      AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                      WHERE e.account_id = s.account_id AND e.subscription_id = s.subscription_id)
),
after_events AS (
    SELECT account_id, subscription_id, moment, 'event' AS source, event_id, after_state AS state, seq AS ord,
           after_status AS status, after_pause_collection AS pause_collection, after_has_more AS has_more
    FROM derived_sub_events
),
last_events AS (
    SELECT * FROM derived_sub_events
    QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id ORDER BY seq DESC) = 1
),
-- the snapshot's items_key, from the subscription_items rows seen in the same sync (its embedded list)
snapshot_keys AS (
    SELECT s.account_id, s.id AS subscription_id,
           list_sort(list(concat_ws('|', si.id, si.price_id, CAST(si.quantity AS VARCHAR)))) AS items_key
    FROM subscriptions s
    JOIN last_events l ON l.account_id = s.account_id AND l.subscription_id = s.id
    JOIN subscription_items si
      ON si.account_id = s.account_id AND si.subscription_id = s.id
     AND NOT coalesce(si.deleted, false) AND si.last_seen_at >= s.last_seen_at - INTERVAL 1 HOUR
    GROUP BY ALL
),
late_snapshot AS (
    SELECT s.account_id, s.subscription_id, s.seen_at AS moment, 'snapshot' AS source, NULL AS event_id,
           CAST(NULL AS JSON) AS state, 1000000 AS ord, s.status, s.pause_collection,
           CAST(NULL AS BOOLEAN) AS has_more
    FROM derived_subs s
    JOIN last_events l USING (account_id, subscription_id)
    LEFT JOIN snapshot_keys k USING (account_id, subscription_id)
    WHERE s.in_snapshot AND s.seen_at > l.moment
      AND (s.status IS DISTINCT FROM l.after_status
           -- the last event's item list was cut short: only the snapshot (complete, from subscription_items)
           -- says which of the items it left out are still there
           OR coalesce(l.after_has_more, false)
           OR coalesce(k.items_key, []) IS DISTINCT FROM items_key(l.after_state))
)
SELECT * EXCLUDE (has_more),
       -- an embedded item list cut short (has_more) says nothing about the items it leaves out
       source = 'snapshot' OR NOT coalesce(has_more, false) AS items_complete
FROM (SELECT * FROM anchor_from_events
      UNION ALL SELECT * FROM anchor_from_snapshot
      UNION ALL SELECT * FROM after_events
      UNION ALL SELECT * FROM late_snapshot);

-- Status steps: from `moment` on, the subscription has `status` until its next step.
-- Before coverage they are reconstructed from the latest state: trialing from start_date while a trial runs
-- (incomplete when the subscription never got paid), active from the trial's end (paused when it ended into
-- a pause), paused from status_details.paused.transitioned_at, unpaid from when its failed invoice was given
-- up on (marked uncollectible, else that invoice's creation), canceled or incomplete_expired from ended_at.
-- Inside coverage they are the observed states.
CREATE OR REPLACE TABLE derived_sub_status_steps AS
WITH s AS (
    SELECT account_id, subscription_id, status, start_date, trial_start, trial_end, ended_at, paused_at,
           cancellation_reason
    FROM derived_subs
),
-- unpaid now, or canceled for a failed payment (it may have gone unpaid first, then been deleted)
unpaid_invoices AS (
    SELECT i.account_id, i.subscription_id, i.created, u.status AS sub_status, u.ended_at,
           i.status AS invoice_status, i.marked_uncollectible_at
    FROM invoices i
    JOIN (SELECT account_id, subscription_id, status, ended_at FROM s
          WHERE status = 'unpaid' OR (status = 'canceled' AND cancellation_reason = 'payment_failed')) u
      ON u.account_id = i.account_id AND u.subscription_id = i.subscription_id
),
unpaid_from AS (
    SELECT account_id, subscription_id,
           CASE WHEN any_value(sub_status) = 'unpaid' THEN coalesce(max(marked_uncollectible_at), min(created))
                ELSE max(marked_uncollectible_at) END AS unpaid_at,
           any_value(ended_at) AS ended_at
    FROM unpaid_invoices
    WHERE invoice_status IN ('open', 'uncollectible')
    GROUP BY account_id, subscription_id
    HAVING unpaid_at IS NOT NULL AND (any_value(ended_at) IS NULL OR unpaid_at < any_value(ended_at))
),
recon AS (
    SELECT account_id, subscription_id, start_date AS moment,
           CASE WHEN trial_end IS NOT NULL AND trial_end > start_date
                     AND coalesce(trial_start, start_date) <= start_date THEN 'trialing'
                WHEN status IN ('incomplete', 'incomplete_expired') THEN 'incomplete'
                ELSE 'active' END AS status,
           false AS pause_collection, 'snapshot' AS source, NULL AS source_event_id, 0 AS ord
    FROM s WHERE start_date IS NOT NULL
    UNION ALL
    SELECT account_id, subscription_id, trial_end,
           CASE WHEN status = 'paused' AND (paused_at IS NULL OR paused_at <= trial_end) THEN 'paused'
                ELSE 'active' END,
           false, 'snapshot', NULL, 1
    FROM s
    WHERE trial_end IS NOT NULL AND trial_end > start_date AND (ended_at IS NULL OR trial_end < ended_at)
    UNION ALL
    SELECT account_id, subscription_id, paused_at, 'paused', false, 'snapshot', NULL, 2
    FROM s WHERE status = 'paused' AND paused_at IS NOT NULL
    UNION ALL
    SELECT u.account_id, u.subscription_id, u.unpaid_at, 'unpaid', false, 'snapshot', NULL, 3
    FROM unpaid_from u
    UNION ALL
    SELECT account_id, subscription_id, ended_at,
           CASE WHEN status = 'incomplete_expired' THEN 'incomplete_expired' ELSE 'canceled' END,
           false, 'snapshot', NULL, 4
    FROM s WHERE ended_at IS NOT NULL
),
observed AS (
    SELECT account_id, subscription_id, moment, status, pause_collection,
           source, event_id AS source_event_id, 10 + ord AS ord
    FROM derived_sub_obs
)
SELECT r.* FROM recon r JOIN derived_coverage c USING (account_id) WHERE r.moment < c.coverage_start
UNION ALL
SELECT * FROM observed;
