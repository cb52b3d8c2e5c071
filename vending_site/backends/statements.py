"""Hot statements compiled once: the ORM's own SQL, with only the values changing per call.

Building a queryset and compiling it to SQL costs far more CPU than running the statement
(``bench/vend_profile.py``: most of a vend's ``django/db`` time), and on the vend and confirm
paths the same few statements run with different values every time. A :class:`Select` or
:class:`Update` builds its queryset once per database with placeholder values, asks the
ORM's compiler for the SQL and the parameters, and records where each placeholder landed.
A call then swaps in its values, prepared by the model field the way the ORM prepares them,
and runs the SQL. The SQL, the column order, the value converters and the row locks are the
ORM's, so they follow the models; a statement whose shape depends on its values (``__in`` a
list, a filter only sometimes added) is not one for this module.

Both run on the ``default`` database, the only one this project has.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models import QuerySet, signals
from django.db.models.sql import InsertQuery, UpdateQuery
from django.db.transaction import TransactionManagementError

_INTEGER_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
    }
)


def _placeholder(field: models.Field, index: int) -> Any:
    """A value of ``field``'s type that no statement holds by accident (checked on use)."""
    kind = getattr(field, "target_field", field).get_internal_type()
    if kind in _INTEGER_TYPES:
        return 31_000 + index  # fits every integer column, a smallint's too
    if kind == "DateTimeField":
        return datetime(2000, 1, 2, 3, 4, 5, 6000 + index, tzinfo=UTC)
    if kind == "UUIDField":
        return uuid.UUID(int=0x5747E_0000 + index)
    if kind in ("CharField", "TextField"):
        return f"\x00placeholder {index}\x00"
    raise TypeError(f"no placeholder for a {kind} ({field})")


def _positions(params: list, prepared: list) -> list[int]:
    """Where each prepared placeholder is in ``params``: exactly once, or a clear error."""
    positions = []
    for value in prepared:
        found = [
            i for i, param in enumerate(params) if type(param) is type(value) and param == value
        ]
        if len(found) != 1:
            raise ValueError(f"placeholder {value!r} found {len(found)} times in {params!r}")
        positions.append(found[0])
    return positions


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: tuple
    positions: tuple[int, ...]
    locks: bool  # SELECT ... FOR UPDATE: only inside a transaction
    reader: Callable[[tuple], Any] | None = None


class _Statement:
    def __init__(self, build: Callable[..., Any], **fields: models.Field) -> None:
        self._build = build
        self._fields = fields
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def _compile(self, connection) -> _Compiled:
        raise NotImplementedError

    def _prepared(self, connection, values: dict[str, Any]) -> list:
        return [
            field.get_db_prep_value(values[name], connection, prepared=False)
            for name, field in self._fields.items()
        ]

    def _placeholders(self) -> dict[str, Any]:
        return {name: _placeholder(f, i) for i, (name, f) in enumerate(self._fields.items())}

    def _execute(self, values: dict[str, Any]):
        """The compiled statement for this database, and a cursor that has run it."""
        connection = connections[DEFAULT_DB_ALIAS]
        key = (connection.alias, connection.vendor)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(connection)
        if compiled.locks and connection.get_autocommit():
            raise TransactionManagementError(
                "select_for_update cannot be used outside of a transaction."
            )
        params = list(compiled.params)
        for position, value in zip(
            compiled.positions, self._prepared(connection, values), strict=True
        ):
            params[position] = value
        cursor = connection.cursor()
        try:
            with transaction.mark_for_rollback_on_error(using=connection.alias):
                cursor.execute(compiled.sql, params)
        except BaseException:
            cursor.close()
            raise
        return compiled, cursor, connection


class Select(_Statement):
    """A SELECT of model rows (with their annotations), with at most one level of
    ``select_related``, or of values (``values_list``: each row a tuple).

    ``Select(lambda device, number: Slot.objects.filter(device=device, number=number),
    device=Slot._meta.get_field("device"), number=Slot._meta.get_field("number"))``;
    then ``statement.first(device=7, number=2)`` is that queryset's ``first()``, with the
    related objects cached as ``select_related`` caches them. Pass primary keys for foreign
    keys. Order and slice in the queryset itself: ``first`` reads the first row it returns.
    """

    def first(self, **values: Any) -> models.Model | None:
        compiled, cursor, connection = self._execute(values)
        with cursor:
            row = cursor.fetchone()
        return None if row is None else compiled.reader(row, connection)

    def all(self, **values: Any) -> list:
        compiled, cursor, connection = self._execute(values)
        with cursor:
            rows = cursor.fetchall()
        return [compiled.reader(row, connection) for row in rows]

    def _compile(self, connection) -> _Compiled:
        queryset: QuerySet = self._build(**self._placeholders())
        compiler = queryset.query.get_compiler(using=connection.alias)
        sql, params = compiler.as_sql()
        params = list(params)
        positions = _positions(params, self._prepared(connection, self._placeholders()))
        return _Compiled(
            sql=sql,
            params=tuple(params),
            positions=tuple(positions),
            locks=bool(queryset.query.select_for_update)
            and connection.features.has_select_for_update,
            reader=_row_reader(compiler),
        )


