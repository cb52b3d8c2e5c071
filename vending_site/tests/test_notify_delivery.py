"""The notifier sends the outbox to real receivers: a local HTTP server that verifies every
signature with the standardwebhooks library, a local SMTP server (aiosmtpd), an Apprise URL
nobody listens on. Retries, backoff, the lease and the SSRF guard at delivery time."""

import threading
import time

import pytest
from aiosmtpd.controller import Controller

from tests.scratch.net import free_port
from vending_site.notify import outbox, ssrf
from vending_site.notify.events import emit
from vending_site.notify.models import Delivery, DeliveryAttempt, Endpoint, EndpointKind
from vending_site.notify.sending import Outcome
from vending_site.notify.worker import Notifier

from .webhook_receiver import Receiver, SmtpInbox

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.NOTIFY_TIMEOUT = 2.0
    settings.NOTIFY_BACKOFF_BASE = 0.0  # retries due at once: the tests drive them
    settings.NOTIFY_MAX_ATTEMPTS = 4


@pytest.fixture
def receiver():
    hooks = Receiver()
    yield hooks
    hooks.stop()


def webhook(url: str, name: str = "erp", events=("vend.succeeded",), **fields) -> Endpoint:
    return Endpoint.objects.create(name=name, url=url, event_types=list(events), **fields)


def vend_event(number: int = 1):
    return emit(
        "vend.succeeded",
        {"id": str(number), "state": "succeeded", "machine": "ESP32_AABBCCDDEEFF"},
        subject=f"vend:{number}",
    )


def test_a_webhook_arrives_signed_per_standard_webhooks(receiver):
    receiver.secret = webhook(receiver.start().url).secret
    message = vend_event()

    assert Notifier().run_once() == 1

    (got,) = receiver.wait_for(1)
    assert got.verified, got.headers
    assert got.headers["webhook-id"] == message.msg_id
    assert got.headers["content-type"] == "application/json"
    assert got.payload == {
        "type": "vend.succeeded",
        "timestamp": message.created_at.isoformat(),
        "data": {"id": "1", "state": "succeeded", "machine": "ESP32_AABBCCDDEEFF"},
    }
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 204)
    attempt = DeliveryAttempt.objects.get()
    assert attempt.status_code == 204 and attempt.error == "" and attempt.next_attempt_at is None


def test_a_receiver_down_then_up_gets_the_delivery_with_the_same_webhook_id(receiver):
    receiver.secret = webhook(receiver.url).secret  # nothing listens yet
    message = vend_event()

    Notifier().run_once()
    Notifier().run_once()
    receiver.start()
    Notifier().run_once()

    (got,) = receiver.wait_for(1)
    assert got.verified and got.headers["webhook-id"] == message.msg_id
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("delivered", 3)
    tries = list(DeliveryAttempt.objects.order_by("id"))
    assert [bool(t.error) for t in tries] == [True, True, False]
    assert "cannot connect" in tries[0].error and tries[0].next_attempt_at is not None


def test_a_receiver_answering_500_is_retried_then_given_up_on(receiver):
    receiver.status = 500
    receiver.secret = webhook(receiver.start().url).secret
    vend_event()

    for _ in range(6):
        Notifier().run_once()

    assert len(receiver.wait_for(4)) == 4  # NOTIFY_MAX_ATTEMPTS, no more
    assert set(receiver.ids()) == {Delivery.objects.get().message.msg_id}
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 4, 500)
    assert delivery.last_error.startswith("HTTP 500")


def test_a_redirect_is_not_followed_and_counts_as_a_failure(receiver):
    target = Receiver().start()
    try:
        receiver.status, receiver.location = 302, target.url
        receiver.secret = webhook(receiver.start().url).secret
        vend_event()

        Notifier().run_once()

        assert len(receiver.wait_for(1)) == 1
        assert target.received == []
        delivery = Delivery.objects.get()
        assert delivery.state == "pending" and delivery.last_status == 302
        assert "redirects are not followed" in delivery.last_error
    finally:
        target.stop()


def test_retries_back_off_exponentially_with_full_jitter(settings):
    settings.NOTIFY_BACKOFF_BASE, settings.NOTIFY_BACKOFF_CAP = 5.0, 3600.0
    samples = {n: [outbox.backoff_seconds(n) for _ in range(200)] for n in (1, 2, 5, 20)}
    assert all(0 <= s <= 5 for s in samples[1])
    assert all(0 <= s <= 10 for s in samples[2]) and max(samples[2]) > 5
    assert all(0 <= s <= 80 for s in samples[5]) and max(samples[5]) > 40
    assert all(0 <= s <= 3600 for s in samples[20]) and max(samples[20]) > 1800


