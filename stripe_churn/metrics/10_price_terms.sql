-- Product families, unit kinds and each price's terms (design.md 4 and 5), plus the price_mrr macro.
-- Inputs: products, prices (and the full price objects embedded in subscription items, for prices the
-- store has no row for), derived_settings and the settings maps written by the runner.

-- Small helpers shared by every later step.
-- A HUGEINT count of 1e-10 major units as DECIMAL(38,10), without a floating-point division.
CREATE OR REPLACE MACRO dec10(h) AS CAST(h AS DECIMAL(38, 0)) * CAST(0.0000000001 AS DECIMAL(10, 10));
-- An amount as DECIMAL(18,4), the type of money in the views (design.md 4), or an error naming `what` (text
-- evaluated only then) when it does not fit, instead of DuckDB's bare "out of range".
CREATE OR REPLACE MACRO money4(x, what) AS
    CASE WHEN x IS NULL OR (x < 99999999999999.99995 AND x > -99999999999999.99995) THEN CAST(x AS DECIMAL(18, 4))
         ELSE error(what || ' is ' || CAST(x AS VARCHAR) || ', more than the 99999999999999.9999 that money in the '
                    || 'views can hold (DECIMAL(18,4)): check the amounts and quantities of the Stripe prices and '
                    || 'subscriptions behind it') END;
