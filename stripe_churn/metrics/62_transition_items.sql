-- The customer's items in state A (just before a transition) and state B (at its end), side by side per
-- subscription item, with the exchange rates that value them in the reporting currency.
-- Inputs: derived_transitions, derived_item_mrr, fx_rates, derived_settings; the macro utc_date (50).

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
-- One row per transition and item: the item's rows of derived_item_mrr in A and B by row id (`a_rid`,
-- `b_rid`; later steps read the other columns from there, for the few rows that need them) with what the
-- classifier compares on every row: MRR, currency, family and the rates. (Narrow rows: writing the items'
-- text columns here cost more than the joins.)
CREATE OR REPLACE TEMP TABLE derived_transition_items AS
WITH
cfg AS (SELECT lower(reporting_currency) AS rep, past_due_counts, pause_collection_keeps_mrr FROM derived_settings),
item_rows AS (
    SELECT i.rowid AS rid, i.account_id, i.customer_id, i.subscription_item_id, i.valid_from, i.valid_to,
           i.mrr_original, i.currency, i.family
    FROM derived_item_mrr i, cfg
    WHERE (i.status = 'active' OR (i.status = 'past_due' AND cfg.past_due_counts))
      AND i.churn_type IS NULL
      AND NOT (coalesce(i.pause_collection, false) AND NOT cfg.pause_collection_keeps_mrr)
),
-- the day whose rate values state A (just before t_start) and state B (at t_end), in UTC
tr AS (
    SELECT tid, kind, account_id, customer_id, t_start, t_end,
           -- (the macro utc_date, 50)
           utc_date(t_start - INTERVAL 1 MICROSECOND) AS day_a, utc_date(t_end) AS day_b
    FROM derived_transitions
),
side_a AS (
    SELECT t.tid, t.kind, t.day_a, t.day_b, r.subscription_item_id, r.rid, r.mrr_original, r.currency, r.family
    FROM tr t
    JOIN item_rows r ON r.account_id = t.account_id AND r.customer_id = t.customer_id
                    AND r.valid_from < t.t_start AND (r.valid_to IS NULL OR r.valid_to >= t.t_start)
),
side_b AS (
    SELECT t.tid, t.kind, t.day_a, t.day_b, r.subscription_item_id, r.rid, r.mrr_original, r.currency, r.family,
           -- the B row started inside the window (70 looks for the sources of a change there)
           r.valid_from >= t.t_start AS started
    FROM tr t
    JOIN item_rows r ON r.account_id = t.account_id AND r.customer_id = t.customer_id
                    AND r.valid_from <= t.t_end AND (r.valid_to IS NULL OR r.valid_to > t.t_end)
),
joined AS (
    SELECT coalesce(a.tid, b.tid) AS tid, coalesce(a.kind, b.kind) AS kind,
           coalesce(a.subscription_item_id, b.subscription_item_id) AS subscription_item_id,
           a.rid IS NOT NULL AS in_a, b.rid IS NOT NULL AS in_b, a.rid AS a_rid, b.rid AS b_rid,
           a.mrr_original AS a_mrr, b.mrr_original AS b_mrr,
           a.currency AS a_currency, b.currency AS b_currency,
           a.family AS a_family, b.family AS b_family,
           coalesce(b.started, false) AS b_started,
           coalesce(a.day_a, b.day_a) AS day_a, coalesce(a.day_b, b.day_b) AS day_b
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
