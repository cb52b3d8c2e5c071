"""Products, the stock ledger and a planogram copy over REST (staff, role-checked).

Thin: check the role, parse the query or body, call one service (``inventory.services``,
``inventory.planogram``), serialize the result. Who sees which machines is
``devices.selectors.machines_visible_to`` (a Driver: their routes' machines)."""

from datetime import datetime, time, timedelta

from django.db.models import Q, QuerySet
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.exceptions import BadDeviceId
from devices.models import Device
from devices.selectors import canonical_id, get_device, machines_visible_to
from inventory.choices import MovementReason
from inventory.models import Product, StockMovement
from inventory.planogram import copy_planogram
from inventory.services import delete_product, save_product_changes
from vending_site.auth import roles
from vending_site.http.dates import parse_day, server_zone
from vending_site.http.errors import InvalidRequest, NotFound

from . import docs
from .catalog_serializers import (
    CatalogProductSerializer,
    PlanogramCopySerializer,
    PlanogramCopyToSerializer,
    ProductWriteSerializer,
    StockMovementSerializer,
)

CHANGE_PRICE = "inventory.change_price"
MAX_SEARCH = 100
_MAX_ID = 2**63 - 1


class _RoleChecked:
    """``needs``: the permissions each HTTP method requires (``roles.requires``)."""

    needs: dict[str, tuple[str, ...]] = {}

    def get_permissions(self):
        method = self.request.method if self.request else "GET"
        perms = self.needs.get("GET" if method in ("HEAD", "OPTIONS") else method)
        if perms is None:
            return [roles.requires("inventory.view_product")()]
        return [roles.requires(*perms)()]

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["sees_prices"] = roles.sees_prices(getattr(self.request, "user", None))
        return context


def _product_answer(view, product: Product, code: int = 200) -> Response:
    serializer = CatalogProductSerializer(product, context=view.get_serializer_context())
    return Response(serializer.data, status=code)


class ProductListView(_RoleChecked, generics.ListAPIView):
    """``GET /api/v1/products`` (``?search=`` in name or SKU), ``POST`` to create one."""

    serializer_class = CatalogProductSerializer
    filter_backends = ()
    needs = {
        "GET": ("inventory.view_product",),
        "POST": ("inventory.add_product", CHANGE_PRICE),
    }

    @docs.PRODUCT_LIST
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Product]:
        products = Product.objects.order_by("name", "id")
        if getattr(self, "swagger_fake_view", False):
            return products.none()
        search = self.request.query_params.get("search", "").strip()
        if len(search) > MAX_SEARCH or "\x00" in search:
            raise InvalidRequest(f"search must be at most {MAX_SEARCH} printable characters.")
        if search:
            products = products.filter(Q(name__icontains=search) | Q(sku__icontains=search))
        return products

    @docs.PRODUCT_CREATE
    def post(self, request: Request) -> Response:
        serializer = ProductWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        product = Product(**serializer.validated_data)
        save_product_changes(product=product, changed=serializer.validated_data, user=request.user)
        return _product_answer(self, product, status.HTTP_201_CREATED)


