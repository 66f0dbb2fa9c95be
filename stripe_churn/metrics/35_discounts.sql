-- Discount spans (design.md 4): when each forever/repeating discount reduces MRR, its scope (an item, a
-- subscription, or all of a customer's subscriptions) and its coupon's terms. `once` discounts are kept
-- with applies_to_mrr = false so that they stay visible.

-- A coupon's terms, from its JSON (a listed coupon's, or the one a discount embeds).
CREATE OR REPLACE MACRO coupon_terms(cp) AS CASE WHEN cp IS NOT NULL THEN {
    'duration': json_extract_string(cp, '$.duration'),
    'duration_in_months': TRY_CAST(json_extract_string(cp, '$.duration_in_months') AS INTEGER),
    'percent_off': TRY_CAST(json_extract_string(cp, '$.percent_off') AS DECIMAL(12, 6)),
    'amount_off': TRY_CAST(json_extract_string(cp, '$.amount_off') AS BIGINT),
    'amount_off_currency': lower(json_extract_string(cp, '$.currency')),
    -- the amount off in other currencies (the coupon's currency_options, which the sync expands)
    'amount_off_options': CASE WHEN json_type(json_extract(cp, '$.currency_options')) = 'OBJECT' THEN
        -- (a key that is no currency code, a quote in it, is left out: it is pasted into the path)
        list_filter(list_transform(list_filter(json_keys(json_extract(cp, '$.currency_options')),
                                               lambda k: regexp_full_match(k, '[A-Za-z]{3}')),
                                   lambda k: {'currency': lower(k),
                                              'amount_off': TRY_CAST(json_extract_string(
                                                  cp, '$.currency_options."' || k || '".amount_off') AS BIGINT)}),
                    lambda o: o.amount_off IS NOT NULL)
    END,
    -- the products a restricted coupon applies to (its applies_to, which the sync expands; NULL: every item)
    'applies_to_products': CASE WHEN len(json_extract_string(cp, '$.applies_to.products[*]')) > 0
        THEN list_sort(json_extract_string(cp, '$.applies_to.products[*]')) END} END;

-- The terms of each coupon the store lists (kept: an incremental recompute compares them with the stored ones,
-- since a changed coupon concerns every customer with a discount from it).
CREATE OR REPLACE TABLE derived_coupon_terms AS
SELECT account_id, id AS coupon_id, coupon_terms(raw) AS terms FROM coupons
-- a deleted coupon's discounts keep running (Stripe stops only new redemptions): its last full copy, which the
-- store keeps in raw when the deletion comes as a stub, still gives their terms
WHERE NOT coalesce(deleted, false) OR json_extract_string(raw, '$.created') IS NOT NULL;

-- Whether the `discounts` of JSON object `obj` (an item, an invoice, an invoice line) name discount `discount_id`: ids, as
-- events send them, or objects, as an expanded listing does.
CREATE OR REPLACE MACRO names_discount(obj, discount_id) AS list_contains(coalesce(list_concat(
    json_extract_string(obj, '$.discounts[*].id'), json_extract_string(obj, '$.discounts[*]')), []), discount_id);

-- Whether a subscription's item list (JSON array `items`) shows item `item_id` with discount `discount_id`: true,
-- false, or NULL when the list says nothing of it (it leaves the item out, as a list cut short may, or the item has
-- no `discounts`).
CREATE OR REPLACE MACRO item_lists_discount(items, item_id, discount_id) AS list_transform(
    list_filter(CAST(json_extract(items, '$[*]') AS JSON[]), lambda i: json_extract_string(i, '$.id') = item_id),
    lambda i: CASE WHEN json_type(i, '$.discounts') = 'ARRAY' THEN names_discount(i, discount_id) END)[1];

-- Whether an item list (JSON array `items`) has item `item_id` at all (NULL: no list).
CREATE OR REPLACE MACRO item_listed(items, item_id) AS CASE WHEN json_type(items) = 'ARRAY' THEN
    list_contains(coalesce(json_extract_string(items, '$[*].id'), []), item_id) END;

CREATE OR REPLACE TABLE derived_discount_spans AS
WITH d AS (
    SELECT account_id, id AS discount_id, raw,
           -- (`source.coupon` since API version 2025-09-30; an event made in an older version, whose data keeps
           -- that version's shape, has the coupon object in `coupon`)
           ref_id(coalesce(json_extract(raw, '$.source.coupon'), json_extract(raw, '$.coupon'))) AS coupon_id,
           CASE WHEN json_type(json_extract(raw, '$.source.coupon')) = 'OBJECT'
                THEN json_extract(raw, '$.source.coupon')
                WHEN json_type(json_extract(raw, '$.coupon')) = 'OBJECT'
                THEN json_extract(raw, '$.coupon') END AS embedded_coupon,
           ref_id(json_extract(raw, '$.subscription_item')) IS NULL AND ref_id(json_extract(raw, '$.subscription')) IS NULL
               AND (ref_id(json_extract(raw, '$.invoice')) IS NOT NULL
                    OR ref_id(json_extract(raw, '$.invoice_item')) IS NOT NULL) AS on_a_bill
    FROM discounts
    -- a discount no longer on its subscription or customer is flagged deleted: it still counts from its start
    -- until it ended (its end, a removal event, or as its owner's invoices show, below)
    WHERE json_extract_string(raw, '$.start') IS NOT NULL
),
-- A discount flagged deleted with no end of its own: when no event removed it (it went before the events
-- begin), its owner's invoices show when: it ends at the owner's first invoice after the last one that lists
-- it (as a change without prorations shows on the next invoice); with no such invoice, when a sync found it
-- gone. A discount on one item is billed on that item's lines, not among the invoice's discounts: its owner's
-- invoices are those billing the item (its non-proration lines), and a line lists it or not. (Only these
-- owners' invoices, and these items' lines, have their JSON read.)
unended AS (
    -- (found_gone_at: the sync that found it gone, in Stripe's clock; a later write of it, gone still, does not move it)
    SELECT d.account_id, d.id AS discount_id, d.subscription_id, d.customer_id, d.subscription_item_id,
           state_seen_in_stripes_clock(d.state_seen_at, d.last_seen_at, d.version, c.snapshot_at) AS found_gone_at
    FROM discounts d
    LEFT JOIN derived_coverage c USING (account_id)
    WHERE coalesce(deleted, false) AND json_extract_string(raw, '$.end') IS NULL
      AND json_extract_string(raw, '$.start') IS NOT NULL
),
owner_rows AS MATERIALIZED (
    -- (two equality joins on typed columns: a subscription's discount by its invoices, a customer's by the
    -- customer's; then only those invoices' JSON is read, by row id)
    SELECT u.account_id, u.discount_id, i.rowid AS rid
    FROM unended u
    JOIN invoices i ON i.account_id = u.account_id AND i.subscription_id = u.subscription_id
    WHERE u.subscription_item_id IS NULL
    UNION ALL
    SELECT u.account_id, u.discount_id, i.rowid
    FROM unended u
    JOIN invoices i ON i.account_id = u.account_id AND i.customer_id = u.customer_id
    WHERE u.subscription_id IS NULL AND u.subscription_item_id IS NULL
),
-- (an item's discount: the item's non-proration lines of its subscription's invoices, 30's derived_invoice_lines)
item_lines AS MATERIALIZED (
    SELECT u.account_id, u.discount_id, l.invoice_created AS created, l.rid
    FROM unended u
    JOIN derived_invoice_lines l ON l.account_id = u.account_id AND l.subscription_item_id = u.subscription_item_id
    WHERE NOT l.proration AND NOT l.is_credit AND l.invoice_created IS NOT NULL
),
owner_invoices AS (
    SELECT o.account_id, o.discount_id, i.created,
           names_discount(i.raw, o.discount_id) AS lists_it
    FROM owner_rows o
    JOIN (SELECT rowid AS rid, created, raw FROM invoices
          WHERE rowid IN (SELECT rid FROM owner_rows) AND NOT coalesce(deleted, false) AND created IS NOT NULL) i
      USING (rid)
    UNION ALL
    -- (one row per line: an invoice lists it when one of its lines for the item does)
    SELECT o.account_id, o.discount_id, o.created,
           names_discount(l.raw, o.discount_id) AS lists_it
    FROM item_lines o
    JOIN (SELECT rowid AS rid, raw FROM invoice_lines WHERE rowid IN (SELECT rid FROM item_lines)) l USING (rid)
),
gone AS (
    SELECT account_id, discount_id, coalesce(next_invoice, found_gone_at) AS gone_at,
           next_invoice IS NOT NULL AS by_invoice
    FROM (SELECT u.account_id, u.discount_id, u.found_gone_at,
                 min(o.created) FILTER (WHERE NOT o.lists_it AND o.created > l.last_listed) AS next_invoice
          FROM unended u
          LEFT JOIN (SELECT account_id, discount_id, max(created) AS last_listed FROM owner_invoices WHERE lists_it
                     GROUP BY ALL) l USING (account_id, discount_id)
          LEFT JOIN owner_invoices o USING (account_id, discount_id)
          GROUP BY u.account_id, u.discount_id, u.found_gone_at)
),
-- a discount that leaves a subscription state before its end was removed then (only events whose
-- previous_attributes list the discounts can remove one); the events stored before a gap in them too (events win
-- over the invoices that would date it otherwise)
removed AS (
    SELECT e.account_id, ref_id(x) AS discount_id, min(e.moment) AS removed_at,
           -- (the first in the subscription's event order: two events in one second pick the same one every run)
           arg_min(e.event_id, (e.moment, e.seq)) AS event_id
    FROM (SELECT account_id, moment, seq, event_id, before_discounts, after_discounts FROM derived_sub_events
          WHERE before_discounts IS NOT NULL
          UNION ALL
          -- (their order within one second as step 20 gave it)
          SELECT e.account_id, e.created, coalesce(o.pos, 0), e.id, e.sub_state.prev_discounts, e.sub_state.discounts
          FROM events e
          JOIN derived_coverage c USING (account_id)
          LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
          WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription'
            AND NOT coalesce(e.deleted, false) AND e.created < c.coverage_start
            AND e.sub_state.prev_discounts IS NOT NULL) e,
         unnest(CAST(json_extract(e.before_discounts, '$[*]') AS JSON[])) AS u(x)
    WHERE NOT list_contains(
        list_transform(CAST(coalesce(json_extract(e.after_discounts, '$[*]'), []) AS JSON[]), lambda y: ref_id(y)),
        ref_id(x))
    GROUP BY ALL
),
deleted_events AS (
    SELECT account_id, json_extract_string(raw, '$.data.object.id') AS discount_id, min(created) AS removed_at,
           arg_min(id, created) AS event_id
    FROM events
    WHERE type IN ('customer.discount.deleted')
    GROUP BY ALL
),
-- A discount on one item flagged deleted with no event of its own (Stripe's reference does not say that one is
-- sent for an item's discount): inside the events, its subscription's events show when it left the item. Each
-- event's item list (data.object's, and previous_attributes' when the items changed: the list just before it)
-- shows the item with it, without it, or says nothing (item_lists_discount). It went at the first event whose
-- list shows the item without it after the last that shows it there: the update that took it off. Or with its
-- item: at the first event whose complete list (not cut short, has_more) no longer has the item after the last
-- list that has it (item_listed), the update that deleted the item; the discount of an item cannot outlast it.
-- (Only these subscriptions' events have their JSON read: inside coverage, and those stored before a gap.)
item_owners AS (
    SELECT d.account_id, d.id AS discount_id, d.subscription_id, d.subscription_item_id
    FROM discounts d
    WHERE coalesce(d.deleted, false) AND d.subscription_item_id IS NOT NULL AND d.subscription_id IS NOT NULL
      AND json_extract_string(d.raw, '$.start') IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM deleted_events de WHERE de.account_id = d.account_id AND de.discount_id = d.id)
),
item_event_rows AS MATERIALIZED (
    SELECT o.account_id, o.discount_id, o.subscription_item_id, e.event_id, e.moment, e.seq, e.rid,
           NOT coalesce(e.after_has_more, false) AS after_complete
    FROM item_owners o
    JOIN (SELECT account_id, subscription_id, event_id, moment, seq, rid, after_has_more FROM derived_sub_events
          UNION ALL
          -- (and those stored before a gap in them, before every event of coverage in the order: seq below 0; in
          -- one second as step 20 ordered them)
          SELECT e.account_id, e.object_id, e.id, e.created,
                 row_number() OVER (PARTITION BY e.account_id, e.object_id ORDER BY e.created, o.pos, e.id)
                     - 1000000000,
                 e.rowid, TRY_CAST(e.sub_state.has_more AS BOOLEAN)
          FROM events e
          JOIN derived_coverage c USING (account_id)
          SEMI JOIN item_owners w ON w.account_id = e.account_id AND w.subscription_id = e.object_id
          LEFT JOIN derived_early_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
          WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription'
            AND NOT coalesce(e.deleted, false) AND e.created < c.coverage_start) e
      ON e.account_id = o.account_id AND e.subscription_id = o.subscription_id
),
item_event_lists AS (
    SELECT o.account_id, o.discount_id, o.event_id, o.moment, o.seq,
           item_lists_discount(json_extract(e.raw, '$.data.object.items.data'), o.subscription_item_id,
                               o.discount_id) AS after_lists,
           item_lists_discount(json_extract(e.raw, '$.data.previous_attributes.items.data'), o.subscription_item_id,
                               o.discount_id) AS before_lists,
           item_listed(json_extract(e.raw, '$.data.object.items.data'), o.subscription_item_id) AS after_has,
           item_listed(json_extract(e.raw, '$.data.previous_attributes.items.data'), o.subscription_item_id)
               AS before_has,
           o.after_complete
    FROM item_event_rows o
    JOIN (SELECT rowid AS rid, raw FROM events WHERE rowid IN (SELECT rid FROM item_event_rows)) e USING (rid)
),
item_removed AS (
    -- (the events in the subscription's order; the state just before an event comes before its state after)
    SELECT account_id, discount_id,
           arg_min(moment, seq) FILTER (WHERE went) AS removed_at,
           arg_min(event_id, seq) FILTER (WHERE went) AS event_id
    FROM (SELECT *, coalesce(NOT after_lists AND 2 * seq > last_listed, false)
                    OR coalesce(after_complete AND NOT after_has AND 2 * seq > last_had, false) AS went
          FROM (SELECT *, max(CASE WHEN after_lists THEN 2 * seq WHEN before_lists THEN 2 * seq - 1 END) OVER w
                              AS last_listed,
                       max(CASE WHEN after_has THEN 2 * seq WHEN before_has THEN 2 * seq - 1 END) OVER w AS last_had
                FROM item_event_lists
                WINDOW w AS (PARTITION BY account_id, discount_id)))
    GROUP BY ALL
)
SELECT
    d.account_id,
    d.discount_id,
    d.coupon_id,
    ref_id(json_extract(d.raw, '$.customer')) AS customer_id,
    ref_id(json_extract(d.raw, '$.subscription')) AS subscription_id,
    ref_id(json_extract(d.raw, '$.subscription_item')) AS subscription_item_id,
    CASE WHEN ref_id(json_extract(d.raw, '$.subscription_item')) IS NOT NULL THEN 'item'
         WHEN ref_id(json_extract(d.raw, '$.subscription')) IS NOT NULL THEN 'subscription'
         -- (applied to one invoice or one invoice item, as a customer's discount or a subscription's never is: a
         -- discount of that bill alone, no MRR's, whatever its coupon's duration)
         WHEN d.on_a_bill THEN 'invoice'
         ELSE 'customer' END AS scope,
    cp.duration,
    cp.percent_off,
    cp.amount_off,
    cp.amount_off_currency,
    cp.amount_off_options,
    cp.applies_to_products,
    ts_of(json_extract_string(d.raw, '$.start')) AS valid_from,
    CASE
        WHEN least(r.removed_at, de.removed_at, ir.removed_at) IS NOT NULL
             AND (json_extract_string(d.raw, '$.end') IS NULL
                  OR least(r.removed_at, de.removed_at, ir.removed_at) < ts_of(json_extract_string(d.raw, '$.end')))
            THEN least(r.removed_at, de.removed_at, ir.removed_at)
        WHEN json_extract_string(d.raw, '$.end') IS NOT NULL THEN ts_of(json_extract_string(d.raw, '$.end'))
        WHEN cp.duration = 'repeating'
            THEN least(ts_of(json_extract_string(d.raw, '$.start')) + to_months(cp.duration_in_months), g.gone_at)
        ELSE g.gone_at
    END AS valid_to,
    coalesce(r.event_id, de.event_id, ir.event_id) AS removal_event_id,
    -- how the end of a discount removed with no event was dated ('invoice' or 'sync'), for data quality
    CASE WHEN g.gone_at IS NOT NULL AND least(r.removed_at, de.removed_at, ir.removed_at) IS NULL
              AND json_extract_string(d.raw, '$.end') IS NULL
         THEN CASE WHEN g.by_invoice THEN 'invoice' ELSE 'sync' END END AS end_dated_by,
    cp.duration IN ('forever', 'repeating') AND NOT d.on_a_bill AS applies_to_mrr,
    cp IS NULL AS coupon_missing
FROM (
    SELECT d.*, coalesce(c.terms, coupon_terms(d.embedded_coupon)) AS cp
    FROM d LEFT JOIN derived_coupon_terms c ON c.account_id = d.account_id AND c.coupon_id = d.coupon_id
) d
LEFT JOIN removed r USING (account_id, discount_id)
LEFT JOIN deleted_events de USING (account_id, discount_id)
LEFT JOIN item_removed ir USING (account_id, discount_id)
LEFT JOIN gone g USING (account_id, discount_id);
