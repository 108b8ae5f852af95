"""DICOMweb client wrapper: roots and auth from Settings, errors mapped to domain errors (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from backend.config import Settings
from backend.errors import NotFound
from backend.pacs.client import (
    PacsClient,
    PacsError,
    PacsNotConfigured,
    PacsUnavailable,
    check_uid,
    dicomweb_roots,
    make_session,
    translate_errors,
)
from backend.pacs.dimse import forward_peer
from worker.tasks.pacs import beat_entries


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings.model_validate({"data_dir": tmp_path, **kw})


def test_dicomweb_roots_default_to_the_base_and_can_be_split(tmp_path: Path) -> None:
    assert dicomweb_roots(_settings(tmp_path)) is None
    roots = dicomweb_roots(_settings(tmp_path, pacs_dicomweb_url="http://pacs:8042/dicom-web/"))
    assert roots is not None and roots.qido == roots.wado == roots.stow == "http://pacs:8042/dicom-web"
    split = dicomweb_roots(_settings(tmp_path, pacs_dicomweb_url="http://a/dw", pacs_stow_url="http://b/stow/"))
    assert split is not None and (split.qido, split.wado, split.stow) == ("http://a/dw", "http://a/dw", "http://b/stow")
    only_roots = dicomweb_roots(_settings(tmp_path, pacs_qido_url="http://q", pacs_wado_url="http://w",
                                          pacs_stow_url="http://s"))
    assert only_roots is not None and only_roots.wado == "http://w"
    with pytest.raises(PacsNotConfigured):
        PacsClient(_settings(tmp_path))


def test_auth_modes(tmp_path: Path) -> None:
    none = make_session(_settings(tmp_path))
    assert none.auth is None and "Authorization" not in none.headers and none.verify is True
    basic = make_session(_settings(tmp_path, pacs_auth="basic", pacs_username="u", pacs_password="p"))
    assert basic.auth == ("u", "p")
    bearer = make_session(_settings(tmp_path, pacs_auth="bearer", pacs_token="t0k"))
    assert bearer.headers["Authorization"] == "Bearer t0k"
    tls = make_session(_settings(tmp_path, pacs_ca_bundle=tmp_path / "ca.pem"))
    assert tls.verify == str(tmp_path / "ca.pem")
    assert make_session(_settings(tmp_path, pacs_verify_tls=False)).verify is False
    with pytest.raises(PacsNotConfigured):
        make_session(_settings(tmp_path, pacs_auth="basic", pacs_username="u"))
    with pytest.raises(PacsNotConfigured):
        make_session(_settings(tmp_path, pacs_auth="bearer"))


def _http_error(status: int) -> requests.HTTPError:
    resp = requests.Response()
    resp.status_code = status
    return requests.HTTPError(f"HTTP {status}", response=resp)


@pytest.mark.parametrize(("raised", "expected"), [
    (_http_error(404), NotFound),
    (_http_error(401), PacsError),
    (_http_error(400), PacsError),
    (_http_error(503), PacsUnavailable),
    (_http_error(429), PacsUnavailable),
    (requests.ConnectionError("refused"), PacsUnavailable),
    (requests.Timeout("slow"), PacsUnavailable),
])
def test_errors_are_mapped(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, translate_errors("QIDO-RS"):
        raise raised
    if expected is not PacsUnavailable:
        assert not isinstance(info.value, PacsUnavailable)
    assert "QIDO-RS" in info.value.message  # type: ignore[attr-defined]


def test_uid_check() -> None:
    assert check_uid("1.2.840.10008") == "1.2.840.10008"
    for bad in ("..", "1..2", "1.2.", "../etc", "1.2.a", "1" * 65, ""):
        with pytest.raises(PacsError):
            check_uid(bad)


def test_a_client_against_nothing_is_unavailable(tmp_path: Path) -> None:
    from tests.helpers import free_port

    s = _settings(tmp_path, pacs_dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", pacs_timeout_s=2)
    client = PacsClient(s)
    with pytest.raises(PacsUnavailable):
        client.ping()
    client.close()


def test_beat_entries_and_forward_peer(tmp_path: Path) -> None:
    assert set(beat_entries(_settings(tmp_path))) == {"pacs-sweep"}
    assert set(beat_entries(_settings(tmp_path, pacs_poll_interval_s=30))) == {"pacs-sweep"}  # no PACS
    entries = beat_entries(_settings(tmp_path, pacs_poll_interval_s=30, pacs_dicomweb_url="http://p/dw"))
    assert entries["pacs-poll-corrections"] == {"task": "dualseg.pacs.poll", "schedule": 30.0}
    assert forward_peer(_settings(tmp_path, scp_forward_ae="PEER", scp_forward_host="h")) is None
    peer = forward_peer(_settings(tmp_path, scp_forward_ae="PEER", scp_forward_host="h",
                                  scp_forward_port=104))
    assert peer is not None and (peer.ae_title, peer.host, peer.port) == ("PEER", "h", 104)


def test_settings_refuse_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _settings(tmp_path, pacs_push="sometimes")
    with pytest.raises(ValueError):
        _settings(tmp_path, scp_ae_title="A" * 17)
    with pytest.raises(ValueError):
        _settings(tmp_path, pacs_auth="digest")
