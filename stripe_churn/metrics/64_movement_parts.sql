-- Labelled parts of every transition (design.md 5), unrounded, in the reporting currency.
-- new / reactivation / cancellation take the whole customer delta; any other transition is split into
-- components: the same item in A and B, then removed and added items of one family paired as plan switches
-- (largest MRR first, in the reporting currency), then what stays unpaired. A same-item or paired component
-- splits into plan part = MRR(new price, old qty) - MRR(old price, old qty) and quantity part = the rest (both at the
-- discount before the change), plus a discount part when the discounts in force changed (on the item, or from
-- a pair's removed item to its added one); rate changes are one fx part. Each item's parts are valued at the rate
-- of its own change (the day its B row begins, or its A row ends when removed; a rate moves at 00:00 UTC, before a
-- change made then), and the fx part is the rate's move on what each item held when the rate moved: in a window
-- from 23:50 to 00:10 across a rate's move (60), a seat added at 00:10 is valued at the new rate and the swing on the
-- seats held before is fx; a seat added at 23:50 is valued at the old rate and the swing on every seat is fx.
-- Each part in the item's currency is rounded at 9 decimals before the rate, as 50 rounds a customer's sum: an
-- item MRR is cut at 10 decimals, so a part made of a few of them is off by under half a 1e-9, and an exact half
-- at 4 decimals (2.125 GBP x 1.27 = 2.69875) must not fall just under it (2.1249999999 x 1.27 -> 2.6987); times
-- the rate it is taken to 1e-20 by `rep20` (step 10), so that one the rate makes a half (8.3333... GBP x 1.481478 =
-- 12.34565) is exactly that. The
-- whole customer delta of new, reactivation and cancellation is a sum of item MRRs in its currency, made whole
-- again as step 50 makes a customer's (`whole_again`).
-- Inputs: derived_transitions, derived_transition_items, price_mrr.

-- The item that stands for the customer in each transition: largest MRR in B (`b_item`, its B row `b_rid`, at
-- B's rates) and in A (`a_item`, at A's); 80 reads it too.
-- (the B item and its row from one arg_max: each costs a comparison of its key per row)
CREATE OR REPLACE TEMP TABLE derived_transition_mains AS
SELECT tid, b.item AS b_item, b.rid AS b_rid, a_item
FROM (SELECT tid,
             arg_max({'item': subscription_item_id, 'rid': b_rid},
                     (coalesce(b_mrr, 0) * coalesce(b_rate_b, 0), subscription_item_id)) FILTER (WHERE in_b) AS b,
             arg_max(subscription_item_id, (coalesce(a_mrr, 0) * coalesce(a_rate_a, 0), subscription_item_id))
                 FILTER (WHERE in_a) AS a_item
      FROM derived_transition_items
      GROUP BY ALL);

-- (for `exacted` below) whole9: x x den, a short decimal again, in 1e-9 units. fraction_rep12: x x m / u at the rate
-- from three such values (x9 x m9 / (den x u9)), truncated toward zero at 1e-12: a half at 4 decimals is held
-- exactly, and nothing below one reaches it
CREATE OR REPLACE MACRO whole9(x, den) AS CAST(whole_again(x * den, 10 * den) * 1000000000 AS HUGEINT);
CREATE OR REPLACE MACRO fraction_rep12(x9, m9, u9, den, rate) AS
    CAST(CAST(sign(x9) * (abs(x9) * m9 * rate_e8(rate) // (den * u9 * 100000)) AS DECIMAL(38, 0))
         * CAST(0.000000000001 AS DECIMAL(12, 12)) AS DECIMAL(38, 20));

CREATE OR REPLACE TEMP TABLE derived_movement_parts AS
WITH
ti AS NOT MATERIALIZED (
    SELECT *,
           coalesce(a_mrr, 0) * coalesce(a_rate_a, 0) AS a_rep,
           coalesce(b_mrr, 0) * coalesce(b_rate_b, 0) AS b_rep
    FROM derived_transition_items
),
moving AS NOT MATERIALIZED (
    SELECT * FROM ti WHERE kind = 'change'
),
-- the families on each side of a transition with an unpaired (removed or added) item: only those read them
fams AS (
    SELECT tid, family, bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b
    FROM (SELECT tid, a_family AS family, 'a' AS side FROM moving WHERE in_a
          UNION ALL
          SELECT tid, b_family, 'b' FROM moving WHERE in_b)
    WHERE tid IN (SELECT tid FROM moving WHERE in_a <> in_b)
    GROUP BY ALL
),
-- (largest MRR first in the reporting currency, whatever the currencies: a customer who leaves a plan in one
-- currency for one in another, as Stripe's multi-currency customers may, switches plans)
removed AS (
    SELECT *, row_number() OVER (PARTITION BY tid, a_family ORDER BY a_rep DESC, a_mrr DESC, subscription_item_id) AS rk
    FROM moving WHERE in_a AND NOT in_b
),
added AS (
    SELECT *, row_number() OVER (PARTITION BY tid, b_family ORDER BY b_rep DESC, b_mrr DESC, subscription_item_id) AS rk
    FROM moving WHERE in_b AND NOT in_a
),
-- the components by item row; their other columns are read from derived_item_mrr for these rows only
comp_rows AS (
    -- (an item whose row changed at an equal MRR still has parts when they offset each other: a discount
    -- that ends as the usage drops)
    SELECT tid, 'same' AS comp, a_rid, b_rid, a_rate_c, b_rate_c
    FROM moving
    WHERE in_a AND in_b AND (b_mrr <> a_mrr OR a_rid <> b_rid)
    UNION ALL
    SELECT coalesce(r.tid, d.tid),
           CASE WHEN r.subscription_item_id IS NULL THEN 'added'
                WHEN d.subscription_item_id IS NULL THEN 'removed' ELSE 'pair' END,
           r.a_rid, d.b_rid,
           -- (a plan switch is made when its new item begins: its old one at the rate of that day too)
           CASE WHEN d.subscription_item_id IS NULL THEN r.a_rate_c
                WHEN r.a_currency IS NOT DISTINCT FROM d.b_currency THEN d.b_rate_c
                WHEN r.a_currency = cfg.rep THEN 1
                ELSE x.rate END,
           d.b_rate_c
    FROM removed r
    FULL JOIN added d
        ON r.tid = d.tid AND r.a_family = d.b_family AND r.rk = d.rk
    CROSS JOIN (SELECT lower(reporting_currency) AS rep FROM derived_settings) cfg
    LEFT JOIN derived_fx_days x ON x.currency = r.a_currency AND x.day = d.day_c
),
comps AS (
    SELECT k.tid, t.account_id, t.customer_id, t.t_start, k.comp,
           a.subscription_item_id AS a_item_id, a.subscription_id AS a_subscription_id, a.product_id AS a_product_id,
           a.price_id AS a_price_id, a.family AS a_family, a.unit_kind AS a_unit_kind, a.usage_type AS a_usage_type,
           a.quantity AS a_quantity, a.currency AS a_currency,
           -- (a pair across currencies: the removed item's amounts in the added one's currency, at the rates of
           -- the change, so that its parts, valued at the B currency's rate then, come to the change in the
           -- reporting currency)
           CASE WHEN k.comp = 'pair' AND a.currency <> b.currency
                THEN CAST(CAST(a.mrr_original * k.a_rate_c AS DECIMAL(38, 18)) / k.b_rate_c AS DECIMAL(38, 10))
                ELSE a.mrr_original END AS a_mrr,
           CASE WHEN k.comp = 'pair' AND a.currency <> b.currency
                THEN CAST(CAST(a.mrr_undiscounted * k.a_rate_c AS DECIMAL(38, 18)) / k.b_rate_c AS DECIMAL(38, 10))
                ELSE a.mrr_undiscounted END AS a_undisc,
           a.discount_factor AS a_factor, k.a_rate_c, a.discount_ids AS a_discount_ids,
           b.subscription_item_id AS b_item_id, b.subscription_id AS b_subscription_id, b.product_id AS b_product_id,
           b.price_id AS b_price_id, b.family AS b_family, b.unit_kind AS b_unit_kind, b.usage_type AS b_usage_type,
           b.quantity AS b_quantity, b.currency AS b_currency, b.mrr_original AS b_mrr,
           b.mrr_undiscounted AS b_undisc, b.discount_factor AS b_factor, k.b_rate_c, b.discount_ids AS b_discount_ids,
           b.source_event_id AS b_event_id, b.source_invoice_id AS b_invoice_id, b.valid_from AS b_valid_from,
           b.net_share AS b_net_share, a.net_share AS a_net_share,
           -- (each side's share of an amount off shared among the subscription's items, exactly: 40)
           a.shared_off_num AS a_off_num, a.shared_off_den AS a_off_den,
           b.shared_off_num AS b_off_num, b.shared_off_den AS b_off_den,
           -- (12 x interval_count of each side's price, their least common multiple: see rep20)
           lcm(12 * coalesce(pa.interval_count, 1), 12 * coalesce(pb.interval_count, 1)) AS den
    FROM comp_rows k
    JOIN derived_transitions t USING (tid)
    LEFT JOIN derived_item_mrr a ON a.rowid = k.a_rid
    LEFT JOIN derived_item_mrr b ON b.rowid = k.b_rid
    LEFT JOIN derived_price_terms pa ON pa.account_id = a.account_id AND pa.price_id = a.price_id
    LEFT JOIN derived_price_terms pb ON pb.account_id = b.account_id AND pb.price_id = b.price_id
),
shaped AS (
    SELECT c.*,
           coalesce(c.a_usage_type = 'metered', false) OR coalesce(c.b_usage_type = 'metered', false) AS metered,
           coalesce(c.a_factor, c.b_factor, 1) AS f_a,
           coalesce(c.b_factor, c.a_factor, 1) AS f_b,
           -- the same amount off before and after, by the same discounts (a fixed amount_off that stays, as the
           -- amount it is taken from changes; other discounts taking off the same amount by chance are a
           -- discount change); an item of no amount on either side says nothing of its discount
           c.a_undisc - c.a_mrr = c.b_undisc - c.b_mrr AND c.a_undisc <> 0 AND c.b_undisc <> 0
               AND c.a_discount_ids IS NOT DISTINCT FROM c.b_discount_ids AS same_off
    FROM comps c
),
-- MRR(new price, old quantity): only needed when both price and quantity changed on a licensed item.
cross_terms AS (
    SELECT DISTINCT account_id, b_price_id, b_currency, a_quantity,
           price_mrr_in(account_id, b_price_id, b_currency, a_quantity) AS cross_mrr
    FROM shaped
    WHERE comp IN ('same', 'pair') AND NOT metered AND a_quantity IS NOT NULL AND b_quantity IS NOT NULL
      AND a_quantity <> b_quantity AND a_price_id <> b_price_id
),
valued AS (
    SELECT s.*,
           CASE WHEN s.f_a = s.f_b THEN s.f_a WHEN s.same_off THEN 1 ELSE s.f_a END AS f,
           -- a discount part only when the discounts in force changed: on the item, or from the removed item of
           -- a pair to the added one (a plan switch onto a new item id is labelled as one on the same item)
           s.a_discount_ids IS DISTINCT FROM s.b_discount_ids
               AND NOT (s.f_a = s.f_b OR s.same_off) AS discount_changed,
           CASE WHEN s.metered OR s.a_quantity IS NULL OR s.b_quantity IS NULL THEN NULL
                WHEN s.a_quantity = s.b_quantity THEN s.b_undisc
                WHEN s.a_price_id = s.b_price_id THEN s.a_undisc
                -- (less tax at the B item's share, as its MRR is, for a tax-inclusive price)
                WHEN s.b_net_share IS NULL THEN x.cross_mrr
                ELSE CAST(x.cross_mrr * CAST(s.b_net_share AS DECIMAL(18, 15)) AS DECIMAL(38, 10)) END AS cross_mrr
    FROM shaped s
    LEFT JOIN cross_terms x ON x.account_id = s.account_id AND x.b_price_id = s.b_price_id
                           AND x.b_currency IS NOT DISTINCT FROM s.b_currency AND x.a_quantity = s.a_quantity
                           AND s.comp IN ('same', 'pair') AND NOT s.metered
),
split AS (
    -- plan (p), quantity or usage (q) and discount (d) parts in the item's own currency: a metered item at the
    -- same price (the same item, or a removed and an added one paired) moved by usage; a metered item, or one of
    -- no quantity, at another price moved by its plan (design.md 5: price changed is upgrade / downgrade)
    SELECT v.*,
           CASE WHEN v.usage_only THEN (v.b_undisc - v.a_undisc) * v.f
                WHEN v.cross_mrr IS NULL THEN 0
                ELSE (v.b_undisc - v.cross_mrr) * v.f END AS q0,
           CASE WHEN v.usage_only THEN 0
                WHEN v.cross_mrr IS NULL THEN (v.b_undisc - v.a_undisc) * v.f
                ELSE (v.cross_mrr - v.a_undisc) * v.f END AS p0
    FROM (SELECT *, metered AND a_price_id IS NOT DISTINCT FROM b_price_id AS usage_only FROM valued) v
    WHERE v.comp IN ('same', 'pair')
),
settled AS (
    SELECT s.*,
           (s.b_mrr - s.a_mrr) - s.q0 - coalesce(s.p0, 0) AS rest,
           -- what is left when no discount changed is rounding or a fixed amount_off: it joins a part, the larger;
           -- of two equal ones, the larger before discounts: an amount off that took all of the item's MRR leaves
           -- both at 0 (seats added to an item it covered whole are seats, not a plan change)
           CASE WHEN s.discount_changed THEN 'd'
                WHEN s.usage_only THEN 'q'
                WHEN s.p0 IS NULL OR abs(s.p0) > abs(s.q0) THEN 'p'
                WHEN abs(s.p0) < abs(s.q0) THEN 'q'
                WHEN s.cross_mrr IS NULL OR abs(s.cross_mrr - s.a_undisc) >= abs(s.b_undisc - s.cross_mrr) THEN 'p'
                ELSE 'q' END AS rest_to
    FROM split s
),
-- A plan or quantity part valued at the item's own discount factor (its percent coupons, its own amount off) is a
-- fraction: (the undiscounted change) x a_mrr / a_undisc. Each of the three, times `den`, is a short decimal again
-- (`whole_again`), so the part times the rate is taken to 1e-12 exactly in integers, and the part that takes the
-- rest is the item's whole change at the rate (exact too) less the others: a discount part of 9.6428571... EUR at
-- 1.0423 is 10.05075, not 10.0507499988 (a plan switch off 2 x 32.20 under 22.50 off onto 27.60). Not where a
-- shared amount off's share or a tax-inclusive price's share makes a side's MRR no short decimal, across
-- currencies, for metered usage, or for values so large that the product would not fit (rep20 there, as before).
flagged AS (
    SELECT *,
           coalesce(comp IN ('same', 'pair') AND NOT metered AND NOT same_off AND f <> 1 AND f = f_a
                    AND a_factor IS NOT NULL AND a_undisc > 0 AND a_mrr >= 0 AND a_currency = b_currency
                    AND a_off_num IS NULL AND b_off_num IS NULL AND a_net_share IS NULL AND b_net_share IS NULL
                    -- (only where the cut path can miss: at a rate other than 1, whose digits can make an exact
                    -- half of a fraction that does not end, and a factor that is no exact decimal of 10 places, as
                    -- a percent is; elsewhere rep20 is exact. Every discounted part took this path at first: 64
                    -- went 20.2 -> 25.8 s at 1M)
                    AND rate_e8(b_rate_c) <> 100000000 AND a_factor * a_undisc <> a_mrr
                    AND rate_e8(b_rate_c) < 10000000000 AND a_undisc * den < 100000
                    AND abs(b_undisc - a_undisc) * den < 100000
                    AND abs(coalesce(cross_mrr, 0) - a_undisc) * den < 100000
                    AND abs(b_undisc - coalesce(cross_mrr, 0)) * den < 100000, false) AS exact_ok
    FROM settled
),
-- (one pass over every part, the fraction worked out only on the flagged rows: a CASE evaluates its branch for
-- those alone, where splitting the rows and putting them together again cost about 1 s of 64 at 200k)
exacted AS (
    SELECT *,
           CASE WHEN exact_ok THEN CASE WHEN rest_to = 'p' THEN dm_rep - q_rep ELSE p_rep END END AS p_rep_x,
           CASE WHEN exact_ok THEN CASE WHEN rest_to = 'q' THEN dm_rep - p_rep ELSE q_rep END END AS q_rep_x,
           CASE WHEN exact_ok THEN CASE WHEN rest_to = 'd' THEN dm_rep - p_rep - q_rep ELSE 0 END END AS d_rep_x
    FROM (
        SELECT *,
               CASE WHEN exact_ok THEN rep20(round(b_mrr - a_mrr, 9), den, b_rate_c) END AS dm_rep,
               CASE WHEN exact_ok THEN fraction_rep12(p9, m9, u9, den, b_rate_c) END AS p_rep,
               CASE WHEN exact_ok THEN fraction_rep12(q9, m9, u9, den, b_rate_c) END AS q_rep
        FROM (
            SELECT *,
                   CASE WHEN exact_ok THEN
                       whole9(CASE WHEN cross_mrr IS NULL THEN b_undisc - a_undisc ELSE cross_mrr - a_undisc END, den)
                   END AS p9,
                   CASE WHEN exact_ok THEN whole9(CASE WHEN cross_mrr IS NULL THEN 0 ELSE b_undisc - cross_mrr END, den)
                   END AS q9,
                   CASE WHEN exact_ok THEN whole9(a_mrr, den) END AS m9,
                   CASE WHEN exact_ok THEN whole9(a_undisc, den) END AS u9
            FROM flagged
        )
    )
),
item_parts AS (
    SELECT tid, account_id, customer_id, t_start, comp, part,
           -- (a discount part that is all of the item's change, made of a shared amount off's share on one side
           -- alone (it began or ended): valued from that share exactly, to 1e-12, as rep20 cannot take a share that
           -- is no short decimal to an exact half the rate makes: 13.50 EUR x 12.5 / 87.5 at 1.3349 is 2.57445)
           CASE WHEN p_rep_x IS NOT NULL THEN CASE part WHEN 'p' THEN p_rep_x WHEN 'q' THEN q_rep_x ELSE d_rep_x END
                WHEN part = 'd' AND comp = 'same' AND rest_to = 'd' AND p0 = 0 AND q0 = 0
                     AND a_currency = b_currency AND rate_e8(b_rate_c) < 10000000000
                     AND (a_off_num IS NULL) <> (b_off_num IS NULL)
                     AND coalesce(a_off_num, b_off_num) < CAST(10000000000000000000000000000 AS HUGEINT)
                     AND abs(CAST((a_mrr - b_mrr) * 10000000000 AS HUGEINT)
                             - CASE WHEN b_off_num IS NULL THEN -1 ELSE 1 END
                               * (coalesce(a_off_num, b_off_num) // coalesce(a_off_den, b_off_den))) <= 1
                THEN CAST(CAST(CASE WHEN b_off_num IS NULL THEN 1 ELSE -1 END
                               * (coalesce(a_off_num, b_off_num) * rate_e8(b_rate_c)
                                  // (coalesce(a_off_den, b_off_den) * 1000000)) AS DECIMAL(38, 0))
                          * CAST(0.000000000001 AS DECIMAL(12, 12)) AS DECIMAL(38, 20))
                ELSE rep20(amount_original, den, b_rate_c) END AS amount_rep,
           amount_original, b_currency AS currency, b_subscription_id AS subscription_id,
           b_item_id AS subscription_item_id, b_product_id AS product_id, b_price_id AS price_id,
           b_event_id AS event_id, b_invoice_id AS invoice_id, b_valid_from AS row_from,
           CASE part
               WHEN 'p' THEN CASE WHEN amount_original > 0 THEN 'upgrade' ELSE 'downgrade' END
               WHEN 'q' THEN coalesce(b_unit_kind, 'seat')
                             || CASE WHEN amount_original > 0 THEN '_expansion' ELSE '_contraction' END
               ELSE 'discount'
           END AS movement,
           -- an item of the same price, quantity and discounts whose MRR moved only because a subscription's
           -- fixed amount_off is shared anew among its items (another item changed): that part belongs to the
           -- change that caused it
           comp = 'same' AND NOT metered AND a_price_id = b_price_id AND a_quantity IS NOT DISTINCT FROM b_quantity
               AND NOT discount_changed AND a_discount_ids IS NOT DISTINCT FROM b_discount_ids AS realloc
    FROM (
        SELECT *, 'p' AS part,
               round(coalesce(p0, 0) + CASE WHEN rest_to = 'p' THEN rest ELSE 0 END, 9) AS amount_original
        FROM exacted
        UNION ALL
        SELECT *, 'q', round(q0 + CASE WHEN rest_to = 'q' THEN rest ELSE 0 END, 9) FROM exacted
        UNION ALL
        SELECT *, 'd', round(CASE WHEN rest_to = 'd' THEN rest ELSE 0 END, 9) FROM exacted
    )
    WHERE amount_original <> 0
),
unpaired_parts AS (
    SELECT c.tid, c.account_id, c.customer_id, c.t_start, c.comp, c.comp AS part,
           CASE WHEN c.comp = 'added' THEN rep20(round(c.b_mrr, 9), c.den, c.b_rate_c)
                ELSE -rep20(round(c.a_mrr, 9), c.den, c.a_rate_c) END AS amount_rep,
           CASE WHEN c.comp = 'added' THEN round(c.b_mrr, 9) ELSE -round(c.a_mrr, 9) END AS amount_original,
           CASE WHEN c.comp = 'added' THEN c.b_currency ELSE c.a_currency END AS currency,
           CASE WHEN c.comp = 'added' THEN c.b_subscription_id ELSE c.a_subscription_id END AS subscription_id,
           CASE WHEN c.comp = 'added' THEN c.b_item_id ELSE c.a_item_id END AS subscription_item_id,
           CASE WHEN c.comp = 'added' THEN c.b_product_id ELSE c.a_product_id END AS product_id,
           CASE WHEN c.comp = 'added' THEN c.b_price_id ELSE c.a_price_id END AS price_id,
           c.b_event_id AS event_id, c.b_invoice_id AS invoice_id, c.b_valid_from AS row_from,
           CASE
               WHEN c.comp = 'added' AND f.in_a THEN coalesce(c.b_unit_kind, 'seat') || '_expansion'
               WHEN c.comp = 'added' THEN 'cross_sell'
               WHEN f.in_b THEN coalesce(c.a_unit_kind, 'seat') || '_contraction'
               ELSE 'downgrade'
           END AS movement
    FROM comps c
    JOIN fams f ON f.tid = c.tid AND f.family = CASE WHEN c.comp = 'added' THEN c.b_family ELSE c.a_family END
    WHERE c.comp IN ('added', 'removed')
      AND CASE WHEN c.comp = 'added' THEN c.b_mrr ELSE c.a_mrr END <> 0
),
fx_parts AS (
    -- (each item's A side from A's rate to its change's, and its B side from its change's rate to B's: the rate's
    -- move on what it held when the rate moved; on the main item of B when its currency's rate moved, else on the
    -- item of the largest such move, with that item's own fields)
    SELECT f.tid, t.account_id, t.customer_id, t.t_start, 'fx' AS comp, 'fx' AS part, f.amount_rep,
           0 AS amount_original, r.currency, r.subscription_id, r.subscription_item_id, r.product_id, r.price_id,
           CAST(NULL AS VARCHAR) AS event_id, CAST(NULL AS VARCHAR) AS invoice_id,
           CAST(NULL AS TIMESTAMPTZ) AS row_from,
           'fx' AS movement
    FROM (SELECT tid, sum(a_fx + b_fx) AS amount_rep,
                 list_concat(list(DISTINCT a_currency) FILTER (WHERE a_fx <> 0),
                             list(DISTINCT b_currency) FILTER (WHERE b_fx <> 0)) AS moved,
                 arg_max(CASE WHEN b_fx <> 0 THEN b_rid ELSE a_rid END,
                         (abs(a_fx + b_fx), subscription_item_id)) AS top_rid,
                 any_value(b_rid_main) AS b_rid
          FROM (SELECT ti.tid, ti.subscription_item_id, ti.a_rid, ti.b_rid, ti.a_currency, ti.b_currency,
                       m.b_rid AS b_rid_main,
                       CASE WHEN ti.in_a AND ti.a_rate_c <> ti.a_rate_a
                            THEN rep20(round(ti.a_mrr, 9), 12 * coalesce(pa.interval_count, 1), ti.a_rate_c - ti.a_rate_a)
                            ELSE 0 END AS a_fx,
                       CASE WHEN ti.in_b AND ti.b_rate_b <> ti.b_rate_c
                            THEN rep20(round(ti.b_mrr, 9), 12 * coalesce(pb.interval_count, 1), ti.b_rate_b - ti.b_rate_c)
                            ELSE 0 END AS b_fx
                -- (a paired removed item's A side at the rate of the switch, as its parts are)
                FROM (SELECT t.* REPLACE (coalesce(k.a_rate_c, t.a_rate_c) AS a_rate_c)
                      FROM moving t
                      LEFT JOIN comp_rows k ON k.tid = t.tid AND k.comp = 'pair' AND k.a_rid = t.a_rid AND NOT t.in_b) ti
                JOIN derived_transition_mains m USING (tid)
                LEFT JOIN derived_item_mrr ai ON ai.rowid = ti.a_rid
                LEFT JOIN derived_price_terms pa ON pa.account_id = ai.account_id AND pa.price_id = ai.price_id
                LEFT JOIN derived_item_mrr bi ON bi.rowid = ti.b_rid
                LEFT JOIN derived_price_terms pb ON pb.account_id = bi.account_id AND pb.price_id = bi.price_id
                WHERE (ti.in_a AND ti.a_rate_c <> ti.a_rate_a) OR (ti.in_b AND ti.b_rate_b <> ti.b_rate_c))
          GROUP BY tid) f
    JOIN derived_transitions t USING (tid)
    LEFT JOIN derived_item_mrr b ON b.rowid = f.b_rid
    LEFT JOIN derived_item_mrr r ON r.rowid = CASE WHEN list_contains(f.moved, b.currency) THEN f.b_rid ELSE f.top_rid END
),
whole_parts AS (
    -- new, reactivation and cancellation: one row with the whole customer delta on the main item
    SELECT t.tid, t.account_id, t.customer_id, t.t_start, t.kind AS comp, t.kind AS part,
           CAST(t.mrr_delta AS DECIMAL(38, 10)) AS amount_rep,
           (SELECT whole_again(sum(coalesce(x.b_mrr, 0) - coalesce(x.a_mrr, 0)), count(*)) FROM ti x
            WHERE x.tid = t.tid
              AND coalesce(x.b_currency, x.a_currency) = coalesce(mi.b_currency, mi.a_currency)) AS amount_original,
           CASE WHEN t.kind = 'gain' THEN mi.b_currency ELSE mi.a_currency END AS currency,
           CASE WHEN t.kind = 'gain' THEN b.subscription_id ELSE a.subscription_id END AS subscription_id,
           mi.subscription_item_id,
           CASE WHEN t.kind = 'gain' THEN b.product_id ELSE a.product_id END AS product_id,
           CASE WHEN t.kind = 'gain' THEN b.price_id ELSE a.price_id END AS price_id,
           b.source_event_id AS event_id, b.source_invoice_id AS invoice_id, b.valid_from AS row_from,
           CASE WHEN t.kind = 'loss' THEN 'cancellation'
                WHEN t.had_mrr_before THEN 'reactivation' ELSE 'new' END AS movement
    FROM derived_transitions t
    LEFT JOIN derived_transition_mains m USING (tid)
    LEFT JOIN ti mi ON mi.tid = t.tid AND mi.subscription_item_id = CASE WHEN t.kind = 'gain' THEN m.b_item ELSE m.a_item END
    LEFT JOIN derived_item_mrr a ON a.rowid = mi.a_rid
    LEFT JOIN derived_item_mrr b ON b.rowid = mi.b_rid
    WHERE t.kind IN ('gain', 'loss')
),
-- the item and unpaired parts, those of a shared amount_off's new split joined to the largest other part of the
-- same subscription in the transition (the change that moved the split), so that e.g. two more seats under a
-- fixed amount off are one seat_expansion
changed_parts AS (
    SELECT * FROM item_parts UNION ALL BY NAME SELECT *, false AS realloc FROM unpaired_parts
),
realloc_targets AS (
    SELECT tid, currency, subscription_id,
           arg_max({'comp': comp, 'part': part, 'subscription_id': subscription_id,
                    'subscription_item_id': subscription_item_id, 'product_id': product_id, 'price_id': price_id,
                    'event_id': event_id, 'invoice_id': invoice_id, 'row_from': row_from, 'movement': movement},
                   (abs(amount_rep), subscription_item_id)) FILTER (WHERE NOT realloc) AS t
    FROM changed_parts
    WHERE tid IN (SELECT tid FROM changed_parts WHERE realloc)
    GROUP BY tid, currency, subscription_id
    HAVING bool_or(realloc)
),
-- (a part that is merged: a new split's, or the target's own)
merging AS (
    SELECT p.*, x.t
    FROM changed_parts p
    JOIN realloc_targets x ON x.tid = p.tid AND x.currency IS NOT DISTINCT FROM p.currency
                          AND x.subscription_id IS NOT DISTINCT FROM p.subscription_id AND x.t IS NOT NULL
    WHERE p.realloc OR (x.t.subscription_item_id IS NOT DISTINCT FROM p.subscription_item_id
                        AND x.t.part = p.part AND x.t.comp = p.comp)
),
merged_parts AS (
    SELECT tid, account_id, customer_id, t_start, t.comp, t.part, sum(amount_rep) AS amount_rep,
           sum(amount_original) AS amount_original, currency, t.subscription_id, t.subscription_item_id,
           t.product_id, t.price_id, t.event_id, t.invoice_id, t.row_from, t.movement
    FROM merging
    GROUP BY ALL
)
SELECT p.* EXCLUDE (realloc) FROM changed_parts p
ANTI JOIN merging m ON m.tid = p.tid AND m.subscription_item_id IS NOT DISTINCT FROM p.subscription_item_id
                   AND m.part = p.part AND m.comp = p.comp
UNION ALL BY NAME SELECT * FROM merged_parts
UNION ALL BY NAME SELECT * FROM fx_parts
UNION ALL BY NAME SELECT * FROM whole_parts;
