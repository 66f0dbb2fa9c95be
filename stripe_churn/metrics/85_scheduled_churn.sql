-- scheduled_churn (design.md 4 and 7): subscriptions set to cancel (cancel_at_period_end, or a cancel_at)
-- that have not ended yet, with the MRR at stake (what the cancellation takes: their MRR just before it takes
-- effect, so a coupon that runs past the date still reduces it, and one that ends before it no longer does;
-- their current MRR when that date is unknown; for a trial that ends before it, the MRR the trial converts to,
-- from derived_trial_item_mrr) and the date, in the reporting currency at today's rate: the rate
-- of the latest day on or before the day the view is queried (derived_fx_days runs only to the day of the last
-- recompute: the next day found no rate there). Inputs: derived_subs, derived_item_mrr, derived_trial_item_mrr,
-- derived_price_terms, derived_fx_days, derived_settings; the macros whole_again and round_over4 (10).

CREATE OR REPLACE VIEW scheduled_churn AS
WITH
cfg AS (SELECT lower(reporting_currency) AS rep FROM derived_settings),
pending AS (
    SELECT s.*,
           coalesce(s.cancel_at,
                    (SELECT max(ts_of(json_extract_string(it, '$.current_period_end')))
                     FROM unnest(CAST(json_extract(coalesce(s.state, r.raw), '$.items.data[*]') AS JSON[])) AS u(it)))
               AS effective_at,
           -- (when a paused collection that counts zero resumes: Stripe's pause_collection.resumes_at; NULL for a
           -- pause with no end, and when a paused collection keeps its MRR)
           CASE WHEN NOT st.pause_collection_keeps_mrr
                THEN ts_of(json_extract_string(coalesce(s.state, r.raw), '$.pause_collection.resumes_at')) END
               AS resumes_at
    FROM derived_subs s
    CROSS JOIN derived_settings st
    -- a snapshot's JSON is kept in subscriptions only
    LEFT JOIN subscriptions r ON s.in_snapshot AND r.account_id = s.account_id AND r.id = s.subscription_id
    WHERE s.ended_at IS NULL AND coalesce(s.status, '') NOT IN ('canceled', 'incomplete_expired')
      AND (s.cancel_at_period_end OR s.cancel_at IS NOT NULL)
      -- with churn_recognition = 'canceled' the churn is already counted when the cancellation is made
      AND NOT (st.churn_recognition = 'canceled' AND s.canceled_at IS NOT NULL)
),
current_items AS (
    SELECT i.account_id, i.subscription_id, i.subscription_item_id, i.currency, i.mrr_original, p.effective_at,
           -- (a trial that ends before the cancellation takes effect converts first: the cancellation takes
           -- the MRR it converts to; one that ends with the trial, as at its period end, never converts; so too a
           -- paused collection that counts zero and resumes before it)
           (i.status = 'trialing' AND p.trial_end < p.effective_at)
               OR (i.pause_collection AND p.resumes_at < p.effective_at)
               AS converts,
           -- (12 x interval_count of its price: its MRR times this is a short decimal again, as in step 50)
           12 * coalesce(pt.interval_count, 1) AS den,
           CAST(timezone('UTC', now()) AS DATE) AS today
    FROM derived_item_mrr i
    JOIN pending p ON p.account_id = i.account_id AND p.subscription_id = i.subscription_id
    LEFT JOIN derived_price_terms pt ON pt.account_id = i.account_id AND pt.price_id = i.price_id
    WHERE CASE WHEN p.effective_at IS NULL THEN i.valid_to IS NULL
               ELSE i.valid_from < p.effective_at AND (i.valid_to IS NULL OR i.valid_to >= p.effective_at) END
),
-- an item of such a trial (or paused collection): the MRR it would have as a paying item just before the
-- cancellation (step 40)
at_stake AS (
    SELECT c.account_id, c.subscription_id, c.currency, c.today, c.den,
           CASE WHEN c.converts THEN coalesce(t.mrr_original, 0) ELSE c.mrr_original END AS mrr_original
    FROM current_items c
    ASOF LEFT JOIN derived_trial_item_mrr t
      ON t.account_id = c.account_id AND t.subscription_item_id = c.subscription_item_id
     AND t.moment < c.effective_at
),
-- Valued as step 50 values a customer's MRR, so that the MRR at stake is, to the 1e-4, what the cancellation
-- will take at an unchanged rate: each currency's sum of item MRRs (cut at 10 decimals) times d, the least common
-- multiple of the items' den, made whole again, times the rate, over d rounded at 4 half away from zero in
-- integers (100.00 GBP a year at 1.481478 is 12.34565: 12.3457, where the cut sum times the rate said 12.3456).
sub_den AS (
    SELECT account_id, subscription_id, list_reduce(list(den), lambda a, b: lcm(a, b)) AS d
    FROM at_stake
    GROUP BY ALL
),
per_currency AS (
    SELECT c.account_id, c.subscription_id, c.currency, sd.d,
           whole_again(sd.d * sum(c.mrr_original), count(*) * sd.d) AS ds,
           any_value(CASE WHEN c.currency = cfg.rep THEN CAST(1 AS DECIMAL(18, 8)) ELSE r.rate END) AS rate
    FROM at_stake c
    JOIN sub_den sd USING (account_id, subscription_id)
    CROSS JOIN cfg
    ASOF LEFT JOIN derived_fx_days r ON r.currency = c.currency AND r.day <= c.today
    GROUP BY c.account_id, c.subscription_id, c.currency, sd.d
),
valued AS (
    -- (in 1e-17 of the reporting currency, and of the subscription's own, over d)
    SELECT account_id, subscription_id, any_value(currency) AS currency,
           round_over4(sum(CAST(ds * 1000000000 AS HUGEINT) * rate_e8(rate)), d) AS mrr,
           round_over4(sum(CAST(ds * 1000000000 AS HUGEINT) * 100000000), d) AS mrr_original
    FROM per_currency
    GROUP BY account_id, subscription_id, d
)
SELECT p.account_id, p.customer_id, p.subscription_id, p.effective_at AS cancel_at, p.cancel_at_period_end,
       p.canceled_at, p.status,
       CAST(coalesce(v.mrr, 0) AS DECIMAL(18, 4)) AS mrr_at_stake,
       coalesce(v.currency, p.currency) AS currency,
       CAST(coalesce(v.mrr_original, 0) AS DECIMAL(18, 4)) AS mrr_at_stake_original,
       p.cancellation_reason, p.cancellation_feedback, p.cancellation_comment
FROM pending p
LEFT JOIN valued v USING (account_id, subscription_id)
ORDER BY cancel_at, subscription_id;