def _row_reader(compiler) -> Callable:
    """A function that turns one row of ``compiler``'s SQL into its model instance (or, for
    a ``values_list`` query, into the tuple of its converted values)."""
    expressions = [column for column, _sql, _alias in compiler.select]
    converters = [
        (index, functions, expression)
        for index, (functions, expression) in compiler.get_converters(expressions).items()
    ]

    def convert(row: tuple, connection) -> list:
        values = list(row)
        for index, functions, expression in converters:
            for function in functions:
                values[index] = function(values[index], expression, connection)
        return values

    if not compiler.query.default_cols:  # values_list()
        return lambda row, connection: tuple(convert(row, connection))

    def columns(info: dict) -> tuple[slice, tuple[str, ...]]:
        selected = info["select_fields"]
        span = slice(selected[0], selected[-1] + 1)
        if list(selected) != list(range(span.start, span.stop)):
            raise ValueError("a model's columns are expected side by side")
        return span, tuple(expressions[i].target.attname for i in selected)

    info = compiler.klass_info
    model, (span, names) = info["model"], columns(info)
    related = [
        (sub["model"], *columns(sub), sub["local_setter"], sub["remote_setter"])
        for sub in info.get("related_klass_infos", ())
    ]
    if any(sub.get("related_klass_infos") for sub in info.get("related_klass_infos", ())):
        raise ValueError("only one level of select_related is supported")
    alias = compiler.using
    annotations = tuple(compiler.annotation_col_map.items())

    def read(row: tuple, connection) -> models.Model:
        values = convert(row, connection)
        instance = model.from_db(alias, names, values[span])
        for sub_model, sub_span, sub_names, local_setter, remote_setter in related:
            sub_values = values[sub_span]
            pk_index = sub_names.index(sub_model._meta.pk.attname)
            obj = None
            if sub_values[pk_index] is not None:
                obj = sub_model.from_db(alias, sub_names, sub_values)
            local_setter(instance, obj)
            if obj is not None:
                remote_setter(obj, instance)
        for name, index in annotations:
            setattr(instance, name, values[index])
        return instance

    return read


class Update(_Statement):
    """An UPDATE of one table: ``build`` returns the queryset and the new values.

    ``Update(lambda pk, quantity: (Slot.objects.filter(pk=pk), {"quantity": quantity}),
    pk=Slot._meta.pk, quantity=Slot._meta.get_field("quantity"))``; then
    ``statement.run(pk=3, quantity=9)`` is ``Slot.objects.filter(pk=3).update(quantity=9)``
    and returns the number of rows it changed.
    """

    def run(self, **values: Any) -> int:
        _compiled, cursor, _connection = self._execute(values)
        with cursor:
            return cursor.rowcount

    def _compile(self, connection) -> _Compiled:
        queryset, changes = self._build(**self._placeholders())
        query = queryset.query.chain(UpdateQuery)
        query.add_update_values(changes)
        query.clear_select_clause()
        compiler = query.get_compiler(using=connection.alias)
        sql, params = compiler.as_sql()
        if query.related_updates or query.count_active_tables() != 1:
            raise ValueError("only an UPDATE of one table, filtered on its own columns")
        params = list(params)
        positions = _positions(params, self._prepared(connection, self._placeholders()))
        return _Compiled(sql=sql, params=tuple(params), positions=tuple(positions), locks=False)


@dataclass(frozen=True)
class _CompiledInsert:
    sql: str
    fields: tuple  # the model fields whose values the SQL takes, in order
    returning: tuple  # the fields the database hands back (an auto-increment id)
    returning_params: tuple
    converters: tuple