def test_a_url_allowed_at_creation_but_not_at_delivery_is_refused_and_recorded(receiver, settings):
    receiver.secret = webhook(receiver.start().url).secret
    vend_event()
    settings.WEBHOOK_ALLOWED_NETWORKS = []

    Notifier().run_once()

    assert receiver.received == []
    attempt = DeliveryAttempt.objects.get()
    assert attempt.error.startswith("refused:") and "loopback address" in attempt.error


def test_a_hanging_receiver_and_a_dead_apprise_target_do_not_hold_up_a_healthy_webhook(
    receiver, settings
):
    import apprise  # noqa: F401 - loaded before the clock starts: its import is slow on a busy box

    # The hanging receiver answers after 30 s and the notifier gives up on it after 6: the
    # healthy webhook must arrive well before that (on a busy CI box too).
    settings.NOTIFY_TIMEOUT = 6.0
    hanging = Receiver(delay=30).start()
    try:
        webhook(hanging.url, "hanging")
        Endpoint.objects.create(
            name="phone",
            kind=EndpointKind.APPRISE,
            url=f"json://127.0.0.1:{free_port()}/",
            event_types=["vend.succeeded"],
        )
        for number in range(6):  # six deliveries queued for the hanging receiver
            vend_event(number)
        receiver.secret = webhook(receiver.start().url, "healthy").secret
        message = vend_event(99)

        stop = threading.Event()
        notifier = Notifier(workers=4, per_endpoint=2, poll=0.05)
        thread = threading.Thread(target=notifier.run, args=(stop,))
        started = time.monotonic()
        thread.start()
        try:
            (got,) = receiver.wait_for(1, timeout=5)
            took = time.monotonic() - started
        finally:
            stop.set()
            thread.join(30)
        assert got.headers["webhook-id"] == message.msg_id and got.verified
        assert took < 5  # before the hanging receiver's sends time out
        assert len(hanging.received) <= 2  # its two slots, no more
    finally:
        hanging.stop()
    phone = Delivery.objects.filter(endpoint__name="phone")
    assert phone.filter(last_error__startswith="Apprise could not send").exists()


def test_an_email_reaches_a_real_smtp_server(settings):
    inbox = SmtpInbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        settings.DEFAULT_FROM_EMAIL = "vending@example.org"
        Endpoint.objects.create(
            name="staff",
            kind=EndpointKind.EMAIL,
            recipients="ops@example.org, lead@example.org",
            event_types=["alert.opened"],
        )
        emit(
            "alert.opened",
            {"title": "Machine ESP32_AABBCCDDEEFF offline", "rule": "machine_offline"},
            subject="machine:ESP32_AABBCCDDEEFF",
        )

        Notifier().run_once()

        (envelope,) = inbox.messages
        assert envelope.mail_from == "vending@example.org"
        assert set(envelope.rcpt_tos) == {"ops@example.org", "lead@example.org"}
        text = envelope.content.decode()
        assert "Subject: [vending] Machine ESP32_AABBCCDDEEFF offline" in text
        assert "rule: machine_offline" in text
        assert Delivery.objects.get().state == "delivered"
    finally:
        smtp.stop()


def test_a_delivery_whose_lease_ran_out_is_claimed_again(receiver, settings):
    webhook(receiver.start().url)
    vend_event()
    first = outbox.claim_due(worker="a", limit=10)
    assert len(first.deliveries) == 1
    assert outbox.claim_due(worker="b", limit=10).deliveries == []  # leased

    Delivery.objects.update(claimed_until=first.until.replace(year=2000))  # the lease ran out
    second = outbox.claim_due(worker="b", limit=10)

    assert [d.pk for d in second.deliveries] == [first.deliveries[0].pk]
    # The first notifier's late result no longer moves the delivery, but its try is recorded.
    late = outbox.record_outcome(
        delivery=first.deliveries[0],
        token=first.token,
        outcome=Outcome(True, 200),
        started_at=first.until,
        duration_ms=5,
    )
    assert late == "lost"
    assert Delivery.objects.get().state == "pending"
    assert DeliveryAttempt.objects.count() == 1


def test_a_claim_leaves_each_endpoint_at_most_its_share_in_flight(receiver):
    busy = webhook(receiver.url, "busy")
    other = webhook(receiver.url, "other")
    for number in range(5):
        vend_event(number)

    claim = outbox.claim_due(worker="a", limit=10, busy={busy.pk: 1}, per_endpoint=2)

    endpoints = [d.endpoint_id for d in claim.deliveries]
    assert endpoints.count(busy.pk) == 1 and endpoints.count(other.pk) == 2


