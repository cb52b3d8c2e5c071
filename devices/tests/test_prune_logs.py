"""``prune_logs``: old log entries and expired idempotency keys go, in batches; recent ones stay."""

from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from devices import maintenance
from devices.choices import Direction, Transport
from devices.maintenance import parse_age, prune_communication_log
from devices.models import CommunicationLog
from tests.factories import UserFactory
from transactions.models import IdempotencyKey

pytestmark = pytest.mark.django_db


def make_log(count: int, *, age: timedelta) -> None:
    created = timezone.now() - age
    CommunicationLog.objects.bulk_create(
        CommunicationLog(
            direction=Direction.IN,
            transport=Transport.WIFI,
            message=f"entry {n}",
            created_at=created,
        )
        for n in range(count)
    )


def make_key(key: str, *, age: timedelta) -> IdempotencyKey:
    created = timezone.now() - age
    return IdempotencyKey.objects.create(
        user=UserFactory(), key=key, fingerprint="f" * 64, created_at=created, locked_at=created
    )


def prune(*args: str) -> str:
    out = StringIO()
    call_command("prune_logs", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90min", timedelta(minutes=90)),
        ("3600s", timedelta(seconds=3600)),
        ("2w", timedelta(weeks=2)),
        ("1mo", timedelta(days=30)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_ages_are_a_number_and_a_unit(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "d", "30 days", "1y", "1ms", "-5d", "0d", "1.5h", "9" * 12]
)
def test_anything_else_is_not_an_age(text):
    with pytest.raises(ValueError):
        parse_age(text)


def test_m_alone_is_refused_as_ambiguous_minutes_or_months():
    with pytest.raises(ValueError, match=r"'1m' is ambiguous: write 1min .* or 1mo"):
        parse_age("1m")


def test_old_entries_are_deleted_in_batches_and_recent_ones_stay(django_assert_num_queries):
    make_log(12, age=timedelta(days=31))
    make_log(3, age=timedelta(days=29))
    before = timezone.now() - timedelta(days=30)

    # One count, then per batch one select of ids and one delete: 5 + 5 + 2.
    with django_assert_num_queries(1 + 3 * 2):
        deleted = prune_communication_log(before=before, batch_size=5)

    assert deleted == 12
    assert CommunicationLog.objects.count() == 3
    assert not CommunicationLog.objects.filter(created_at__lt=before).exists()


def test_pruning_again_deletes_nothing_more():
    make_log(4, age=timedelta(days=31))
    before = timezone.now() - timedelta(days=30)

    assert prune_communication_log(before=before, batch_size=3) == 4
    assert prune_communication_log(before=before, batch_size=3) == 0


def test_a_spent_time_limit_starts_no_batch():
    make_log(4, age=timedelta(days=31))

    deleted = prune_communication_log(before=timezone.now(), batch_size=2, time_limit=0)

    assert deleted == 0
    assert CommunicationLog.objects.count() == 4


def test_the_command_prunes_old_log_entries_and_expired_idempotency_keys():
    make_log(12, age=timedelta(days=31))
    make_log(3, age=timedelta(days=29))
    make_key("old", age=timedelta(days=3))
    make_key("fresh", age=timedelta(hours=1))

    output = prune("--older-than", "30d", "--batch-size", "5")

    assert "deleted 12 communication log entries" in output
    assert "and 1 expired idempotency keys" in output
    assert CommunicationLog.objects.count() == 3
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]


def test_the_command_forgets_expired_refresh_tokens_and_old_login_records():
    from axes.models import AccessLog
    from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

    user = UserFactory()
    now = timezone.now()
    for jti, expires in (("gone", now - timedelta(hours=1)), ("live", now + timedelta(hours=1))):
        OutstandingToken.objects.create(
            user=user, jti=jti, token=jti, created_at=now - timedelta(days=1), expires_at=expires
        )
    old_login = AccessLog.objects.create(username="u", ip_address="10.0.0.1", user_agent="x")
    AccessLog.objects.filter(pk=old_login.pk).update(attempt_time=now - timedelta(days=31))
    AccessLog.objects.create(username="u", ip_address="10.0.0.1", user_agent="x")

    output = prune("--older-than", "30d")

    assert "1 expired refresh tokens, 1 login records older than that" in output
    assert list(OutstandingToken.objects.values_list("jti", flat=True)) == ["live"]
    assert AccessLog.objects.count() == 1


