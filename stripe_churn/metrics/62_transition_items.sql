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
-- An item held through a change (the same row in A and B: the same MRR, currency and rate) gives no part; of those,
-- 64 reads only the largest (the transition's main item), one per family (whether the customer keeps the family of
-- an unpaired item), those whose rate moved (fx) and, in a gain or a loss, all (their count). So for a customer of
-- more than 32 rows a 'change' transition lists the rows with a boundary inside its window, the largest held row
-- of each currency and one held row per family of those, each found among the customer's first 32 rows by size
-- (per currency) and by how long they last (per family), `cands`. Listing every row held, as before (and still for
-- smaller customers), cost (transitions x items) per customer: minutes for one of thousands of subscriptions.
-- Every row held is still listed for a gain or a loss, a window whose rates differ from its first day to its last,
-- windows of one customer that overlap, and where the first rows do not settle which held row is largest or
-- whether a family is held.
CREATE OR REPLACE TEMP TABLE derived_transition_sides AS
WITH
cfg AS (SELECT lower(reporting_currency) AS rep, past_due_counts, pause_collection_keeps_mrr FROM derived_settings),
item_rows AS (
    -- (`value_from`, 40: where the item's value, all but its status, last changed, so that a renewal whose payment
    -- failed (active to past_due, both counting) begins no change of the item and its parts take the rate of that
    -- earlier change)
    SELECT i.rowid AS rid, i.account_id, i.customer_id, i.subscription_item_id, i.valid_from, i.valid_to,
           i.mrr_original, i.currency, i.family, i.value_from
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
-- (the customers of more than 32 rows: of fewer, every row held is listed, which costs less than finding them)
big AS (SELECT account_id, customer_id FROM item_rows GROUP BY ALL HAVING count(*) > 32),
big_rows AS (SELECT r.* FROM item_rows r SEMI JOIN big USING (account_id, customer_id)),
-- (each customer's rows ranked by size per currency, as 64 orders the main item within one currency, and per
-- family by how long they last; and how many rows each currency and family has)
ranked AS (
    SELECT rid, account_id, customer_id, currency, family, valid_from, valid_to,
           row_number() OVER (PARTITION BY account_id, customer_id, currency
                              ORDER BY mrr_original DESC, subscription_item_id DESC, rid) AS rk,
           row_number() OVER (PARTITION BY account_id, customer_id, family
                              ORDER BY coalesce(epoch(valid_to), 1e12) - epoch(valid_from) DESC, rid) AS rk_fam
    FROM big_rows
),
cands AS (SELECT * FROM ranked WHERE rk <= 32 OR rk_fam <= 32),
currencies AS (SELECT account_id, customer_id, currency, count(*) AS n_cur FROM big_rows GROUP BY ALL),
families AS (SELECT account_id, customer_id, family, count(*) AS n_fam FROM big_rows GROUP BY ALL),
overlapping AS (
    SELECT DISTINCT account_id, customer_id
    FROM (SELECT account_id, customer_id, t_start,
                 max(t_end) OVER (PARTITION BY account_id, customer_id ORDER BY t_start, t_end
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_end
          FROM tr SEMI JOIN big USING (account_id, customer_id))
    WHERE before_end >= t_start
),
-- 'change' transitions of those customers whose every currency has the same rate (above 0) on both days
-- (as joins: as correlated NOT EXISTS, DuckDB ran them through a delim join of every transition, some 14 s of
-- operator time at 1M customers)
rate_moved AS (
    SELECT DISTINCT t.tid
    FROM tr t
    JOIN currencies c ON c.account_id = t.account_id AND c.customer_id = t.customer_id
    CROSS JOIN cfg
    LEFT JOIN derived_fx_days fa ON fa.currency = c.currency AND fa.day = t.day_a
    LEFT JOIN derived_fx_days fb ON fb.currency = c.currency AND fb.day = t.day_b
    WHERE t.kind = 'change'
      AND (c.currency IS NULL OR (c.currency <> cfg.rep AND NOT coalesce(fa.rate > 0 AND fa.rate = fb.rate, false)))
),
quick AS (
    SELECT t.*
    FROM tr t
    SEMI JOIN big USING (account_id, customer_id)
    ANTI JOIN overlapping USING (account_id, customer_id)
    ANTI JOIN rate_moved USING (tid)
    WHERE t.kind = 'change'
),
-- the rows with a boundary inside a quick window (the windows of one customer do not overlap there)
bounds AS (
    SELECT rid, account_id, customer_id, valid_from AS at FROM big_rows
    UNION ALL
    SELECT rid, account_id, customer_id, valid_to FROM big_rows WHERE valid_to IS NOT NULL
),
changed_rows AS (
    SELECT DISTINCT q.tid, b.rid
    FROM bounds b
    ASOF JOIN quick q ON q.account_id = b.account_id AND q.customer_id = b.customer_id AND q.t_start <= b.at
    WHERE b.at <= q.t_end
),
held AS (
    SELECT q.tid, c.rid, c.rk, c.rk_fam, c.currency, c.family
    FROM quick q
    JOIN cands c ON c.account_id = q.account_id AND c.customer_id = q.customer_id
    WHERE c.valid_from < q.t_start AND (c.valid_to IS NULL OR c.valid_to > q.t_end)
),
needed AS (
    SELECT DISTINCT x.tid, r.account_id, r.customer_id, r.family
    FROM changed_rows x JOIN big_rows r USING (rid)
),
-- (settled: in each currency, a held row among the first by size, or none beyond them; for each family of the
-- changed rows, a held row among its first, or none beyond them)
settled AS (
    SELECT q.tid
    FROM quick q
    ANTI JOIN (SELECT q.tid
               FROM quick q
               JOIN currencies c ON c.account_id = q.account_id AND c.customer_id = q.customer_id AND c.n_cur > 32
               ANTI JOIN held h ON h.tid = q.tid AND h.currency = c.currency AND h.rk <= 32) u USING (tid)
    -- (the family's customer from `needed` itself: joined through `quick`, DuckDB matched every family to the
    -- changed rows by the family alone first, 8 s at 1M)
    ANTI JOIN (SELECT n.tid
               FROM needed n
               JOIN families f ON f.account_id = n.account_id AND f.customer_id = n.customer_id
                              AND f.family IS NOT DISTINCT FROM n.family AND f.n_fam > 32
               ANTI JOIN held h ON h.tid = n.tid AND h.family IS NOT DISTINCT FROM n.family AND h.rk_fam <= 32) v
      USING (tid)
),
picked AS (
    SELECT tid, rid FROM changed_rows WHERE tid IN (SELECT tid FROM settled)
    UNION
    SELECT tid, arg_min(rid, rk) FROM held WHERE rk <= 32 AND tid IN (SELECT tid FROM settled) GROUP BY tid, currency
    UNION
    SELECT h.tid, arg_min(h.rid, h.rk_fam)
    FROM held h
    JOIN needed n ON n.tid = h.tid AND n.family IS NOT DISTINCT FROM h.family
    WHERE h.rk_fam <= 32 AND h.tid IN (SELECT tid FROM settled)
    GROUP BY h.tid, h.family
),
picked_rows AS (
    SELECT t.tid, t.kind, t.t_start, t.t_end, t.day_a, t.day_b, r.subscription_item_id, r.rid, r.mrr_original,
           r.currency, r.family, r.valid_from, r.valid_to, r.value_from
    FROM picked p
    JOIN tr t USING (tid)
    JOIN item_rows r USING (rid)
),
-- the transitions listed whole, joined to the rows of each side on that side's own range (one join on both sides'
-- ranges, materialized and split into the two sides, took 2.4 times as long for a customer of 4,373 subscriptions)
whole AS (SELECT * FROM tr WHERE tid NOT IN (SELECT tid FROM settled)),
side_a AS (
    SELECT tid, kind, day_a, day_b, subscription_item_id, rid, mrr_original, currency, family, valid_to
    FROM picked_rows
    WHERE valid_from < t_start AND (valid_to IS NULL OR valid_to >= t_start)
    UNION ALL
    SELECT t.tid, t.kind, t.day_a, t.day_b, r.subscription_item_id, r.rid, r.mrr_original, r.currency, r.family,
           r.valid_to
    FROM whole t
    JOIN item_rows r ON r.account_id = t.account_id AND r.customer_id = t.customer_id
                    AND r.valid_from < t.t_start AND (r.valid_to IS NULL OR r.valid_to >= t.t_start)
),
side_b AS (
    SELECT tid, kind, day_a, day_b, subscription_item_id, rid, mrr_original, currency, family,
           -- the B row started inside the window (70 looks for the sources of a change there)
           valid_from >= t_start AS started, valid_from, CASE WHEN value_from >= t_start THEN value_from END AS changed_from
    FROM picked_rows
    WHERE valid_from <= t_end AND (valid_to IS NULL OR valid_to > t_end)
    UNION ALL
    SELECT t.tid, t.kind, t.day_a, t.day_b, r.subscription_item_id, r.rid, r.mrr_original, r.currency, r.family,
           r.valid_from >= t.t_start, r.valid_from, CASE WHEN r.value_from >= t.t_start THEN r.value_from END
    FROM whole t
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
           coalesce(a.day_a, b.day_a) AS day_a, coalesce(a.day_b, b.day_b) AS day_b,
           -- the day of the item's own change inside the window, whose rate values its parts (a rate moves at
           -- 00:00 UTC, before a change made then): where its B row's value begins (`value_from`), or its A row
           -- ends when it is removed (a row held through the window, or one whose value did not change in it: B's
           -- day)
           CASE WHEN b.rid IS NULL THEN coalesce(utc_date(a.valid_to), a.day_b)
                WHEN b.started THEN coalesce(utc_date(b.changed_from), b.day_b)
                ELSE b.day_b END AS day_c
    FROM side_a a
    FULL JOIN side_b b
        ON a.tid = b.tid AND a.subscription_item_id = b.subscription_item_id
)
SELECT * FROM joined;

