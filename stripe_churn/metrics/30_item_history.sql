-- State history per subscription item (design.md 3): price and quantity over time, from invoice lines
-- before event coverage and from the subscription observations (events, snapshot) inside it.

-- A line's tax: an exclusive tax is outside `amount`; an inclusive one is inside it, worked out on the amount
-- less discounts and pre-tax credits (`net_den`, the base, NULL for a line without inclusive tax), so that the
-- line's share without tax is (net_den - tax_inclusive) / net_den. The amount without tax is in 1e-12 minor units.
CREATE OR REPLACE MACRO line_net_den(amount, pretax_credits, tax_inclusive) AS
    CASE WHEN tax_inclusive > 0 AND amount - coalesce(pretax_credits, 0) > tax_inclusive
         THEN amount - coalesce(pretax_credits, 0) END;
CREATE OR REPLACE MACRO line_excl_tax_p(amount, tax_inclusive, net_den) AS
    CASE WHEN net_den IS NULL THEN CAST(amount - coalesce(tax_inclusive, 0) AS HUGEINT) * 1000000000000
         ELSE CAST(amount AS HUGEINT) * 1000000000000 * (net_den - tax_inclusive) // net_den END;

-- Subscription invoice lines, from the typed columns the store extracts at load time (no JSON read here);
-- only the columns the later steps read (every string column copied costs at 1M customers). The voided invoice
-- of an update whose payment was attempted is no evidence: Stripe voids the invoice of an update made with
-- payment_behavior=pending_if_incomplete whose payment failed when the pending update expires, and the
-- subscription never had what it bills. Other voided invoices of a renewal or an update still show what the
-- subscription renewed with or changed to: pause_collection's void behavior voids every invoice made while
-- collection is paused, with no payment attempted (and one may be voided by hand). (`attempted` is a typed
-- column: the JSON of every invoice would be read to test a few.) Of the other
-- invoices (billing_reason manual, automatic_pending_invoice_item_invoice, ...), only the prorations of a
-- subscription item: pending proration items may be billed there instead of on the next renewal (a
-- subscription's pending_invoice_item_interval, or an invoice made by hand), and they date a change as well.
CREATE OR REPLACE TEMP TABLE derived_invoice_lines AS
WITH inv AS (
    SELECT account_id, id AS invoice_id, created AS invoice_created, subscription_id,
           billing_reason IN ('subscription_create', 'subscription_cycle', 'subscription_update', 'subscription')
               AS of_subscription
    FROM invoices
    WHERE NOT coalesce(deleted, false)
      AND CASE WHEN status IS DISTINCT FROM 'void' OR billing_reason = 'subscription_cycle' THEN true
               WHEN billing_reason = 'subscription_update' THEN NOT coalesce(attempted, false)
               ELSE false END
),
-- tax excluded (line_net_den above); 40 also takes a tax-inclusive licensed price's tax out by the share
lines AS (
    SELECT *, rowid AS rid, line_net_den(amount, pretax_credits, tax_inclusive) AS net_den
    FROM invoice_lines
)
SELECT
    l.account_id,
    l.id AS line_id,
    l.invoice_id,
    i.invoice_created,
    coalesce(l.subscription_id, i.subscription_id) AS subscription_id,
    l.subscription_item_id,
    coalesce(l.parent_proration, false) AS proration,
    coalesce(l.proration_credit, false) OR l.amount < 0 AS is_credit,
    l.price_id,
    l.quantity,
    l.period_start,
    l.period_end,
    -- the amount without tax, in 1e-12 minor units
    line_excl_tax_p(l.amount, l.tax_inclusive, l.net_den) AS amount_excl_tax_p,
    l.net_den - l.tax_inclusive AS net_num,
    l.net_den,
    -- (the row in invoice_lines, for the few lines whose JSON data quality reads)
    l.rid
FROM lines l
JOIN inv i ON i.account_id = l.account_id AND i.invoice_id = l.invoice_id
WHERE NOT coalesce(l.deleted, false)
  AND (i.of_subscription OR (coalesce(l.parent_proration, false) AND l.subscription_item_id IS NOT NULL));

-- The pending proration items as of the latest sync (not yet on an invoice): with Stripe's default
-- create_prorations, a change's prorations wait for the subscription's next invoice, months away on an annual
-- plan, and before event coverage they alone show when the change was made. Read as the proration lines they
-- will become (the item's id stands for the invoice; `date`, when it was made, for the invoice's creation).
-- Once invoiced they are the invoice's lines, and the sync marks them no longer pending.
CREATE OR REPLACE TEMP TABLE derived_pending_lines AS
SELECT account_id, id AS invoice_id, date AS invoice_created, subscription_id, subscription_item_id,
       coalesce(proration_credit, false) OR amount < 0 AS is_credit, price_id, quantity, period_start, period_end
FROM invoice_items
WHERE pending AND NOT coalesce(deleted, false) AND coalesce(proration, false)
  AND subscription_item_id IS NOT NULL AND subscription_id IS NOT NULL;

-- A quantity the load could not read as a 64-bit integer: its typed column NULL, the JSON holding one (an item of a
-- price not metered, an invoice line, an invoice item). quantity_of stops the recompute on it. Found by the typed
-- columns first, then only those rows' JSON is read (none, on any account Stripe bills: a metered item has no
-- quantity, and a line or invoice item without one has a fractional quantity_decimal).
CREATE OR REPLACE TEMP TABLE derived_quantity_check AS
SELECT quantity_of(json_extract_string(raw, '$.quantity'), 'subscription item ' || id) AS quantity
FROM subscription_items
WHERE rowid IN (SELECT si.rowid FROM subscription_items si
                LEFT JOIN prices p ON p.account_id = si.account_id AND p.id = si.price_id
                WHERE si.quantity IS NULL AND NOT coalesce(si.deleted, false)
                  AND p.usage_type IS DISTINCT FROM 'metered')
