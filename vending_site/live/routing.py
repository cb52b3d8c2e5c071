"""WebSocket routes."""

from django.urls import path

from vending_site.live.consumers import EventsConsumer

websocket_urlpatterns = [path("ws/events/", EventsConsumer.as_asgi())]
