"""A URL no route matches: JSON on the API and device paths, Django's page elsewhere."""

import pytest


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/transactions/not-a-uuid/",  # found by schemathesis: the id is documented JSON
        "/api/v1/transactions/null,null/cancel/",
        "/api/v1/nothing-here",
        "/esp32/commands/ESP32_A/B",  # a device id with a slash
        "/vend/1/extra",
    ],
)
def test_an_unrouted_api_or_device_path_is_a_json_404(client, db, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"
    assert response.json()["detail"]


def test_an_unrouted_page_outside_the_api_is_still_django_s_404_page(client, db):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
