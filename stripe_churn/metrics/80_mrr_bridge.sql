-- The MRR bridge (design.md 6 and 7): opening + new + reactivation + expansion - contraction - churn + fx =
-- closing, exactly, per period and segment, with the customer counts and rates.
-- `mrr_bridge_for(period_kind, segment_kind, segment_value)` gives any period ('week', 'month', 'quarter',
-- 'year') and segment; the `mrr_bridge` view is the monthly bridge of the whole account.
-- Inputs: derived_transitions, derived_transition_windows, derived_transition_items, derived_item_mrr,
-- derived_customer_mrr, derived_coverage, derived_mrr_movements, customers.

-- Each transition with what segments need of the state it leads to: the main item (largest MRR) and
-- the customer's static attributes. A change that leaves the customer's MRR as it was (a plan switch at equal
-- MRR: no transition, design.md 5) is a row too (kind 'same'), so that the customer's plan, product or family
-- segment follows it.
CREATE OR REPLACE TABLE derived_transition_states AS
WITH mains AS (
    -- (the main item's B row, picked in 64)
    SELECT m.tid, b.product_id, b.price_id, b.family, b.currency AS item_currency
    FROM derived_transition_mains m
    JOIN derived_item_mrr b ON b.rowid = m.b_rid
),
quiet AS (
    -- windows of change without a transition, while the customer has MRR, up to the latest sync
    SELECT w.account_id, w.customer_id, w.t_start, w.t_end, l.mrr
    FROM derived_transition_windows w
    JOIN derived_customer_mrr l
      ON l.account_id = w.account_id AND l.customer_id = w.customer_id
     AND l.valid_from <= w.t_end AND (l.valid_to IS NULL OR l.valid_to > w.t_end)
    LEFT JOIN derived_coverage cov ON cov.account_id = w.account_id
    WHERE l.mrr > 0 AND (cov.snapshot_at IS NULL OR w.t_end <= cov.snapshot_at)
      AND NOT EXISTS (SELECT 1 FROM derived_transitions t
                      WHERE t.account_id = w.account_id AND t.customer_id = w.customer_id AND t.t_start = w.t_start)
),
quiet_mains AS (
    -- (their main item: the largest MRR in force at the window's end, in the reporting currency at that day's rate,
    -- as 64 picks a transition's)
    SELECT q.account_id, q.customer_id, q.t_start, any_value(q.t_end) AS t_end, any_value(q.mrr) AS mrr,
           arg_max({'product_id': b.product_id, 'price_id': b.price_id, 'family': b.family,
                    'item_currency': b.currency},
                   (b.mrr_original * CASE WHEN b.currency = cfg.rep THEN 1 ELSE coalesce(x.rate, 0) END,
                    b.subscription_item_id)) AS m
    FROM quiet q
    JOIN derived_item_mrr b
      ON b.account_id = q.account_id AND b.customer_id = q.customer_id
     AND b.valid_from <= q.t_end AND (b.valid_to IS NULL OR b.valid_to > q.t_end)
    CROSS JOIN (SELECT lower(reporting_currency) AS rep FROM derived_settings) cfg
    LEFT JOIN derived_fx_days x ON x.currency = b.currency AND x.day = utc_date(q.t_end)
    WHERE b.mrr_original > 0
    GROUP BY q.account_id, q.customer_id, q.t_start
),
states AS (
    SELECT t.account_id, t.customer_id, t.t_start, t.t_end, t.mrr_before, t.mrr_after, t.mrr_delta, t.kind,
           t.had_mrr_before, m.product_id, m.price_id, m.family, m.item_currency
    FROM derived_transitions t
    LEFT JOIN mains m USING (tid)
    UNION ALL
    SELECT account_id, customer_id, t_start, t_end, CAST(mrr AS DECIMAL(18, 4)), CAST(mrr AS DECIMAL(18, 4)),
           CAST(0 AS DECIMAL(18, 4)), 'same', true, m.product_id, m.price_id, m.family, m.item_currency
    FROM quiet_mains
)
SELECT t.account_id, t.customer_id, t.t_start, t.t_end, t.mrr_before, t.mrr_after, t.mrr_delta, t.kind,
       t.had_mrr_before, t.product_id, t.price_id, t.family,
       coalesce(lower(c.currency), t.item_currency) AS currency,
       c.country
FROM states t
LEFT JOIN customers c ON c.account_id = t.account_id AND c.id = t.customer_id;

-- Size bands of customer MRR in the reporting currency.
CREATE OR REPLACE MACRO mrr_size_band(mrr) AS CASE
    WHEN mrr IS NULL OR mrr <= 0 THEN NULL
    WHEN mrr < 100 THEN 'a: under 100'
    WHEN mrr < 1000 THEN 'b: 100 to 1k'
    WHEN mrr < 10000 THEN 'c: 1k to 10k'
    ELSE 'd: 10k and more'
END;

-- The segment value of a state for a segment kind: 'family', 'plan' (price), 'product', 'currency',
-- 'country', 'size_band' or 'metadata.<key>' (a customer metadata key); NULL kind = the whole account.
CREATE OR REPLACE MACRO segment_of(kind, family, price_id, product_id, currency, country, mrr, customer_raw) AS
coalesce(CASE
    WHEN kind IS NULL OR kind = '' THEN 'all'
    WHEN kind = 'family' THEN family
    WHEN kind IN ('plan', 'price') THEN price_id
    WHEN kind = 'product' THEN product_id
    WHEN kind = 'currency' THEN currency
    WHEN kind = 'country' THEN country
    WHEN kind = 'size_band' THEN mrr_size_band(mrr)
    WHEN kind = 'metadata.' THEN error('segment kind metadata. names no key: use metadata.<key>, for example '
                                       || 'metadata.tier')
    -- (the key as a JSON string in the path, escaped: any key Stripe allows, quotes and dots included; a key with
    -- a control character, which the path does not decode, through a map, ten times slower)
    WHEN starts_with(kind, 'metadata.') AND regexp_matches(kind, '[\x00-\x1f]') THEN
        TRY_CAST(json_extract(customer_raw, '$.metadata') AS MAP(VARCHAR, VARCHAR))[substr(kind, 10)]
    WHEN starts_with(kind, 'metadata.') THEN json_extract_string(
        customer_raw, '$.metadata.' || to_json(CASE WHEN starts_with(kind, 'metadata.') AND kind <> 'metadata.'
                                                    THEN substr(kind, 10) ELSE 'none' END))
    ELSE error('unknown segment kind ' || kind || ': use family, plan, product, currency, country, size_band '
               || 'or metadata.<key>')
END, '(none)');

CREATE OR REPLACE MACRO period_step(period_kind) AS CASE period_kind
    WHEN 'week' THEN INTERVAL 7 DAY
    WHEN 'month' THEN INTERVAL 1 MONTH
    WHEN 'quarter' THEN INTERVAL 3 MONTH
    WHEN 'year' THEN INTERVAL 1 YEAR
    ELSE error('unknown period ' || period_kind || ': use week, month, quarter or year')
END;

CREATE OR REPLACE MACRO period_of(period_kind, t) AS
CAST(date_trunc(period_kind, timezone('UTC', t)) AS DATE);

-- Per segment value and period: flows, customer gains and losses, and the MRR and customers that move
-- between segment values at the period start (a customer belongs, for a period, to the segment of its
-- state at the period start, or of its first state with MRR in the period when it had none).
CREATE OR REPLACE MACRO bridge_ledger(period_kind, segment_kind) AS TABLE
WITH
tr AS (
    SELECT t.*, period_of(period_kind, t.t_start) AS p,
           segment_of(segment_kind, t.family, t.price_id, t.product_id, t.currency, t.country, t.mrr_after,
                      CASE WHEN starts_with(coalesce(segment_kind, ''), 'metadata.') THEN c.raw END) AS seg_after
    FROM derived_transition_states t
    LEFT JOIN customers c ON starts_with(coalesce(segment_kind, ''), 'metadata.')
                         AND c.account_id = t.account_id AND c.id = t.customer_id
),
tr2 AS (
    SELECT *, lag(seg_after) OVER (PARTITION BY account_id, customer_id ORDER BY t_start) AS seg_before
    FROM tr
),
cp AS (
    SELECT account_id, customer_id, p,
           arg_min(mrr_before, t_start) AS opening,
           arg_max(mrr_after, t_start) AS closing,
           arg_min(seg_before, t_start) AS seg_open,
           arg_min(seg_after, t_start) FILTER (WHERE mrr_after > 0) AS seg_first,
           arg_max(seg_after, t_start) AS seg_close,
           count(*) FILTER (WHERE kind = 'gain') AS gains,
           count(*) FILTER (WHERE kind = 'loss') AS losses,
           bool_or(kind = 'gain' AND NOT had_mrr_before) AS is_new,
           bool_or(kind = 'gain' AND had_mrr_before) AS is_reactivated,
           bool_or(kind = 'loss') AS is_churned
    FROM tr2
    GROUP BY ALL
),
cps AS (
    SELECT *, CASE WHEN opening > 0 THEN seg_open ELSE coalesce(seg_first, seg_close) END AS seg
    FROM cp
),
flows AS (
    SELECT c.seg, m.p,
           sum(m.mrr_delta) AS net,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'new') AS new,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'reactivation') AS reactivation,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'expansion') AS expansion,
           -sum(m.mrr_delta) FILTER (WHERE m.category = 'contraction') AS contraction,
           -sum(m.mrr_delta) FILTER (WHERE m.category = 'churn') AS churn,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'fx') AS fx,
           -- (each expansion or contraction row in one column of its category, so that they add up to it: a row
           -- whose label and sign disagree, as a part turned over by its transition's rounding remainder can,
           -- goes to its label's counterpart: seat, resource or plan; a cross-sell's is a downgrade)
           sum(m.mrr_delta) FILTER (WHERE m.category = 'expansion' AND m.movement IN ('upgrade', 'downgrade'))
               AS upgrade,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'expansion' AND m.movement = 'cross_sell') AS cross_sell,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'expansion'
                                      AND m.movement IN ('seat_expansion', 'seat_contraction')) AS seat_expansion,
           sum(m.mrr_delta) FILTER (WHERE m.category = 'expansion'
                                      AND m.movement IN ('resource_expansion', 'resource_contraction'))
               AS resource_expansion,
           -sum(m.mrr_delta) FILTER (WHERE m.category = 'contraction'
                                       AND m.movement IN ('upgrade', 'downgrade', 'cross_sell')) AS downgrade,
           -sum(m.mrr_delta) FILTER (WHERE m.category = 'contraction'
                                       AND m.movement IN ('seat_expansion', 'seat_contraction')) AS seat_contraction,
           -sum(m.mrr_delta) FILTER (WHERE m.category = 'contraction'
                                       AND m.movement IN ('resource_expansion', 'resource_contraction'))
               AS resource_contraction,
           sum(m.mrr_delta) FILTER (WHERE m.movement = 'discount' AND m.category = 'expansion') AS discount_expansion,
           -sum(m.mrr_delta) FILTER (WHERE m.movement = 'discount' AND m.category = 'contraction')
               AS discount_contraction
    FROM (SELECT *, period_of(period_kind, occurred_at) AS p FROM derived_mrr_movements) m
    JOIN cps c ON c.account_id = m.account_id AND c.customer_id = m.customer_id AND c.p = m.p
    GROUP BY ALL
),
counts AS (
    SELECT seg, p,
           sum(gains) AS gains, sum(losses) AS losses,
           count(*) FILTER (WHERE is_new) AS new_customers,
           count(*) FILTER (WHERE is_reactivated) AS reactivated_customers,
           count(*) FILTER (WHERE is_churned) AS churned_customers,
           count(*) FILTER (WHERE is_churned AND opening > 0) AS churned_from_opening
    FROM cps
    GROUP BY ALL
),
-- a customer whose segment changed by the end of a period moves its closing MRR at the next period start
moves AS (
    SELECT seg, p, sum(mrr) AS moved_mrr, sum(n) AS moved_customers
    FROM (
        SELECT seg, CAST(p + period_step(period_kind) AS DATE) AS p, -closing AS mrr, -1 AS n
        FROM cps WHERE closing > 0 AND seg_close IS DISTINCT FROM seg
        UNION ALL
        SELECT seg_close, CAST(p + period_step(period_kind) AS DATE), closing, 1
        FROM cps WHERE closing > 0 AND seg_close IS DISTINCT FROM seg
    )
    GROUP BY ALL
)
SELECT coalesce(f.seg, c.seg, mv.seg) AS segment_value,
       coalesce(f.p, c.p, mv.p) AS period_start,
       f.* EXCLUDE (seg, p), c.* EXCLUDE (seg, p), mv.* EXCLUDE (seg, p)
