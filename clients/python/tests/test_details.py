"""The typed details helpers, against errors that a local gRPC server raises
with a given ``google.rpc.Status``, without a daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2  # type: ignore[import-untyped]  # googleapis-common-protos has no stubs
from grpc_status import rpc_status

from stormlock_client import lease_evicted, refusing_window
from stormlock_client.v1 import lock_pb2

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]

WINDOW = lock_pb2.Window(
    kind=lock_pb2.Window.KIND_FREEZE,
    name="release-freeze",
    reason="release week",
    starts_at=Timestamp(seconds=1_790_000_000),
    ends_at=Timestamp(seconds=1_790_003_600),
)
EVICTED = lock_pb2.LeaseEvicted(actor="oncall@example.org", reason="incident 7")


def packed(*details: Message) -> list[any_pb2.Any]:
    out = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        out.append(wrapped)
    return out


def rich(*details: Message, message: str = "the lease cannot be renewed") -> status_pb2.Status:
    return status_pb2.Status(code=FAILED_PRECONDITION, message=message, details=packed(*details))


# The server answers /test.Details/Fail with the google.rpc.Status it is sent,
# and /test.Details/Contradict with that Status in the trailer but another
# message on the call.
def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort_with_status(rpc_status.to_status(status_pb2.Status.FromString(request)))
    raise AssertionError("abort_with_status returned")


def _contradict(request: bytes, context: grpc.ServicerContext) -> bytes:
    status = status_pb2.Status.FromString(request)
    context.set_trailing_metadata((("grpc-status-details-bin", request),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, status.message + " (not the trailer's)")
    raise AssertionError("abort returned")


Raise = Callable[[str, status_pb2.Status], grpc.RpcError]


@pytest.fixture(scope="module")
def raised() -> Iterator[Raise]:
    """Calls the local server's method with a Status; returns the error."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Details",
                {
                    "Fail": grpc.unary_unary_rpc_method_handler(_fail),
                    "Contradict": grpc.unary_unary_rpc_method_handler(_contradict),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(method: str, status: status_pb2.Status) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as excinfo:
            channel.unary_unary(f"/test.Details/{method}")(status.SerializeToString(), timeout=10)
        return excinfo.value

    try:
        yield call
    finally:
        channel.close()
        server.stop(None)


def test_refusing_window_finds_the_detail_among_others(raised: Raise) -> None:
    error = raised("Fail", rich(Duration(seconds=1), WINDOW, EVICTED))
    assert refusing_window(error) == WINDOW
    assert lease_evicted(error) == EVICTED


def test_lease_evicted_finds_the_detail_among_others(raised: Raise) -> None:
    error = raised("Fail", rich(Duration(seconds=1), EVICTED))
    assert lease_evicted(error) == EVICTED
    assert refusing_window(error) is None, "another detail"


@pytest.mark.parametrize(
    "status",
    [
        status_pb2.Status(code=FAILED_PRECONDITION, message="lease is not current"),
        rich(Duration(seconds=1)),
        rich(EVICTED),
    ],
    ids=["no-details", "other-detail", "lease-evicted"],
)
def test_refusing_window_of_other_errors_is_none(raised: Raise, status: status_pb2.Status) -> None:
    assert refusing_window(raised("Fail", status)) is None


def test_a_trailer_that_contradicts_the_call_is_ignored(raised: Raise) -> None:
    error = raised("Contradict", rich(WINDOW, EVICTED))
    assert refusing_window(error) is None
    assert lease_evicted(error) is None


def test_an_error_that_is_not_a_call_has_no_details() -> None:
    error = grpc.RpcError("not a call")
    assert refusing_window(error) is None
    assert lease_evicted(error) is None
