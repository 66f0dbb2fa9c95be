-- The customer's items in state A (just before a transition) and state B (at its end), side by side per
-- subscription item, with the exchange rates that value them in the reporting currency.
-- Inputs: derived_transitions, derived_item_mrr, fx_rates, derived_settings.

-- Exchange rate per currency and UTC day (units of the reporting currency for one unit of `currency`; a
-- rate holds until the next dated row), one row per day from the currency's first rate through the later of
-- today and the data, so that lookups are plain equality joins. The reporting currency itself is 1.
CREATE OR REPLACE TABLE derived_fx_days AS
WITH steps AS (
    SELECT lower(currency) AS currency, date AS from_date, CAST(rate AS DECIMAL(18, 8)) AS rate,
           lead(date) OVER (PARTITION BY lower(currency) ORDER BY date) AS next_date
    FROM fx_rates
),
horizon AS (
    SELECT greatest(CAST(timezone('UTC', now()) AS DATE),
                    coalesce(CAST(timezone('UTC', (SELECT max(t_end) FROM derived_transitions)) AS DATE),
                             DATE '1970-01-01')) AS last_day
)
SELECT s.currency, CAST(g.day AS DATE) AS day, s.rate
FROM steps s, horizon h,
     generate_series(CAST(s.from_date AS TIMESTAMP),
                     CAST(coalesce(s.next_date - 1, h.last_day) AS TIMESTAMP), INTERVAL 1 DAY) AS g(day);

-- An item is present in a state while it counts (design.md 4): its subscription's status counts, it has
-- not churned (an unpaid subscription, or a cancellation under churn_recognition = 'canceled', churns while
-- its status may still read otherwise) and paused collection keeps MRR unless the setting drops it.
-- A present item may have zero MRR (a metered item before its first usage invoice), so later usage is a
-- change on that item, not a new item.
CREATE OR REPLACE TEMP TABLE derived_transition_items AS
WITH
cfg AS (SELECT lower(reporting_currency) AS rep, past_due_counts, pause_collection_keeps_mrr FROM derived_settings),
item_rows AS (
    SELECT i.*
    FROM derived_item_mrr i, cfg
    WHERE (i.status = 'active' OR (i.status = 'past_due' AND cfg.past_due_counts))
      AND i.churn_type IS NULL
      AND NOT (coalesce(i.pause_collection, false) AND NOT cfg.pause_collection_keeps_mrr)
),
side_a AS (
    SELECT t.tid, t.kind, t.account_id, t.customer_id, t.t_start, t.t_end, r.subscription_item_id,
           r.subscription_id, r.product_id, r.price_id, r.family, r.unit_kind, r.usage_type, r.quantity,
           r.currency, r.status, r.valid_from, r.mrr_original, r.mrr_undiscounted, r.discount_factor,
           r.discount_ids, r.source_event_id, r.source_invoice_id
    FROM derived_transitions t
    JOIN item_rows r ON r.account_id = t.account_id AND r.customer_id = t.customer_id
                    AND r.valid_from < t.t_start AND (r.valid_to IS NULL OR r.valid_to >= t.t_start)
),
side_b AS (
    SELECT t.tid, t.kind, t.account_id, t.customer_id, t.t_start, t.t_end, r.subscription_item_id,
           r.subscription_id, r.product_id, r.price_id, r.family, r.unit_kind, r.usage_type, r.quantity,
           r.currency, r.status, r.valid_from, r.mrr_original, r.mrr_undiscounted, r.discount_factor,
           r.discount_ids, r.source_event_id, r.source_invoice_id
    FROM derived_transitions t
    JOIN item_rows r ON r.account_id = t.account_id AND r.customer_id = t.customer_id
                    AND r.valid_from <= t.t_end AND (r.valid_to IS NULL OR r.valid_to > t.t_end)
),
joined AS (
    SELECT
        coalesce(a.tid, b.tid) AS tid,
        coalesce(a.kind, b.kind) AS kind,
        coalesce(a.account_id, b.account_id) AS account_id,
        coalesce(a.customer_id, b.customer_id) AS customer_id,
        coalesce(a.t_start, b.t_start) AS t_start,
        coalesce(a.subscription_item_id, b.subscription_item_id) AS subscription_item_id,
        a.subscription_item_id IS NOT NULL AS in_a,
        b.subscription_item_id IS NOT NULL AS in_b,
        a.subscription_id AS a_subscription_id, b.subscription_id AS b_subscription_id,
        a.product_id AS a_product_id, b.product_id AS b_product_id,
        a.price_id AS a_price_id, b.price_id AS b_price_id,
        a.family AS a_family, b.family AS b_family,
        a.unit_kind AS a_unit_kind, b.unit_kind AS b_unit_kind,
        a.usage_type AS a_usage_type, b.usage_type AS b_usage_type,
        a.quantity AS a_quantity, b.quantity AS b_quantity,
        a.currency AS a_currency, b.currency AS b_currency,
        a.mrr_original AS a_mrr, b.mrr_original AS b_mrr,
        a.mrr_undiscounted AS a_undisc, b.mrr_undiscounted AS b_undisc,
        a.discount_factor AS a_factor, b.discount_factor AS b_factor,
        a.discount_ids AS a_discount_ids, b.discount_ids AS b_discount_ids,
        b.source_event_id AS b_event_id, b.source_invoice_id AS b_invoice_id,
        b.valid_from AS b_valid_from,
        -- the day whose rate values state A (just before t_start) and state B (at t_end)
        CAST(timezone('UTC', coalesce(a.t_start, b.t_start) - INTERVAL 1 MICROSECOND) AS DATE) AS day_a,
        CAST(timezone('UTC', coalesce(a.t_end, b.t_end)) AS DATE) AS day_b
    FROM side_a a
    FULL JOIN side_b b
        ON a.tid = b.tid AND a.subscription_item_id = b.subscription_item_id
)
SELECT
    j.* EXCLUDE (day_a, day_b),
    CASE WHEN j.a_currency = cfg.rep THEN 1 ELSE ra.rate END AS a_rate_a,
    CASE WHEN j.b_currency = cfg.rep THEN 1 ELSE rba.rate END AS b_rate_a,
    CASE WHEN j.b_currency = cfg.rep THEN 1 ELSE rbb.rate END AS b_rate_b
FROM joined j
CROSS JOIN cfg
LEFT JOIN derived_fx_days ra ON ra.currency = j.a_currency AND ra.day = j.day_a
LEFT JOIN derived_fx_days rba ON rba.currency = j.b_currency AND rba.day = j.day_a
LEFT JOIN derived_fx_days rbb ON rbb.currency = j.b_currency AND rbb.day = j.day_b;
