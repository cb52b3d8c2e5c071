"""Locations, routes and machines over REST (staff, by role): ``/api/v1/locations``,
``/api/v1/routes``, ``/api/v1/machines``. Thin: check the role, scope the rows to what the
caller may see (``devices.selectors``; a Driver sees only their routes' part of the fleet,
and anything else is 404), validate the body, call one ``devices.fleet`` service.

A read needs the model's ``devices.view_*`` permission; creating ``add_*``, changing
``change_*``, deleting ``delete_*`` (``vending_site.auth.roles``)."""

from django.db.models import Prefetch, QuerySet
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from devices import fleet
from devices.models import Device, Location, Route, RouteStop
from devices.selectors import (
    canonical_id,
    locations_visible_to,
    machines_visible_to,
    routes_visible_to,
)
from vending_site.auth import roles
from vending_site.http.errors import InvalidRequest, NotFound

from . import docs
from .fleet_serializers import (
    LocationSerializer,
    MachineSerializer,
    MachineUpdateSerializer,
    RouteSerializer,
)

_ACTION = {"POST": "add", "PATCH": "change", "PUT": "change", "DELETE": "delete"}


class _ByRole:
    """Permissions by method: ``devices.<action>_<model>``, reads ``view``."""

    model_name = ""

    def get_permissions(self):
        action = _ACTION.get(self.request.method, "view")
        return [roles.requires(f"devices.{action}_{self.model_name}")()]


def _not_found(kind: str, key) -> NotFound:
    return NotFound(f"No {kind} {str(key)[:40]} exists (or it is not on your routes).")


def _integer_id(kind: str, pk: str) -> int:
    if not pk.isdigit() or len(pk) > 10:
        raise _not_found(kind, pk)
    return int(pk)


# --- Locations --------------------------------------------------------------------------


def _locations(request: Request) -> QuerySet[Location]:
    machines = Device.objects.only("pk", "device_id", "location_id").order_by("device_id")
    return locations_visible_to(request.user).prefetch_related(
        Prefetch("machines", queryset=machines)
    )


class LocationListView(_ByRole, generics.ListCreateAPIView):
    """``GET``/``POST /api/v1/locations``."""

    model_name = "location"
    serializer_class = LocationSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Location.objects.none()
        return _locations(self.request).order_by("name")

    @docs.LOCATION_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @docs.LOCATION_CREATE
    def post(self, request: Request, *args, **kwargs) -> Response:
        serializer = LocationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        location = fleet.save_location(changes=serializer.validated_data)
        return Response(
            LocationSerializer(_locations(request).get(pk=location.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class LocationDetailView(_ByRole, generics.GenericAPIView):
    """``GET``/``PATCH``/``DELETE /api/v1/locations/<id>``."""

    model_name = "location"
    serializer_class = LocationSerializer

    def _get(self, pk: str) -> Location:
        location = _locations(self.request).filter(pk=_integer_id("location", pk)).first()
        if location is None:
            raise _not_found("location", pk)
        return location

    @docs.LOCATION_READ
    def get(self, request: Request, pk: str) -> Response:
        return Response(LocationSerializer(self._get(pk)).data)

    @docs.LOCATION_UPDATE
    def patch(self, request: Request, pk: str) -> Response:
        location = self._get(pk)
        serializer = LocationSerializer(location, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        fleet.save_location(location=location, changes=serializer.validated_data)
        return Response(LocationSerializer(self._get(pk)).data)

    @docs.LOCATION_DELETE
    def delete(self, request: Request, pk: str) -> Response:
        fleet.delete_location(location=self._get(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Routes ----------------------------------------------------------------------------


def _routes(request: Request) -> QuerySet[Route]:
    return (
        routes_visible_to(request.user)
        .select_related("driver")
        .prefetch_related(Prefetch("stops", queryset=RouteStop.objects.order_by("position")))
    )


def _route_write(serializer: RouteSerializer) -> tuple[dict, list[int] | None]:
    data = dict(serializer.validated_data)
    stops = data.pop("stops", None)
    if "driver_id" in data:
        data["driver"] = data.pop("driver_id")
    return data, stops


class RouteListView(_ByRole, generics.ListCreateAPIView):
    """``GET``/``POST /api/v1/routes``."""

    model_name = "route"
    serializer_class = RouteSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Route.objects.none()
        return _routes(self.request).order_by("name")

    @docs.ROUTE_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @docs.ROUTE_CREATE
    def post(self, request: Request, *args, **kwargs) -> Response:
        serializer = RouteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changes, stops = _route_write(serializer)
        route = fleet.save_route(changes=changes, stops=stops or [])
        return Response(
            RouteSerializer(_routes(request).get(pk=route.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class RouteDetailView(_ByRole, generics.GenericAPIView):
    """``GET``/``PATCH``/``DELETE /api/v1/routes/<id>``."""

    model_name = "route"
    serializer_class = RouteSerializer

    def _get(self, pk: str) -> Route:
        route = _routes(self.request).filter(pk=_integer_id("route", pk)).first()
        if route is None:
            raise _not_found("route", pk)
        return route

    @docs.ROUTE_READ
    def get(self, request: Request, pk: str) -> Response:
        return Response(RouteSerializer(self._get(pk)).data)

    @docs.ROUTE_UPDATE
    def patch(self, request: Request, pk: str) -> Response:
        route = self._get(pk)
        serializer = RouteSerializer(route, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes, stops = _route_write(serializer)
        fleet.save_route(route=route, changes=changes, stops=stops)
        return Response(RouteSerializer(self._get(pk)).data)

    @docs.ROUTE_DELETE
    def delete(self, request: Request, pk: str) -> Response:
        self._get(pk).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Machines --------------------------------------------------------------------------


def _filter_id(request: Request, name: str) -> int | str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return ""
    if raw == "none" and name == "location":
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise InvalidRequest(
            f"{name} must be a {name} id{' or none' if name == 'location' else ''}, "
            f"not {raw[:20]!r}."
        )
    return int(raw)


class MachineListView(_ByRole, generics.ListAPIView):
    """``GET /api/v1/machines`` (``?location=<id>|none``, ``?route=<id>``)."""

    model_name = "device"
    serializer_class = MachineSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no database
            return Device.objects.none()
        machines = machines_visible_to(self.request.user).select_related("location")
        location = _filter_id(self.request, "location")
        if location != "":
            machines = machines.filter(location=location)
        route = _filter_id(self.request, "route")
        if route != "":
            machines = machines.filter(location__stops__route=route)
        return machines.order_by("device_id")

    @docs.MACHINE_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class MachineDetailView(_ByRole, generics.GenericAPIView):
    """``GET``/``PATCH /api/v1/machines/<device_id>``: name and location are editable."""

    model_name = "device"
    serializer_class = MachineSerializer

    def _get(self, device_id: str) -> Device:
        canonical = canonical_id(device_id)
        machines = machines_visible_to(self.request.user).select_related("location")
        device = machines.filter(device_id=canonical).first()
        if device is None:
            raise _not_found("machine", canonical)
        return device

    @docs.MACHINE_READ
    def get(self, request: Request, device_id: str) -> Response:
        return Response(MachineSerializer(self._get(device_id)).data)

    @docs.MACHINE_UPDATE
    def patch(self, request: Request, device_id: str) -> Response:
        device = self._get(device_id)
        serializer = MachineUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fleet.update_machine(device=device, changes=serializer.validated_data)
        return Response(MachineSerializer(self._get(device_id)).data)
