"""The dashboard's own JSON (session + CSRF, for the page that ships with the server), under
/dashboard/api/ in the namespace dashboard-api."""

from django.urls import path

from . import attention, views

urlpatterns = [
    path("state", views.state, name="state"),
    path("machines", views.machines, name="machines"),
    path("machines/select", views.select_device, name="select"),
    path("machines/approve", views.approve_device, name="approve"),
    path("vend", views.vend, name="vend"),
    path("ports/request", views.port_request, name="port-request"),
    path("transactions", views.transactions, name="transactions"),
    path("transactions/resolve", views.resolve, name="resolve"),
    path("logs", views.logs, name="logs"),
    path("alerts/acknowledge", attention.acknowledge, name="acknowledge"),
]
