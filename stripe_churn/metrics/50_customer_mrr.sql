-- Customer MRR over time in the reporting currency (design.md 4 and 7, docs/internals.md "Money and
-- rounding"): round(Σ items (item MRR × rate), 4) half away from zero, once, at the customer level; one row
-- per MRR level. Rates come from fx_rates (a rate holds from its date until the next dated row); a needed
-- rate that is missing is listed in derived_fx_missing and the runner stops with a DataError.

CREATE OR REPLACE MACRO utc_date(t) AS DATE '1970-01-01' + CAST(floor(epoch_us(t) / 86400000000) AS INTEGER);

CREATE OR REPLACE TEMP TABLE derived_fx AS
SELECT lower(currency) AS currency, date AS rate_date,
       to_timestamp(CAST(date - DATE '1970-01-01' AS BIGINT) * 86400) AS rate_at,
       CAST(rate AS DECIMAL(18, 8)) AS rate
FROM fx_rates;

-- item intervals that need a rate, with the rate in force at their start
CREATE OR REPLACE TEMP TABLE derived_customer_points AS
WITH needs_fx AS (
    SELECT i.* FROM derived_item_mrr i CROSS JOIN derived_settings st
    WHERE i.mrr_original <> 0 AND i.currency <> st.reporting_currency
),
pts AS (
    SELECT account_id, customer_id, valid_from AS moment FROM derived_item_mrr
    UNION SELECT account_id, customer_id, valid_to FROM derived_item_mrr WHERE valid_to IS NOT NULL
    UNION
    SELECT n.account_id, n.customer_id, f.rate_at
    FROM needs_fx n JOIN derived_fx f
      ON f.currency = n.currency AND f.rate_at > n.valid_from AND (n.valid_to IS NULL OR f.rate_at < n.valid_to)
)
SELECT * FROM pts;

-- What each currency's items add up to at each point: their MRR summed, how many they are, and the distinct
-- `den` among them (an item's MRR is its amount per period x norm_num / norm_den (step 10): times 12 x
-- interval_count it is a short decimal again, whatever its interval). By running sums of each item row's MRR and
-- count, added at its valid_from and taken off at its valid_to, per customer, currency and den, read at each point
-- (as of it): a point's items found by joining every item row in force there cost (points x items) per customer,
-- minutes for a customer of thousands of subscriptions.
CREATE OR REPLACE TEMP TABLE derived_customer_point_items AS
WITH items AS (
    SELECT i.account_id, i.customer_id, i.currency, i.valid_from, i.valid_to, i.mrr_original,
           12 * coalesce(t.interval_count, 1) AS den
    FROM derived_item_mrr i
    LEFT JOIN derived_price_terms t ON t.account_id = i.account_id AND t.price_id = i.price_id
    WHERE i.mrr_original <> 0
),
deltas AS (
    SELECT account_id, customer_id, currency, den, valid_from AS moment, mrr_original AS dm, 1 AS dn FROM items
    UNION ALL
    SELECT account_id, customer_id, currency, den, valid_to, -mrr_original, -1 FROM items WHERE valid_to IS NOT NULL
),
-- (each point of the customer with each currency and den it ever has, as a step that changes nothing)
steps AS (
    SELECT account_id, customer_id, currency, den, moment, sum(dm) AS dm, sum(dn) AS dn, bool_or(point) AS point
    FROM (SELECT *, false AS point FROM deltas
          UNION ALL
          SELECT p.account_id, p.customer_id, g.currency, g.den, p.moment, 0, 0, true
          FROM derived_customer_points p
          JOIN (SELECT DISTINCT account_id, customer_id, currency, den FROM items) g
            ON g.account_id = p.account_id AND g.customer_id = p.customer_id)
    GROUP BY account_id, customer_id, currency, den, moment
),
j AS (
    SELECT account_id, customer_id, moment, currency, den, s, n, utc_date(moment) AS at_date
    FROM (SELECT account_id, customer_id, currency, den, moment, point,
                 sum(dm) OVER w AS s, sum(dn) OVER w AS n
          FROM steps
          WINDOW w AS (PARTITION BY account_id, customer_id, currency, den ORDER BY moment
                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
    WHERE point AND n > 0
),
-- the rate in force on each (currency, day) needed: the as-of lookup runs on these few pairs, not every row
day_rates AS (
    SELECT d.currency, d.at_date, f.rate
    FROM (SELECT DISTINCT j.currency, j.at_date FROM j, derived_settings st
          WHERE j.currency <> st.reporting_currency) d
    ASOF LEFT JOIN derived_fx f ON f.currency = d.currency AND f.rate_date <= d.at_date
)
SELECT j.account_id, j.customer_id, j.moment, j.currency, j.at_date,
       CASE WHEN j.currency = st.reporting_currency THEN CAST(1 AS DECIMAL(18, 8)) ELSE r.rate END AS rate,
       sum(j.s) AS s, CAST(sum(j.n) AS BIGINT) AS n, list(j.den) AS dens
FROM j
CROSS JOIN derived_settings st
LEFT JOIN day_rates r ON r.currency = j.currency AND r.at_date = j.at_date
GROUP BY ALL;

CREATE OR REPLACE TABLE derived_fx_missing AS
SELECT account_id, currency, min(at_date) AS first_date, max(at_date) AS last_date,
       count(DISTINCT customer_id) AS customers
FROM derived_customer_point_items
WHERE rate IS NULL
GROUP BY ALL;

CREATE OR REPLACE TABLE derived_customer_mrr AS
WITH customer_den AS (
    -- the customer's d over its currencies (one, as a rule): the least common multiple of every den, which
    -- repeats do not change (grouped and joined back: a window over DISTINCT lists cost this statement about a
    -- third more CPU)
    SELECT account_id, customer_id, moment, list_reduce(flatten(list(dens)), lambda a, b: lcm(a, b)) AS d
    FROM derived_customer_point_items
    GROUP BY account_id, customer_id, moment
),
levels AS (
    -- items are cut at 10 decimals, and an item's MRR repeats where its amount is divided by 12 (or by 12 x
    -- interval_count: `den`). So each currency's sum is taken times d, the least common multiple of its
    -- customer's `den` at the moment, and rounded where the cuts times d are under half a unit (`whole_again`,
    -- step 10): an exact sum such as 26.4583333333 + 184.1666666666 = 210.625 is 2527.5 over 12 again. Times the
    -- rate and summed over the currencies, it is divided by d and rounded at 4, half away from zero, exactly
    -- (`round_over4`): 100.00 GBP a year at 1.481478 is 1481.478 / 12 = 12.34565, which rounds to 12.3457.
    SELECT account_id, customer_id, moment,
           money4(total, 'the MRR of customer ' || customer_id || ' from ' || moment) AS mrr
    FROM (
        SELECT p.account_id, p.customer_id, p.moment, coalesce(round_over4(sum(x.v17), any_value(x.d)), 0) AS total
        FROM derived_customer_points p
        LEFT JOIN (
            -- (in 1e-17 of the reporting currency, over d)
            SELECT account_id, customer_id, moment, d,
                   CAST(whole_again(d * s, n * d) * 1000000000 AS HUGEINT) * rate_e8(rate) AS v17
            FROM derived_customer_point_items JOIN customer_den USING (account_id, customer_id, moment)
        ) x USING (account_id, customer_id, moment)
        GROUP BY ALL
    )
),
marked AS (
    SELECT *, lag(mrr) OVER (PARTITION BY account_id, customer_id ORDER BY moment) IS DISTINCT FROM mrr AS changed
    FROM levels
)
SELECT account_id, customer_id, moment AS valid_from,
       lead(moment) OVER (PARTITION BY account_id, customer_id ORDER BY moment) AS valid_to, mrr
FROM marked
WHERE changed;
-- (the `customer_mrr` view is built from the netted transitions in 66_customer_mrr_view.sql)