def test_two_notifiers_never_send_one_delivery_twice(receiver):
    receiver.secret = webhook(receiver.start().url).secret
    messages = [vend_event(number) for number in range(40)]

    stop = threading.Event()
    notifiers = [Notifier(workers=4, per_endpoint=4, poll=0.02, name=n) for n in "ab"]
    threads = [threading.Thread(target=n.run, args=(stop,)) for n in notifiers]
    for thread in threads:
        thread.start()
    try:
        receiver.wait_for(40, timeout=30)
        deadline = time.monotonic() + 10
        while Delivery.objects.exclude(state="delivered").exists():
            assert time.monotonic() < deadline, "deliveries left pending"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    ids = receiver.ids()
    assert sorted(ids) == sorted(m.msg_id for m in messages)  # each once, none twice
    assert DeliveryAttempt.objects.count() == 40


def test_ssrf_guard_refuses_private_and_metadata_addresses_unless_allowed(settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    for url in ("http://127.0.0.2/x", "http://10.1.2.3/", "http://[::1]/", "http://0.0.0.0/"):
        with pytest.raises(ssrf.UnsafeURL):
            ssrf.check_url(url)
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    ssrf.check_url("http://127.0.0.2:9/x")
    with pytest.raises(ssrf.UnsafeURL, match="cloud metadata"):
        ssrf.check_url("http://169.254.169.254/latest/meta-data/")
    settings.WEBHOOK_ALLOWED_NETWORKS = ["169.254.169.254/32"]
    ssrf.check_url("http://169.254.169.254/latest/meta-data/")
    for url in ("ftp://example.org/", "file:///etc/passwd", "http://user:pw@127.0.0.1/", "x"):
        with pytest.raises(ssrf.UnsafeURL):
            ssrf.check_url(url)


def test_delivered_messages_past_retention_are_pruned_and_pending_ones_kept(receiver, settings):
    from datetime import timedelta

    from django.utils import timezone

    from vending_site.notify.models import Message

    webhook(receiver.url)
    old_done, old_pending, recent = vend_event(1), vend_event(2), vend_event(3)
    Delivery.objects.filter(message=old_done).update(state="delivered")
    Delivery.objects.filter(message=recent).update(state="delivered")
    Message.objects.filter(pk__in=[old_done.pk, old_pending.pk]).update(
        created_at=timezone.now() - timedelta(days=settings.NOTIFY_RETENTION_DAYS + 1)
    )

    assert outbox.prune_delivered() == 1

    assert set(Message.objects.values_list("pk", flat=True)) == {old_pending.pk, recent.pk}


def test_metrics_count_deliveries_by_outcome_and_show_the_queue_depth(receiver, client):
    from .test_metrics import scrape, value

    receiver.secret = webhook(receiver.start().url).secret
    webhook("http://127.0.0.1:9/nobody", "dead")  # connection refused: a retry
    vend_event(1)
    before = scrape(client)
    assert value(before, "vending_notify_queue_depth") == 2

    Notifier().run_once()

    after = scrape(client)
    delivered = "vending_notify_deliveries_total"
    assert (
        value(after, delivered, outcome="delivered")
        >= value(before, delivered, outcome="delivered") + 1
    )
    assert value(after, delivered, outcome="retry") >= value(before, delivered, outcome="retry") + 1
    assert value(after, "vending_notify_delivery_seconds_count") >= 1
    assert value(after, "vending_notify_queue_depth") == 1  # the dead one waits to retry


def test_a_delivery_that_gives_up_sends_the_delivery_failed_signal(settings):
    from vending_site.notify.signals import delivery_failed

    settings.NOTIFY_MAX_ATTEMPTS = 1
    webhook(f"http://127.0.0.1:{free_port()}/closed")
    vend_event()
    heard = []

    def listener(sender, delivery, **kwargs):
        heard.append(delivery.pk)

    delivery_failed.connect(listener)
    try:
        Notifier().run_once()
    finally:
        delivery_failed.disconnect(listener)

    assert heard == [Delivery.objects.get(state="failed").pk]


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch):
    """A receiver behind TLS with a self-signed certificate for ``localhost`` that this test
    trusts (``SSL_CERT_FILE``, read by ``ssl.create_default_context``)."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    hooks = Receiver(tls=context).start()
    yield hooks
    hooks.stop()


def test_https_is_verified_against_the_host_name_of_the_url(tls_receiver):
    good = webhook(f"https://localhost:{tls_receiver.port}/hooks", "by name")
    tls_receiver.secret = good.secret
    message = vend_event()

    Notifier().run_once()

    (got,) = tls_receiver.wait_for(1)
    assert got.verified and got.headers["webhook-id"] == message.msg_id
    assert got.headers["host"] == f"localhost:{tls_receiver.port}"
    good.delete()
    webhook(f"https://127.0.0.1:{tls_receiver.port}/hooks", "by address")  # not on the cert
    vend_event(2)

    Notifier().run_once()

    attempt = DeliveryAttempt.objects.get(delivery__endpoint__name="by address")
    assert attempt.error.startswith("TLS failed") and "127.0.0.1" in attempt.error


def test_deleting_an_endpoint_while_its_deliveries_are_being_sent_succeeds():
    from vending_site.notify.models import Message
    from vending_site.notify.services import delete_endpoint

    fast = Receiver().start()
    try:
        endpoint = webhook(fast.url)
        vend_event()
        message = Message.objects.get()
        Delivery.objects.bulk_create(  # a long history: the deletion takes a while
            [Delivery(message=message, endpoint=endpoint) for _ in range(3000)]
        )
        stop = threading.Event()
        notifier = Notifier(workers=8, per_endpoint=8, poll=0.01)
        thread = threading.Thread(target=notifier.run, args=(stop,))
        thread.start()
        try:
            fast.wait_for(50)  # tries keep landing while the deletion runs
            delete_endpoint(endpoint)
        finally:
            stop.set()
            thread.join(30)
    finally:
        fast.stop()
    assert not Endpoint.objects.exists()
    assert not Delivery.objects.exists() and not DeliveryAttempt.objects.exists()


def test_a_send_finishing_lets_the_next_one_go_without_waiting_for_the_poll(receiver):
    receiver.secret = webhook(receiver.start().url).secret
    for number in range(20):
        vend_event(number)
    stop = threading.Event()
    # One endpoint, two at a time, and a poll interval far longer than the whole queue needs:
    # only being woken by each finished send drains it in time.
    notifier = Notifier(workers=8, per_endpoint=2, poll=30)
    thread = threading.Thread(target=notifier.run, args=(stop,))
    thread.start()
    try:
        receiver.wait_for(20, timeout=15)
    finally:
        stop.set()
        thread.join(40)


def test_a_replay_of_a_delivery_being_sent_does_not_let_a_second_notifier_send_it(receiver):
    webhook(receiver.url)
    vend_event()
    first = outbox.claim_due(worker="a", limit=10)  # notifier a is sending it now
    (delivery,) = first.deliveries

    outbox.replay(Delivery.objects.get(pk=delivery.pk))

    assert outbox.claim_due(worker="b", limit=10).deliveries == []
    done = outbox.record_outcome(
        delivery=delivery,
        token=first.token,
        outcome=Outcome(True, 204),
        started_at=first.until,
        duration_ms=5,
    )
    assert done == "delivered"


@pytest.mark.parametrize(
    ("scheme", "opening"),
    [
        ("http", b"HTTP/1.1 200 OK\r\nX-Slow: "),
        # A TLS record of 16 KiB never finished: Python bounds the whole handshake by the
        # socket's timeout, so this one ends at the connection already.
        ("https", b"\x16\x03\x03\x40\x00"),
    ],
)
def test_a_receiver_trickling_its_answer_is_cut_off_well_within_the_lease(
    settings, scheme, opening
):
    # One byte every 0.2 s is never 'silence' to a per-read timeout: unbounded, a send
    # outlived its lease and a second notifier sent the same delivery at the same time.
    import socket

    from vending_site.notify.sending import post_webhook

    settings.NOTIFY_TIMEOUT = 0.5
    settings.NOTIFY_LEASE_SECONDS = 10.0
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    done = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(opening)
            deadline = time.monotonic() + 20
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        outcome = post_webhook(
            url=f"{scheme}://127.0.0.1:{port}/hooks",
            secret="whsec_" + "A" * 43 + "=",
            msg_id="msg_1",
            payload=b"{}",
        )
    finally:
        took = time.monotonic() - started
        done.set()
        thread.join(25)
        server.close()

    assert not outcome.ok and "within" in outcome.error, outcome
    assert took < 5  # three timeouts at most, far less than the lease


def test_a_url_the_notifier_could_not_put_on_the_wire_is_refused_when_saved():
    # http.client sends the request line and Host header in ASCII: a path or host name with
    # other characters was accepted, then every try ended in an internal UnicodeEncodeError.
    for url in ("http://127.0.0.1:9/hoöks", "http://127.0.0.1:9/€"):
        with pytest.raises(ssrf.UnsafeURL, match="ASCII"):
            ssrf.check_url(url)