UNION ALL
SELECT quantity_of(json_extract_string(raw, '$.quantity'), 'invoice line ' || id || ' of invoice ' || invoice_id)
FROM invoice_lines
WHERE rowid IN (SELECT rowid FROM invoice_lines WHERE quantity IS NULL AND NOT coalesce(deleted, false))
UNION ALL
SELECT quantity_of(json_extract_string(raw, '$.quantity'), 'invoice item ' || id)
FROM invoice_items
WHERE rowid IN (SELECT rowid FROM invoice_items WHERE quantity IS NULL AND NOT coalesce(deleted, false));

-- Items as they appear in each observed subscription state: an event's state lists them (typed in
-- derived_sub_events); a snapshot's are the subscription_items rows seen in the same sync (the same list, cut
-- short or not, as typed columns).
CREATE OR REPLACE TEMP TABLE derived_obs_items AS
WITH embedded AS (
    SELECT o.account_id, o.subscription_id, o.moment, o.source, o.event_id, o.ord, u.it
    FROM (SELECT * FROM derived_sub_obs WHERE source <> 'snapshot') o,
         unnest(o.items) AS u(it)
),
listed AS (
    SELECT o.account_id, o.subscription_id, o.moment, o.source, o.event_id, o.ord, si.id AS subscription_item_id,
           si.price_id, si.quantity, si.created AS item_created
    FROM derived_sub_obs o
    JOIN subscriptions s ON s.account_id = o.account_id AND s.id = o.subscription_id
    JOIN subscription_items si
      ON si.account_id = o.account_id AND si.subscription_id = o.subscription_id
     AND NOT coalesce(si.deleted, false) AND si.last_seen_at >= s.last_seen_at - INTERVAL 1 HOUR
    WHERE o.source = 'snapshot'
)
SELECT account_id, subscription_id, moment, source, event_id, ord,
       it.id AS subscription_item_id,
       it.price_id,
       quantity_of(it.quantity_text, 'subscription item ' || it.id || ' (in event ' || event_id || ')') AS quantity,
       ts_of(it.created) AS item_created
FROM embedded
UNION ALL
SELECT * FROM listed;

-- Every item known per subscription, from any source.
CREATE OR REPLACE TEMP TABLE derived_items_known AS
SELECT account_id, subscription_id, subscription_item_id, bool_or(in_obs) AS in_obs
FROM (
    SELECT account_id, subscription_id, subscription_item_id, true AS in_obs FROM derived_obs_items
    UNION ALL
    SELECT account_id, subscription_id, subscription_item_id, false FROM derived_invoice_lines
    WHERE subscription_item_id IS NOT NULL AND subscription_id IS NOT NULL
    UNION ALL
    SELECT account_id, subscription_id, subscription_item_id, false FROM derived_pending_lines
)
GROUP BY ALL;

