import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_ACQUIRED: _ClassVar[EventType]
    EVENT_TYPE_RENEWED: _ClassVar[EventType]
    EVENT_TYPE_RELEASED: _ClassVar[EventType]
    EVENT_TYPE_EXPIRED: _ClassVar[EventType]
    EVENT_TYPE_FORCE_RELEASED: _ClassVar[EventType]
    EVENT_TYPE_FREEZE_STARTED: _ClassVar[EventType]
    EVENT_TYPE_FREEZE_ENDED: _ClassVar[EventType]
    EVENT_TYPE_RESERVED: _ClassVar[EventType]
    EVENT_TYPE_UNRESERVED: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_ACQUIRED: EventType
EVENT_TYPE_RENEWED: EventType
EVENT_TYPE_RELEASED: EventType
EVENT_TYPE_EXPIRED: EventType
EVENT_TYPE_FORCE_RELEASED: EventType
EVENT_TYPE_FREEZE_STARTED: EventType
EVENT_TYPE_FREEZE_ENDED: EventType
EVENT_TYPE_RESERVED: EventType
EVENT_TYPE_UNRESERVED: EventType

class Lease(_message.Message):
    __slots__ = ("resource", "lease_id", "principal", "reason", "acquired_at", "expires_at", "fence")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    lease_id: str
    principal: str
    reason: str
    acquired_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    fence: int
    def __init__(self, resource: _Optional[str] = ..., lease_id: _Optional[str] = ..., principal: _Optional[str] = ..., reason: _Optional[str] = ..., acquired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fence: _Optional[int] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("resource", "ttl", "wait", "reason", "principal", "wait_id")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    WAIT_ID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    ttl: _duration_pb2.Duration
    wait: _duration_pb2.Duration
    reason: str
    principal: str
    wait_id: str
    def __init__(self, resource: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., principal: _Optional[str] = ..., wait_id: _Optional[str] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("acquired", "lease", "holder", "window", "cut_short_by")
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CUT_SHORT_BY_FIELD_NUMBER: _ClassVar[int]
    acquired: bool
    lease: Lease
    holder: Lease
    window: Window
    cut_short_by: Window
    def __init__(self, acquired: _Optional[bool] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., holder: _Optional[_Union[Lease, _Mapping]] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., cut_short_by: _Optional[_Union[Window, _Mapping]] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("kind", "name", "reason", "starts_at", "ends_at", "owner", "resource")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Window.Kind]
        KIND_FREEZE: _ClassVar[Window.Kind]
        KIND_RESERVATION: _ClassVar[Window.Kind]
    KIND_UNSPECIFIED: Window.Kind
    KIND_FREEZE: Window.Kind
    KIND_RESERVATION: Window.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    kind: Window.Kind
    name: str
    reason: str
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    owner: str
    resource: str
    def __init__(self, kind: _Optional[_Union[Window.Kind, str]] = ..., name: _Optional[str] = ..., reason: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("id", "resource", "owner", "reason", "starts_at", "ends_at", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    resource: str
    owner: str
    reason: str
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., resource: _Optional[str] = ..., owner: _Optional[str] = ..., reason: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("resource", "starts_at", "ends_at", "reason", "principal")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    resource: str
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    reason: str
    principal: str
    def __init__(self, resource: _Optional[str] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reserved", "reservation", "overlapping")
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    OVERLAPPING_FIELD_NUMBER: _ClassVar[int]
    reserved: bool
    reservation: Reservation
    overlapping: Reservation
    def __init__(self, reserved: _Optional[bool] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ..., overlapping: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class UnreserveRequest(_message.Message):
    __slots__ = ("resource", "id", "reason", "principal")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    resource: str
    id: str
    reason: str
    principal: str
    def __init__(self, resource: _Optional[str] = ..., id: _Optional[str] = ..., reason: _Optional[str] = ..., principal: _Optional[str] = ...) -> None: ...

class UnreserveResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: Reservation
    def __init__(self, cancelled: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class Freeze(_message.Message):
    __slots__ = ("window", "patterns", "schedule")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    window: Window
    patterns: _containers.RepeatedScalarFieldContainer[str]
    schedule: str
    def __init__(self, window: _Optional[_Union[Window, _Mapping]] = ..., patterns: _Optional[_Iterable[str]] = ..., schedule: _Optional[str] = ...) -> None: ...

class ListReservationsResponse(_message.Message):
    __slots__ = ("reservations", "freezes")
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    FREEZES_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    freezes: _containers.RepeatedCompositeFieldContainer[Freeze]
    def __init__(self, reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., freezes: _Optional[_Iterable[_Union[Freeze, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("resource", "lease_id")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    lease_id: str
    def __init__(self, resource: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("resource", "lease_id", "ttl")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    resource: str
    lease_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, resource: _Optional[str] = ..., lease_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("lease", "cut_short_by")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CUT_SHORT_BY_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    cut_short_by: Window
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., cut_short_by: _Optional[_Union[Window, _Mapping]] = ...) -> None: ...

class CurrentRequest(_message.Message):
    __slots__ = ("resource", "wait_id")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    WAIT_ID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    wait_id: str
    def __init__(self, resource: _Optional[str] = ..., wait_id: _Optional[str] = ...) -> None: ...

class CurrentResponse(_message.Message):
    __slots__ = ("lease", "waiting", "queue_position", "window")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    waiting: int
    queue_position: int
    window: Window
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., waiting: _Optional[int] = ..., queue_position: _Optional[int] = ..., window: _Optional[_Union[Window, _Mapping]] = ...) -> None: ...

class IsHeldRequest(_message.Message):
    __slots__ = ("resource", "lease_id")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    lease_id: str
    def __init__(self, resource: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class IsHeldResponse(_message.Message):
    __slots__ = ("held",)
    HELD_FIELD_NUMBER: _ClassVar[int]
    held: bool
    def __init__(self, held: _Optional[bool] = ...) -> None: ...

class LeaseEvicted(_message.Message):
    __slots__ = ("actor", "reason")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    actor: str
    reason: str
    def __init__(self, actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("leases", "next_page_token")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    next_page_token: str
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ForceReleaseRequest(_message.Message):
    __slots__ = ("resource", "reason")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    resource: str
    reason: str
    def __init__(self, resource: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ForceReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: Lease
    def __init__(self, released: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("resource", "prefix")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    resource: str
    prefix: str
    def __init__(self, resource: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("type", "lease", "observed_at", "actor", "reason", "window")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    lease: Lease
    observed_at: _timestamp_pb2.Timestamp
    actor: str
    reason: str
    window: Window
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., window: _Optional[_Union[Window, _Mapping]] = ...) -> None: ...