FROM flows f
FULL JOIN counts c ON c.seg = f.seg AND c.p = f.p
FULL JOIN moves mv ON mv.seg = coalesce(f.seg, c.seg) AND mv.p = coalesce(f.p, c.p);

-- The monthly ledger of the whole account, kept as a table so that the mrr_bridge view stays instant.
-- (a flow with no movement in a period is stored as 0, not NULL: the incremental recompute adds and subtracts
-- customers' contributions, and a sum cannot tell "no rows" from "rows adding up to 0"; a row all zero, as a
-- period with only a switch at equal MRR gives, is left out, as the incremental recompute leaves it out)
CREATE OR REPLACE TABLE derived_bridge_ledger_month AS
WITH l AS (
    SELECT segment_value, period_start, coalesce(COLUMNS(* EXCLUDE (segment_value, period_start)), 0)
    FROM bridge_ledger('month', NULL)
),
-- (a condition on COLUMNS holds for every column)
zero AS (
    SELECT segment_value, period_start FROM l WHERE COLUMNS(* EXCLUDE (segment_value, period_start)) = 0
)
SELECT * FROM l ANTI JOIN zero USING (segment_value, period_start);

-- Bridge rows from a ledger: every period from the segment's first one through the current one (the later
-- of today and the data), quiet periods included; opening and closing run on from the flows.
-- (what money4 names when a bridge amount does not fit)
CREATE OR REPLACE MACRO bridge_cell(col, segment_kind, segment_value, period_start) AS
    'the bridge''s ' || col || ' of the period from ' || period_start
    || coalesce(' in segment ' || nullif(segment_kind, '') || ' = ' || segment_value, '');
