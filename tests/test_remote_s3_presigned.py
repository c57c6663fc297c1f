"""S3 objects read through one presigned URL per object (slideflow/remote/s3_presigned.py),
against moto's S3 on 127.0.0.1: the bytes, the signing (once; again before expiry and once
when S3 says expired; none with SLIDEFLOW_ANON), If-Match, the fall-back to signed requests,
and errors that never carry the signature."""

from __future__ import annotations

import logging
import re
import time

import pytest

from slideflow.remote.fetch import Changed, FetchStats, RemoteObject
from slideflow.remote.url import RemoteError

from conftest import CMU

URL = "s3://cohort/slides/cmu.svs"
SPANS = [(0, 8), (100_000, 140_000), (1_000_000, 1_000_500)]
#: a presigned URL's signature or credential, or a signed request's Authorization header
SECRET = re.compile(r"(Signature|Credential|Security-Token)=(?!REDACTED)|HMAC-SHA256 Cred")


@pytest.fixture()
def s3(s3_slides, monkeypatch):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_BACKOFF", "0.01")
    s3_slides.faults.clear()
    s3_slides.auth.clear()
    yield s3_slides
    s3_slides.faults.clear()


def _expect(a: int, b: int) -> bytes:
    with open(CMU, "rb") as f:
        f.seek(a)
        return f.read(b - a)


def test_ranged_gets_share_one_presigned_url(s3):
    obj = RemoteObject(URL, stats=FetchStats())
    for a, b in SPANS:
        assert obj.get(a, b) == _expect(a, b)
    assert obj.presigned is not None and obj.presigned.signed == 1
    assert len(s3.auth) == 3
    for query, header in s3.auth:  # signed in the query string (SigV4), no signed header
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in query and "X-Amz-Signature=" in query
        assert header is None
    assert obj.stats.as_dict() == {"requests": 4, "bytes_fetched": 40_508, "retries": 0}


def test_anonymous_reads_are_not_signed(s3):
    s3.client().put_object(Bucket="cohort", Key="public/cmu.svs", Body=CMU.read_bytes(),
                           ACL="public-read")
    obj = RemoteObject("s3://cohort/public/cmu.svs", anon=True)
    assert obj.get(*SPANS[1]) == _expect(*SPANS[1])
    assert s3.auth == [("", None)]


def test_if_match_is_sent_with_the_etag_seen_at_open(s3):
    obj = RemoteObject(URL)
    obj.etag = '"0123456789abcdef0123456789abcdef"'  # as if the object changed since
    with pytest.raises(Changed, match="changed since it was opened.*bytes 0-7, attempt 1"):
        obj.get(0, 8)


def test_signed_again_before_the_url_expires(s3):
    obj = RemoteObject(URL)
    obj.presigned.lifetime = 1  # the server refuses it 1 s after X-Amz-Date
    assert obj.get(*SPANS[0]) == _expect(*SPANS[0])
    time.sleep(1.1)
    assert obj.get(*SPANS[1]) == _expect(*SPANS[1])
    assert obj.presigned.signed == 2
    assert len(s3.auth) == 2 and s3.auth[0][0] != s3.auth[1][0]  # no 403 on the way


def test_signed_again_once_when_s3_says_expired(s3):
    obj = RemoteObject(URL, stats=FetchStats())
    s3.faults[:] = ["expired"]
    assert obj.get(*SPANS[1]) == _expect(*SPANS[1])
    assert obj.presigned.signed == 2
    assert obj.stats.as_dict() == {"requests": 3, "bytes_fetched": 40_000, "retries": 0}
    s3.faults[:] = ["expired", "expired"]  # expired though just signed: access denied
    with pytest.raises(PermissionError, match="access denied.*bytes 0-7, attempt 1") as err:
        obj.get(*SPANS[0])
    _no_secret(err.value)


def test_refused_presign_falls_back_to_signed_requests(s3):
    obj = RemoteObject(URL, stats=FetchStats())
    s3.faults[:] = ["refused"]
    assert obj.get(*SPANS[1]) == _expect(*SPANS[1])
    assert obj.presigned is None
    assert obj.get(*SPANS[2]) == _expect(*SPANS[2])
    assert [h is not None for _, h in s3.auth] == [False, True, True]  # then header-signed
    assert obj.stats.requests == 4


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_errors_name_the_object_never_the_signature(s3, monkeypatch, caplog, fault):
    monkeypatch.setenv("SLIDEFLOW_REMOTE_RETRIES", "1")
    obj = RemoteObject(URL)
    s3.faults[:] = [fault, fault]
    with caplog.at_level(logging.DEBUG, "urllib3"), caplog.at_level(logging.DEBUG, "slideflow"), \
            pytest.raises(RemoteError) as err:
        obj.get(*SPANS[1])
    msg = str(err.value)
    assert msg.startswith(f"{URL}: bytes 100000-139999 failed after 2 attempts")
    assert ("SlowDown" if fault == "503" else "ConnectionError") in msg
    _no_secret(err.value)
    if fault == "503":  # urllib3's own line, redacted
        assert "GET /cohort/slides/cmu.svs?X-Amz-Algorithm" in caplog.text
    assert not SECRET.search(caplog.text)


def test_object_deleted_mid_read_is_not_found_without_signature(s3):
    s3.put("cohort", "slides/gone.svs", b"x" * 1000)
    obj = RemoteObject("s3://cohort/slides/gone.svs")
    s3.client().delete_object(Bucket="cohort", Key="slides/gone.svs")
    with pytest.raises(FileNotFoundError, match="gone.svs: not found .bytes 0-9, attempt 1"
                       ) as err:
        obj.get(0, 10)
    _no_secret(err.value)


def _no_secret(exc: BaseException) -> None:
    """Neither the error nor anything chained to it shows a signature or a credential."""
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{seen!r} {seen}"
        assert not SECRET.search(text) and "X-Amz" not in text, text
        seen = seen.__cause__ or seen.__context__


def test_a_proxy_for_the_endpoint_keeps_signed_requests(s3, monkeypatch):
    obj = RemoteObject(URL)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert obj._presigned_get() is None  # botocore honours the proxy; urllib3 would not
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert obj._presigned_get() is not None
