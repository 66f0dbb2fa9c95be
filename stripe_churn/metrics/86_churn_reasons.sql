-- churn_reasons (design.md 7): churned MRR and customers by period, churn_type and feedback, from the
-- cancellation movements. `churn_reasons_for(period_kind)` gives week, quarter or year; the view is monthly.
-- Inputs: derived_mrr_movements.

CREATE OR REPLACE MACRO churn_reasons_for(period_kind := 'month') AS TABLE
SELECT period_start, period_end, churn_type, cancellation_feedback, churned_customers,
       money4(churned, 'the MRR churned in the period from ' || period_start) AS churned_mrr
FROM (
    SELECT period_of(period_kind, occurred_at) AS period_start,
           CAST(period_of(period_kind, occurred_at) + period_step(period_kind) - INTERVAL 1 DAY AS DATE) AS period_end,
           churn_type,
           coalesce(cancellation_feedback, '(none)') AS cancellation_feedback,
           count(DISTINCT (account_id, customer_id)) AS churned_customers,
           -sum(mrr_delta) AS churned
    FROM derived_mrr_movements
    WHERE movement = 'cancellation'
    GROUP BY ALL
)
ORDER BY period_start, churn_type, cancellation_feedback;

CREATE OR REPLACE VIEW churn_reasons AS
SELECT * FROM churn_reasons_for('month');
