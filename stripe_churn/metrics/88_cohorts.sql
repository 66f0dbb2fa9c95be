-- Cohort revenue retention: customers grouped by the month of their first MRR (their `new` movement);
-- for each month since then, the cohort's MRR at the month end (reactivations and expansion included)
-- over its MRR at the end of its first month. Through the current month (the later of today and the data).
-- Inputs: derived_mrr_movements.

CREATE OR REPLACE MACRO cohort_matrix() AS TABLE
WITH
cohorts AS (
    SELECT account_id, customer_id, period_of('month', min(occurred_at)) AS cohort_month
    FROM derived_mrr_movements WHERE movement = 'new'
    GROUP BY ALL
),
monthly AS (
    SELECT c.cohort_month, period_of('month', m.occurred_at) AS month,
           sum(m.mrr_delta) AS net,
           count(*) FILTER (WHERE m.category IN ('new', 'reactivation'))
           - count(*) FILTER (WHERE m.category = 'churn') AS net_customers
    FROM derived_mrr_movements m
    JOIN cohorts c USING (account_id, customer_id)
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