-- Steps: from `moment` on, the item is (present, price, quantity) until its next step. `prio` breaks ties at
-- the same moment (observations over invoices; a later invoice over an earlier one; present over absent). It
-- is a whole number from 0 to below 1e16: 90 packs (moment, prio) into one key. (The absent steps of a positive
-- prio are the removals; 90 compares them with the events.)
-- (`source` 'invoice_item': a pending proration item, named in source_invoice_id until it is invoiced)
CREATE OR REPLACE TEMP TABLE derived_invoice_item_steps AS
WITH billed AS (
    SELECT account_id, subscription_id, subscription_item_id, period_start, price_id, quantity, invoice_id,
           invoice_created, is_credit, proration, 'invoice' AS source
    FROM derived_invoice_lines
    WHERE subscription_item_id IS NOT NULL
    UNION ALL
    SELECT account_id, subscription_id, subscription_item_id, period_start, price_id, quantity, invoice_id,
           invoice_created, is_credit, true, 'invoice_item'
    FROM derived_pending_lines
),
line_steps AS (
    SELECT account_id, subscription_id, subscription_item_id, period_start AS moment, true AS present,
           price_id, quantity, source, NULL AS source_event_id, invoice_id AS source_invoice_id,
           epoch(invoice_created) * 10 + 2 AS prio
    FROM billed
    WHERE NOT is_credit
),
removals AS (
    -- a credit for unused time with no new line for the same item then (within 5 minutes: Stripe may date the
    -- new line's proration a little apart from the credit's): the item was removed
    SELECT c.account_id, c.subscription_id, c.subscription_item_id, c.period_start AS moment, false AS present,
           NULL AS price_id, NULL AS quantity, c.source, NULL AS source_event_id,
           c.invoice_id AS source_invoice_id, epoch(c.invoice_created) * 10 + 1 AS prio
    FROM billed c
    WHERE c.is_credit AND c.proration
      AND NOT EXISTS (SELECT 1 FROM billed d
                      WHERE d.account_id = c.account_id AND d.subscription_item_id = c.subscription_item_id
                        AND NOT d.is_credit
                        AND d.period_start BETWEEN c.period_start - INTERVAL 5 MINUTE
                                               AND c.period_start + INTERVAL 5 MINUTE)
),
-- The state a credit for unused time takes back, where it and a new line of the same item (within 5 minutes, as
-- above) are the item's first lines and the item was made before them: an item added without prorations and
-- changed with them before its first renewal. Its state from its `created` to that change is the credited one,
-- which no other line gives. Dated at the new line, one below it (`prio` ending in 0 where the new line's ends in
-- 2), so never kept there: made_before_billed repeats it at `created`.
credits AS (
    SELECT * FROM billed WHERE is_credit AND proration
),
-- (the first line of each credited item that is no credit: grouped over those items' lines alone)
first_billed AS (
    SELECT b.account_id, b.subscription_item_id, min(b.period_start) AS moment,
           arg_min(b.invoice_created, (b.period_start, b.invoice_created)) AS created
    FROM billed b
    SEMI JOIN credits c ON c.account_id = b.account_id AND c.subscription_item_id = b.subscription_item_id
    WHERE NOT b.is_credit
    GROUP BY ALL
),
credited_first AS (
    SELECT c.account_id, c.subscription_id, c.subscription_item_id, f.moment, true AS present, c.price_id,
           c.quantity, c.source, NULL AS source_event_id, c.invoice_id AS source_invoice_id,
           epoch(c.invoice_created) * 10 AS prio
    FROM credits c
    JOIN first_billed f
      ON f.account_id = c.account_id AND f.subscription_item_id = c.subscription_item_id
     AND c.period_start BETWEEN f.moment - INTERVAL 5 MINUTE AND f.moment + INTERVAL 5 MINUTE
     AND f.created >= c.invoice_created
    JOIN subscription_items si
      ON si.account_id = c.account_id AND si.id = c.subscription_item_id AND si.created < c.period_start
),
last_billed AS (
    -- the last billed period of each item never seen in a subscription state
    SELECT l.account_id, l.subscription_id, l.subscription_item_id, max(l.period_end) AS period_end,
           arg_max(l.invoice_id, l.period_end) AS invoice_id, arg_max(l.invoice_created, l.period_end) AS created,
           arg_max(p.usage_type, l.period_end) = 'metered' AS metered
    FROM derived_invoice_lines l
    JOIN derived_items_known k USING (account_id, subscription_id, subscription_item_id)
    LEFT JOIN derived_price_terms p ON p.account_id = l.account_id AND p.price_id = l.price_id
    WHERE NOT k.in_obs AND NOT l.is_credit
    GROUP BY ALL
),
-- (a metered item's: the subscription's next renewal or first invoice made after it)
next_billed AS (
    SELECT b.account_id, b.subscription_item_id, min(n.invoice_created) AS created
    FROM last_billed b
    JOIN derived_invoice_lines n
      ON n.account_id = b.account_id AND n.subscription_id = b.subscription_id AND n.invoice_created > b.created
     AND NOT n.proration
    WHERE b.metered
    GROUP BY ALL
),
-- (a metered one's with no next invoice, its subscription not ended: when a sync first saw the subscription
-- without it, in Stripe's clock, which later syncs seeing the same do not move. The item's own row, found gone
-- (the sync lists a subscription's items whole and flags those it no longer has), says it even when the
-- subscription's JSON did not change, its embedded list cut short before the item. Without a row for it, every
-- state of the subscription stored lacked it: when its current state was first seen; so too when that is after
-- the row was last seen present (a row not flagged, as when the list was not known whole). Else when the latest
-- sync saw the subscription, as the last resort.)
gone_seen AS (
    SELECT b.account_id, b.subscription_id, b.subscription_item_id,
           CASE WHEN coalesce(si.deleted, false)
                THEN least(state_seen_in_stripes_clock(si.state_seen_at, si.last_seen_at, si.version, c.snapshot_at),
                           s.seen_at)
                WHEN si.id IS NULL
                  OR s.state_seen_at > seen_in_stripes_clock(si.last_seen_at, si.version, c.snapshot_at)
                THEN s.state_seen_at
                ELSE s.seen_at END AS moment
    FROM last_billed b
    JOIN derived_subs s USING (account_id, subscription_id)
    LEFT JOIN derived_coverage c ON c.account_id = b.account_id
    LEFT JOIN subscription_items si ON si.account_id = b.account_id AND si.id = b.subscription_item_id
    WHERE b.metered AND s.ended_at IS NULL
),
ends AS (
    -- such an item ends when its last billed period ends; a metered one, billed in arrears (its last period
    -- ends when the invoice that bills it is made, and that usage counts from then), when the subscription's
    -- next invoice no longer bills it, else when the subscription ended, else when a sync first saw it gone
    SELECT b.account_id, b.subscription_id, b.subscription_item_id,
           CASE WHEN b.metered THEN greatest(b.period_end, coalesce(x.created, s.ended_at, g.moment))
                ELSE b.period_end END AS moment, false AS present,
           NULL AS price_id, NULL AS quantity, 'invoice' AS source, NULL AS source_event_id,
           b.invoice_id AS source_invoice_id, 0 AS prio
    FROM last_billed b
    LEFT JOIN next_billed x USING (account_id, subscription_item_id)
    LEFT JOIN derived_subs s USING (account_id, subscription_id)
    LEFT JOIN gone_seen g USING (account_id, subscription_id, subscription_item_id)
)
SELECT * FROM line_steps UNION ALL SELECT * FROM removals UNION ALL SELECT * FROM ends
UNION ALL SELECT * FROM credited_first;

-- Steps observed in subscription states (events, snapshot) inside coverage: each known item of the
-- subscription, present with its price and quantity when listed, absent when a complete list leaves it out.
CREATE OR REPLACE TEMP TABLE derived_obs_item_steps AS
SELECT o.account_id, o.subscription_id, k.subscription_item_id, o.moment,
       i.subscription_item_id IS NOT NULL AS present, i.price_id, i.quantity, o.source,
       o.event_id AS source_event_id, NULL AS source_invoice_id,
       CAST(1e15 AS BIGINT) + o.ord AS prio
FROM (SELECT DISTINCT account_id, subscription_id, moment, source, event_id, ord, items_complete
      FROM derived_sub_obs) o
JOIN derived_items_known k USING (account_id, subscription_id)
LEFT JOIN derived_obs_items i
    ON i.account_id = o.account_id AND i.subscription_id = o.subscription_id AND i.moment = o.moment
   AND i.ord = o.ord AND i.subscription_item_id = k.subscription_item_id
WHERE i.subscription_item_id IS NOT NULL OR o.items_complete
UNION ALL
-- An item created inside coverage but first listed later, the states between cutting their list short
-- (has_more): present, as first listed, from the first such state at or after its creation (the event that
-- added it), below every observation and invoice at the same moment (the invoice that bills the item from then
-- says its price and quantity then; the first listing may come after a change).
SELECT f.account_id, f.subscription_id, f.subscription_item_id, min(o.moment) AS moment, true AS present,
       any_value(f.price_id) AS price_id, any_value(f.quantity) AS quantity,
       arg_min(o.source, (o.moment, o.ord)) AS source, arg_min(o.event_id, (o.moment, o.ord)) AS source_event_id,
       NULL AS source_invoice_id, 1 AS prio
FROM (SELECT i.account_id, i.subscription_id, i.subscription_item_id, min(i.item_created) AS created,
             min(i.moment) AS first_listed, arg_min(i.price_id, (i.moment, i.ord)) AS price_id,
             arg_min(i.quantity, (i.moment, i.ord)) AS quantity
      FROM derived_obs_items i
      JOIN derived_coverage c USING (account_id)
      -- (only subscriptions with a cut-short state: few have more than 10 items)
      SEMI JOIN (SELECT DISTINCT account_id, subscription_id FROM derived_sub_obs WHERE NOT items_complete) cut
          ON cut.account_id = i.account_id AND cut.subscription_id = i.subscription_id
      GROUP BY i.account_id, i.subscription_id, i.subscription_item_id
      HAVING min(i.item_created) >= any_value(c.coverage_start) AND min(i.item_created) < min(i.moment)) f
JOIN derived_sub_obs o
  ON o.account_id = f.account_id AND o.subscription_id = f.subscription_id AND NOT o.items_complete
 AND o.moment >= f.created AND o.moment < f.first_listed
GROUP BY f.account_id, f.subscription_id, f.subscription_item_id;

-- The stored events older than coverage (kept from before a gap in them: a sync after more than Stripe's 30 days
-- away lists only the events it still keeps, and coverage starts after the gap). Between the gaps they are as
-- complete as inside coverage, and where they overlap the invoices events win (design.md 3): an item changed,
-- added or removed without prorations is dated by its event instead of the renewal that bills it. Only their item
-- lists are read (statuses before coverage stay reconstructed: the gaps would hide the events of their changes).
-- A deletion's state (its items are listed, yet it ends them) and an ended subscription's are left to the
-- invoices. (70 names them as the events behind a change.)
CREATE OR REPLACE TEMP TABLE derived_early_sub_events AS
SELECT e.account_id, e.object_id AS subscription_id, e.created AS moment, e.id AS event_id,
       -- (in the order they happened: several in one second as step 20 ordered them)
       row_number() OVER (PARTITION BY e.account_id, e.object_id ORDER BY e.created, o.pos, e.id) AS seq,
       NOT coalesce(TRY_CAST(e.sub_state.has_more AS BOOLEAN), false) AS items_complete, e.sub_state.items AS items
FROM events e
JOIN derived_coverage c USING (account_id)
LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
WHERE e.type LIKE 'customer.subscription.%' AND e.type <> 'customer.subscription.deleted'
  AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false) AND e.created < c.coverage_start
  AND e.sub_state.status NOT IN ('canceled', 'incomplete_expired');

-- Their steps, mixed with the invoice steps before coverage (which alone speak for the gaps): each item a state
-- lists, and every other known item of the subscription absent when the list is complete. Below every step of
-- coverage (prio 1e14 + their order) and above every invoice step at the same moment.
-- (whether an observed step is one of theirs, by its prio)
CREATE OR REPLACE MACRO early_step(prio) AS prio < 1e15;
INSERT INTO derived_obs_item_steps
WITH listed AS (
    SELECT o.account_id, o.subscription_id, o.seq, u.it.id AS subscription_item_id, u.it.price_id,
           quantity_of(u.it.quantity_text, 'subscription item ' || u.it.id || ' (in event ' || o.event_id || ')')
               AS quantity
    FROM derived_early_sub_events o, unnest(o.items) AS u(it)
),
known AS (
    SELECT account_id, subscription_id, subscription_item_id FROM derived_items_known
    UNION
    SELECT account_id, subscription_id, subscription_item_id FROM listed
)
SELECT o.account_id, o.subscription_id, k.subscription_item_id, o.moment,
       i.subscription_item_id IS NOT NULL AS present, i.price_id, i.quantity, 'event' AS source,
       o.event_id AS source_event_id, NULL AS source_invoice_id, CAST(1e14 AS BIGINT) + o.seq AS prio
FROM derived_early_sub_events o
JOIN known k USING (account_id, subscription_id)
LEFT JOIN listed i
    ON i.account_id = o.account_id AND i.subscription_id = o.subscription_id AND i.seq = o.seq
   AND i.subscription_item_id = k.subscription_item_id
WHERE i.subscription_item_id IS NOT NULL OR o.items_complete;

-- An integer key per item (account, item id; a NULL id is one item per account, as a window partition
-- sees it): the windows below sort on it instead of the id strings. Valid within one run only. With the item's
-- `created` when the store has the item.
CREATE OR REPLACE TEMP TABLE derived_item_keys AS
SELECT u.account_id, u.subscription_item_id, CAST(row_number() OVER () AS INTEGER) AS ik, si.created
FROM (SELECT DISTINCT account_id, subscription_item_id
      FROM (SELECT account_id, subscription_item_id FROM derived_items_known
            UNION ALL
            -- (an item that only the events before coverage list)
            SELECT account_id, subscription_item_id FROM derived_obs_item_steps WHERE early_step(prio)
            UNION ALL
            -- (a line without a subscription is no known item, but its steps still count)
            SELECT account_id, subscription_item_id FROM derived_invoice_lines
            WHERE subscription_item_id IS NOT NULL AND subscription_id IS NULL)) u
LEFT JOIN subscription_items si ON si.account_id = u.account_id AND si.id = u.subscription_item_id;

-- Item history: one row per item and interval of constant (price, quantity); absent intervals dropped.
-- Steps are the invoice steps before coverage (and those of items a cut-short list leaves out) plus the
-- observed ones. The windows run on the item key and the compared values only (a window sorts every column
-- it carries): the step kept per item and moment (highest prio), then the changes; the kept steps are joined
-- back to their source table by rowid.
CREATE OR REPLACE TABLE derived_item_history AS
WITH -- items an event state leaves out of a cut-short list: their invoices stay evidence inside coverage
unlisted AS (
    SELECT DISTINCT k.account_id, k.subscription_item_id
    FROM derived_sub_obs o
    JOIN derived_items_known k USING (account_id, subscription_id)
    WHERE NOT o.items_complete
      AND NOT EXISTS (SELECT 1 FROM derived_obs_items i
                      WHERE i.account_id = o.account_id AND i.subscription_id = o.subscription_id
                        AND i.moment = o.moment AND i.ord = o.ord AND i.subscription_item_id = k.subscription_item_id)
),
steps AS (
    SELECT 0 AS src, s.rowid AS rid, s.account_id, s.subscription_item_id, s.moment, s.prio, s.present,
           s.price_id, s.quantity
    FROM derived_invoice_item_steps s
    JOIN derived_coverage c USING (account_id)
    WHERE s.moment < c.coverage_start
       OR (s.account_id, s.subscription_item_id) IN (SELECT (account_id, subscription_item_id) FROM unlisted)
    UNION ALL
    SELECT 1, rowid, account_id, subscription_item_id, moment, prio, present, price_id, quantity
    FROM derived_obs_item_steps
),
keyed AS (
    -- (a metered item added mid-period without proration: its first usage line dates from the period's start,
    -- before the item was made; it is there from its `created`, as the events show)
    SELECT k.ik, st.src, st.rid,
           CASE WHEN st.src = 0 AND st.present AND p.usage_type = 'metered' AND k.created > st.moment
                THEN k.created ELSE st.moment END AS moment,
           st.prio,
           -- (a price by its row in derived_price_terms, one per price; by its id only when it has none: an
           -- integer sorts and compares cheaper than the id)
           {'present': st.present, 'pk': p.rowid, 'px': CASE WHEN p.rowid IS NULL THEN st.price_id END,
            'quantity': CASE WHEN p.usage_type = 'metered' THEN NULL ELSE st.quantity END} AS v
    FROM steps st
    JOIN derived_item_keys k
      ON k.account_id = st.account_id AND k.subscription_item_id IS NOT DISTINCT FROM st.subscription_item_id
    LEFT JOIN derived_price_terms p ON p.account_id = st.account_id AND p.price_id = st.price_id
),
-- A licensed item added without prorations before the events begin: no line bills it until the next renewal, but
-- it is there from its `created` (design.md 4), so its first step (that renewal's line) is repeated at `created`,
-- as billed first (the step at the renewal then changes nothing). Only its first: a later change in place (same
-- item, another price or quantity) is still dated by the line that bills it. Where that first line is a change
-- made with prorations before the renewal, the state repeated is the one its credit takes back
-- (`credited_first`, the step whose prio ends in 0). (`billed`: the first line.)
made_before_billed AS (
    SELECT f.ik, f.src, f.rid, b.created AS moment, f.prio, f.v, b.moment AS billed
    FROM (SELECT b.ik, b.moment, k.created
          FROM (SELECT ik, min(moment) AS moment FROM keyed WHERE src = 0 AND v.present GROUP BY ik) b
          JOIN derived_item_keys k USING (ik)
          JOIN derived_coverage c USING (account_id)
          WHERE k.created < b.moment AND b.moment < c.coverage_start) b
    JOIN keyed f ON f.ik = b.ik AND f.moment = b.moment AND f.src = 0 AND f.v.present
    LEFT JOIN derived_price_terms p ON p.rowid = f.v.pk
    WHERE p.usage_type IS DISTINCT FROM 'metered'
    QUALIFY row_number() OVER (PARTITION BY f.ik ORDER BY f.prio % 10 = 0 DESC, f.prio DESC, f.rid DESC) = 1
),
-- An item of the same subscription whose last billed period ends where such an item's billing takes over, with
-- nothing dating its removal (no credit: deleted without prorations too), ends where the first such addition after
-- its last step begins: one update, as a plan switch is (else the two would count together until the renewal).
-- (Its end is repeated there.) Taking over: the new item's first line begins there (the renewal that bills it
-- and no longer the other), or begins a new period before there on an invoice that does not bill the other (a
-- trial granted by an update), or, when that first line is a change made with prorations before the renewal (a
-- quantity, or an interval switch that moves the renewal), a line of it begins or ends there.
replaced_before_billed AS (
    WITH ended AS (
        SELECT e.ik, e.src, e.rid, e.prio, e.v, m.moment AS added
        FROM made_before_billed m
        JOIN derived_invoice_item_steps ms ON ms.rowid = m.rid
        JOIN derived_invoice_item_steps es
          ON es.account_id = ms.account_id AND es.subscription_id = ms.subscription_id AND es.moment >= m.billed
         AND es.prio = 0 AND NOT es.present
        JOIN keyed e ON e.src = 0 AND e.rid = es.rowid
        WHERE es.moment = m.billed
           -- (a new period of the subscription begun before that end, whose invoice bills the new item and not
           -- the old one: a trial granted by an update, its lines 0.00 from then)
           OR (m.billed < es.moment
               AND EXISTS (SELECT 1 FROM derived_invoice_lines l
                           WHERE l.account_id = ms.account_id AND l.subscription_item_id = ms.subscription_item_id
                             AND l.period_start = m.billed AND NOT l.proration AND NOT l.is_credit
                             AND NOT EXISTS (SELECT 1 FROM derived_invoice_lines o
                                             WHERE o.account_id = l.account_id AND o.invoice_id = l.invoice_id
                                               AND o.subscription_item_id = es.subscription_item_id)))
           OR EXISTS (SELECT 1 FROM derived_invoice_lines l
                      WHERE l.account_id = ms.account_id AND l.subscription_item_id = ms.subscription_item_id
                        AND (l.period_start = es.moment OR l.period_end = es.moment))
           OR EXISTS (SELECT 1 FROM derived_pending_lines l
                      WHERE l.account_id = ms.account_id AND l.subscription_item_id = ms.subscription_item_id
                        AND (l.period_start = es.moment OR l.period_end = es.moment))
    ),
    last_step AS (
        -- (the ended item's last step before its end, and its price then)
        SELECT o.ik, max(o.moment) AS moment, arg_max(o.v.pk, o.moment) AS pk
        FROM keyed o SEMI JOIN ended USING (ik)
        WHERE o.src = 0 AND o.prio > 0
        GROUP BY o.ik
    )
    SELECT e.ik, e.src, e.rid, min(e.added) AS moment, e.prio, e.v
    FROM ended e
    JOIN last_step l USING (ik)
    LEFT JOIN derived_price_terms p ON p.rowid = l.pk
    WHERE e.added > l.moment AND p.usage_type IS DISTINCT FROM 'metered'
    GROUP BY e.ik, e.src, e.rid, e.prio, e.v
),
-- The same item whose first line comes after the events begin (or none yet, as on an annual plan): its first
-- step is the first state they give, which lists it (the first event's state before, or the snapshot). It was
-- made before them (its `created`, never before the subscription's start), so that step is repeated then: as the
-- line that first bills it when that line bills what the state lists (it names the change's invoice), else as
-- the state's own step. (`seen_src`, `seen_rid`: that state's step.)
made_before_covered AS (
    WITH first AS (
        -- (the step kept at the item's first moment, for an item made before the events and first seen inside)
        SELECT f.ik, f.src, f.rid, f.prio, f.v, b.created
        FROM (SELECT b.ik, b.moment, k.created
              FROM (SELECT ik, min(moment) AS moment FROM keyed WHERE NOT (src = 1 AND early_step(prio)) GROUP BY ik) b
              JOIN derived_item_keys k USING (ik)
              JOIN derived_coverage c USING (account_id)
              WHERE k.created < c.coverage_start AND c.coverage_start <= b.moment) b
        JOIN keyed f ON f.ik = b.ik AND f.moment = b.moment
        QUALIFY row_number() OVER (PARTITION BY f.ik ORDER BY f.prio DESC, f.src DESC, f.rid DESC) = 1
    ),
    made AS (
        -- (present and licensed there, and made before the events from the subscription's start on)
        SELECT f.*, greatest(f.created, s.start_date) AS made, st.account_id, st.subscription_item_id
        FROM first f
        JOIN (SELECT 1 AS src, rowid AS rid, account_id, subscription_id, subscription_item_id
              FROM derived_obs_item_steps
              UNION ALL
              SELECT 0, rowid, account_id, subscription_id, subscription_item_id
              FROM derived_invoice_item_steps) st USING (src, rid)
        JOIN derived_coverage c ON c.account_id = st.account_id
        LEFT JOIN derived_subs s ON s.account_id = st.account_id AND s.subscription_id = st.subscription_id
        LEFT JOIN derived_price_terms p ON p.rowid = f.v.pk
        WHERE f.v.present AND p.usage_type IS DISTINCT FROM 'metered'
          AND greatest(f.created, s.start_date) < c.coverage_start
          -- (not when the events before coverage saw it added: they date it)
          AND NOT EXISTS (SELECT 1 FROM derived_obs_item_steps a
                          JOIN derived_obs_item_steps b
                            ON b.account_id = a.account_id AND b.subscription_item_id = a.subscription_item_id
                           AND early_step(b.prio) AND b.present AND b.moment > a.moment
                          WHERE a.account_id = st.account_id AND a.subscription_item_id = st.subscription_item_id
                            AND early_step(a.prio) AND NOT a.present)
    ),
    billing AS (
        -- (the first line that bills it)
        SELECT m.ik, arg_min(i.rowid, (i.moment, -i.prio)) AS rid, arg_min(i.prio, (i.moment, -i.prio)) AS prio,
               arg_min(i.price_id, (i.moment, -i.prio)) AS price_id,
               arg_min(i.quantity, (i.moment, -i.prio)) AS quantity
        FROM made m
        JOIN derived_invoice_item_steps i
          ON i.account_id = m.account_id AND i.subscription_item_id = m.subscription_item_id AND i.present
        GROUP BY m.ik
    )
    SELECT ik, CASE WHEN agrees THEN 0 ELSE src END AS src, CASE WHEN agrees THEN b_rid ELSE rid END AS rid,
           made AS moment, CASE WHEN agrees THEN b_prio ELSE prio END AS prio, v, src AS seen_src, rid AS seen_rid
    FROM (SELECT m.ik, m.src, m.rid, m.prio, m.v, m.made, b.rid AS b_rid, b.prio AS b_prio,
                 b.rid IS NOT NULL AND p.rowid IS NOT DISTINCT FROM m.v.pk
                 AND (p.rowid IS NOT NULL OR b.price_id IS NOT DISTINCT FROM m.v.px)
                 AND b.quantity IS NOT DISTINCT FROM m.v.quantity AS agrees
          FROM made m
          LEFT JOIN billing b USING (ik)
          LEFT JOIN derived_price_terms p ON p.account_id = m.account_id AND p.price_id = b.price_id)
),
-- An item of the same subscription that this first state no longer lists, where the state before it (the lines
-- before the events) still has it, with nothing dating its removal (no credit): as above, it ends where the
-- first such addition after its last step begins. (Its absence in that state is repeated there.) So too for an
-- item made before the events whose first line is before them as well (made_before_billed) where the old item's
-- last billed period ends inside coverage (replaced_before_billed reads only the steps before it): a change made
-- with prorations before the renewal that would first bill it, that renewal after the events begin (`late`).
replaced_before_covered AS (
    WITH seen AS (
        SELECT ik, moment, seen_rid, false AS late FROM made_before_covered WHERE seen_src = 1
        UNION ALL
        -- (the first state the events give that lists it)
        SELECT m.ik, m.moment, arg_min(o.rid, (o.moment, o.prio)), true
        FROM made_before_billed m
        JOIN keyed o ON o.ik = m.ik AND o.src = 1 AND NOT early_step(o.prio)
        GROUP BY m.ik, m.moment
    ),
    ended AS (
        SELECT e.ik, e.src, e.rid, e.moment, e.prio, e.v, m.moment AS added
        FROM seen m
        JOIN derived_obs_item_steps ms ON ms.rowid = m.seen_rid
        JOIN derived_obs_item_steps es
          ON es.account_id = ms.account_id AND es.subscription_id = ms.subscription_id AND es.moment = ms.moment
         AND es.prio = ms.prio AND NOT es.present
        JOIN keyed e ON e.src = 1 AND e.rid = es.rowid
        WHERE NOT (m.late AND e.ik IN (SELECT ik FROM replaced_before_billed))
    ),
    last_step AS (
        -- (the ended item's last step before that state, and its price then; not the end of its last billed
        -- period, `ends`, which says nothing of when it was deleted: its subscription may have ended before)
        SELECT o.ik, max(o.moment) AS moment, arg_max(o.v, (o.moment, o.prio, o.src, o.rid)) AS v
        -- (nor a state of the events stored before a gap that leaves it out: when the switch came before them, all
        -- of them do; one that lists it after the switch still counts, and then the switch is not this one)
        FROM keyed o JOIN (SELECT DISTINCT ik, moment FROM ended) e ON e.ik = o.ik AND o.moment < e.moment
        WHERE (o.src = 1 OR o.prio > 0) AND NOT (o.src = 1 AND early_step(o.prio) AND NOT o.v.present)
        GROUP BY o.ik
    )
    SELECT e.ik, e.src, e.rid, min(e.added) AS moment, e.prio, e.v
    FROM ended e
    JOIN last_step l USING (ik)
    LEFT JOIN derived_price_terms p ON p.rowid = l.v.pk
    WHERE e.added > l.moment AND l.v.present AND p.usage_type IS DISTINCT FROM 'metered'
    GROUP BY e.ik, e.src, e.rid, e.prio, e.v
),
stepped AS (
    SELECT * FROM keyed
    UNION ALL
    SELECT * EXCLUDE (billed) FROM made_before_billed
    UNION ALL
    SELECT * FROM replaced_before_billed
    UNION ALL
    SELECT * EXCLUDE (seen_src, seen_rid) FROM made_before_covered
    UNION ALL
    SELECT * FROM replaced_before_covered
),
one AS (
    -- (the last step by (prio, src, rid) per moment; a step without a moment has no place)
    SELECT * FROM stepped WHERE moment IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY ik, moment ORDER BY prio DESC NULLS FIRST, src DESC NULLS FIRST,
                                                                rid DESC NULLS FIRST) = 1
),
marked AS (
    SELECT src, rid, ik, moment,
           -- (an item's first step is kept unless every value is NULL)
           CASE WHEN lag(v) OVER w IS NULL THEN v.present IS NOT NULL OR v.pk IS NOT NULL OR v.px IS NOT NULL
                                                OR v.quantity IS NOT NULL
                ELSE lag(v) OVER w IS DISTINCT FROM v END AS changed
    FROM one
    WINDOW w AS (PARTITION BY ik ORDER BY moment)
),
kept_keys AS (
    SELECT src, rid, moment, lead(moment) OVER (PARTITION BY ik ORDER BY moment) AS valid_to
    FROM marked WHERE changed
),
kept AS (
    SELECT st.* REPLACE (kk.moment AS moment), kk.valid_to
    FROM derived_invoice_item_steps st
    JOIN kept_keys kk ON kk.src = 0 AND kk.rid = st.rowid
    UNION ALL
    SELECT st.* REPLACE (kk.moment AS moment), kk.valid_to
    FROM derived_obs_item_steps st
    JOIN kept_keys kk ON kk.src = 1 AND kk.rid = st.rowid
)
SELECT k.account_id, s.customer_id, k.subscription_id, k.subscription_item_id, k.price_id,
       CASE WHEN p.usage_type = 'metered' THEN NULL ELSE k.quantity END AS quantity,
       k.moment AS valid_from, k.valid_to, k.source, k.source_event_id, k.source_invoice_id
FROM kept k
LEFT JOIN derived_price_terms p ON p.account_id = k.account_id AND p.price_id = k.price_id
LEFT JOIN derived_subs s ON s.account_id = k.account_id AND s.subscription_id = k.subscription_id
WHERE k.present;