-- A quantity as Stripe sent it (its text) as a BIGINT. One that no 64-bit integer holds (Stripe's own limits are far
-- below) stops the recompute with one line naming `what` (text evaluated only then) instead of counting zero;
-- other text that is no whole number (none of Stripe's) stays NULL.
CREATE OR REPLACE MACRO quantity_of(q, what) AS
    CASE WHEN q IS NULL OR TRY_CAST(q AS BIGINT) IS NOT NULL OR NOT regexp_full_match(trim(q), '-?[0-9]+')
         THEN TRY_CAST(q AS BIGINT)
         ELSE error(what || ' has a quantity of ' || trim(q) || ', more than a 64-bit integer holds: check that '
                    || 'quantity in Stripe') END;
-- The sum `s` of n item MRRs, each cut at 10 decimals (so off by less than 1e-10; the sum by less than n x 1e-10),
-- rounded where that is under half a unit: 9 decimals for up to 4 items, 8 for up to 49, ... An exact sum such as
-- 26.4583333333 + 184.1666666666 = 210.625 is then whole again before a rate or a rounding at 4 decimals.
-- (each branch cast to 9 decimals: a CASE of DECIMAL(38, 9) ... DECIMAL(38, 6) is a DECIMAL(38, 6), which rounded
-- every sum at 6 decimals, 8.333333333 to 8.333333)
CREATE OR REPLACE MACRO whole_again(s, n) AS
    CASE WHEN n < 5 THEN CAST(round(s, 9) AS DECIMAL(38, 9)) WHEN n < 50 THEN CAST(round(s, 8) AS DECIMAL(38, 9))
         WHEN n < 500 THEN CAST(round(s, 7) AS DECIMAL(38, 9)) ELSE CAST(round(s, 6) AS DECIMAL(38, 9)) END;
-- n / (d x 1e17) (n in 1e-17 units, d a positive integer) rounded at 4 decimals, half away from zero, exactly.
CREATE OR REPLACE MACRO round_over4(n, d) AS
    CAST(sign(n) * ((2 * abs(n) + CAST(d AS HUGEINT) * 10000000000000) // (2 * CAST(d AS HUGEINT) * 10000000000000))
         AS DECIMAL(38, 0)) * CAST(0.0001 AS DECIMAL(5, 4));
-- An exchange rate (8 decimals) as a whole number of 1e-8: widened first, as a rate of 100 or more times 1e8
-- overflows its DECIMAL(18, 8) (a store reporting in yen values a dollar at about 150).
CREATE OR REPLACE MACRO rate_e8(rate) AS CAST(CAST(rate AS DECIMAL(38, 8)) * 100000000 AS HUGEINT);
-- w (an amount times den, whole again, at 9 decimals) times a rate, over den, to 1e-20 of the reporting currency,
-- in integers (rep20; the cohorts take sums of such w to their rate, 88).
CREATE OR REPLACE MACRO over_den20(w, den, rate) AS
    CAST(CAST(w * 1000000000 AS HUGEINT) * rate_e8(rate) * 1000 // CAST(den AS HUGEINT) AS DECIMAL(38, 0))
    * CAST(0.00000000000000000001 AS DECIMAL(20, 20));
-- A part x of a change in its currency (at 9 decimals) whose items' MRRs times `den` (12 x interval_count, or
-- their least common multiple) are short decimals, times a rate, to 1e-20 of the reporting currency: x times den
-- is whole again (`whole_again`), then the rate, then over den in integers, so that an exact half at 4 decimals
-- that only the rate makes stays exact (8.333333333 GBP x 1.481478 = 12.34565, not 12.3456499...).
CREATE OR REPLACE MACRO rep20(x, den, rate) AS over_den20(whole_again(x * den, 10 * den), den, rate);
-- Unix seconds (as sent by Stripe) to TIMESTAMPTZ; NULL stays NULL.
CREATE OR REPLACE MACRO ts_of(s) AS CASE WHEN s IS NULL THEN NULL ELSE to_timestamp(CAST(s AS BIGINT)) END;
-- An expandable field (an id or an expanded object) to its id.
CREATE OR REPLACE MACRO ref_id(j) AS coalesce(json_extract_string(j, '$.id'), json_extract_string(j, '$'));

-- A price's monthly normalisation (MRR = amount per period x norm_num / norm_den) for its interval and the
-- currency it is billed in (see derived_price_terms).
-- (Stripe's amounts are in minor units: hundredths, but whole units of a zero-decimal currency and thousandths of a
-- three-decimal one)
CREATE OR REPLACE MACRO minor_digits(currency) AS
    CASE WHEN currency IN ('bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd',
                           'vuv', 'xaf', 'xof', 'xpf') THEN 0
         WHEN currency IN ('bhd', 'jod', 'kwd', 'omr', 'tnd') THEN 3 ELSE 2 END;
CREATE OR REPLACE MACRO norm_num(billing_interval, currency) AS
    CASE billing_interval WHEN 'year' THEN 1 WHEN 'month' THEN 1 WHEN 'week' THEN 52 WHEN 'day' THEN 365 END
    * CASE minor_digits(currency) WHEN 0 THEN 100 ELSE 1 END;
CREATE OR REPLACE MACRO norm_den(billing_interval, interval_count, currency) AS
    CASE billing_interval WHEN 'year' THEN 12 WHEN 'month' THEN 1 WHEN 'week' THEN 12 WHEN 'day' THEN 12 END
    * interval_count
    * CASE minor_digits(currency) WHEN 3 THEN 10 ELSE 1 END;

CREATE OR REPLACE TABLE derived_products AS
SELECT
    p.account_id,
    p.id AS product_id,
    coalesce(nullif(json_extract_string(p.raw, '$.metadata.family'), ''), fm.family, p.id) AS family,
    coalesce(
        um.unit_kind,
        CASE
            WHEN lower(trim(json_extract_string(p.raw, '$.unit_label'))) IN (SELECT label FROM derived_seat_labels)
                THEN 'seat'
            WHEN nullif(trim(json_extract_string(p.raw, '$.unit_label')), '') IS NOT NULL THEN 'resource'
        END
    ) AS unit_kind_hint,
    json_extract_string(p.raw, '$.name') AS name
FROM products p
LEFT JOIN derived_family_map fm ON fm.product_id = p.id
LEFT JOIN derived_unit_map um ON um.product_id = p.id;

-- One row per price. The prices table wins; a price known only from an embedded object (an item's
-- `price` is always a full object) is still usable, and is reported in data_quality as missing. A price
-- deleted in Stripe (a legacy plan deleted) keeps its terms: the items billed at it while it existed count at
-- it, from the last full copy the store kept (a deletion only flags the row), unless an item embeds it.
CREATE OR REPLACE TABLE derived_price_terms AS
WITH src AS (
    SELECT account_id, id AS price_id, raw, CASE WHEN coalesce(deleted, false) THEN 3 ELSE 1 END AS pri,
           CASE WHEN coalesce(deleted, false) THEN 'prices (deleted)' ELSE 'prices' END AS found_in
    FROM prices
    WHERE json_extract_string(raw, '$.currency') IS NOT NULL
    UNION ALL
    -- (the typed price_id picks the few items whose price is not stored before any JSON is read)
    SELECT account_id, json_extract_string(price, '$.id'), price, 2, 'subscription_items'
    FROM (SELECT account_id, json_extract(raw, '$.price') AS price
          FROM subscription_items i
          WHERE i.price_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM prices p WHERE p.account_id = i.account_id
                            AND p.id = i.price_id AND NOT coalesce(p.deleted, false))) i
    WHERE json_extract_string(price, '$.id') IS NOT NULL
),
one AS (
    SELECT *, json_extract_string(raw, '$.object') = 'plan' AS is_plan FROM src
    QUALIFY row_number() OVER (PARTITION BY account_id, price_id ORDER BY pri) = 1
),
-- A row may hold a legacy plan (the object of plan.* events, kept as the row's last full copy when the plan is
-- deleted): always recurring, its terms are top-level fields (amount, interval, usage_type, ...) and its
-- transform_usage is a price's transform_quantity; billing_scheme, tiers and tiers_mode are named as a price's.
flat AS (
    SELECT
        account_id,
        price_id,
        found_in,
        ref_id(json_extract(raw, '$.product')) AS product_id,
        lower(json_extract_string(raw, '$.currency')) AS currency,
        CASE WHEN is_plan THEN 'recurring'
             ELSE coalesce(json_extract_string(raw, '$.type'),
                           CASE WHEN json_extract(raw, '$.recurring') IS NULL
                                OR json_type(json_extract(raw, '$.recurring')) = 'NULL' THEN 'one_time'
                                ELSE 'recurring' END) END AS price_type,
        coalesce(json_extract_string(raw, '$.billing_scheme'), 'per_unit') AS billing_scheme,
        json_extract_string(raw, '$.tiers_mode') AS tiers_mode,
        CASE WHEN is_plan
             THEN coalesce(TRY_CAST(json_extract_string(raw, '$.amount_decimal') AS DECIMAL(38, 12)),
                           TRY_CAST(json_extract_string(raw, '$.amount') AS DECIMAL(38, 12)))
             ELSE coalesce(TRY_CAST(json_extract_string(raw, '$.unit_amount_decimal') AS DECIMAL(38, 12)),
                           TRY_CAST(json_extract_string(raw, '$.unit_amount') AS DECIMAL(38, 12))) END AS unit_amount,
        TRY_CAST(CASE WHEN is_plan THEN json_extract_string(raw, '$.transform_usage.divide_by')
                      ELSE json_extract_string(raw, '$.transform_quantity.divide_by') END AS BIGINT) AS divide_by,
        CASE WHEN is_plan THEN json_extract_string(raw, '$.transform_usage.round')
             ELSE json_extract_string(raw, '$.transform_quantity.round') END AS round_mode,
        CASE WHEN is_plan THEN json_extract_string(raw, '$.interval')
             ELSE json_extract_string(raw, '$.recurring.interval') END AS billing_interval,
        -- (1 when not given; NULL when it is no whole number, which counts as an interval the rules do not know)
        CASE WHEN is_plan THEN json_extract_string(raw, '$.interval_count')
             ELSE json_extract_string(raw, '$.recurring.interval_count') END AS interval_count_text,
        -- (digits only: DuckDB casts '2.5' to 3 and '1e3' to 1000)
        CASE WHEN interval_count_text IS NULL THEN 1
             WHEN regexp_full_match(interval_count_text, '[0-9]{1,9}') THEN CAST(interval_count_text AS INTEGER) END
            AS interval_count_given,
        -- (an interval_count under 1 bills nothing the rules can normalise: as an interval they do not know, its
        -- items count zero MRR and 90 reports the price)
        CASE WHEN interval_count_given >= 1 THEN interval_count_given END AS interval_count,
        coalesce(CASE WHEN is_plan THEN json_extract_string(raw, '$.usage_type')
                      ELSE json_extract_string(raw, '$.recurring.usage_type') END, 'licensed') AS usage_type,
        json_extract_string(raw, '$.tax_behavior') AS tax_behavior,
        json_extract(raw, '$.tiers') AS tiers
    FROM one
)
SELECT
    f.account_id,
    f.price_id,
    f.product_id,
    f.currency,
    f.price_type,
    f.billing_scheme,
    f.tiers_mode,
    f.unit_amount,
    CAST(round(f.unit_amount * 1000000000000) AS HUGEINT) AS unit_amount_p,
    f.divide_by,
    f.round_mode,
    f.billing_interval,
    f.interval_count,
    f.interval_count_given,
    f.usage_type,
    -- monthly MRR = amount per period × norm_num / norm_den (docs/internals.md "Money and rounding"), in
    -- hundredths of a major unit whatever the currency: Stripe's amounts are in the currency's smallest unit, a
    -- hundredth for most, the unit itself for zero-decimal currencies (× 100), a thousandth for three-decimal
    -- ones (÷ 10); ISK, HUF and TWD stay in hundredths in the API
    norm_num(f.billing_interval, f.currency) AS norm_num,
    norm_den(f.billing_interval, f.interval_count, f.currency) AS norm_den,
    -- (a product the store does not hold, one deleted before the first sync, still takes the settings' maps)
    coalesce(pr.family, fm.family, f.product_id) AS family,
    coalesce(pr.unit_kind_hint, um.unit_kind,
             CASE WHEN f.usage_type = 'metered' THEN 'resource' ELSE 'seat' END) AS unit_kind,
    f.found_in,
    f.tax_behavior,
    f.tiers
FROM flat f
LEFT JOIN derived_products pr ON pr.account_id = f.account_id AND pr.product_id = f.product_id
LEFT JOIN derived_family_map fm ON pr.product_id IS NULL AND fm.product_id = f.product_id
LEFT JOIN derived_unit_map um ON pr.product_id IS NULL AND um.product_id = f.product_id;

-- Each price's terms in other currencies than its own (Stripe's currency_options, which the sync expands), one
-- row per price and currency: read by the options and the tiers below.
CREATE OR REPLACE TEMP TABLE derived_price_option_objs AS
SELECT p.account_id, p.id AS price_id, lower(k.cur) AS currency,
       -- (a key is pasted into the path: one that is no currency code, a quote in it, is left out, not an error)
       CASE WHEN regexp_full_match(k.cur, '[A-Za-z]{3}')
            THEN json_extract(p.raw, '$.currency_options."' || k.cur || '"') END AS o
FROM prices p, unnest(json_keys(json_extract(p.raw, '$.currency_options'))) AS k(cur)
WHERE json_type(json_extract(p.raw, '$.currency_options')) = 'OBJECT'
  AND regexp_full_match(k.cur, '[A-Za-z]{3}');

-- A price's amounts in other currencies than its own: a subscription billed in such a currency is charged these.
-- One row per price and other currency with an amount there: a unit amount for a per_unit price, tiers of its
-- own for a tiered one (unit_amount_p NULL; the tiers are in derived_price_tiers under that currency). A tiered
-- option listed without its tiers (Stripe sends them only when expanded) has none: 90 reports its items. With
-- the price's normalisation in that currency.
CREATE OR REPLACE TABLE derived_price_options AS
WITH amounts AS (
    SELECT account_id, price_id, currency,
           coalesce(TRY_CAST(json_extract_string(o, '$.unit_amount_decimal') AS DECIMAL(38, 12)),
                    TRY_CAST(json_extract_string(o, '$.unit_amount') AS DECIMAL(38, 12))) AS unit_amount,
           coalesce(json_type(json_extract(o, '$.tiers')) = 'ARRAY'
                    AND json_array_length(json_extract(o, '$.tiers')) > 0, false) AS has_tiers,
           json_extract_string(o, '$.tax_behavior') AS tax_behavior
    FROM derived_price_option_objs
)
SELECT a.account_id, a.price_id, a.currency,
       CASE WHEN t.billing_scheme = 'per_unit' THEN CAST(round(a.unit_amount * 1000000000000) AS HUGEINT) END
           AS unit_amount_p,
       norm_num(t.billing_interval, a.currency) AS norm_num,
       norm_den(t.billing_interval, t.interval_count, a.currency) AS norm_den,
       -- (an option may say whether its amount includes tax; else the price's word holds)
       CASE WHEN a.tax_behavior IN ('inclusive', 'exclusive') THEN a.tax_behavior ELSE t.tax_behavior END
           AS tax_behavior
FROM amounts a
JOIN derived_price_terms t USING (account_id, price_id)
WHERE a.currency <> t.currency
  AND ((t.billing_scheme = 'per_unit' AND a.unit_amount IS NOT NULL) OR (t.billing_scheme = 'tiered' AND a.has_tiers));

-- Tiers of tiered prices, with each tier's lower bound (up_to NULL = no upper bound): the price's own, in its
-- currency, and those of each of its currency options (derived_price_options), in the option's currency.
CREATE OR REPLACE TABLE derived_price_tiers AS
WITH src AS (
    SELECT account_id, price_id, currency, tiers
    FROM derived_price_terms
    WHERE billing_scheme = 'tiered' AND json_type(tiers) = 'ARRAY'
    UNION ALL
    SELECT x.account_id, x.price_id, x.currency, json_extract(x.o, '$.tiers')
    FROM derived_price_option_objs x
    SEMI JOIN derived_price_options o USING (account_id, price_id, currency)
    SEMI JOIN (SELECT account_id, price_id FROM derived_price_terms WHERE billing_scheme = 'tiered') p
        USING (account_id, price_id)
),
t AS (
    SELECT account_id, price_id, currency,
           unnest(CAST(json_extract(tiers, '$[*]') AS JSON[])) AS tier,
           unnest(range(1, CAST(json_array_length(tiers) AS BIGINT) + 1)) AS tier_no
    FROM src
),
f AS (
    SELECT account_id, price_id, currency, tier_no,
           TRY_CAST(json_extract_string(tier, '$.up_to') AS BIGINT) AS up_to,
           CAST(round(coalesce(TRY_CAST(json_extract_string(tier, '$.unit_amount_decimal') AS DECIMAL(38, 12)),
                               TRY_CAST(json_extract_string(tier, '$.unit_amount') AS DECIMAL(38, 12)), 0)
                      * 1000000000000) AS HUGEINT) AS unit_p,
           CAST(round(coalesce(TRY_CAST(json_extract_string(tier, '$.flat_amount_decimal') AS DECIMAL(38, 12)),
                               TRY_CAST(json_extract_string(tier, '$.flat_amount') AS DECIMAL(38, 12)), 0)
                      * 1000000000000) AS HUGEINT) AS flat_p
    FROM t
)
SELECT *, coalesce(lag(up_to) OVER (PARTITION BY account_id, price_id, currency ORDER BY tier_no), 0) AS lower_bound
FROM f;

-- Amount per billing period, in 1e-12 minor units (HUGEINT), of `q` units at a price's tiers in currency `cur`
-- (its own currency's, or a currency option's): tiers_mode `mode` volume (the tier the whole quantity falls in
-- prices every unit), else graduated (each tier prices its own slice; a tier's flat amount is charged once the
-- quantity reaches into it). (A price without a currency has its tiers under NULL.)
CREATE OR REPLACE MACRO tiers_amount_p(acct, pid, cur, mode, q) AS
    CASE WHEN mode = 'volume' THEN (
            SELECT arg_min(v.unit_p * CAST(q AS HUGEINT) + v.flat_p, v.tier_no)
            FROM derived_price_tiers v
            WHERE v.account_id = acct AND v.price_id = pid AND v.currency IS NOT DISTINCT FROM cur
              AND (v.up_to IS NULL OR q <= v.up_to))
         ELSE (
            SELECT sum(CASE WHEN q > g.lower_bound
                            THEN g.unit_p * CAST(least(q, coalesce(g.up_to, q)) - g.lower_bound AS HUGEINT) + g.flat_p
                            ELSE 0 END)
            FROM derived_price_tiers g
            WHERE g.account_id = acct AND g.price_id = pid AND g.currency IS NOT DISTINCT FROM cur) END;

-- Amount per billing period, in 1e-12 minor units (HUGEINT), of `q` units of a price (design.md 4):
-- per_unit with transform_quantity (divide, then round up or down), tiered at its tiers (tiers_amount_p).
-- Called with (account_id, price_id, quantity); price ids are unique in Stripe, but several accounts in one
-- store may reuse them.
CREATE OR REPLACE MACRO price_amount_p(acct, pid, q) AS (
    SELECT CASE
        WHEN t.billing_scheme = 'tiered' THEN tiers_amount_p(acct, pid, t.currency, t.tiers_mode, q)
        WHEN t.divide_by IS NOT NULL AND t.divide_by > 0 THEN
            t.unit_amount_p * CAST(CASE WHEN t.round_mode = 'up' THEN (q + t.divide_by - 1) // t.divide_by
                                        ELSE q // t.divide_by END AS HUGEINT)
        ELSE t.unit_amount_p * CAST(q AS HUGEINT)
    END
    FROM derived_price_terms t
    WHERE t.account_id = acct AND t.price_id = pid
);

-- Monthly-normalised MRR of `quantity` units of a price, own currency, major units, undiscounted.
-- Truncated (not rounded) at 10 decimals so that a later 4-decimal rounding decides as the exact value would.
-- price_mrr(price_id, quantity) looks the price up in the first account holding it (by account id);
-- price_mrr(account_id, price_id, quantity) in the given account.
CREATE OR REPLACE MACRO price_mrr(pid, quantity) AS (
    SELECT dec10(price_amount_p(t.account_id, pid, quantity) * t.norm_num // (CAST(t.norm_den AS HUGEINT) * 10000))
    FROM derived_price_terms t
    WHERE t.price_id = pid
    ORDER BY t.account_id
    LIMIT 1
), (acct, pid, quantity) AS (
    SELECT dec10(price_amount_p(acct, pid, quantity) * t.norm_num // (CAST(t.norm_den AS HUGEINT) * 10000))
    FROM derived_price_terms t
    WHERE t.account_id = acct AND t.price_id = pid
);

-- Per-period amount (1e-12 minor units) of `q` units of a price in currency `cur` from its currency option (a
-- per_unit one: transform_quantity as the price's; a tiered one: at its own tiers, in the price's tiers_mode);
-- NULL when it has none in `cur`.
CREATE OR REPLACE MACRO option_amount_p(acct, pid, cur, q) AS (
    SELECT CASE WHEN t.billing_scheme = 'tiered' THEN tiers_amount_p(acct, pid, cur, t.tiers_mode, q)
                WHEN t.divide_by IS NOT NULL AND t.divide_by > 0 THEN
                o.unit_amount_p * CAST(CASE WHEN t.round_mode = 'up' THEN (q + t.divide_by - 1) // t.divide_by
                                            ELSE q // t.divide_by END AS HUGEINT)
                ELSE o.unit_amount_p * CAST(q AS HUGEINT) END
    FROM derived_price_options o
    JOIN derived_price_terms t USING (account_id, price_id)
    WHERE o.account_id = acct AND o.price_id = pid AND o.currency = cur
);

-- price_mrr of a price billed in currency `cur`: from its currency option there, else its own terms.
CREATE OR REPLACE MACRO price_mrr_in(acct, pid, cur, quantity) AS coalesce(
    (SELECT dec10(option_amount_p(acct, pid, cur, quantity) * o.norm_num // (CAST(o.norm_den AS HUGEINT) * 10000))
     FROM derived_price_options o
     WHERE o.account_id = acct AND o.price_id = pid AND o.currency = cur),
    price_mrr(acct, pid, quantity));