class Insert:
    """``Model.objects.create(**values)`` with its INSERT compiled once per database.

    The instance is made, checked and saved as ``create`` saves it (``pre_save`` and
    ``post_save`` sent, each field's ``pre_save`` and database preparation, the generated
    id read back); only the INSERT is not compiled again. For plain models only: no
    parents, no custom ``save()`` (it would be skipped), no database defaults or generated
    fields, no value given as an expression.
    """

    def __init__(self, model: type[models.Model]) -> None:
        meta = model._meta
        if meta.parents or meta.proxy or model.save is not models.Model.save:
            raise TypeError(f"{model.__name__} is not a plain model: use its manager")
        if any(f.generated or f.has_db_default() for f in meta.local_concrete_fields):
            raise TypeError(f"{model.__name__} has database-side values: use its manager")
        self.model = model
        self._compiled: dict[tuple[str, str, bool], _CompiledInsert] = {}

    def create(self, **values: Any) -> models.Model:
        return self.insert(self.model(**values))

    def insert(self, obj: models.Model) -> models.Model:
        """Save a new instance of the model (``obj.save(force_insert=True)``); returns it."""
        obj._prepare_related_fields_for_save(operation_name="save")
        meta = self.model._meta
        connection = connections[DEFAULT_DB_ALIAS]
        alias = connection.alias
        signals.pre_save.send(
            sender=self.model, instance=obj, raw=False, using=alias, update_fields=None
        )
        if not obj._is_pk_set(meta):
            setattr(obj, meta.pk.attname, meta.pk.get_pk_value_on_save(obj))
        key = (alias, connection.vendor, obj._is_pk_set(meta))
        compiled = self._compiled.get(key)
        raw_values = None
        if compiled is None:
            compiled, raw_values = self._compile(connection, obj, key[2])
            self._compiled[key] = compiled
        if raw_values is None:
            raw_values = [field.pre_save(obj, True) for field in compiled.fields]
        if any(hasattr(value, "resolve_expression") for value in raw_values):
            raise TypeError("a value given as an expression: use the model's manager")
        params = [
            field.get_db_prep_save(value, connection=connection)
            for field, value in zip(compiled.fields, raw_values, strict=True)
        ]
        with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            if compiled.returning:
                row = self._returned(connection, cursor, compiled)
                for field, value in zip(compiled.returning, row, strict=True):
                    setattr(obj, field.attname, value)
        obj._state.db = alias
        obj._state.adding = False
        signals.post_save.send(
            sender=self.model,
            instance=obj,
            created=True,
            update_fields=None,
            raw=False,
            using=alias,
        )
        return obj

    def _compile(self, connection, obj: models.Model, pk_set: bool):
        """The INSERT of ``obj`` as the ORM writes it, checked to take exactly one ``%s``
        per field, in field order, and the values it would send (already ``pre_save``\\d)."""
        meta = self.model._meta
        fields = [
            f
            for f in meta.local_concrete_fields
            if not f.generated and (pk_set or f is not meta.auto_field)
        ]
        returning = list(meta.db_returning_fields)
        query = InsertQuery(self.model)
        query.insert_values(fields, [obj])
        compiler = query.get_compiler(using=connection.alias)
        compiler.returning_fields = returning
        ((sql, params),) = compiler.as_sql()
        raw_values = [field.pre_save(obj, True) for field in fields]
        expected = [
            f.get_db_prep_save(v, connection=connection)
            for f, v in zip(fields, raw_values, strict=True)
        ]
        if list(params) != expected or sql.count("%s") != len(fields):
            raise ValueError(f"{self.model.__name__}'s INSERT is not one plain value per field")
        table = meta.db_table
        converters = compiler.get_converters([f.get_col(table) for f in returning])
        compiled = _CompiledInsert(
            sql=sql,
            fields=tuple(fields),
            returning=tuple(returning),
            returning_params=tuple(getattr(compiler, "returning_params", ())),
            converters=tuple(converters.items()),
        )
        return compiled, raw_values

    @staticmethod
    def _returned(connection, cursor, compiled: _CompiledInsert) -> list:
        meta_table = compiled.fields[0].model._meta.db_table
        if connection.features.can_return_columns_from_insert:
            row = connection.ops.fetch_returned_insert_columns(cursor, compiled.returning_params)
        else:
            (pk,) = compiled.returning
            row = (connection.ops.last_insert_id(cursor, meta_table, pk.column),)
        values = list(row)
        for index, (functions, expression) in compiled.converters:
            for function in functions:
                values[index] = function(values[index], expression, connection)
        return values