CREATE OR REPLACE MACRO bridge_rows(period_kind, segment_kind, wanted_value) AS TABLE
WITH
ledger AS (
    SELECT * FROM derived_bridge_ledger_month
    WHERE period_kind = 'month' AND (segment_kind IS NULL OR segment_kind = '')
    UNION ALL BY NAME
    SELECT * FROM bridge_ledger(period_kind, segment_kind)
    WHERE NOT (period_kind = 'month' AND (segment_kind IS NULL OR segment_kind = ''))
),
picked AS (
    SELECT * FROM ledger WHERE segment_value IS NOT NULL
      AND (wanted_value IS NULL OR segment_value = CAST(wanted_value AS VARCHAR))
),
last_period AS (
    SELECT period_of(period_kind, greatest(now(), (SELECT max(t_end) FROM derived_mrr_movements))) AS p
),
spine AS (
    SELECT s.segment_value, CAST(g.p AS DATE) AS period_start
    FROM (SELECT segment_value, min(period_start) AS first_p FROM picked GROUP BY ALL) s,
         last_period lp,
         generate_series(CAST(s.first_p AS TIMESTAMP), CAST(lp.p AS TIMESTAMP), period_step(period_kind)) AS g(p)
),
filled AS (
    SELECT sp.segment_value, sp.period_start,
           CAST(sp.period_start + period_step(period_kind) - INTERVAL 1 DAY AS DATE) AS period_end,
           coalesce(l.net, 0) AS net, coalesce(l.new, 0) AS new, coalesce(l.reactivation, 0) AS reactivation,
           coalesce(l.expansion, 0) AS expansion, coalesce(l.contraction, 0) AS contraction,
           coalesce(l.churn, 0) AS churn, coalesce(l.fx, 0) AS fx, coalesce(l.upgrade, 0) AS upgrade,
           coalesce(l.cross_sell, 0) AS cross_sell, coalesce(l.seat_expansion, 0) AS seat_expansion,
           coalesce(l.resource_expansion, 0) AS resource_expansion, coalesce(l.downgrade, 0) AS downgrade,
           coalesce(l.seat_contraction, 0) AS seat_contraction,
           coalesce(l.resource_contraction, 0) AS resource_contraction,
           coalesce(l.discount_expansion, 0) AS discount_expansion,
           coalesce(l.discount_contraction, 0) AS discount_contraction,
           coalesce(l.gains, 0) AS gains, coalesce(l.losses, 0) AS losses,
           coalesce(l.new_customers, 0) AS new_customers,
           coalesce(l.reactivated_customers, 0) AS reactivated_customers,
           coalesce(l.churned_customers, 0) AS churned_customers,
           coalesce(l.churned_from_opening, 0) AS churned_from_opening,
           coalesce(l.moved_mrr, 0) AS moved_mrr, coalesce(l.moved_customers, 0) AS moved_customers
    FROM spine sp
    LEFT JOIN picked l ON l.segment_value = sp.segment_value AND l.period_start = sp.period_start
),
running AS (
    SELECT *,
           coalesce(sum(net) OVER w_before, 0) + sum(moved_mrr) OVER w_upto AS opening_mrr,
           coalesce(sum(gains - losses) OVER w_before, 0) + sum(moved_customers) OVER w_upto AS opening_customers
    FROM filled
    WINDOW w_before AS (PARTITION BY segment_value ORDER BY period_start
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           w_upto AS (PARTITION BY segment_value ORDER BY period_start ROWS UNBOUNDED PRECEDING)
),
money AS (
    SELECT segment_value, period_start, period_end,
           money4(opening_mrr, bridge_cell('opening_mrr', segment_kind, segment_value, period_start)) AS opening_mrr,
           money4(new, bridge_cell('new', segment_kind, segment_value, period_start)) AS new,
           money4(reactivation, bridge_cell('reactivation', segment_kind, segment_value, period_start)) AS reactivation,
           money4(expansion, bridge_cell('expansion', segment_kind, segment_value, period_start)) AS expansion,
           money4(contraction, bridge_cell('contraction', segment_kind, segment_value, period_start)) AS contraction,
           money4(churn, bridge_cell('churn', segment_kind, segment_value, period_start)) AS churn,
           money4(fx, bridge_cell('fx', segment_kind, segment_value, period_start)) AS fx,
           money4(opening_mrr + net, bridge_cell('closing_mrr', segment_kind, segment_value, period_start)) AS closing_mrr,
           money4(upgrade, bridge_cell('upgrade', segment_kind, segment_value, period_start)) AS upgrade,
           money4(cross_sell, bridge_cell('cross_sell', segment_kind, segment_value, period_start)) AS cross_sell,
           money4(seat_expansion, bridge_cell('seat_expansion', segment_kind, segment_value, period_start)) AS seat_expansion,
           money4(resource_expansion, bridge_cell('resource_expansion', segment_kind, segment_value, period_start)) AS resource_expansion,
           money4(downgrade, bridge_cell('downgrade', segment_kind, segment_value, period_start)) AS downgrade,
           money4(seat_contraction, bridge_cell('seat_contraction', segment_kind, segment_value, period_start)) AS seat_contraction,
           money4(resource_contraction, bridge_cell('resource_contraction', segment_kind, segment_value, period_start)) AS resource_contraction,
           money4(discount_expansion, bridge_cell('discount_expansion', segment_kind, segment_value, period_start)) AS discount_expansion,
           money4(discount_contraction, bridge_cell('discount_contraction', segment_kind, segment_value, period_start)) AS discount_contraction,
           CAST(opening_customers AS BIGINT) AS opening_customers,
           CAST(new_customers AS BIGINT) AS new_customers,
           CAST(reactivated_customers AS BIGINT) AS reactivated_customers,
           CAST(churned_customers AS BIGINT) AS churned_customers,
           CAST(opening_customers + gains - losses AS BIGINT) AS closing_customers,
           churned_from_opening
    FROM running
)
SELECT
    segment_value, period_start, period_end, opening_mrr, new, reactivation, expansion, contraction, churn, fx,
    closing_mrr, upgrade, cross_sell, seat_expansion, resource_expansion, downgrade, seat_contraction,
    resource_contraction, discount_expansion, discount_contraction, opening_customers, new_customers,
    reactivated_customers, churned_customers, closing_customers,
    CAST((churn + contraction) / nullif(opening_mrr, 0) AS DOUBLE) AS gross_revenue_churn_rate,
    CAST((churn + contraction - expansion - reactivation) / nullif(opening_mrr, 0) AS DOUBLE)
        AS net_revenue_churn_rate,
    CAST((opening_mrr + expansion - contraction - churn) / nullif(opening_mrr, 0) AS DOUBLE) AS nrr,
    CAST((opening_mrr - contraction - churn) / nullif(opening_mrr, 0) AS DOUBLE) AS grr,
    CAST(churned_from_opening / nullif(opening_customers, 0) AS DOUBLE) AS customer_churn_rate,
    CAST((new + reactivation + expansion) / nullif(contraction + churn, 0) AS DOUBLE) AS quick_ratio,
    -- (in whole 1e-4 units, half up: a DECIMAL divided by an integer is a DOUBLE in DuckDB, which loses exact halves)
    CASE WHEN closing_customers > 0
         THEN CAST(CAST((CAST(CAST(closing_mrr AS DECIMAL(38, 4)) * 10000 AS HUGEINT) * 2 + closing_customers) // (2 * closing_customers)
                        AS DECIMAL(18, 0)) * CAST(0.0001 AS DECIMAL(5, 4)) AS DECIMAL(18, 4)) END AS arpa,
    (churn + contraction - expansion - reactivation) / nullif(opening_mrr, 0) < 0 AS net_negative_churn
FROM money
ORDER BY segment_value, period_start;

-- The bridge for any period and segment (see stripe_churn/metrics/queries.py for the documented call).
CREATE OR REPLACE MACRO mrr_bridge_for(period_kind := 'month', segment_kind := NULL, segment_value := NULL)
AS TABLE
SELECT * FROM bridge_rows(period_kind, segment_kind, segment_value);

CREATE OR REPLACE VIEW mrr_bridge AS
SELECT * EXCLUDE (segment_value) FROM bridge_rows('month', NULL, NULL);
