-- Cohort revenue retention: customers grouped by the month of their first MRR (their `new` movement);
-- for each month since then, the cohort's MRR at the month end (reactivations and expansion included)
-- over its MRR at the end of its first month. Through the current month (the later of today and the data).
-- At constant exchange rates (design.md 4: rate swings are their own line, never retention or expansion): the
-- `fx` movements are left out and every other movement in another currency than the reporting one is valued
-- at the rate in force at the end of the cohort's first month (its amount in its own currency times that rate;
-- its own amount when that was the rate it was made at), so an unchanged customer stays at 100% and one who left
-- counts nothing.
-- Inputs: derived_mrr_movements, derived_settings, fx_rates, derived_fx_days; the macro utc_date (50).

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
monthly AS (
    SELECT c.cohort_month, period_of('month', m.occurred_at) AS month,
           -- (a movement in the reporting currency, or with no rate at the cohort's month end, as it is; one made
           -- while the rate was the cohort's, on the day before its window and on the day it ended, as the
           -- movements are valued, is its own amount too: exact, where the amount in its currency rounded to 4
           -- decimals times the rate is off by up to half a 1e-4 per row)
           sum(CASE WHEN m.category = 'fx' THEN 0
                    WHEN r.rate IS NULL THEN m.mrr_delta
                    WHEN fa.rate = r.rate AND fb.rate = r.rate THEN m.mrr_delta
                    ELSE m.amount_delta_original * r.rate END) AS net,
           count(*) FILTER (WHERE m.category IN ('new', 'reactivation'))
           - count(*) FILTER (WHERE m.category = 'churn') AS net_customers
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