class ProductDetailView(_RoleChecked, generics.GenericAPIView):
    """``GET``, ``PUT``, ``PATCH``, ``DELETE /api/v1/products/<id>``."""

    serializer_class = CatalogProductSerializer
    filter_backends = ()
    pagination_class = None
    needs = {
        "GET": ("inventory.view_product",),
        "PUT": ("inventory.change_product",),
        "PATCH": ("inventory.change_product",),
        "DELETE": ("inventory.delete_product",),
    }

    def _product(self, pk: str) -> Product:
        product = Product.objects.filter(pk=int(pk)).first() if int(pk) <= _MAX_ID else None
        if product is None:
            raise NotFound(f"No product {pk[:20]}.", product=pk[:20])
        return product

    @docs.PRODUCT_READ
    def get(self, request: Request, pk: str) -> Response:
        return _product_answer(self, self._product(pk))

    @docs.PRODUCT_REPLACE
    def put(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=False)

    @docs.PRODUCT_UPDATE
    def patch(self, request: Request, pk: str) -> Response:
        return self._update(request, pk, partial=True)

    def _update(self, request: Request, pk: str, *, partial: bool) -> Response:
        product = self._product(pk)
        serializer = ProductWriteSerializer(product, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        if partial and not serializer.validated_data:
            raise InvalidRequest("Send at least one of: name, sku, price.")
        changed = [
            name
            for name, value in serializer.validated_data.items()
            if getattr(product, name) != value
        ]
        if "price" in changed and not request.user.has_perm(CHANGE_PRICE):
            raise PermissionDenied(
                f"This account lacks the permission {CHANGE_PRICE}: it may not change prices."
            )
        for name in changed:
            setattr(product, name, serializer.validated_data[name])
        save_product_changes(product=product, changed=changed, user=request.user)
        return _product_answer(self, product)

    @docs.PRODUCT_DELETE
    def delete(self, request: Request, pk: str) -> Response:
        delete_product(product=self._product(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class StockMovementListView(generics.ListAPIView):
    """``GET /api/v1/stock-movements``: the ledger, newest first, filtered."""

    serializer_class = StockMovementSerializer
    permission_classes = (roles.requires("inventory.view_stockmovement"),)
    filter_backends = ()

    @docs.STOCK_MOVEMENTS
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[StockMovement]:
        rows = StockMovement.objects.select_related("slot__device", "user").order_by(
            "-created_at", "-id"
        )
        if getattr(self, "swagger_fake_view", False):
            return rows.none()
        if roles.is_route_bound(self.request.user):
            rows = rows.filter(slot__device__in=machines_visible_to(self.request.user).values("pk"))
        return _filtered(rows, self.request.query_params)


def _filtered(rows: QuerySet[StockMovement], params) -> QuerySet[StockMovement]:
    machine, slot = params.get("machine"), params.get("slot")
    if machine is not None:
        rows = rows.filter(slot__device__device_id=canonical_id(machine))
    if slot is not None:
        if machine is None:
            raise InvalidRequest("slot needs machine: a slot number names a slot of one machine.")
        rows = rows.filter(slot__number=_whole("slot", slot, 32767))
    product = params.get("product")
    if product is not None:
        rows = rows.filter(slot__product_id=_whole("product", product, _MAX_ID))
    reason = params.get("reason")
    if reason is not None:
        if reason not in MovementReason.values:
            raise InvalidRequest(
                f"reason must be one of {', '.join(MovementReason.values)}, not {reason[:20]!r}."
            )
        rows = rows.filter(reason=reason)
    first = parse_day("from", params.get("from"))
    last = parse_day("to", params.get("to"))
    if first and last and first > last:
        raise InvalidRequest(f"from ({first}) is after to ({last}).")
    zone = server_zone()
    if first is not None:
        rows = rows.filter(created_at__gte=datetime.combine(first, time.min, tzinfo=zone))
    if last is not None:
        end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
        rows = rows.filter(created_at__lt=end)
    return rows


def _whole(name: str, text: str, most: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not 1 <= int(text) <= most:
        raise InvalidRequest(f"{name} must be a whole number from 1 to {most}, not {text[:20]!r}.")
    return int(text)


class PlanogramCopyView(APIView):
    """``POST /api/v1/machines/<device_id>/planogram/copy`` with ``{"to": [device ids]}``."""

    permission_classes = (roles.requires("inventory.change_slot", CHANGE_PRICE),)

    @docs.PLANOGRAM_COPY
    def post(self, request: Request, device_id: str) -> Response:
        source = get_device(device_id)
        serializer = PlanogramCopyToSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        targets: dict[str, Device] = {}
        for raw in serializer.validated_data["to"]:
            target = get_device(raw)
            if target.pk == source.pk:
                raise BadDeviceId(f"{source.device_id} is the machine copied from.")
            targets[target.device_id] = target
        results = copy_planogram(
            source_device=source, targets=list(targets.values()), user=request.user
        )
        body = {"source": source.device_id, "machines": results}
        return Response(PlanogramCopySerializer(body).data)
