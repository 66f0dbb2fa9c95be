-- Cohort revenue retention: customers grouped by the month of their first MRR (their `new` movement);
-- for each month since then, the cohort's MRR at the month end (reactivations and expansion included)
-- over its MRR at the end of its first month. Through the current month (the later of today and the data).
-- At constant exchange rates (design.md 4: rate swings are their own line, never retention or expansion): the
-- `fx` movements are left out and every other movement in another currency than the reporting one is valued
-- at the rate in force at the end of the cohort's first month (its amount in its own currency times that rate,
-- exactly as step 64 values a part, `rep20`; its own amount when that was the rate it was made at), so an unchanged
-- customer stays at 100% and one who left counts nothing.
-- Inputs: derived_mrr_movements, derived_item_mrr, derived_price_terms, derived_settings, fx_rates,
-- derived_fx_days; the macros utc_date (50), whole_again and over_den20 (10).

CREATE OR REPLACE MACRO cohort_matrix() AS TABLE
WITH
cohorts AS (
    SELECT account_id, customer_id, period_of('month', min(occurred_at)) AS cohort_month
    FROM derived_mrr_movements WHERE movement = 'new'
    GROUP BY ALL
),
-- the rate of each currency a cohort's movements are in, in force on the last day of the cohort's first month
-- (the day its base is taken at; a rate holds from its date until the next dated row, as in step 50)
cohort_rates AS (
    SELECT r.cohort_month, r.currency, f.rate
    FROM (SELECT DISTINCT c.cohort_month, m.currency, CAST(c.cohort_month + INTERVAL 1 MONTH AS DATE) - 1 AS last_day
          FROM derived_mrr_movements m
          JOIN cohorts c USING (account_id, customer_id)
          CROSS JOIN derived_settings st
          WHERE m.category <> 'fx' AND m.currency IS NOT NULL AND m.currency <> st.reporting_currency) r
    ASOF LEFT JOIN (SELECT lower(currency) AS currency, date, CAST(rate AS DECIMAL(18, 8)) AS rate FROM fx_rates) f
      ON f.currency = r.currency AND f.date <= r.last_day
),
valued AS (
    SELECT c.cohort_month, m.account_id, m.customer_id, m.occurred_at, m.category, m.mrr_delta, m.currency,
           m.amount_exact, r.rate,
           -- (a movement in the reporting currency, or with no rate at the cohort's month end, is its own amount;
           -- one made while the rate was the cohort's, on the day before its window and on the day it ended, as
           -- the movements are valued, too; the others are valued at the cohort's rate)
           m.category <> 'fx' AND r.rate IS NOT NULL
               AND NOT coalesce(fa.rate = r.rate AND fb.rate = r.rate, false) AS revalued
    FROM derived_mrr_movements m
    JOIN cohorts c USING (account_id, customer_id)
    LEFT JOIN cohort_rates r ON r.cohort_month = c.cohort_month AND r.currency = m.currency
    -- (the rates of the UTC days that value the movement's states before and after, as step 62 takes them)
    LEFT JOIN derived_fx_days fa
      ON r.rate IS NOT NULL AND fa.currency = m.currency
     AND fa.day = utc_date(m.occurred_at - INTERVAL 1 MICROSECOND)
    LEFT JOIN derived_fx_days fb
      ON r.rate IS NOT NULL AND fb.currency = m.currency
     AND fb.day = utc_date(m.t_end)
),
-- for the customers of a revalued movement, per currency: the least common multiple of 12 x interval_count of
-- their items' prices (a multiple of the `den` of each of their changes, step 64), so that a change such as 100.00
-- GBP a year, 8.333333333 GBP a month, is whole again before the rate (x 1.481478 = 12.34565, exactly; the amount
-- rounded to 4 decimals, 8.3333, gave 12.3456)
dens AS (
    SELECT i.account_id, i.customer_id, i.currency,
           list_reduce(list(DISTINCT 12 * coalesce(t.interval_count, 1)), lambda a, b: lcm(a, b)) AS den
    FROM derived_item_mrr i
    LEFT JOIN derived_price_terms t ON t.account_id = i.account_id AND t.price_id = i.price_id
    WHERE (i.account_id, i.customer_id) IN (SELECT (account_id, customer_id) FROM valued WHERE revalued)
    GROUP BY ALL
),
-- (each revalued movement times its customer's den is whole again at its own precision, `whole_again`; those are
-- summed per month, rate and den, and only the sums are taken to the rate and over den, `over_den20`, as `rep20`
-- does a part)
monthly_parts AS (
    SELECT v.cohort_month, period_of('month', v.occurred_at) AS month, v.rate, d.den,
           sum(CASE WHEN v.category = 'fx' THEN 0
                    WHEN NOT v.revalued THEN v.mrr_delta
                    WHEN d.den IS NULL THEN v.amount_exact * v.rate END) AS own,
           sum(whole_again(v.amount_exact * d.den, 10 * d.den)) FILTER (WHERE v.revalued AND v.category <> 'fx')
               AS over_den,
           count(*) FILTER (WHERE v.category IN ('new', 'reactivation'))
           - count(*) FILTER (WHERE v.category = 'churn') AS net_customers
    FROM valued v
    LEFT JOIN dens d ON v.revalued AND d.account_id = v.account_id AND d.customer_id = v.customer_id
                    AND d.currency = v.currency
    GROUP BY ALL
),
monthly AS (
    SELECT cohort_month, month,
           sum(coalesce(own, 0) + coalesce(over_den20(over_den, den, rate), 0)) AS net,
           sum(net_customers) AS net_customers
    FROM monthly_parts
    GROUP BY ALL
),
sizes AS (SELECT cohort_month, count(*) AS cohort_customers FROM cohorts GROUP BY ALL),
last_month AS (
    SELECT period_of('month', greatest(now(), (SELECT max(t_end) FROM derived_mrr_movements))) AS m
),
spine AS (
    SELECT s.cohort_month, s.cohort_customers, CAST(g.m AS DATE) AS month
    FROM sizes s, last_month l,
         generate_series(CAST(s.cohort_month AS TIMESTAMP), CAST(l.m AS TIMESTAMP), INTERVAL 1 MONTH) AS g(m)
),
running AS (
    SELECT sp.cohort_month, sp.cohort_customers, sp.month,
           sum(coalesce(mo.net, 0)) OVER w AS mrr,
           sum(coalesce(mo.net_customers, 0)) OVER w AS active_customers
    FROM spine sp
    LEFT JOIN monthly mo ON mo.cohort_month = sp.cohort_month AND mo.month = sp.month
    WINDOW w AS (PARTITION BY sp.cohort_month ORDER BY sp.month ROWS UNBOUNDED PRECEDING)
)
SELECT cohort_month,
       CAST(datediff('month', cohort_month, month) AS INTEGER) AS months_since_start,
       month,
       cohort_customers,
       CAST(active_customers AS BIGINT) AS active_customers,
       money4(first_value(mrr) OVER (PARTITION BY cohort_month ORDER BY month),
              'the starting MRR of the cohort of ' || cohort_month) AS starting_mrr,
       money4(mrr, 'the MRR in ' || month || ' of the cohort of ' || cohort_month) AS mrr,
       CAST(mrr / nullif(first_value(mrr) OVER (PARTITION BY cohort_month ORDER BY month), 0) AS DOUBLE)
           AS revenue_retention
FROM running
ORDER BY cohort_month, month;

CREATE OR REPLACE VIEW cohort_revenue_retention AS
SELECT * FROM cohort_matrix();
