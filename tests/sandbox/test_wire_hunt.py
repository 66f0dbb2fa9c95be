"""The sandbox's wire behaviour checked case by case against Stripe's, each answer worked out before running ours.

Stripe's answers come from /work/shared/stripe/reference.md (sections 1-3 and 5, the SDK notes) and, where it is
silent, from Stripe's own API documentation as quoted in each docstring. ``MiniSim`` (tests/sandbox/test_server.py)
is the small hand-made account; ``TinySim`` below is smaller still, for the cases that need an exact timeline; one
real ``Simulation`` serves the event checks. Every server listens on 127.0.0.1 and is stopped by its context manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from tests.sandbox.test_server import DAY, KEY, T0, MiniSim, client, error_of, get, ids

# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini() -> Iterator[RunningSandbox]:
    """MiniSim served read-only: no test using it advances its clock."""
    with start_in_thread(MiniSim(), api_key=KEY) as sandbox:
        yield sandbox


class TinySim:
    """Three customers a day apart (cus_A oldest, cus_C newest) and two subscriptions of exactly 10 and 11 items.
    A billing run (``advance``) moves the clock 30 days and deletes cus_B, leaving Stripe's 3-key stub, as
    ``Simulation._h_delete_customer`` does."""

    def __init__(self) -> None:
        self.account_id = "acct_tinysandbox"
        self.start = T0
        self.clock = T0 + 10 * DAY
        self.discounts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.truth: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in (
            "customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes")}
        for n, cid in enumerate(("cus_A", "cus_B", "cus_C")):
            self.objects["customers"][cid] = {"id": cid, "object": "customer", "created": T0 + n * DAY,
                                              "email": f"{cid}@example.com", "livemode": False, "metadata": {}}
        for sid, count in (("sub_ten", 10), ("sub_eleven", 11)):
            items = [{"id": f"si_{sid[4:]}_{k:02d}", "object": "subscription_item", "created": T0, "quantity": 1,
                      "subscription": sid, "discounts": [], "metadata": {}} for k in range(count)]
            self.objects["subscriptions"][sid] = {
                "id": sid, "object": "subscription", "created": T0, "customer": "cus_A", "status": "active",
                "discounts": [], "items": {"object": "list", "data": items, "has_more": False,
                                           "url": f"/v1/subscription_items?subscription={sid}"}}

    def advance(self, months: int = 1) -> None:
        self.clock += 30 * DAY * months
        self.objects["customers"]["cus_B"] = {"id": "cus_B", "object": "customer", "deleted": True}


# --- expand -----------------------------------------------------------------------------------------------------


def test_four_level_expansions_are_served(mini: RunningSandbox) -> None:
    """The control for the two depth cases below: four levels are Stripe's maximum and are allowed.

    Retrieved, ``items.data.price.product`` is 4 levels: sub_0001's items (1 + 1 % 2 = 2 of them) use
    price_0001 and price_0002 (price ``(i + k) % 5``), whose products are prod_0001 and prod_0002 (``i % 4``),
    each expanded into its product object. Listed, ``data.items.data.discounts`` (what the sync asks for) is 4
    levels counting ``data``: sub_0000 (the oldest, last of the list) has no item discount, so its items'
    ``discounts`` stay []."""
    sub = get(mini, "/v1/subscriptions/sub_0001?expand[]=items.data.price.product").json()
    products = [it["price"]["product"] for it in sub["items"]["data"]]
    assert [(p["object"], p["id"]) for p in products] == [("product", "prod_0001"), ("product", "prod_0002")]
    listed = client(mini).v1.subscriptions.list({"status": "all", "limit": 100,
                                                 "expand": ["data.items.data.discounts"]})
    assert [s.id for s in listed.data][-1] == "sub_0000"
    assert all(it["discounts"] == [] for it in listed.data[-1].to_dict()["items"]["data"])


def test_a_five_level_list_expansion_is_refused(mini: RunningSandbox) -> None:
    """Stripe's documentation ("Expanding responses"): expansions have a maximum depth of four levels, e.g. the
    deepest allowed when listing charges is ``data.payment_intent.customer.default_source``: the list's ``data``
    is a level. ``data.items.data.price.product`` on a subscription list is 5 levels: Stripe answers 400 ("You
    cannot expand more than 4 levels of a property"), which the SDK raises as InvalidRequestError. A sync that
    asked for it would work against the sandbox and fail against Stripe."""
    with pytest.raises(stripe.InvalidRequestError) as info:
        client(mini).v1.subscriptions.list({"status": "all", "limit": 1,
                                            "expand": ["data.items.data.price.product"]})
    assert info.value.http_status == 400


@pytest.mark.parametrize("query", [
    "limit=5&expand[]=data.discounts.source.coupon.applies_to.products",
    f"created[gt]={T0 + 1000 * DAY}&expand[]=data.discounts.source.coupon.applies_to.products",
], ids=["empty-discounts", "empty-page"])
def test_a_six_level_list_expansion_is_refused_whatever_the_data(mini: RunningSandbox, query: str) -> None:
    """``data.discounts.source.coupon.applies_to.products`` has 6 levels (5 even without ``data``), above Stripe's
    maximum of 4 (see the case above): 400 invalid_request_error. Every MiniSim invoice has ``discounts: []``,
    and ``created[gt]`` 1,000 days on leaves the page empty; neither changes what the request asks."""
    resp = get(mini, f"/v1/invoices?{query}")
    assert resp.status_code == 400
    assert error_of(resp)["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", [
    "/v1/customers/cus_0001?expand[]=metadata",
    "/v1/prices/price_0001?expand[]=recurring",
    "/v1/subscriptions?status=all&limit=1&expand[]=data.items",
], ids=["metadata", "recurring", "items"])
def test_a_field_that_holds_no_id_cannot_be_expanded(mini: RunningSandbox, path: str) -> None:
    """reference.md section 1: "An expandable field is either an ID string or the full object when you pass
    expand[]". ``metadata`` is a map of strings, ``recurring`` a hash, ``items`` a list always embedded: none is
    expandable, so Stripe answers 400, type invalid_request_error, "This property cannot be expanded (...)" (the
    sandbox already answers so for ``email``, test_server.py::test_expand_ids_to_objects)."""
    resp = get(mini, path)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("This property cannot be expanded")


# --- parameters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "param"), [
    ("limit=--5", "limit"),
    ("limit=%C2%B2", "limit"),
    ("created[gte]=--5", "created[gte]"),
    ("limit=%D9%A3", "limit"),
], ids=["double-minus", "superscript-two", "created-double-minus", "arabic-indic-three"])
def test_a_malformed_integer_is_a_400_naming_its_param(mini: RunningSandbox, query: str, param: str) -> None:
    """``limit`` and ``created[...]`` are integers (reference.md section 3). ``--5``, ``²`` (U+00B2) and ``٣``
    (U+0663) are not integers in Stripe's (ASCII) sense: 400, type invalid_request_error, param the one given,
    as ours already answers for ``limit=ten`` (test_server.py::test_limit_edges)."""
    resp = get(mini, f"/v1/invoices?{query}")
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["type"] == "invalid_request_error" and err["param"] == param


@pytest.mark.parametrize(("path", "want"), [
    ("/v1/prices?limit=100&recurring[interval]=month",
     ["price_0004", "price_0003", "price_0002", "price_0001", "price_0000"]),
    ("/v1/prices?limit=100&lookup_keys[0]=basic_monthly", []),
    ("/v1/products?limit=100&shippable=true", []),
], ids=["recurring-interval", "lookup-keys", "shippable"])
def test_documented_list_filters_are_accepted(mini: RunningSandbox, path: str, want: list[str]) -> None:
    """reference.md section 3: /v1/prices takes ``recurring[interval]`` and ``lookup_keys[]``, /v1/products takes
    ``shippable``. MiniSim's prices are all monthly and recurring, price_0005 inactive: the default (active) list
    of monthly prices is price_0004..price_0000, newest first (created T0 + i). No price has a lookup key, so
    ``lookup_keys[0]=basic_monthly`` finds none; no product is shippable (all are services), so
    ``shippable=true`` finds none."""
    assert ids(get(mini, path)) == want


def test_unknown_parameters_are_named_on_every_kind_of_endpoint(mini: RunningSandbox) -> None:
    """Stripe refuses a parameter an endpoint does not take: 400, type invalid_request_error, message "Received
    unknown parameter: <name>", param <name>. A retrieve takes only ``expand`` (so not ``limit``); an invoice's
    lines take only the pagination parameters (so not ``customer``); /v1/events has no ``status``, nor has
    /v1/subscription_items (its filter is ``subscription``)."""
    for path, name in (("/v1/customers/cus_0001?limit=1", "limit"),
                       ("/v1/invoices/in_0000/lines?customer=cus_0000", "customer"),
                       ("/v1/events?status=all", "status"),
                       ("/v1/subscription_items?subscription=sub_0000&status=all", "status")):
        resp = get(mini, path)
        assert resp.status_code == 400, path
        err = error_of(resp)
        assert (err["type"], err["param"], err["message"]) == (
            "invalid_request_error", name, f"Received unknown parameter: {name}"), path


@pytest.mark.parametrize(("path", "code", "param"), [
    ("/v1/invoices?colour=blue", "parameter_unknown", "colour"),
    ("/v1/subscription_items", "parameter_missing", "subscription"),
], ids=["unknown", "missing"])
def test_parameter_errors_carry_stripes_code(mini: RunningSandbox, path: str, code: str, param: str) -> None:
    """Stripe's error envelope (design.md 8) gives a ``code`` with a ``doc_url`` for parameter errors: "Received
    unknown parameter: colour" comes with code parameter_unknown, "Missing required param: subscription." with
    code parameter_missing (Stripe's error-codes page lists both), and the doc_url is
    https://stripe.com/docs/error-codes/<code with dashes>, as the sandbox already writes it for
    resource_missing."""
    resp = get(mini, path)
    assert resp.status_code == 400
    err = error_of(resp)
    assert (err["type"], err["param"]) == ("invalid_request_error", param)
    assert err.get("code") == code
    assert err.get("doc_url") == "https://stripe.com/docs/error-codes/" + code.replace("_", "-")


# --- pagination -------------------------------------------------------------------------------------------------


def test_created_ranges_across_ties_and_cursors_outside_them(mini: RunningSandbox) -> None:
    """MiniSim's customer i is created at T0 + (i // 3) days, three to a second; newest first, ties by creation
    order reversed (reference.md section 1; test_server.py pins the ties).

    - gte day 1 and lte day 2, walked 2 at a time by the SDK: customers 3..8, newest first: 8, 7, 6, 5, 4, 3
      (the pages cut a group of ties: [8, 7], [6, 5], [4, 3]).
    - gt T0 with gte day 2, lt day 3 with lte day 3: the stricter bound of each side: day 2 only: 8, 7, 6.
    - lte day 1 after cus_0020 (day 6, newer than the whole range): the whole range, 5..0, has_more false.
    - gte day 2 before cus_0000 (day 0, older than the whole range), limit 3: the 3 oldest of the range, 8, 7, 6,
      listed newest first, has_more true (9..23 are newer still).
    - lt day 1 after cus_0001 (inside the range, day 0 with 0 and 2): only cus_0000 is older."""
    day = lambda n: T0 + n * DAY  # noqa: E731
    walked = [c.id for c in client(mini).v1.customers.list(
        {"created": {"gte": day(1), "lte": day(2)}, "limit": 2}).auto_paging_iter()]
    assert walked == ["cus_0008", "cus_0007", "cus_0006", "cus_0005", "cus_0004", "cus_0003"]
    both = f"created[gt]={T0}&created[gte]={day(2)}&created[lt]={day(3)}&created[lte]={day(3)}"
    assert ids(get(mini, f"/v1/customers?{both}")) == ["cus_0008", "cus_0007", "cus_0006"]
    page = get(mini, f"/v1/customers?created[lte]={day(1)}&starting_after=cus_0020&limit=100").json()
    assert [c["id"] for c in page["data"]] == [f"cus_{i:04d}" for i in (5, 4, 3, 2, 1, 0)]
    assert page["has_more"] is False
    page = get(mini, f"/v1/customers?created[gte]={day(2)}&ending_before=cus_0000&limit=3").json()
    assert [c["id"] for c in page["data"]] == ["cus_0008", "cus_0007", "cus_0006"] and page["has_more"] is True
    assert ids(get(mini, f"/v1/customers?created[lt]={day(1)}&starting_after=cus_0001")) == ["cus_0000"]


def test_a_cursor_from_another_list_is_resource_missing_naming_the_cursor(mini: RunningSandbox) -> None:
    """A cursor must be an object of the list being paged. A customer id on /v1/invoices, a line of in_0001 on
    in_0000's lines, an item of sub_0000 on sub_0001's items: code resource_missing, param the cursor's name,
    and, for the invoice list, Stripe's message "No such invoice: 'cus_0001'". (Whether Stripe answers such a
    parameter 400 or 404 reference.md does not say: both are accepted here.)"""
    for path, param in (("/v1/invoices?starting_after=cus_0001", "starting_after"),
                        ("/v1/invoices/in_0000/lines?starting_after=il_0001_00", "starting_after"),
                        ("/v1/subscription_items?subscription=sub_0001&ending_before=si_0000_00", "ending_before")):
        resp = get(mini, path)
        assert resp.status_code in (400, 404), path
        err = error_of(resp)
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "resource_missing", param), path
    assert error_of(get(mini, "/v1/invoices?starting_after=cus_0001"))["message"] == "No such invoice: 'cus_0001'"


def test_pages_walked_across_a_billing_run_continue_where_they_left_off() -> None:
    """MiniSim's invoices in_0000..in_0029 are created T0 + 2i days, its clock T0 + 90 days; a billing run moves
    the clock 30 days and adds in_0030..in_0034 created T0 + 90 days + k days + 1 s, all newer.

    Page 1 (limit 10): in_0029..in_0020. After the run, the SDK's next page (``starting_after=in_0020``) is
    in_0019..in_0010 with has_more true: the new invoices are newer than the cursor, so they are not on it, and
    nothing is repeated or skipped. Paging the other way (``ending_before=in_0029``) finds exactly the 5 new
    ones, newest first, has_more false. The ``Date`` header is the sandbox's clock (Stripe's "now", which the
    client reads): T0 + 90 days = Mon, 12 Feb 2024 22:13:20 GMT before, + 30 days = Wed, 13 Mar 2024 after."""
    with start_in_thread(MiniSim(), api_key=KEY) as sb:
        assert get(sb, "/v1/account").headers["date"] == "Mon, 12 Feb 2024 22:13:20 GMT"
        page1 = client(sb).v1.invoices.list({"limit": 10})
        assert [i.id for i in page1.data] == [f"in_{i:04d}" for i in range(29, 19, -1)]
        sb.advance(1)
        page2 = page1.next_page()
        assert [i.id for i in page2.data] == [f"in_{i:04d}" for i in range(19, 9, -1)] and page2.has_more
        newer = get(sb, "/v1/invoices?ending_before=in_0029&limit=10").json()
        assert [i["id"] for i in newer["data"]] == [f"in_{i:04d}" for i in range(34, 29, -1)]
        assert newer["has_more"] is False
        assert get(sb, "/v1/account").headers["date"] == "Wed, 13 Mar 2024 22:13:20 GMT"


@pytest.mark.parametrize("direction", ["starting_after", "ending_before"])
def test_a_customer_deleted_between_pages_neither_ends_nor_mixes_the_list(direction: str) -> None:
    """TinySim: cus_A (T0), cus_B (T0 + 1 day), cus_C (T0 + 2 days). Page 1 (limit 2): cus_C, cus_B, has_more
    true. Then a billing run deletes cus_B (its stub stays retrievable, reference.md section 1). Stripe's answer
    for a cursor on a deleted object is not documented; either of the two it can be keeps the sync whole:
    a resource_missing error naming the cursor (the sync then knows it must restart), or the page from cus_B's
    place: after it (older) cus_A, before it (newer) cus_C. A 200 page with neither, or with both, is wrong."""
    with start_in_thread(TinySim(), api_key=KEY) as sb:
        first = get(sb, "/v1/customers?limit=2").json()
        assert [c["id"] for c in first["data"]] == ["cus_C", "cus_B"] and first["has_more"] is True
        sb.advance(1)
        assert get(sb, "/v1/customers/cus_B").json() == {"id": "cus_B", "object": "customer", "deleted": True}
        resp = get(sb, f"/v1/customers?limit=2&{direction}=cus_B")
        if resp.status_code != 200:
            err = error_of(resp)
            assert (err["code"], err["param"]) == ("resource_missing", direction)
        else:
            want = ["cus_A"] if direction == "starting_after" else ["cus_C"]
            assert ids(resp) == want


def test_an_embedded_list_of_exactly_ten_has_no_more() -> None:
    """An embedded list is cut short with ``has_more`` (design.md 8); the sandbox's handful is 10. A
    subscription of exactly 10 items shows all 10 with has_more false (there is nothing more to page); one of 11
    shows the first 10 with has_more true, and its ``url`` pages the 11th after the 10th shown."""
    with start_in_thread(TinySim(), api_key=KEY) as sb:
        ten = get(sb, "/v1/subscriptions/sub_ten").json()["items"]
        assert len(ten["data"]) == 10 and ten["has_more"] is False
        eleven = get(sb, "/v1/subscriptions/sub_eleven").json()["items"]
        assert [i["id"] for i in eleven["data"]] == [f"si_eleven_{k:02d}" for k in range(10)]
        assert eleven["has_more"] is True
        assert eleven["url"] == "/v1/subscription_items?subscription=sub_eleven"
        rest = get(sb, eleven["url"] + "&starting_after=si_eleven_09").json()
        assert [i["id"] for i in rest["data"]] == ["si_eleven_10"] and rest["has_more"] is False


# --- headers: accounts, versions, request ids, idempotency, HEAD ----------------------------------------------------


def test_stripe_account_header(mini: RunningSandbox) -> None:
    """``Stripe-Account`` naming the key's own account is served as without it. Another account: Stripe's 403,
    code account_invalid (the SDK's PermissionError), the key masked in the message. A wrong key is refused
    first: 401 (AuthenticationError) whatever the account."""
    own = stripe.StripeClient(KEY, stripe_account="acct_minisandbox", base_addresses={"api": mini.url})
    assert [c.id for c in own.v1.customers.list({"limit": 2})] == ["cus_0023", "cus_0022"]
    other = stripe.StripeClient(KEY, stripe_account="acct_1OtherAccount", base_addresses={"api": mini.url})
    with pytest.raises(stripe.PermissionError) as info:
        other.v1.customers.list()
    # (the SDK leaves ``code`` unset on a PermissionError; the body it keeps has it)
    body = info.value.json_body
    assert info.value.http_status == 403
    assert isinstance(body, dict) and body["error"]["code"] == "account_invalid"
    assert KEY not in str(info.value) and "acct_1OtherAccount" in str(info.value)
    wrong = stripe.StripeClient("sk_test_wrongwrongwrong", stripe_account="acct_1OtherAccount",
                                base_addresses={"api": mini.url})
    with pytest.raises(stripe.AuthenticationError) as auth:
        wrong.v1.customers.list()
    assert auth.value.http_status == 401


def test_every_answer_carries_its_own_request_id() -> None:
    """Stripe's ``Request-Id`` header is on every answer, errors included (docs api/request_ids), and the SDK
    puts it on its errors. Answers 200, 400 (limit 0), 401 (wrong key), 403 (another account), 404 (unknown id,
    unknown URL), 429 (above a rate of 0.01/s, whose one-request burst the first request took) and 500 (an
    injected fault): each has one, ``req_`` and distinct from the others."""
    seen: list[str] = []
    with start_in_thread(MiniSim(), api_key=KEY) as sb:
        for resp in (get(sb, "/v1/customers"), get(sb, "/v1/invoices?limit=0"),
                     get(sb, "/v1/customers", key="sk_test_wrongwrongwrong"),
                     get(sb, "/v1/customers", headers={"Stripe-Account": "acct_1OtherAccount"}),
                     get(sb, "/v1/customers/cus_nope"), get(sb, "/v1/colours")):
            seen.append(resp.headers["request-id"])
        with pytest.raises(stripe.InvalidRequestError) as info:
            client(sb).v1.customers.retrieve("cus_nope")
        assert info.value.request_id is not None
        seen.append(info.value.request_id)
    with start_in_thread(MiniSim(), api_key=KEY, rate_limit=0.01) as sb:
        statuses = [get(sb, "/v1/customers") for _ in range(2)]
        assert [r.status_code for r in statuses] == [200, 429]
        seen.append(statuses[1].headers["request-id"])
    with start_in_thread(MiniSim(), api_key=KEY, fault_rate=1.0, faults=["500"]) as sb:
        fault = get(sb, "/v1/customers")
        assert fault.status_code == 500
        seen.append(fault.headers["request-id"])
    assert all(r.startswith("req_") for r in seen)
    assert len(set(seen)) == len(seen) == 9


def test_an_idempotency_key_on_a_get_replays_nothing(mini: RunningSandbox) -> None:
    """reference.md section 5: Stripe saves and replays the first answer for an ``Idempotency-Key`` on POSTs; GETs
    are idempotent by nature. A second GET with the same key but limit 2 is answered afresh (2 invoices, not
    the first request's 1); the same GET twice gives the same bytes."""
    key = {"Idempotency-Key": "6f1c0a52-0d0b-4f55-9a43-3a1f0b2f7e11"}
    assert ids(get(mini, "/v1/invoices?limit=1", headers=key)) == ["in_0029"]
    assert ids(get(mini, "/v1/invoices?limit=2", headers=key)) == ["in_0029", "in_0028"]
    assert get(mini, "/v1/invoices?limit=3").content == get(mini, "/v1/invoices?limit=3").content


def test_events_are_not_rerendered_for_the_requested_version(mini: RunningSandbox) -> None:
    """reference.md section 3: each event is rendered at the version of its creation, "not according to your
    current Stripe API version or Stripe-Version header". A list of events asked for with ``Stripe-Version:
    2024-06-20`` is byte for byte the one asked for without it, every event's ``api_version`` still
    2026-10-28.endive; the answer's ``Stripe-Version`` header names the version asked for, and without one the
    account's (the SDK's pin)."""
    plain = get(mini, "/v1/events?limit=20")
    older = get(mini, "/v1/events?limit=20", headers={"Stripe-Version": "2024-06-20"})
    assert older.content == plain.content
    assert {e["api_version"] for e in older.json()["data"]} == {"2026-10-28.endive"}
    assert older.headers["stripe-version"] == "2024-06-20"
    assert plain.headers["stripe-version"] == "2026-10-28.endive" == stripe.api_version


def test_a_head_request_leaves_the_connection_usable(mini: RunningSandbox) -> None:
    """Whatever status a HEAD gets, its answer has no content (RFC 9110 section 9.3.2), so the next request on
    the same keep-alive connection reads its own answer: cus_0001, 200."""
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=5) as http:
        http.head(mini.url + "/v1/customers")
        after = http.get(mini.url + "/v1/customers/cus_0001")
    assert after.status_code == 200 and after.json()["id"] == "cus_0001"


# --- events: previous_attributes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events() -> Iterator[list[dict[str, Any]]]:
    """Every event within the 30 days of a 150-customer, 12-month simulation with every sandbox option, as the
    SDK walks /v1/events (it has customer.subscription.deleted and .paused events in that window)."""
    sim_module = pytest.importorskip("stripe_churn.sandbox.sim")
    sim = sim_module.Simulation(customers=150, months=12, seed=3, **sim_module.SANDBOX_OPTIONS)
    with start_in_thread(sim, api_key=KEY) as sb:
        yield [e.to_dict(for_json=True) for e in client(sb).v1.events.list({"limit": 100}).auto_paging_iter()]


def test_updated_events_carry_the_changed_attributes(events: list[dict[str, Any]]) -> None:
    """reference.md section 2 (event): ``data.previous_attributes`` holds "the names of the updated attributes and
    their values prior to the event" on ``*.updated`` events. Every such event served has a non-empty one, and
    each attribute it names held another value than ``data.object`` holds now."""
    updated = [e for e in events if e["type"].endswith(".updated")]
    assert len(updated) >= 20
    for evt in updated:
        before = evt["data"].get("previous_attributes")
        assert isinstance(before, dict) and before, evt["id"]
        for name, old in before.items():
            assert evt["data"]["object"].get(name) != old, (evt["id"], name)


def test_only_updated_events_carry_previous_attributes(events: list[dict[str, Any]]) -> None:
    """reference.md section 2 (event), from Stripe's docs: ``data.previous_attributes`` is "only included in events
    of type ``*.updated``". In the window served there are customer.subscription.deleted and .paused events; none
    may carry it."""
    assert {e["type"] for e in events} >= {"customer.subscription.deleted", "customer.subscription.paused"}
    carrying = sorted({e["type"] for e in events
                       if "previous_attributes" in e["data"] and not e["type"].endswith(".updated")})
    assert carrying == []