def test_older_than_accepts_hours_minutes_and_seconds():
    make_log(2, age=timedelta(hours=13))
    make_log(1, age=timedelta(hours=11))

    assert "deleted 2 " in prune("--older-than", "12h")
    assert "deleted 0 " in prune("--older-than", "720min")
    assert "deleted 1 " in prune("--older-than", "3600s")


def test_a_dry_run_counts_and_deletes_nothing():
    make_log(12, age=timedelta(days=31))
    make_log(3, age=timedelta(days=29))
    make_key("old", age=timedelta(days=3))

    output = prune("--older-than", "30d", "--dry-run")

    assert "would delete 12 communication log entries" in output
    assert "and 1 expired idempotency keys" in output
    assert CommunicationLog.objects.count() == 15
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.parametrize("age", ["30", "thirty days", "1m", "0d", "-1d"])
def test_a_bad_older_than_is_a_command_error_saying_what_is_expected(age):
    make_log(1, age=timedelta(days=400))

    expected = "write one of 30s, 15min, 12h, 7d, 2w or 1mo \\(30 days\\)"
    with pytest.raises(CommandError, match=f"--older-than: .*; {expected}"):
        prune(f"--older-than={age}")  # "=": argparse would take -1d for an option

    assert CommunicationLog.objects.count() == 1


def test_older_than_is_required():
    with pytest.raises(CommandError, match="--older-than"):
        prune()


@pytest.mark.parametrize("size", ["0", "-5", "10001"])
def test_a_batch_size_out_of_range_is_a_command_error(size):
    with pytest.raises(CommandError, match="--batch-size must be between 1 and 10000"):
        prune("--older-than", "30d", "--batch-size", size)


def test_prune_logs_also_drops_live_events_past_their_retention(settings):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from vending_site.models import LiveEvent

    settings.LIVE_EVENT_RETENTION = 60
    old = LiveEvent.objects.create(kind="log", payload={})
    LiveEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    fresh = LiveEvent.objects.create(kind="log", payload={})

    call_command("prune_logs", "--older-than", "30d", stdout=StringIO())

    assert list(LiveEvent.objects.values_list("pk", flat=True)) == [fresh.pk]


def test_pruning_many_batches_prints_progress_each_tenth_of_the_way():
    make_log(20, age=timedelta(days=31))

    lines = prune("--older-than", "30d", "--batch-size", "2").splitlines()

    assert lines[:9] == [
        f"deleted {n} of 20 communication log entries ({5 * n}%)" for n in range(2, 20, 2)
    ]
    assert lines[9].startswith("deleted 20 communication log entries older than")


def test_one_batch_or_verbosity_0_prints_no_progress():
    make_log(4, age=timedelta(days=31))
    assert len(prune("--older-than", "30d").splitlines()) == 1

    make_log(4, age=timedelta(days=31))
    assert len(prune("--older-than", "30d", "--batch-size", "1", "-v", "0").splitlines()) == 1


def test_stopping_at_max_seconds_says_how_many_entries_are_left(monkeypatch):
    make_log(12, age=timedelta(days=31))
    # A clock that reads 0 at the start and for two batches, then 100 s: the third waits.
    readings = iter([0.0, 0.0, 0.0, 100.0])
    monkeypatch.setattr(maintenance, "time", SimpleNamespace(monotonic=lambda: next(readings)))

    output = prune("--older-than", "30d", "--batch-size", "5", "--max-seconds", "10")

    assert "deleted 10 communication log entries" in output
    assert "stopped at --max-seconds 10: 2 communication log entries older than" in output
    assert CommunicationLog.objects.count() == 2


def test_finishing_within_max_seconds_says_nothing_is_left():
    make_log(3, age=timedelta(days=31))

    output = prune("--older-than", "30d", "--max-seconds", "600")

    assert "deleted 3 " in output
    assert "left" not in output
