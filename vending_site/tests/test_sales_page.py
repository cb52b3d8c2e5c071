"""The Sales page, /sales/: who may open it, and its figures against a hand-built set of vends."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.factories import DeviceFactory, ProductFactory, SlotFactory, staff_with_role
from transactions.choices import TransactionState as S
from transactions.models import Transaction
from vending_site.auth import roles
from vending_site.dashboard.sales import change, nice_ceiling, standout_slots

URL = "/sales/"
PERIOD = "?from=2026-01-05&to=2026-01-07"  # the previous period: 2026-01-02 .. 2026-01-04


@pytest.fixture
def money_settings(settings):
    settings.TIME_ZONE = "UTC"
    settings.CURRENCY = "CHF"


def vend(slot, state: str, when: datetime, price: str) -> None:
    Transaction.objects.create(
        device=slot.device,
        slot=slot,
        slot_number=slot.number,
        product=slot.product,
        product_name=slot.product.name,
        product_sku=slot.product.sku,
        price=Decimal(price),
        state=state,
        created_at=when,
    )


def day(n: int, hour: int = 12) -> datetime:
    return datetime(2026, 1, n, hour, tzinfo=UTC)


@pytest.fixture
def sales(db, money_settings):
    """Two machines; ESP32_A's slot 3 (Chips) fails 2 of its 3 tries, ESP32_B's slot 1 one of 4.

    Period (5..7 Jan): A1 4 x 1.50, A2 2 x 1.00, A3 1 x 2.00 + 2 failed, B1 3 x 2.00 + 1 failed:
    10 vends, CHF 16.00, 3 failed, 3/13 = 23.1 %. Before (2..4 Jan): A1 2 x 1.50, B1 1 x 2.00.
    """
    cola = ProductFactory(sku="COLA", name="Cola", price=Decimal("1.50"))
    water = ProductFactory(sku="WATER", name="Water", price=Decimal("1.00"))
    chips = ProductFactory(sku="CHIPS", name="Chips", price=Decimal("2.00"))
    a = DeviceFactory(device_id="ESP32_A", name="Lobby")
    b = DeviceFactory(device_id="ESP32_B")
    a1 = SlotFactory(device=a, number=1, product=cola)
    a2 = SlotFactory(device=a, number=2, product=water)
    a3 = SlotFactory(device=a, number=3, product=chips)
    b1 = SlotFactory(device=b, number=1, product=cola)
    for when in (day(5, 9), day(5, 10), day(6), day(7)):
        vend(a1, S.SUCCEEDED, when, "1.50")
    vend(a2, S.SUCCEEDED, day(6, 8), "1.00")
    vend(a2, S.SUCCEEDED, day(6, 9), "1.00")
    vend(a3, S.FAILED, day(5), "2.00")
    vend(a3, S.FAILED, day(6), "2.00")
    vend(a3, S.SUCCEEDED, day(7), "2.00")
    for when in (day(5), day(6), day(7)):
        vend(b1, S.SUCCEEDED, when, "2.00")
    vend(b1, S.FAILED, day(7, 13), "2.00")
    vend(a1, S.CANCELLED, day(6), "1.50")  # not a sale
    # The previous period:
    vend(a1, S.SUCCEEDED, day(2), "1.50")
    vend(a1, S.SUCCEEDED, day(4), "1.50")
    vend(b1, S.SUCCEEDED, day(3), "2.00")


def viewer(client):
    client.force_login(staff_with_role(roles.VIEWER))
    return client


def test_totals_show_the_period_against_the_one_before(client, sales):
    response = viewer(client).get(URL + PERIOD)

    assert response.status_code == 200
    totals = {total["name"]: total for total in response.context["totals"]}
    assert totals["Vends"]["value"] == "10"
    assert totals["Vends"]["before"] == "3"
    assert totals["Vends"]["change"].text == "+233%"  # 10 against 3
    assert totals["Revenue"]["value"] == "CHF 16.00"
    assert totals["Revenue"]["before"] == "CHF 5.00"
    assert totals["Revenue"]["change"].text == "+220%"
    assert totals["Revenue"]["change"].tone == "good"
    assert totals["Failed"]["value"] == "3"
    assert (totals["Failed"]["change"].text, totals["Failed"]["change"].tone) == ("new", "bad")
    assert totals["Failure rate"]["value"] == "23.1%"  # 3 / (10 + 3)
    assert totals["Failure rate"]["change"].text == "+23.1 pt"
    html = response.content.decode()
    assert "CHF 16.00" in html
    dash = "\N{EN DASH}"
    assert f"5 Jan 2026 {dash} 7 Jan 2026 (3 days), against 2 Jan {dash} 4 Jan 2026" in html


def test_revenue_per_day_has_a_bar_for_every_day(client, sales):
    chart = viewer(client).get(URL + PERIOD).context["chart"]

    assert chart["by"] == "day"
    assert [bar["revenue"] for bar in chart["bars"]] == ["5.00", "5.50", "5.50"]
    assert [bar["vends"] for bar in chart["bars"]] == [3, 4, 3]
    assert [bar["failed"] for bar in chart["bars"]] == [1, 1, 1]
    assert chart["top"] == "6.00"  # the axis' top above 5.50
    assert chart["bars"][0]["height"] == "83.333"  # 5.00 of 6.00
    assert chart["best"]["label"] == "Tue 6 Jan"  # the first of the two best days


def test_a_day_without_sales_is_a_bar_at_zero(client, sales):
    chart = viewer(client).get("/sales/?from=2026-01-07&to=2026-01-09").context["chart"]

    assert [bar["revenue"] for bar in chart["bars"]] == ["5.50", "0.00", "0.00"]
    assert [bar["label"] for bar in chart["bars"]] == ["Wed 7 Jan", "Thu 8 Jan", "Fri 9 Jan"]


def test_a_single_day_is_charted_per_hour(client, sales):
    chart = viewer(client).get("/sales/?from=2026-01-05&to=2026-01-05").context["chart"]

    assert chart["by"] == "hour" and chart["count"] == 24
    amounts = {bar["label"]: bar["revenue"] for bar in chart["bars"] if bar["vends"]}
    assert amounts == {"09:00": "1.50", "10:00": "1.50", "12:00": "2.00"}


def test_top_products_and_machines_are_ranked_by_revenue(client, sales):
    context = viewer(client).get(URL + PERIOD).context

    products = [(p["product"], p["vends"], p["revenue_text"]) for p in context["products"]]
    # Water and Chips both made 2.00: the one with more vends first.
    assert products == [("Cola", 7, "12.00"), ("Water", 2, "2.00"), ("Chips", 1, "2.00")]
    assert context["products"][0]["change"].text == "+140%"  # 12.00 against 5.00
    machines = [
        (m["machine"], m["vends"], m["revenue_text"], m["failed"], m["rate"], m["change"].text)
        for m in context["machines"]
    ]
    assert machines == [
        ("ESP32_A", 7, "10.00", 2, "22.2%", "+233%"),  # 10.00 against 3.00
        ("ESP32_B", 3, "6.00", 1, "25.0%", "+200%"),  # 6.00 against 2.00
    ]


def test_only_the_slot_failing_well_above_the_fleet_stands_out(client, sales):
    context = viewer(client).get(URL + PERIOD).context

    # A3: 2 of 3 (66.7 %) >= 2 x 23.1 %; B1: 1 of 4 (25 %) is above 20 % but not twice the fleet.
    weak = [
        (w["machine"], w["slot"], w["product"], w["failed"], w["attempts"]) for w in context["weak"]
    ]
    assert weak == [("ESP32_A", 3, "Chips", 2, 3)]
    assert context["weak"][0]["rate"] == "66.7%"
    assert context["weak_rule"]["fleet"] == "23.1%"


@pytest.mark.parametrize(
    "rows, fleet, flagged",
    [
        ([{"machine": "M", "slot": 1, "vends": 1, "failed": 1, "failure_rate": 0.5}], 0.1, []),
        ([{"machine": "M", "slot": 1, "vends": 8, "failed": 2, "failure_rate": 0.2}], 0.0, [1]),
        ([{"machine": "M", "slot": 1, "vends": 9, "failed": 1, "failure_rate": 0.1}], 0.0, []),
        ([{"machine": "M", "slot": 1, "vends": 6, "failed": 4, "failure_rate": 0.4}], 0.3, []),
    ],
    ids=["two tries are too few", "20 % on a fleet at 0", "10 % is below the floor", "under 2x"],
)
def test_the_standout_rule(db, rows, fleet, flagged):
    assert [row["slot"] for row in standout_slots(rows, fleet)] == flagged


def test_csv_buttons_link_the_reports_api_for_the_same_period(client, sales):
    response = viewer(client).get(URL + PERIOD)

    urls = [link["url"] for link in response.context["csv_links"]]
    assert (
        urls[0] == "/api/v1/reports/sales?from=2026-01-05&to=2026-01-07&group_by=machine&format=csv"
    )
    assert {url.split("group_by=")[1].split("&")[0] for url in urls} == {
        "machine",
        "product",
        "slot",
        "day",
    }
    csv = viewer(client).get(urls[0])
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")


def test_presets_end_today(client, db, money_settings):
    today = timezone.localdate()
    response = viewer(client).get(URL + "?period=30d")
    period = response.context["period"]
    assert (period.first, period.last) == (today - timedelta(days=29), today)
    assert viewer(client).get(URL).context["period"].days == 7  # the default
    assert viewer(client).get(URL + "?period=today").context["period"].days == 1


@pytest.mark.parametrize(
    "query, message",
    [
        ("?from=2026-01-07&to=2026-01-05", "is after to"),
        ("?from=yesterday", "from must be a date as YYYY-MM-DD"),
        ("?period=week", "period must be one of today, 7d, 30d"),
        ("?from=2024-01-01&to=2026-01-01", "at most 366 days"),
    ],
)
def test_a_bad_period_is_a_400_page_that_says_why(client, db, query, message):
    response = viewer(client).get(URL + query)

    assert response.status_code == 400
    assert message in response.content.decode()


def test_a_day_in_year_one_east_of_utc_is_a_400_page_not_an_overflow(client, db, settings):
    settings.TIME_ZONE = "Europe/Zurich"

    response = viewer(client).get(URL + "?from=0001-01-02&to=0001-01-02")

    assert response.status_code == 400
    assert "to must be a date from 2000-01-01 to 9998-12-31" in response.content.decode()


def test_an_empty_period_renders(client, db, money_settings):
    response = viewer(client).get(URL + PERIOD)

    assert response.status_code == 200
    html = response.content.decode()
    assert "No sales in this period" in html and "None stands out" in html


@pytest.mark.parametrize(
    "role, status",
    [
        (roles.OPERATOR, 200),
        (roles.VIEWER, 200),
        (roles.DRIVER, 403),
        (roles.TECHNICIAN, 403),
    ],
)
def test_only_roles_with_view_sales_may_open_it(client, db, role, status):
    client.force_login(staff_with_role(role))

    response = client.get(URL)

    assert response.status_code == status
    if status == 403:
        assert "transactions.view_sales" in response.content.decode()


def test_anonymous_visitors_are_sent_to_log_in(client, db):
    response = client.get(URL + PERIOD)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/sales/")


def test_a_staff_account_without_a_role_is_refused(client, db):
    from tests.factories import UserFactory

    client.force_login(UserFactory(is_staff=True, vend_client=False))
    assert client.get(URL).status_code == 403


def test_the_page_costs_four_report_queries(client, sales, django_assert_num_queries):
    client = viewer(client)
    client.get(URL + PERIOD)  # the session and permissions, cached on the user object
    # session, user, then per request: permissions (2), 4 reports, the standout slots' names
    with django_assert_num_queries(9):
        assert client.get(URL + PERIOD).status_code == 200


@pytest.mark.parametrize(
    "now, before, text, tone",
    [
        (10, 3, "+233%", "good"),
        (3, 10, "-70%", "bad"),
        (0, 0, "no change", "flat"),
        (1, 0, "new", "good"),
    ],
)
def test_change_in_words(now, before, text, tone):
    assert (change(now, before).text, change(now, before).tone) == (text, tone)


@pytest.mark.parametrize(
    "value, top",
    [("0", "1"), ("5.5", "6"), ("16", "20"), ("0.7", "0.8"), ("101", "120"), ("1000", "1000")],
)
def test_the_axis_top_is_a_round_number_above_the_tallest_bar(value, top):
    assert nice_ceiling(Decimal(value)) == Decimal(top)
