-- customer_mrr (design.md 7): one row per customer MRR level, as the transitions of 60 net them. A change
-- within `movement_window` (cancel plan X at 23:58, subscribe to plan Y at 00:10) is one level change
-- dated at the window's first change, so the view agrees with mrr_movements and the bridge at every moment
-- (derived_customer_mrr, the un-netted levels, is what the transitions are computed from).
-- Inputs: derived_transitions.

CREATE OR REPLACE TABLE derived_customer_mrr_net AS
SELECT account_id, customer_id, t_start AS valid_from,
       lead(t_start) OVER (PARTITION BY account_id, customer_id ORDER BY t_start) AS valid_to,
       mrr_after AS mrr
FROM derived_transitions;

CREATE OR REPLACE VIEW customer_mrr AS
SELECT account_id, customer_id, valid_from, valid_to, mrr FROM derived_customer_mrr_net;
