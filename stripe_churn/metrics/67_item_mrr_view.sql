-- item_mrr: the state history of every subscription item (design.md 3 and 4: price, quantity, discounts, status,
-- MRR), one row per item level: from valid_from to valid_to (NULL: still so at the latest sync) the item had this
-- price, quantity, subscription status, pause_collection and discounts, and counted mrr_original a month in its own
-- currency (discounts applied, tax excluded; zero while its status counts zero), the amount before discounts
-- beside it. Rows as the items changed, not netted: customer_mrr nets a movement window's changes into one level
-- dated at its first change, so inside a window the items can add up to another amount than customer_mrr shows
-- (once the window's last change is made they add up to its level, in the reporting currency at the day's rate,
-- less the rounding of each row at 4 decimals). What the latest sync cannot know yet is left out, as in the
-- movements (60): a row that begins after it (a repeating coupon that ends next month) is not shown and the row
-- before it stays open. The Stripe ids that date each row: source_event_id, source_invoice_id.
-- Inputs: derived_item_mrr, derived_coverage; the macro money4 (10).

CREATE OR REPLACE VIEW item_mrr AS
SELECT i.account_id, i.customer_id, i.subscription_id, i.subscription_item_id, i.product_id, i.price_id, i.family,
       i.unit_kind, i.usage_type, i.quantity, i.valid_from,
       CASE WHEN i.valid_to <= c.snapshot_at OR c.snapshot_at IS NULL THEN i.valid_to END AS valid_to,
       i.status, coalesce(i.pause_collection, false) AS pause_collection, i.currency,
       money4(round(i.mrr_original, 4), 'the MRR of item ' || i.subscription_item_id || ' in ' || i.currency
              || ' from ' || i.valid_from) AS mrr_original,
       money4(round(i.mrr_undiscounted, 4), 'the MRR before discounts of item ' || i.subscription_item_id || ' in '
              || i.currency || ' from ' || i.valid_from) AS undiscounted_mrr_original,
       i.discount_ids, i.source_event_id, i.source_invoice_id
FROM derived_item_mrr i
LEFT JOIN derived_coverage c USING (account_id)
WHERE c.snapshot_at IS NULL OR i.valid_from <= c.snapshot_at;
