-- Subscription states over time (design.md 3): full-state observations from events within the window
-- and from the snapshot, and the status steps of every subscription (reconstructed before the window from
-- the snapshot's dates, taken from the observations inside it).

-- Where event coverage starts per account: the oldest stored event after the last gap in them (a sync that
-- found the events last complete beyond Stripe's 30-day retention marks where the unbroken ones begin: the
-- cursor 'events:unbroken'; the older events stay stored, unread here). From there on every change has an
-- event, so events are the source; before it, invoices and the snapshot's dates are. An account without
-- events is covered only from its latest snapshot on. (A macro: the incremental recompute compares it with
-- the stored derived_coverage to see whether the snapshot or the coverage moved.)
CREATE OR REPLACE MACRO coverage_now() AS TABLE
WITH unbroken AS (
    SELECT account_id, to_timestamp(max(created)) AS since FROM sync_cursors
    WHERE stream = 'events:unbroken' GROUP BY account_id
),
accounts AS (
    -- the latest sync, in Stripe's clock when the sync recorded it (the server's Date of its last listing),
    -- else this machine's: a sandbox or a test clock may run behind or ahead of it (ahead, this machine's clock
    -- would drop every change Stripe dated after it)
    SELECT s.account_id, coalesce(any_value(to_timestamp(c.created)), max(s.last_seen_at)) AS snapshot_at
    FROM subscriptions s
    LEFT JOIN sync_cursors c ON c.account_id = s.account_id AND c.stream = 'events:complete'
    GROUP BY s.account_id
),
ev AS (
    SELECT e.account_id, min(e.created) AS first_event_at
    FROM events e LEFT JOIN unbroken u USING (account_id)
    WHERE u.since IS NULL OR e.created >= u.since
    GROUP BY e.account_id
)
SELECT a.account_id,
       coalesce(ev.first_event_at, a.snapshot_at) AS coverage_start,
       a.snapshot_at,
       ev.first_event_at IS NOT NULL AS has_events
FROM accounts a
LEFT JOIN ev USING (account_id);
CREATE OR REPLACE TABLE derived_coverage AS SELECT * FROM coverage_now();

-- When a sync saw a row, in Stripe's clock: its `last_seen_at` (this machine's clock) no later than the latest
-- snapshot, and at least the row's `version` (Stripe's time of the listing's start, or of the event that wrote
-- it): this machine's clock stays behind Stripe's when a sandbox or a test clock runs ahead, and would date
-- the sync before events it read. (The row's own values: it moves only when the row is written again.)
CREATE OR REPLACE MACRO seen_in_stripes_clock(last_seen_at, version, snapshot_at) AS
    greatest(least(last_seen_at, snapshot_at), to_timestamp(version));
-- When a sync first saw a row's current state, in Stripe's clock: the sync that stored it, as above. When that
-- was the row's latest write, exactly as above; otherwise its `state_seen_at` (that write's moment, or its version
-- when later: what the store kept of it) no later than the latest snapshot. A later sync that saw the same state
-- again (a full listing rewrites every row) does not move it.
CREATE OR REPLACE MACRO state_seen_in_stripes_clock(state_seen_at, last_seen_at, version, snapshot_at) AS
    CASE WHEN state_seen_at IS NULL OR state_seen_at >= greatest(last_seen_at, to_timestamp(version))
         THEN seen_in_stripes_clock(last_seen_at, version, snapshot_at)
         ELSE least(state_seen_at, snapshot_at) END;

-- Subscription events: the fields of the state just after (`data.object`) and just before
-- (`previous_attributes` merged onto it, by JSON merge-patch rules; only *.updated events carry them) that
-- the later steps read, from the typed `sub_state` the store parsed out of each event's JSON at load. The state
-- before is needed only at a subscription's first event (seq = 1); every event keeps the discounts its
-- previous_attributes list (NULL when they did not change). Items are a typed list: id, price id (the embedded
-- price's id, or the price when it is an id), quantity as sent, created. `t` are the JSON types of
-- previous_attributes, of its status, pause_collection, items, items.data and items.has_more, and of the
-- pause_collection after (NULL: the key is absent).
-- A state as the JSON data quality reads at a subscription's start: status and items (id, price, quantity;
-- has_more: the list was cut short).
CREATE OR REPLACE MACRO slim_state(status, items, has_more) AS to_json({'status': status, 'items': {'data': list_transform(
    items, lambda x: {'id': x.id, 'price': x.price_id, 'quantity': x.quantity_text}), 'has_more': has_more}});