-- (the rates joined in a statement of their own: inside the one above, the optimizer built its hash table on the
-- rows instead of on the rates)
CREATE OR REPLACE TEMP TABLE derived_transition_items AS
WITH cfg AS (SELECT lower(reporting_currency) AS rep FROM derived_settings)
SELECT
    j.* EXCLUDE (day_a, day_b),
    CASE WHEN j.a_currency = cfg.rep THEN 1 ELSE ra.rate END AS a_rate_a,
    CASE WHEN j.a_currency = cfg.rep THEN 1 ELSE rac.rate END AS a_rate_c,
    CASE WHEN j.b_currency = cfg.rep THEN 1 ELSE rbc.rate END AS b_rate_c,
    CASE WHEN j.b_currency = cfg.rep THEN 1 ELSE rbb.rate END AS b_rate_b
FROM derived_transition_sides j
CROSS JOIN cfg
LEFT JOIN derived_fx_days ra ON ra.currency = j.a_currency AND ra.day = j.day_a
LEFT JOIN derived_fx_days rac ON rac.currency = j.a_currency AND rac.day = j.day_c
LEFT JOIN derived_fx_days rbc ON rbc.currency = j.b_currency AND rbc.day = j.day_c
LEFT JOIN derived_fx_days rbb ON rbb.currency = j.b_currency AND rbb.day = j.day_b;
