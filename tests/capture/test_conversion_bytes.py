"""Whatever bytes a flow holds, converting it gives one exchange that Parquet stores and gives
back exactly: a per-row conversion can fail only for that row (the addon counts it), never
for the rows written with it (schema 1 lost a whole open file to one latin-1 byte)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import tflow

from shadowtape.capture.credentials import CredentialScrubber
from shadowtape.capture.flow_to_exchange import flow_to_exchange
from shadowtape.http.headers import encode, fields_from_pairs
from shadowtape.keyed import Key, Keyed
from shadowtape.schema import DatasetWriter, iter_exchanges

SCRUBBER = CredentialScrubber(Keyed(Key(b"conversion-test-key-0123456789", "test")))
_names = st.one_of(
    st.binary(min_size=1, max_size=10),
    st.sampled_from([b"Host", b"Cookie", b"Set-Cookie", b"Authorization", b"Content-Encoding"]),
)
fields = st.lists(st.tuples(_names, st.binary(max_size=24)), max_size=6)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.binary(min_size=1, max_size=8),
    target=st.binary(max_size=40),
    request_fields=fields,
    response_fields=fields,
    reason=st.binary(max_size=16),
    request_body=st.binary(max_size=64),
    response_body=st.binary(max_size=64),
    http2=st.booleans(),
)
def test_any_wire_bytes_convert_and_round_trip_through_parquet(
    tmp_path_factory,
    method,
    target,
    request_fields,
    response_fields,
    reason,
    request_body,
    response_body,
    http2,
):
    f = tflow.tflow(resp=True)
    f.request.data.method = method
    f.request.data.path = target
    f.request.data.http_version = b"HTTP/2.0" if http2 else b"HTTP/1.1"
    if http2:
        f.request.data.authority = next((v for n, v in request_fields if n == b"Host"), b"")
    f.request.headers.fields = tuple(request_fields)
    f.request.raw_content = request_body
    f.response.data.reason = reason
    f.response.headers.fields = tuple(response_fields)
    f.response.raw_content = response_body
    ex = flow_to_exchange(
        f, exchange_id="i", session_id="s", seq=0, capture_id="c", scrubber=SCRUBBER
    ).exchange
    out = tmp_path_factory.mktemp("conv")
    with DatasetWriter(out) as writer:
        writer.write_exchanges([ex])
    (back,) = list(iter_exchanges(out))
    # The wire columns come back as the exact bytes; the rest as (display) text.
    assert encode(back.request_target) == encode(ex.request_target)
    assert fields_from_pairs(back.request_headers) == fields_from_pairs(ex.request_headers)
    assert fields_from_pairs(back.response_headers) == fields_from_pairs(ex.response_headers)
    assert fields_from_pairs(back.query) == fields_from_pairs(ex.query)
    assert (back.request_body, back.response_body) == (ex.request_body, ex.response_body)
    assert back.request_body_undecodable == ex.request_body_undecodable
    # Headers that are no credential reach the record as they came (a body that decodes takes
    # its Content-Encoding with it, and Content-Length says the decoded length).
    if not any(n.lower() == b"content-encoding" for n, _ in request_fields):
        kept = [(n, v) for n, v in fields_from_pairs(ex.request_headers) if not _secret(n)]
        assert kept == [(n, v) for n, v in request_fields if not _secret(n)]


def _secret(name: bytes) -> bool:
    return name.lower() in (b"cookie", b"set-cookie", b"authorization")