CREATE OR REPLACE TEMP TABLE derived_sub_events AS
WITH ordered AS (
    -- (provisional: Stripe's `created` is whole seconds and ids are not ordered within a second, so events of one
    -- subscription in the same second are put in order below, by what they say)
    SELECT rowid AS rid, row_number() OVER w AS seq,
           -- (in one window with seq: no second sort of every event)
           coalesce(lag(created) OVER w = created OR lead(created) OVER w = created, false) AS tied
    FROM events
    WHERE type LIKE 'customer.subscription.%' AND object_type = 'subscription' AND NOT coalesce(deleted, false)
      -- (events before a gap in them are not read: coverage starts after it)
      AND NOT EXISTS (SELECT 1 FROM derived_coverage c
                      WHERE c.account_id = events.account_id AND events.created < c.coverage_start)
    WINDOW w AS (PARTITION BY account_id, object_id ORDER BY created, id)
),
-- (the window sorts the narrow columns alone; each event's parsed state is read after it, by row id: carried
-- through the window's sort, the nested state cost this statement about half as much CPU again)
typed AS (
    SELECT e.account_id, e.id AS event_id, e.type AS event_type, e.created AS moment, e.object_id AS subscription_id,
           o.rid, o.seq, o.tied, e.first_seen_at,
           e.sub_state AS p, e.sub_state.types AS t,
           e.sub_state.status AS after_status,
           e.sub_state.types[7] = 'OBJECT' AS after_pause_collection,
           e.sub_state.has_more AS after_has_more_text,
           e.sub_state.items AS after_items,
           e.sub_state.discounts AS after_discounts,
           e.sub_state.prev_discounts AS before_discounts
    FROM ordered o JOIN events e ON e.rowid = o.rid
),
merged AS (
    -- a key in previous_attributes replaces the value after (null: removes it); `items` is merged key by key
    -- (an event tied with another in its second gets its state before too: it settles their order, and the first
    -- of them may turn out to be the subscription's first event)
    SELECT *, (seq = 1 OR tied) AND coalesce(t[1] = 'OBJECT', false) AS has_before,
           -- a subscription's first event that is its deletion has no previous_attributes (only *.updated events
           -- carry them), yet a deletion changes no item: its items are the ones just before it (its status before
           -- is not known: NULL; the status steps keep the reconstructed one until the deletion)
           seq = 1 AND NOT tied AND NOT coalesce(t[1] = 'OBJECT', false) AND after_items IS NOT NULL
               AND event_type = 'customer.subscription.deleted' AS deleted_first
    FROM typed
),
before AS (
    SELECT *,
           CASE WHEN has_before THEN CASE WHEN t[2] IS NULL THEN after_status ELSE p.prev_status END END AS before_status,
           CASE WHEN has_before THEN
               CASE WHEN t[3] IS NULL THEN after_pause_collection WHEN t[3] = 'NULL' THEN NULL ELSE t[3] = 'OBJECT' END
           END AS before_pause_collection,
           CASE WHEN has_before THEN
               CASE WHEN t[4] IS NULL THEN after_has_more_text
                    WHEN t[4] = 'OBJECT' THEN CASE WHEN t[6] IS NULL THEN after_has_more_text ELSE p.prev_has_more END
               END
               WHEN deleted_first THEN after_has_more_text
           END AS before_has_more_text,
           CASE WHEN has_before THEN
               CASE WHEN t[4] IS NULL THEN after_items
                    WHEN t[4] = 'OBJECT' THEN CASE WHEN t[5] IS NULL THEN after_items ELSE p.prev_items END
               END
               WHEN deleted_first THEN after_items
           END AS before_items
    FROM merged
)
SELECT account_id, event_id, event_type, moment, subscription_id, seq, rid,
       -- (when a sync first stored the event: late_snapshot below)
       first_seen_at,
       after_status, after_pause_collection, TRY_CAST(after_has_more_text AS BOOLEAN) AS after_has_more,
       after_items, after_discounts, before_discounts, has_before,
       before_status, before_pause_collection, TRY_CAST(before_has_more_text AS BOOLEAN) AS before_has_more,
       before_items,
       -- (for data quality, which reads the state at a subscription's first event)
       CASE WHEN seq = 1 OR tied THEN slim_state(after_status, after_items, after_has_more) END AS after_state,
       CASE WHEN has_before OR deleted_first THEN slim_state(before_status, before_items, before_has_more)
       END AS before_state,
       tied
FROM before;

-- What of a subscription state matters for MRR: its items' ids, prices and quantities (sorted).
CREATE OR REPLACE MACRO items_key(items) AS
    list_sort(list_transform(coalesce(items, []), lambda x: concat_ws('|', x.id, x.price_id, x.quantity_text)));

-- What an event's state is compared on. (An item list cut short says nothing about the items it leaves out: not
-- compared. No pause_collection and a null one are alike here.)
CREATE OR REPLACE MACRO event_state(status, pause_collection, items, has_more, discounts) AS
    {'status': status, 'pause': coalesce(pause_collection, false),
     'items': CASE WHEN NOT coalesce(has_more, false) THEN items_key(items) END, 'discounts': discounts};

-- Whether a state after (`a`) is the state before `b`.
CREATE OR REPLACE MACRO state_leads(a, b) AS
    a.status IS NOT DISTINCT FROM b.status AND a.pause IS NOT DISTINCT FROM b.pause
    AND (a.items IS NULL OR b.items IS NULL OR a.items = b.items) AND a.discounts IS NOT DISTINCT FROM b.discounts;

-- Events of one subscription in the same second (few: a subscription created incomplete and paid at once, two
-- quick API updates), in the order they happened: created first, deleted last, and between them each update
-- after the one whose state after is its state before (data.object with previous_attributes merged in:
-- status, pause_collection, items, discounts). A walk from the first (the one no other leads to) to the next
-- each time: the one the current leads to, else one no event left leads to; the id only when nothing decides.
-- The walk starts from the update whose state before is the state after the event before the second (when
-- that one is alone in its own second), so that two updates undoing each other keep their order.
-- (Kept: the incremental path's moved customers read their events' order from it, without this step.)
CREATE OR REPLACE TABLE derived_sub_event_order AS
WITH RECURSIVE tied AS (
    SELECT account_id, subscription_id, moment, event_id, seq,
           CASE event_type WHEN 'customer.subscription.created' THEN 0
                           WHEN 'customer.subscription.deleted' THEN 2 ELSE 1 END AS cls,
           has_before,
           event_state(after_status, after_pause_collection, after_items, after_has_more, after_discounts) AS s_after,
           CASE WHEN has_before THEN
               -- (NULL discounts: previous_attributes do not list them, they did not change)
               event_state(before_status, before_pause_collection, before_items, before_has_more,
                           coalesce(before_discounts, after_discounts))
           END AS s_before
    FROM derived_sub_events WHERE tied
),
-- (x leads to y: y's state before is x's state after; a created or deleted event has no state before)
leads AS (
    SELECT y.account_id, y.subscription_id, y.moment, y.event_id,
           list(x.event_id) AS preds, list(x.event_id) FILTER (WHERE x.cls = y.cls) AS same_cls_preds
    FROM tied y
    JOIN tied x ON x.account_id = y.account_id AND x.subscription_id = y.subscription_id AND x.moment = y.moment
               AND x.event_id <> y.event_id
    WHERE y.has_before AND state_leads(x.s_after, y.s_before)
    GROUP BY ALL
),
-- the state after the subscription's event just before the second, when that event is alone in its own: the
-- second's first update starts from it (two updates that undo each other lead to each other, and only this
-- tells which came first)
prior AS (
    SELECT g.account_id, g.subscription_id, g.moment,
           event_state(e.after_status, e.after_pause_collection, e.after_items, e.after_has_more,
                       e.after_discounts) AS s_prior
    FROM (SELECT account_id, subscription_id, moment, min(seq) AS first_seq FROM tied GROUP BY ALL) g
    JOIN derived_sub_events e ON e.account_id = g.account_id AND e.subscription_id = g.subscription_id
                             AND e.seq = g.first_seq - 1 AND NOT e.tied
),
cand AS (
    SELECT t.account_id, t.subscription_id, t.moment, t.event_id, t.seq, t.cls,
           coalesce(l.preds, []) AS preds, coalesce(l.same_cls_preds, []) AS same_cls_preds,
           coalesce(t.has_before AND state_leads(p.s_prior, t.s_before), false) AS after_prior
    FROM tied t LEFT JOIN leads l USING (account_id, subscription_id, moment, event_id)
    LEFT JOIN prior p USING (account_id, subscription_id, moment)
),
walk(account_id, subscription_id, moment, pos, cur, used) AS (
    SELECT account_id, subscription_id, moment, 1, event_id, [event_id]
    FROM cand
    QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id, moment
                               ORDER BY cls, NOT after_prior, len(same_cls_preds) > 0, event_id) = 1
    UNION ALL
    SELECT w.account_id, w.subscription_id, w.moment, w.pos + 1, c.event_id, list_append(w.used, c.event_id)
    FROM walk w
    JOIN cand c ON c.account_id = w.account_id AND c.subscription_id = w.subscription_id AND c.moment = w.moment
               AND NOT list_contains(w.used, c.event_id)
    QUALIFY row_number() OVER (PARTITION BY w.account_id, w.subscription_id, w.moment
                               ORDER BY c.cls, NOT list_contains(c.preds, w.cur),
                                        len(list_filter(c.same_cls_preds, lambda p: NOT list_contains(w.used, p))) > 0,
                                        c.event_id) = 1
)
-- (the second's events keep the seq numbers they hold between them, in the new order)
SELECT w.account_id, w.subscription_id, w.cur AS event_id,
       min(c.seq) OVER (PARTITION BY w.account_id, w.subscription_id, w.moment) + w.pos - 1 AS seq
FROM walk w JOIN cand c ON c.account_id = w.account_id AND c.event_id = w.cur;

-- (the state before and the small JSON states are kept only at a subscription's first event)
UPDATE derived_sub_events e
SET seq = o.seq,
    has_before = e.has_before AND o.seq = 1,
    before_status = CASE WHEN o.seq = 1 THEN e.before_status END,
    before_pause_collection = CASE WHEN o.seq = 1 THEN e.before_pause_collection END,
    before_has_more = CASE WHEN o.seq = 1 THEN e.before_has_more END,
    before_items = CASE WHEN o.seq = 1 THEN e.before_items END,
    after_state = CASE WHEN o.seq = 1 THEN e.after_state END,
    before_state = CASE WHEN o.seq = 1 THEN e.before_state END
FROM derived_sub_event_order o
WHERE e.tied AND e.account_id = o.account_id AND e.event_id = o.event_id;
ALTER TABLE derived_sub_events DROP COLUMN tied;

-- The same for the events stored before coverage (kept from before a gap in them, which step 30 reads for their
-- items and the status steps below for their statuses): of those of one subscription in the same second, their
-- order there (`pos`, from 1), created first, deleted last, then the update whose state before is the state the
-- second before left (its event's when alone in it, else the state of the one of its events that leads to no
-- other), then those no other leads to, the id last. (Not
-- the walk above: a pair is the rule there, and a pair needs no more. Kept, as the order above is: the incremental
-- path's moved customers read it.)
CREATE OR REPLACE TABLE derived_early_event_order AS
WITH ev AS (
    SELECT e.account_id, e.object_id AS subscription_id, e.id AS event_id, e.created AS moment,
           CASE e.type WHEN 'customer.subscription.created' THEN 0
                       WHEN 'customer.subscription.deleted' THEN 2 ELSE 1 END AS cls,
           e.sub_state AS p, e.sub_state.types AS t,
           coalesce(e.sub_state.types[7] = 'OBJECT', false) AS after_pause,
           TRY_CAST(e.sub_state.has_more AS BOOLEAN) AS after_has_more
    FROM events e
    JOIN derived_coverage c USING (account_id)
    WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false)
      AND e.created < c.coverage_start AND e.sub_state IS NOT NULL
),
states AS (
    SELECT account_id, subscription_id, event_id, moment, cls,
           count(*) OVER (PARTITION BY account_id, subscription_id, moment) AS n,
           event_state(p.status, after_pause, p.items, after_has_more, NULL) AS s_after,
           -- (previous_attributes merged onto data.object, as above; items not known: compared as a list cut short)
           CASE WHEN t[1] = 'OBJECT' THEN event_state(
               CASE WHEN t[2] IS NULL THEN p.status ELSE p.prev_status END,
               CASE WHEN t[3] IS NULL THEN after_pause WHEN t[3] = 'NULL' THEN false ELSE t[3] = 'OBJECT' END,
               CASE WHEN t[4] IS NULL THEN p.items WHEN t[4] = 'OBJECT' AND t[5] IS NOT NULL THEN p.prev_items END,
               CASE WHEN t[4] IS NULL THEN after_has_more
                    WHEN t[4] = 'OBJECT' AND t[5] IS NOT NULL
                    THEN TRY_CAST(CASE WHEN t[6] IS NULL THEN p.has_more ELSE p.prev_has_more END AS BOOLEAN)
                    ELSE true END,
               NULL) END AS s_before
    FROM ev
),
-- (of the events in one second: whether another leads to it, and whether it leads to another)
flagged AS (
    SELECT y.*,
           EXISTS (SELECT 1 FROM states x
                   WHERE x.account_id = y.account_id AND x.subscription_id = y.subscription_id AND x.moment = y.moment
                     AND x.event_id <> y.event_id AND state_leads(x.s_after, y.s_before)) AS has_pred,
           EXISTS (SELECT 1 FROM states z
                   WHERE z.account_id = y.account_id AND z.subscription_id = y.subscription_id AND z.moment = y.moment
                     AND z.event_id <> y.event_id AND state_leads(y.s_after, z.s_before)) AS leads_other
    FROM states y WHERE y.n > 1
),
-- (per subscription and second: the state after the second before, that of its event when it is alone in its own,
-- else of the one of its events that leads to no other, when only one does)
prior AS (
    SELECT account_id, subscription_id, moment,
           lag(s_last) OVER (PARTITION BY account_id, subscription_id ORDER BY moment) AS s_prior
    FROM (SELECT account_id, subscription_id, moment, any_value(s_after) AS s_last FROM states WHERE n = 1
          GROUP BY ALL
          UNION ALL
          SELECT account_id, subscription_id, moment,
                 CASE WHEN count(*) FILTER (WHERE NOT leads_other) = 1
                      THEN any_value(s_after) FILTER (WHERE NOT leads_other) END
          FROM flagged GROUP BY ALL)
)
SELECT y.account_id, y.subscription_id, y.event_id,
       row_number() OVER (PARTITION BY y.account_id, y.subscription_id, y.moment
                          ORDER BY y.cls,
                                   NOT coalesce(y.s_before IS NOT NULL AND state_leads(p.s_prior, y.s_before), false),
                                   coalesce(y.s_before IS NOT NULL AND y.has_pred, false), y.event_id) AS pos
FROM flagged y JOIN prior p USING (account_id, subscription_id, moment);

-- Every subscription known, with the fields of its latest known state (the snapshot, or the last event
-- for one the store has no usable row for).
CREATE OR REPLACE TABLE derived_subs AS
WITH snap AS (
    -- the snapshot, from the typed columns the store extracts at load time
    SELECT account_id, id AS subscription_id, customer_id, lower(currency) AS currency, status, start_date,
           created AS created_at, trial_start, trial_end, canceled_at, ended_at, cancel_at,
           coalesce(cancel_at_period_end, false) AS cancel_at_period_end, cancellation_reason,
           cancellation_feedback, cancellation_comment, paused_at, coalesce(pause_collection, false) AS pause_collection,
           -- seen at the sync, in Stripe's clock; and its current state first seen (by the sync that first saw it)
           seen_in_stripes_clock(last_seen_at, version, (SELECT c.snapshot_at FROM derived_coverage c
                                                         WHERE c.account_id = subscriptions.account_id)) AS seen_at,
           state_seen_in_stripes_clock(state_seen_at, last_seen_at, version,
                                       (SELECT c.snapshot_at FROM derived_coverage c
                                        WHERE c.account_id = subscriptions.account_id)) AS state_seen_at,
           true AS in_snapshot,
           -- the snapshot's JSON stays in `subscriptions`: read it from there for the few rows that need it
           CAST(NULL AS JSON) AS state
    FROM subscriptions
    WHERE NOT coalesce(deleted, false) AND customer_id IS NOT NULL
),
from_events AS (
    -- a subscription the store has no usable row for: its last event's state (read again from the event)
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
           l.seen_at, l.seen_at AS state_seen_at, false AS in_snapshot, v[15] AS state
    FROM (SELECT l.account_id, l.subscription_id, l.seen_at,
                 json_extract(r.raw, ['$.data.object.customer', '$.data.object.currency', '$.data.object.status',
                                      '$.data.object.start_date', '$.data.object.created',
                                      '$.data.object.trial_start', '$.data.object.trial_end',
                                      '$.data.object.canceled_at', '$.data.object.ended_at',
                                      '$.data.object.cancel_at', '$.data.object.cancel_at_period_end',
                                      '$.data.object.cancellation_details',
                                      '$.data.object.status_details.paused.transitioned_at',
                                      '$.data.object.pause_collection', '$.data.object']) AS v
          FROM (SELECT account_id, subscription_id, rid, moment AS seen_at
                FROM derived_sub_events e
                WHERE NOT EXISTS (SELECT 1 FROM snap s
                                  WHERE s.account_id = e.account_id AND s.subscription_id = e.subscription_id)
                QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id ORDER BY moment DESC, seq DESC) = 1) l
          JOIN (SELECT rowid AS rid, raw FROM events) r USING (rid)) l
)
SELECT * FROM snap
UNION ALL
SELECT * FROM from_events;

-- What paused a subscription, per pause: status_details.paused.subscription.type (pause_requested,
-- trial_end_without_payment_method, first_payment_failure, final_payment_failure, system) with the moment it
-- paused, from every stored event whose subscription is paused after it and from the snapshot of one paused now
-- (JSON read for those rows alone). 70 reads it for the churn type of a pause: after a failed payment it is
-- involuntary, as going unpaid is. (Events rendered before API version 2026-09-30 may lack the type: no row.)
CREATE OR REPLACE TABLE derived_sub_pauses AS
SELECT DISTINCT account_id, subscription_id, paused_at, pause_type
FROM (
    SELECT account_id, object_id AS subscription_id,
           coalesce(ts_of(json_extract_string(raw, '$.data.object.status_details.paused.transitioned_at')),
                    created) AS paused_at,
           json_extract_string(raw, '$.data.object.status_details.paused.subscription.type') AS pause_type
    FROM events
    WHERE type LIKE 'customer.subscription.%' AND object_type = 'subscription' AND NOT coalesce(deleted, false)
      AND sub_state.status = 'paused'
    UNION ALL
    SELECT account_id, id, paused_at, json_extract_string(raw, '$.status_details.paused.subscription.type')
    FROM subscriptions
    WHERE status = 'paused' AND paused_at IS NOT NULL AND NOT coalesce(deleted, false)
)
WHERE pause_type IS NOT NULL AND subscription_id IS NOT NULL;

-- Full-state observations inside event coverage: the state at coverage start (the first event's "before",
-- or the snapshot for a subscription without events), every event's "after", and a snapshot newer than the
-- last event that differs from it (a change the events missed).
CREATE OR REPLACE TEMP TABLE derived_sub_obs AS
WITH anchor_from_events AS (
    SELECT f.account_id, f.subscription_id, greatest(c.coverage_start, s.start_date) AS moment,
           'event' AS source, f.event_id, f.before_items AS items, 0 AS ord,
           f.before_status AS status, f.before_pause_collection AS pause_collection, f.before_has_more AS has_more
    FROM derived_sub_events f
    JOIN derived_coverage c USING (account_id)
    LEFT JOIN derived_subs s USING (account_id, subscription_id)
    -- (the first event's state before: one with previous_attributes, or a deletion's items)
    WHERE f.before_state IS NOT NULL AND greatest(c.coverage_start, s.start_date) < f.moment
),
anchor_from_snapshot AS (
    -- (status and pause_collection from the typed columns; its items are read from subscription_items in 30)
    SELECT s.account_id, s.subscription_id, greatest(c.coverage_start, s.start_date) AS moment,
           'snapshot' AS source, NULL AS event_id, NULL AS items, 0 AS ord, s.status,
           s.pause_collection, CAST(NULL AS BOOLEAN) AS has_more
    FROM derived_subs s
    JOIN derived_coverage c USING (account_id)
    WHERE s.in_snapshot
      AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                      WHERE e.account_id = s.account_id AND e.subscription_id = s.subscription_id)
),
after_events AS (
    SELECT account_id, subscription_id, moment, 'event' AS source, event_id, after_items AS items, seq AS ord,
           after_status AS status, after_pause_collection AS pause_collection, after_has_more AS has_more
    FROM derived_sub_events
),
last_events AS (
    SELECT account_id, subscription_id, moment, after_status, after_pause_collection, after_has_more, after_items,
           first_seen_at
    FROM derived_sub_events
    QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id ORDER BY seq DESC) = 1
),
-- the snapshot's items_key, from the subscription_items rows seen in the same sync (its embedded list), and when
-- the latest of their states was first seen (those the sync found gone too: a removal is a change of the list)
snapshot_keys AS (
    SELECT s.account_id, s.id AS subscription_id,
           list_sort(list(concat_ws('|', si.id, si.price_id, CAST(si.quantity AS VARCHAR)))
                         FILTER (WHERE NOT coalesce(si.deleted, false))) AS items_key,
           max(state_seen_in_stripes_clock(si.state_seen_at, si.last_seen_at, si.version, c.snapshot_at))
               AS items_state_seen_at
    FROM subscriptions s
    JOIN last_events l ON l.account_id = s.account_id AND l.subscription_id = s.id
    JOIN derived_coverage c ON c.account_id = s.account_id
    JOIN subscription_items si
      ON si.account_id = s.account_id AND si.subscription_id = s.id
     AND si.last_seen_at >= s.last_seen_at - INTERVAL 1 HOUR
    GROUP BY ALL
),
late_snapshot AS (
    -- (dated when a sync first saw the snapshot's state: that of the subscription or of one of its items, whichever
    -- came last, when that is after the last event. Else the state the event left came back with no event and the
    -- row never held the event's (a state that came back is a change of the row): a copy newer than the event
    -- kept it out by the time the sync that first stored the event wrote it, so that sync had seen the state
    -- after the event, and a later sync seeing it again does not move it: its moment, no later than when the
    -- latest sync saw the subscription (itself no later than the latest snapshot). That moment is this machine's
    -- clock: when it is not after the event (Stripe's clock ahead, as a test clock's), when the latest sync saw it.)
    SELECT s.account_id, s.subscription_id,
           CASE WHEN greatest(s.state_seen_at, least(k.items_state_seen_at, s.seen_at)) > l.moment
                THEN greatest(s.state_seen_at, least(k.items_state_seen_at, s.seen_at))
                WHEN least(l.first_seen_at, s.seen_at) > l.moment THEN least(l.first_seen_at, s.seen_at)
                ELSE s.seen_at END AS moment,
           'snapshot' AS source, NULL AS event_id,
           NULL AS items,
           -- (1000000: a change the events missed; 1000001: the last event's list was cut short, so only the
           -- snapshot, complete from subscription_items, says which of the items it left out are still there,
           -- and it agrees with every item the list shows; NULL: the snapshot adds nothing)
           -- (pause_collection too: with pause_collection_keeps_mrr = false it moves MRR)
           CASE WHEN s.status IS DISTINCT FROM l.after_status
                  OR s.pause_collection IS DISTINCT FROM coalesce(l.after_pause_collection, false) THEN 1000000
                WHEN coalesce(l.after_has_more, false)
                THEN CASE WHEN list_has_all(coalesce(k.items_key, []), items_key(l.after_items)) THEN 1000001
                          ELSE 1000000 END
                WHEN coalesce(k.items_key, []) IS DISTINCT FROM items_key(l.after_items) THEN 1000000 END AS ord,
           s.status, s.pause_collection,
           CAST(NULL AS BOOLEAN) AS has_more
    FROM derived_subs s
    JOIN last_events l USING (account_id, subscription_id)
    LEFT JOIN snapshot_keys k USING (account_id, subscription_id)
    WHERE s.in_snapshot AND s.seen_at > l.moment AND ord IS NOT NULL
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
-- a pause: the subscription is paused now, or no invoice of it was made within a day of the trial's end, and
-- then it was resumed when its next invoice was made), trialing again from a later trial's trial_start (a trial
-- at signup that it replaced is read from the invoices: trialing from start_date to the invoice of its end),
-- paused from status_details.paused.transitioned_at,
-- unpaid from when its failed invoice was given up on (marked uncollectible, else that invoice's creation),
-- past_due while a renewal's payment failed (payment_spells: from the invoice's finalization to its payment),
-- canceled or incomplete_expired from ended_at.
-- Inside coverage they are the observed states. A subscription with no stored event has only the snapshot
-- there: its reconstructed steps stand inside coverage too (an end, a trial's end, an unpaid or paused moment
-- whose event is missing, as after the daemon was down longer than Stripe keeps events, keeps its own date), and
-- the snapshot's status holds from its last reconstructed step on.
CREATE OR REPLACE TABLE derived_sub_status_steps AS
WITH s AS (
    SELECT account_id, subscription_id, status, start_date, trial_start, trial_end, ended_at, paused_at,
           cancellation_reason, seen_at
    FROM derived_subs
),
-- A trial's end is invoiced at once (its first period, or a zero invoice), unless the trial ends into a pause
-- (trial_settings.end_behavior.missing_payment_method = pause: no invoice until it is resumed). So a subscription
-- seen a day after its trial ended with no invoice made within that day was paused from the trial's end: until
-- its next invoice (the resume's), else until it ended or for good (paused now). Only where the store holds some
-- invoice of the subscription (the trial's own, at its start): a store without its invoices shows nothing. The
-- day after the trial's end is known to have passed when the subscription was seen after it, or when the store
-- holds a later invoice of it or its end after that day (Stripe's own dates: `seen_at` is this machine's clock
-- when Stripe's runs ahead of it, as a sandbox advanced or a test clock does).
trial_pauses AS (
    SELECT s.account_id, s.subscription_id, s.trial_end, s.ended_at,
           min(i.created) FILTER (WHERE i.created > s.trial_end + INTERVAL 1 DAY) AS resumed_at
    FROM s
    JOIN invoices i ON i.account_id = s.account_id AND i.subscription_id = s.subscription_id
    WHERE s.trial_end > s.start_date
      AND (s.ended_at IS NULL OR s.trial_end < s.ended_at) AND NOT coalesce(i.deleted, false)
    GROUP BY ALL
    HAVING count(*) FILTER (WHERE i.created BETWEEN s.trial_end - INTERVAL 1 HOUR
                                                AND s.trial_end + INTERVAL 1 DAY) = 0
       AND (any_value(s.seen_at) >= s.trial_end + INTERVAL 1 DAY OR resumed_at IS NOT NULL
            OR s.ended_at >= s.trial_end + INTERVAL 1 DAY)
),
-- unpaid now, or canceled for a failed payment (it may have gone unpaid first, then been deleted)
-- (of its invoices, those made after its latest paid renewal count first: an invoice marked uncollectible, or left
-- open, before a later renewal was paid is a spell it came out of, not the one it ended in. Only a renewal: an
-- update's invoice of nothing to pay, a downgrade's, is paid at once while the renewal before it stays open. An
-- unpaid subscription with no such invoice after it falls back on all of them)
unpaid_invoices AS (
    SELECT i.account_id, i.subscription_id, i.created, u.status AS sub_status, u.ended_at,
           i.status AS invoice_status, i.marked_uncollectible_at,
           max(i.created) FILTER (WHERE i.status = 'paid' AND i.billing_reason = 'subscription_cycle')
               OVER (PARTITION BY i.account_id, i.subscription_id) AS last_paid
    FROM invoices i
    JOIN (SELECT account_id, subscription_id, status, ended_at FROM s
          WHERE status = 'unpaid' OR (status = 'canceled' AND cancellation_reason = 'payment_failed')) u
      ON u.account_id = i.account_id AND u.subscription_id = i.subscription_id
),
unpaid_from AS (
    SELECT account_id, subscription_id,
           CASE WHEN any_value(sub_status) = 'unpaid'
                THEN coalesce(max(marked_uncollectible_at) FILTER (WHERE after), min(created) FILTER (WHERE after),
                              max(marked_uncollectible_at), min(created))
                ELSE max(marked_uncollectible_at) FILTER (WHERE after) END AS unpaid_at,
           any_value(ended_at) AS ended_at
    FROM (SELECT *, last_paid IS NULL OR created > last_paid AS after FROM unpaid_invoices)
    WHERE invoice_status IN ('open', 'uncollectible')
    GROUP BY account_id, subscription_id
    HAVING unpaid_at IS NOT NULL AND (any_value(ended_at) IS NULL OR unpaid_at < any_value(ended_at))
),
-- The status just before the stored events begin, where the subscription's first stored event says it (its
-- previous_attributes): a spell that ended in payment before the latest state (incomplete, then paid; unpaid,
-- then paid back) is not in that state, and would be rebuilt as active up to where the events begin.
first_before AS (
    SELECT account_id, subscription_id, before_status FROM derived_sub_events
    WHERE seq = 1 AND before_status IN ('incomplete', 'unpaid')
),
-- unpaid just before the events, and paid back since (unpaid_from above dates those unpaid or canceled for it
-- now): unpaid from its latest invoice marked uncollectible before the events begin
unpaid_before_events AS (
    SELECT s.account_id, s.subscription_id, max(i.marked_uncollectible_at) AS unpaid_at
    FROM s
    JOIN first_before f USING (account_id, subscription_id)
    JOIN derived_coverage c USING (account_id)
    JOIN invoices i ON i.account_id = s.account_id AND i.subscription_id = s.subscription_id
    WHERE f.before_status = 'unpaid' AND i.marked_uncollectible_at < c.coverage_start
      AND NOT coalesce(i.deleted, false)
      AND NOT (s.status = 'unpaid' OR (s.status = 'canceled' AND s.cancellation_reason = 'payment_failed'))
    GROUP BY ALL
),
-- A renewal's payment that failed (a subscription_cycle or subscription_threshold invoice): past_due from the
-- invoice's finalization (its payment is tried then) until it was paid, for an invoice paid only at a later attempt
-- (attempt_count 2 or more) or still open after one; an invoice given up on (marked uncollectible) holds past_due
-- until then (unpaid_from dates the unpaid step, for a subscription unpaid now or ended for it), and one paid after
-- that is unpaid from then until paid. Before the events' window the invoices are all that show such a spell (a
-- subscription's state keeps no past status); it matters under past_due_counts = false, past_due counting nothing.
-- (Inside coverage the events say it, as for every reconstructed step.) Not a subscription_create invoice (a first
-- payment failing leaves the subscription incomplete), nor an update's (one made with pending_if_incomplete stays
-- open, its payment failed, while the subscription stays active and the update waits; voided when it expires).
payment_spells AS (
    SELECT i.account_id, i.subscription_id, coalesce(i.finalized_at, i.created) AS failed_at,
           CASE WHEN i.status = 'paid' THEN i.paid_at END AS paid_at, i.marked_uncollectible_at, s.ended_at
    FROM s
    JOIN invoices i ON i.account_id = s.account_id AND i.subscription_id = s.subscription_id
    WHERE NOT coalesce(i.deleted, false) AND i.billing_reason IN ('subscription_cycle', 'subscription_threshold')
      AND ((i.status = 'paid' AND i.attempt_count >= 2 AND i.paid_at > coalesce(i.finalized_at, i.created))
           OR (i.status IN ('open', 'uncollectible') AND i.attempt_count >= 1))
      AND (s.ended_at IS NULL OR coalesce(i.finalized_at, i.created) < s.ended_at)
),
payment_steps AS (
    SELECT account_id, subscription_id, failed_at AS moment, 'past_due' AS status FROM payment_spells
    UNION ALL
    SELECT account_id, subscription_id, marked_uncollectible_at, 'unpaid' FROM payment_spells
    WHERE paid_at > marked_uncollectible_at
    UNION ALL
    SELECT account_id, subscription_id, paid_at, 'active' FROM payment_spells
    WHERE paid_at IS NOT NULL AND (ended_at IS NULL OR paid_at < ended_at)
),
-- A trial at signup that a later trial replaced (Stripe keeps the latest trial only: trial_start is after
-- start_date) shows on the invoices alone: the subscription_create invoice bills every licensed item at 0 for a
-- period that ends at the trial's end, though its price bills something at that quantity, and the trial's end is
-- invoiced (a renewal, or an update ending it early, billing something) no later than a day after that period's
-- end. A 100%-off coupon is no trial: its line bills the full price (the discount comes off it); a free price
-- bills 0 anyway, a metered item is billed in arrears (0 at creation, whatever happens), and prorations only
-- mark a change: none of them tells. The trial ran from start_date to that invoice. Only the subscriptions with
-- a later trial are looked at, and of their invoices the ones before that trial (update_trials below reads an
-- earlier trial granted by an update from them too).
later_trial_invoices AS MATERIALIZED (
    SELECT s.account_id, s.subscription_id, s.start_date, s.trial_start, s.ended_at, i.id AS invoice_id,
           i.billing_reason, i.created
    FROM s
    JOIN invoices i ON i.account_id = s.account_id AND i.subscription_id = s.subscription_id
    WHERE s.trial_start > s.start_date AND s.trial_end > s.trial_start
      AND i.billing_reason IN ('subscription_create', 'subscription_cycle', 'subscription_update')
      AND i.created < s.trial_start AND NOT coalesce(i.deleted, false)
),
later_trial_lines AS MATERIALIZED (
    SELECT v.*, l.amount, l.period_start, l.period_end,
           CASE WHEN v.billing_reason IN ('subscription_create', 'subscription_update')
                THEN p.usage_type = 'licensed' AND p.price_type = 'recurring' END AS licensed,
           CASE WHEN v.billing_reason IN ('subscription_create', 'subscription_update') AND l.amount = 0 AND licensed
                THEN price_amount_p(l.account_id, l.price_id, l.quantity) > 0 END AS bills_something
    FROM later_trial_invoices v
    JOIN invoice_lines l ON l.account_id = v.account_id AND l.invoice_id = v.invoice_id
    LEFT JOIN derived_price_terms p ON p.account_id = l.account_id AND p.price_id = l.price_id
    WHERE l.subscription_item_id IS NOT NULL AND NOT coalesce(l.parent_proration, false)
      AND NOT coalesce(l.deleted, false)
),
signup_zero AS (
    SELECT account_id, subscription_id, start_date, trial_start, max(period_end) AS zero_until
    FROM later_trial_lines
    WHERE billing_reason = 'subscription_create' AND licensed
    GROUP BY ALL
    HAVING bool_and(amount = 0) AND bool_or(coalesce(bills_something, false))
       AND max(period_end) > start_date AND max(period_end) <= trial_start
),
signup_trials AS (
    SELECT z.account_id, z.subscription_id, min(l.created) AS trial_end, any_value(l.ended_at) AS ended_at
    FROM signup_zero z
    JOIN later_trial_lines l USING (account_id, subscription_id)
    WHERE l.billing_reason IN ('subscription_cycle', 'subscription_update') AND l.amount > 0
      AND l.created > z.start_date AND l.created <= z.zero_until + INTERVAL 1 DAY
    GROUP BY ALL
),
-- An earlier trial granted by an update shows on the invoices alone as well: the subscription_update invoice
-- that billed the update bills every licensed item at 0 (its lines that are no proration; a credit for the unused
-- time beside them is one) for a new period from the update on, though its price bills something at that
-- quantity, and the trial's end is invoiced (billing something) no later than a day after that period's end.
-- The trial ran from that invoice to the one of its end.
update_zero AS (
    SELECT account_id, subscription_id, invoice_id, any_value(created) AS created, max(period_end) AS zero_until
    FROM later_trial_lines
    WHERE billing_reason = 'subscription_update' AND licensed
    GROUP BY ALL
    HAVING bool_and(amount = 0) AND bool_or(coalesce(bills_something, false))
       AND min(period_start) >= any_value(created) - INTERVAL 5 MINUTE
       AND max(period_end) > any_value(created) AND max(period_end) <= any_value(trial_start)
),
update_trials AS (
    SELECT z.account_id, z.subscription_id, z.created AS trial_start, min(l.created) AS trial_end,
           any_value(l.ended_at) AS ended_at
    FROM update_zero z
    JOIN later_trial_lines l USING (account_id, subscription_id)
    WHERE l.billing_reason IN ('subscription_cycle', 'subscription_update') AND l.amount > 0
      AND l.created > z.created AND l.created <= z.zero_until + INTERVAL 1 DAY
    GROUP BY z.account_id, z.subscription_id, z.created
),
recon AS (
    SELECT s.account_id, s.subscription_id, s.start_date AS moment,
           CASE WHEN s.trial_end IS NOT NULL AND s.trial_end > s.start_date
                     AND coalesce(s.trial_start, s.start_date) <= s.start_date THEN 'trialing'
                WHEN st.subscription_id IS NOT NULL THEN 'trialing'
                -- (incomplete is a subscription's first status alone: just before its first stored event, it
                -- was so from its start)
                WHEN s.status IN ('incomplete', 'incomplete_expired') OR f.before_status = 'incomplete'
                THEN 'incomplete'
                ELSE 'active' END AS status,
           false AS pause_collection, 'snapshot' AS source, NULL AS source_event_id, 0 AS ord
    FROM s LEFT JOIN first_before f USING (account_id, subscription_id)
    LEFT JOIN signup_trials st USING (account_id, subscription_id)
    WHERE s.start_date IS NOT NULL
    UNION ALL
    -- (the end of a trial at signup that a later one replaced)
    SELECT account_id, subscription_id, trial_end, 'active', false, 'snapshot', NULL, 1
    FROM signup_trials WHERE ended_at IS NULL OR trial_end < ended_at
    UNION ALL
    -- (an earlier trial granted by an update, and its end)
    SELECT account_id, subscription_id, trial_start, 'trialing', false, 'snapshot', NULL, 1
    FROM update_trials WHERE ended_at IS NULL OR trial_start < ended_at
    UNION ALL
    SELECT account_id, subscription_id, trial_end, 'active', false, 'snapshot', NULL, 1
    FROM update_trials WHERE ended_at IS NULL OR trial_end < ended_at
    UNION ALL
    SELECT s.account_id, s.subscription_id, s.trial_end,
           CASE WHEN s.status = 'paused' AND (s.paused_at IS NULL OR s.paused_at <= s.trial_end) THEN 'paused'
                WHEN p.subscription_id IS NOT NULL THEN 'paused'
                ELSE 'active' END,
           false, 'snapshot', NULL, 1
    FROM s
    LEFT JOIN trial_pauses p USING (account_id, subscription_id)
    WHERE s.trial_end IS NOT NULL AND s.trial_end > s.start_date AND (s.ended_at IS NULL OR s.trial_end < s.ended_at)
    UNION ALL
    -- (resumed from a pause the trial ended into: from the resume's invoice)
    SELECT p.account_id, p.subscription_id, p.resumed_at, 'active', false, 'snapshot', NULL, 2
    FROM trial_pauses p
    WHERE p.resumed_at IS NOT NULL AND (p.ended_at IS NULL OR p.resumed_at < p.ended_at)
    UNION ALL
    -- a trial given later (trial_end set on an update of a subscription already under way: trial_start is then
    -- the update's moment; the subscription keeps only its latest trial)
    SELECT account_id, subscription_id, trial_start, 'trialing', false, 'snapshot', NULL, 1
    FROM s
    WHERE trial_start > start_date AND trial_end > trial_start AND (ended_at IS NULL OR trial_start < ended_at)
    UNION ALL
    SELECT account_id, subscription_id, paused_at, 'paused', false, 'snapshot', NULL, 2
    FROM s WHERE status = 'paused' AND paused_at IS NOT NULL
    UNION ALL
    SELECT account_id, subscription_id, moment, status, false, 'snapshot', NULL, 2
    FROM payment_steps
    UNION ALL
    SELECT u.account_id, u.subscription_id, u.unpaid_at, 'unpaid', false, 'snapshot', NULL, 3
    FROM unpaid_from u
    UNION ALL
    SELECT u.account_id, u.subscription_id, u.unpaid_at, 'unpaid', false, 'snapshot', NULL, 3
    FROM unpaid_before_events u
    UNION ALL
    SELECT account_id, subscription_id, ended_at,
           CASE WHEN status = 'incomplete_expired' THEN 'incomplete_expired' ELSE 'canceled' END,
           false, 'snapshot', NULL, 4
    FROM s WHERE ended_at IS NOT NULL
),
-- reconstructed steps inside coverage (few: ends, trial ends, unpaid or paused moments of the last weeks), kept
-- for the subscriptions without events
late_kept AS (
    SELECT r.* FROM recon r JOIN derived_coverage c USING (account_id)
    WHERE r.moment >= c.coverage_start
      AND NOT EXISTS (SELECT 1 FROM derived_sub_events e
                      WHERE e.account_id = r.account_id AND e.subscription_id = r.subscription_id)
),
-- the last of them per subscription
recon_last AS (
    SELECT account_id, subscription_id, max(moment) AS last_moment FROM late_kept GROUP BY ALL
),
observed AS (
    SELECT o.account_id, o.subscription_id,
           -- (the snapshot of a subscription without events: from its last reconstructed step on, if later)
           CASE WHEN o.source = 'snapshot' AND l.last_moment IS NOT NULL THEN greatest(o.moment, l.last_moment)
                ELSE o.moment END AS moment,
           o.status, o.pause_collection, o.source, o.event_id AS source_event_id, 10 + o.ord AS ord
    FROM derived_sub_obs o
    LEFT JOIN recon_last l USING (account_id, subscription_id)
    -- (an anchor whose status is not known, a first event's deletion: the reconstructed status holds until it)
    WHERE NOT (o.source = 'event' AND o.ord = 0 AND o.status IS NULL)
),
-- The events stored before coverage (kept from before a gap in them): their status and collection pause from each
-- on, over the reconstructed steps at the same moment (events win where they overlap: a pause, a past_due spell, a
-- collection pause that the snapshot's dates and the invoices do not show). The last of them holds until the next
-- step (a reconstructed one, a resume below, or coverage's start, where the state the events give after the gap takes
-- over, as a snapshot's does: 90 reports such a change, which nothing dates). (Of several in one second, the last in
-- their order, derived_early_event_order, as 30 takes them.)
early AS (
    SELECT e.account_id, e.object_id AS subscription_id, e.created AS moment, e.sub_state.status AS status,
           coalesce(e.sub_state.types[7] = 'OBJECT', false) AS pause_collection, 'event' AS source,
           e.id AS source_event_id, 5 AS ord
    FROM events e
    JOIN derived_coverage c USING (account_id)
    SEMI JOIN s ON s.account_id = e.account_id AND s.subscription_id = e.object_id
    LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
    WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false)
      AND e.created < c.coverage_start AND e.sub_state.status IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY e.account_id, e.object_id, e.created ORDER BY o.pos DESC NULLS LAST) = 1
),
-- A subscription the last of them leaves paused makes no invoice until it is resumed: resumed (active) when its
-- next subscription invoice before coverage was made, as a pause the trial ended into is (the resume's event is
-- lost in the gap)
early_resumed AS (
    SELECT l.account_id, l.subscription_id, min(i.created) AS moment, 'active' AS status,
           any_value(l.pause_collection) AS pause_collection, 'snapshot' AS source, NULL AS source_event_id, 6 AS ord
    FROM (SELECT * FROM early QUALIFY row_number() OVER (PARTITION BY account_id, subscription_id
                                                         ORDER BY moment DESC) = 1) l
    JOIN derived_coverage c USING (account_id)
    JOIN invoices i ON i.account_id = l.account_id AND i.subscription_id = l.subscription_id
    WHERE l.status = 'paused' AND i.created > l.moment AND i.created < c.coverage_start
      AND i.billing_reason IN ('subscription_create', 'subscription_cycle', 'subscription_update')
      AND NOT coalesce(i.deleted, false)
    GROUP BY l.account_id, l.subscription_id
)
SELECT r.* FROM recon r JOIN derived_coverage c USING (account_id) WHERE r.moment < c.coverage_start
UNION ALL
SELECT * FROM early
UNION ALL
SELECT * FROM early_resumed
UNION ALL
SELECT * FROM late_kept
UNION ALL
SELECT * FROM observed;
